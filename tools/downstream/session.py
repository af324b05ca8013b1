"""One downstream server's session: its state, its requests, and what the SDK's errors mean for it.

`ServerSession` is what the pool keeps per server (the client its runner task owns, the cached
tool list, the process, leases and retirement) and how a request is sent on it: bounded, with the
SDK's errors translated into `tools.downstream.errors` (a closed connection marks it crashed, so
its next use starts a new one).

A JSON-RPC error the server sent and one the SDK raised itself arrive as the same `MCPError`, and
the SDK's own codes (-32000 connection closed, -32001 request timeout) are codes servers use too.
They are told apart by what the bridge controls: it never gives the SDK a timeout (every request is
bounded here, by `asyncio.timeout`), so a -32001 is always the server's; a -32000 is the SDK's only
when the connection has really ended (`transports.connection_ended`). A server's error is passed on
with its message, and its session stays in use.

`SessionLease` is one run's hold on one server (see `tools.downstream.pool` for what leases
guarantee); the pool hands them out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.abc
import mcp.types as types
from mcp import Client
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

from tools.downstream.entries import ServerEntry
from tools.downstream.errors import (
    MCPBridgeError,
    MCPServerCrashedError,
    MCPServerReportedError,
    MCPSessionClosedError,
    MCPToolCallError,
    MCPToolTimeoutError,
)
from tools.downstream.transports import connection_ended

if TYPE_CHECKING:
    from tools.downstream.pool import MCPSessionPool

logger = logging.getLogger(__name__)

T = TypeVar("T")

_TOOL_PAGES_MAX = 100


@dataclass(frozen=True)
class SessionStatus:
    """What the pool knows of one server: is a session up, how many tools, which process."""

    name: str
    started: bool
    tool_count: int | None
    pid: int | None
    last_error: str | None


class ServerSession:
    """One server's connection. Its runner task owns the client; callers only send requests on it."""

    def __init__(self, entry: ServerEntry, now: float) -> None:
        # The pool's bookkeeping lives here too (leases, retirement, last use): one object per session.
        self.entry = entry
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Every waiter may be gone when a start fails; retrieving the exception keeps asyncio quiet.
        self.ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.stop = asyncio.Event()
        self.client: Client | None = None
        self.process: anyio.abc.Process | None = None
        self.tools: list[types.Tool] | None = None
        self.tools_stale = False
        self.tools_lock = asyncio.Lock()
        self.crashed = False
        self.ended = False
        self.retired: str | None = None  # why a config change replaced it; it closes when its last lease lets go
        self.close_reason: str | None = None
        self.leases = 0
        self.last_used = now
        self.runner: asyncio.Task[None] | None = None

    @property
    def usable(self) -> bool:
        return not (self.ended or self.crashed or self.stop.is_set())

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def took_process(self, process: anyio.abc.Process | None) -> None:
        """The transport spawned this server's process (None for remote servers, or if unknown)."""
        self.process = process

    async def on_message(self, message: types.ServerNotification | Exception) -> None:
        """The client's message handler: notices tools/list_changed and transport faults."""
        if isinstance(message, types.ToolListChangedNotification):
            logger.debug("MCP server %r: tool list changed", self.entry.name)
            self.tools_stale = True
        elif isinstance(message, Exception):
            logger.warning("MCP server %r sent an unreadable message: %s", self.entry.name, message)

    async def list_tools(self, timeout_s: float) -> list[types.Tool]:
        """The server's tools, cached and fetched again after tools/list_changed."""
        if self.tools is None or self.tools_stale:
            async with self.tools_lock:
                if self.tools is None or self.tools_stale:
                    # Cleared before the fetch: a change announced during it marks the list stale again.
                    self.tools_stale = False
                    self.tools = await self.request("tools/list", timeout_s, fetch_tools)
        return list(self.tools)

    async def request(self, what: str, timeout_s: float, send: Callable[[Client], Awaitable[T]]) -> T:
        """Send one request on the session, bounded, with the SDK's errors translated.

        Raises:
            MCPServerCrashedError: the server died under the request (it restarts on next use).
            MCPToolTimeoutError: no answer within `timeout_s`.
            MCPToolCallError: the server refused the request, or it failed for another reason.
        """
        session = self
        client = session.client
        name = session.entry.name
        if client is None:
            raise MCPServerCrashedError(name)
        try:
            # The one bound of the request (the SDK is given none, see the module docstring).
            async with asyncio.timeout(timeout_s):
                return await send(client)
        except TimeoutError:
            raise MCPToolTimeoutError(name, what, timeout_s) from None
        except MCPError as exc:
            raise self._translate(what, client, exc) from exc
        except (ValidationError, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError) as exc:
            if not session.usable:
                raise MCPServerCrashedError(name) from exc
            raise MCPToolCallError(name, what, describe(exc)) from exc
        finally:
            session.last_used = time.monotonic()

    def _translate(self, what: str, client: Client, exc: MCPError) -> MCPBridgeError:
        name = self.entry.name
        if exc.code == types.CONNECTION_CLOSED and connection_ended(client, exc):
            if self.close_reason is not None and not self.crashed:
                return MCPSessionClosedError(name, what, self.close_reason)
            # Dead: the next use starts a new process even if the runner has not noticed yet.
            self.crashed = True
            self.stop.set()
            return MCPServerCrashedError(name)
        return MCPServerReportedError(name, what, exc.code, exc.message)


async def fetch_tools(client: Client) -> list[types.Tool]:
    tools: list[types.Tool] = []
    cursor: str | None = None
    for _ in range(_TOOL_PAGES_MAX):
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            break
    return tools


# --- error text ---------------------------------------------------------------------------------


def describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, FileNotFoundError):
        return f"command not found: {exc.filename or exc}"
    if isinstance(exc, MCPError):
        if exc.code == types.CONNECTION_CLOSED:
            return "the connection closed before initialization finished (the process exited?)"
        return f"{exc.message} (JSON-RPC error {exc.code})"
    return f"{type(exc).__name__}: {exc}"


class SessionLease:
    """One run's hold on one server: every call of the run goes to the session it started with.

    A reload that changes the server's entry does not touch this lease's session; if the session
    dies, the next call starts the lease's entry again. `release()` once the run is over.
    """

    def __init__(self, pool: MCPSessionPool, entry: ServerEntry) -> None:
        self._pool = pool
        self.entry = entry
        self._session: ServerSession | None = None
        self._released = False

    async def _current(self) -> ServerSession:
        session = self._session
        if session is not None and session.usable:
            return session
        if self._released:
            raise MCPToolCallError(
                self.entry.name, "(any)", "the task that held this server has ended", hint="Start a new task."
            )
        fresh = await self._pool._session_for(self.entry)
        if self._session is not None:
            self._pool._let_go(self._session)
        self._pool._hold(fresh)
        self._session = fresh
        return fresh

    async def list_tools(self) -> list[types.Tool]:
        """The server's tools, cached per session and re-fetched after tools/list_changed.

        Raises:
            MCPServerStartError: the server could not be started.
            MCPServerCrashedError, MCPToolTimeoutError, MCPToolCallError: re-fetching the list failed.
        """
        session = await self._current()
        return await session.list_tools(self._pool.call_timeout_s)

    async def call_tool(
        self, tool: str, arguments: dict[str, Any], *, timeout_s: float | None = None
    ) -> types.CallToolResult:
        """Call `tool` (starting the server if needed). A tool that reports an error returns a result
        with `is_error` set; only protocol-level failures raise.

        Raises:
            MCPServerStartError: the server could not be started.
            MCPServerCrashedError: the server died during the call (it restarts on next use).
            MCPToolTimeoutError: no answer within `timeout_s` (default: the pool's call timeout).
            MCPSessionClosedError: the bridge closed the session during the call (shutting down).
            MCPToolCallError: the server rejected the call (unknown tool, invalid arguments, ...);
                `MCPServerReportedError` when it answered with a JSON-RPC error of its own.
        """
        timeout = self._pool.call_timeout_s if timeout_s is None else timeout_s
        session = await self._current()
        return await session.request(tool, timeout, lambda c: c.call_tool(tool, arguments))

    def release(self) -> None:
        """The run is over: the session may be reaped when idle, or closed if a reload retired it."""
        if self._session is not None and not self._released:
            self._pool._let_go(self._session)
        self._released = True
        self._session = None
