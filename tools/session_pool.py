"""One persistent MCP client session per downstream server: started on first use, then reused.

Each session lives in a runner task of its own that enters the SDK client (and so its anyio task
groups and cancel scopes), signals ready, waits for a stop request or for its process to exit,
then leaves the client in that same task: anyio requires that a cancel scope be exited by the
task that entered it, so no request task ever enters or exits a transport.

    caller task ──list_tools/call_tool──► _Session.client (shared, safe across tasks)
    runner task ── enters Client(transport) ─ ready ─ waits(stop | process exit) ─ exits Client

Bounds: start + initialize + the first tools/list within `start_timeout_s`; each call within
`call_timeout_s` (or its own `timeout_s`); sessions unused for `idle_timeout_s` are closed by a
reaper task (0 keeps them); `aclose()` stops every runner, and the SDK's stdio transport kills each
child's process group on exit, so no child outlives the pool.

This is the one place where the SDK's errors become `tools.exceptions` errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any, Self

import anyio
import anyio.abc
import mcp.types as types
from mcp import Client, StdioServerParameters
from mcp.client.sse import sse_client
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client  # what the SDK's own session group uses
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

from tools.exceptions import (
    MCPBridgeError,
    MCPServerCrashedError,
    MCPServerStartError,
    MCPToolCallError,
    MCPToolTimeoutError,
)
from tools.mcp_discovery import DiscoveryChange, ServerEntry

logger = logging.getLogger(__name__)

# "legacy" (the initialize handshake) rather than "auto": measured on the reference servers the
# server/discover probe costs nothing noticeable either way (all answer within the noise of a
# ~150-480 ms start), but "auto" moves Python mcp>=2.3 servers (mcp-server-time) to the 2026-07-28
# protocol, where tools/list_changed is only sent to `subscriptions/listen` streams. With the
# handshake every server sends it unsolicited, so one code path keeps every tool list fresh.
_PROTOCOL_MODE = "legacy"
# The SDK's stdio shutdown is bounded by 0.5 s flush + 2 s grace + 2 s TERM + 2 s reap; margin on top.
_STOP_TIMEOUT_S = 10.0
# A call gets its read timeout from the session; this outer bound also covers extra input rounds.
_CALL_GRACE_S = 1.0
_TOOL_PAGES_MAX = 100
_STDERR_TAIL_BYTES = 4096
_STDERR_TAIL_LINES = 20
_REAP_MIN_WAIT_S = 0.01

# What the SDK's transports yield: (ReadStream[SessionMessage | Exception], WriteStream[SessionMessage]).
_TransportContext = contextlib.AbstractAsyncContextManager[tuple[Any, Any]]


@dataclass(frozen=True)
class SessionStatus:
    """What the pool knows of one server: is a session up, how many tools, which process."""

    name: str
    started: bool
    tool_count: int | None
    pid: int | None
    last_error: str | None


class _Session:
    """One server's connection. Its runner task owns the client; callers only send requests on it."""

    def __init__(self, entry: ServerEntry, now: float) -> None:
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
        self.close_reason: str | None = None
        self.in_flight = 0
        self.last_used = now
        self.runner: asyncio.Task[None] | None = None

    @property
    def usable(self) -> bool:
        return not (self.ended or self.crashed or self.stop.is_set())

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def on_message(self, message: types.ServerNotification | Exception) -> None:
        """The client's message handler: notices tools/list_changed and transport faults."""
        if isinstance(message, types.ToolListChangedNotification):
            logger.debug("MCP server %r: tool list changed", self.entry.name)
            self.tools_stale = True
        elif isinstance(message, Exception):
            logger.warning("MCP server %r sent an unreadable message: %s", self.entry.name, message)


class MCPSessionPool:
    """Persistent sessions to the user's other MCP servers, keyed by server name.

    Use as an async context manager (the bridge's lifespan owns one). Concurrent first uses of a
    server share one start; a server that died is started again on its next use.
    `on_close(name, reason)`, when given, is told whenever a session ends ("idle", "shutdown",
    "config changed", "crashed", "start failed", ...).
    """

    def __init__(
        self,
        *,
        start_timeout_s: float,
        call_timeout_s: float,
        idle_timeout_s: float,
        on_close: Callable[[str, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._start_timeout_s = start_timeout_s
        self._call_timeout_s = call_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._on_close = on_close
        self._clock = clock
        self._sessions: dict[str, _Session] = {}
        self._last_errors: dict[str, str] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # --- public API ---------------------------------------------------------------------------

    async def list_tools(self, entry: ServerEntry) -> list[types.Tool]:
        """The server's tools, cached per session and re-fetched after tools/list_changed.

        Raises:
            MCPServerStartError: the server could not be started.
            MCPServerCrashedError, MCPToolTimeoutError, MCPToolCallError: re-fetching the list failed.
        """
        session = await self._session_for(entry)
        if session.tools is None or session.tools_stale:
            async with session.tools_lock:
                if session.tools is None or session.tools_stale:
                    # Cleared before the fetch: a change announced during it marks the list stale again.
                    session.tools_stale = False
                    session.tools = await self._request(
                        session, "tools/list", self._call_timeout_s, lambda c: _fetch_tools(c)
                    )
        return list(session.tools)

    async def call_tool(
        self, entry: ServerEntry, tool: str, arguments: dict[str, Any], *, timeout_s: float | None = None
    ) -> types.CallToolResult:
        """Call `tool` on the server (starting it if needed). A tool that reports an error returns
        a result with `is_error` set; only protocol-level failures raise.

        Raises:
            MCPServerStartError: the server could not be started.
            MCPServerCrashedError: the server died during the call (it restarts on next use).
            MCPToolTimeoutError: no answer within `timeout_s` (default: the pool's call timeout).
            MCPToolCallError: the server rejected the call (unknown tool, invalid arguments, ...).
        """
        timeout = self._call_timeout_s if timeout_s is None else timeout_s
        session = await self._session_for(entry)
        return await self._request(
            session, tool, timeout, lambda c: c.call_tool(tool, arguments, read_timeout_seconds=timeout)
        )

    async def apply(self, change: DiscoveryChange) -> None:
        """Close the sessions of changed and removed entries; changed ones restart on next use."""
        closing = []
        for name in change.changed | change.removed:
            session = self._sessions.get(name)
            if session is not None:
                self._forget(session)
                reason = "config changed" if name in change.changed else "removed from config"
                closing.append(self._close(session, reason))
        await asyncio.gather(*closing)

    def status(self, name: str) -> SessionStatus:
        """Whether a session to `name` is up, its tool count and pid, and the last error seen."""
        session = self._sessions.get(name)
        last_error = self._last_errors.get(name)
        if session is None or not session.usable or session.client is None:
            return SessionStatus(name=name, started=False, tool_count=None, pid=None, last_error=last_error)
        tool_count = len(session.tools) if session.tools is not None else None
        return SessionStatus(name=name, started=True, tool_count=tool_count, pid=session.pid, last_error=last_error)

    async def aclose(self) -> None:
        """Close every session and wait for their processes to end (each wait bounded)."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
            self._reaper = None
        sessions = list(self._sessions.values())
        self._sessions.clear()
        await asyncio.gather(*(self._close(s, "shutdown") for s in sessions), *list(self._closing))

    # --- sessions -----------------------------------------------------------------------------

    async def _session_for(self, entry: ServerEntry) -> _Session:
        if self._closed:
            raise MCPServerStartError(entry.name, "the bridge is shutting down")
        if entry.disabled:
            raise MCPServerStartError(
                entry.name, 'its entry is disabled ("disabled": true in the config file); set it to false to use it'
            )
        session = self._sessions.get(entry.name)
        if session is not None and (not session.usable or session.entry != entry):
            self._forget(session)
            self._close_soon(session, "config changed" if session.usable else "restart")
            session = None
        if session is None:
            # No await between the lookup and this insert: concurrent first uses share this start.
            session = self._start(entry)
        await self._wait_ready(session)
        session.last_used = self._clock()
        return session

    def _start(self, entry: ServerEntry) -> _Session:
        session = _Session(entry, self._clock())
        session.runner = asyncio.create_task(self._run(session), name=f"mcp-session-{entry.name}")
        self._sessions[entry.name] = session
        if self._idle_timeout_s > 0 and self._reaper is None:
            self._reaper = asyncio.create_task(self._reap_idle(), name="mcp-session-reaper")
        return session

    async def _wait_ready(self, session: _Session) -> None:
        try:
            # The runner enforces start_timeout_s itself; this bound only guards against a stuck runner.
            await asyncio.wait_for(asyncio.shield(session.ready), self._start_timeout_s + _STOP_TIMEOUT_S)
        except TimeoutError:
            self._forget(session)
            self._close_soon(session, "start timed out")
            raise MCPServerStartError(
                session.entry.name, f"it did not finish starting within {self._start_timeout_s:g} s"
            ) from None

    async def _run(self, session: _Session) -> None:
        """The runner: owns the client's whole life, from spawn/connect to exit, in this one task."""
        entry = session.entry
        error: BaseException | None = None
        start_scope = anyio.CancelScope(deadline=anyio.current_time() + self._start_timeout_s)
        with contextlib.ExitStack() as files:
            errlog = files.enter_context(_stderr_file()) if entry.transport == "stdio" else None
            try:
                with start_scope:
                    async with AsyncExitStack() as stack:
                        client = Client(
                            self._transport(session, errlog),
                            # initialize is bounded by start_timeout_s (the scope above), not by the call
                            # timeout: a slow starter (npx fetching a package) is not a slow tool. Every
                            # later request carries its own bound (see _request and call_tool).
                            read_timeout_seconds=max(self._call_timeout_s, self._start_timeout_s),
                            message_handler=session.on_message,
                            mode=_PROTOCOL_MODE,
                            cache=None,  # the pool caches the tool list itself and refreshes on list_changed
                        )
                        await stack.enter_async_context(client)
                        session.tools = await _fetch_tools(client)
                        start_scope.deadline = math.inf
                        session.client = client
                        session.ready.set_result(None)
                        logger.info(
                            "MCP server %r started (%s, pid %s, %d tools)",
                            entry.name,
                            entry.transport,
                            session.pid,
                            len(session.tools),
                        )
                        await self._serve_until_stopped(session)
            except Exception as exc:  # the runner's boundary: every failure is reported, none escapes
                error = exc
            finally:
                session.ended = True
                session.client = None
                self._forget(session)
                # cancel_called is set when the deadline passed (it was lifted once ready).
                timed_out = start_scope.cancel_called and session.close_reason is None
                self._finish(session, error, timed_out, _read_tail(errlog))

    async def _serve_until_stopped(self, session: _Session) -> None:
        waits = [asyncio.ensure_future(session.stop.wait())]
        if session.process is not None:
            waits.append(asyncio.ensure_future(session.process.wait()))
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        if not session.stop.is_set():
            session.crashed = True

    def _finish(self, session: _Session, error: BaseException | None, timed_out: bool, stderr_tail: str) -> None:
        name = session.entry.name
        exit_code = session.process.returncode if session.process is not None else None
        if not session.ready.done():
            if timed_out:
                reason, exit_code = f"it did not finish starting within {self._start_timeout_s:g} s", None
            elif session.close_reason is not None:
                reason, exit_code = f"the session was closed while starting ({session.close_reason})", None
            else:
                reason = _describe(error) if error is not None else "it ended during start-up"
            hint = None
            if session.entry.url is not None:
                hint = f"Is the server running at {session.entry.url}? Check its url and headers in the config file."
            start_error = MCPServerStartError(name, reason, stderr_tail, exit_code, hint=hint)
            self._last_errors[name] = str(start_error)
            logger.warning("%s", start_error)
            session.ready.set_exception(start_error)
            outcome = "start failed"
        elif session.crashed or error is not None:
            detail = f"exit code {exit_code}" if exit_code is not None else _describe(error) if error else "ended"
            self._last_errors[name] = f"crashed ({detail}); stderr tail: {stderr_tail}"
            logger.warning("MCP server %r stopped unexpectedly (%s). Stderr tail:\n%s", name, detail, stderr_tail)
            outcome = "crashed"
        else:
            outcome = session.close_reason or "closed"
            logger.info("MCP server %r session closed (%s)", name, outcome)
        if self._on_close is not None:
            self._on_close(name, outcome)

    def _transport(self, session: _Session, errlog: IO[str] | None) -> _TransportContext:
        entry = session.entry
        if entry.transport == "stdio":
            assert entry.command is not None and errlog is not None
            params = StdioServerParameters(
                command=entry.command, args=list(entry.args), env=dict(entry.env) or None, cwd=entry.cwd
            )
            return _stdio_transport(params, errlog, session)
        assert entry.url is not None
        if entry.transport == "sse":
            return sse_client(entry.url, headers=dict(entry.headers) or None, timeout=self._start_timeout_s)
        return _http_transport(entry.url, dict(entry.headers))

    async def _request(
        self, session: _Session, what: str, timeout_s: float, send: Callable[[Client], Any]
    ) -> Any:
        """Send one request on the session, bounded, with the SDK's errors translated."""
        client = session.client
        name = session.entry.name
        if client is None:
            raise MCPServerCrashedError(name)
        session.in_flight += 1
        try:
            async with asyncio.timeout(timeout_s + _CALL_GRACE_S):
                return await send(client)
        except TimeoutError:
            raise MCPToolTimeoutError(name, what, timeout_s) from None
        except MCPError as exc:
            raise self._translate(session, what, timeout_s, exc) from exc
        except (ValidationError, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError) as exc:
            if not session.usable:
                raise MCPServerCrashedError(name) from exc
            raise MCPToolCallError(name, what, _describe(exc)) from exc
        finally:
            session.in_flight -= 1
            session.last_used = self._clock()

    def _translate(self, session: _Session, what: str, timeout_s: float, exc: MCPError) -> MCPBridgeError:
        name = session.entry.name
        if exc.code == types.REQUEST_TIMEOUT:
            return MCPToolTimeoutError(name, what, timeout_s)
        if exc.code == types.CONNECTION_CLOSED:
            if session.close_reason is not None and not session.crashed:
                return MCPToolCallError(name, what, f"the session was closed ({session.close_reason}) during the call")
            # Dead: the next use starts a new process even if the runner has not noticed yet.
            session.crashed = True
            session.stop.set()
            self._forget(session)
            return MCPServerCrashedError(name)
        return MCPToolCallError(name, what, f"{exc.message} (JSON-RPC error {exc.code})")

    # --- closing ------------------------------------------------------------------------------

    def _forget(self, session: _Session) -> None:
        if self._sessions.get(session.entry.name) is session:
            del self._sessions[session.entry.name]

    def _close_soon(self, session: _Session, reason: str) -> None:
        task = asyncio.create_task(self._close(session, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, session: _Session, reason: str) -> None:
        """Ask the runner to leave its client, and wait for it (bounded; cancelled past the bound)."""
        if session.close_reason is None:
            session.close_reason = reason
        session.stop.set()
        runner = session.runner
        if runner is None:
            return
        if not session.ready.done():
            runner.cancel()  # still starting: abandon the start, the runner's unwinding kills the process
        done, _ = await asyncio.wait({runner}, timeout=_STOP_TIMEOUT_S)
        if not done:
            logger.warning(
                "MCP server %r did not stop within %s s; cancelling its runner", session.entry.name, _STOP_TIMEOUT_S
            )
            runner.cancel()
            await asyncio.wait({runner}, timeout=_STOP_TIMEOUT_S)

    async def _reap_idle(self) -> None:
        """Close sessions unused for idle_timeout_s; sleeps until the next one is due."""
        idle = self._idle_timeout_s
        while not self._closed:
            now = self._clock()
            next_due = now + idle
            for session in list(self._sessions.values()):
                if session.in_flight or not session.ready.done() or not session.usable:
                    continue
                due = session.last_used + idle
                if due <= now:
                    self._forget(session)
                    self._close_soon(session, "idle")
                else:
                    next_due = min(next_due, due)
            await asyncio.sleep(max(next_due - now, _REAP_MIN_WAIT_S))


# --- transports -------------------------------------------------------------------------------


@asynccontextmanager
async def _stdio_transport(
    params: StdioServerParameters, errlog: IO[str], session: _Session
) -> AsyncIterator[tuple[Any, Any]]:
    spawn = stdio_client(params, errlog=errlog)
    try:
        async with spawn as streams:
            session.process = _spawned_process(spawn)
            yield streams
    finally:
        if session.process is not None:
            _kill_leftovers(session.process.pid)


def _kill_leftovers(pgid: int) -> None:
    """Kill what is left of the server's process group once the server itself has exited.

    The SDK kills the whole group only when the server does not exit by itself; a server that
    exits when its stdin closes can leave children (a wrapper's node, a helper) running. The
    server was started in a new session, so the group id is its pid, and Linux does not reuse
    an id while a group still has members: whatever is in the group is ours.
    """
    if sys.platform == "win32":
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    logger.info("Killed processes left behind by MCP server process group %d", pgid)


@asynccontextmanager
async def _http_transport(url: str, headers: dict[str, str]) -> AsyncIterator[tuple[Any, Any]]:
    async with create_mcp_http_client(headers=headers or None) as http:
        async with streamable_http_client(url, http_client=http) as streams:
            yield streams


def _spawned_process(spawn: object) -> anyio.abc.Process | None:
    """The child that `stdio_client` spawned (for its pid and exit code).

    The SDK does not expose it; while the transport is open its suspended generator frame holds it
    as `process`. Returns None if a future SDK renames it (pid and exit code are then unknown;
    tests/test_session_pool.py checks that the pid is found).
    """
    frame = getattr(getattr(spawn, "gen", None), "ag_frame", None)
    process = frame.f_locals.get("process") if frame is not None else None
    return process if isinstance(process, anyio.abc.Process) else None


async def _fetch_tools(client: Client) -> list[types.Tool]:
    tools: list[types.Tool] = []
    cursor: str | None = None
    for _ in range(_TOOL_PAGES_MAX):
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            break
    return tools


# --- stderr and error text ---------------------------------------------------------------------


def _stderr_file() -> IO[str]:
    # A real file, not a pipe: the child writes to its fd directly, nothing has to drain it, and
    # the tail can be read at any time. Deleted on close; the tail is read before that.
    return tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace", prefix="mcp-stderr-")


def _read_tail(errlog: IO[str] | None) -> str:
    if errlog is None:
        return ""
    try:
        fd = errlog.fileno()
        size = os.fstat(fd).st_size
        data = os.pread(fd, _STDERR_TAIL_BYTES, max(0, size - _STDERR_TAIL_BYTES))
    except (OSError, ValueError):
        return ""
    lines = data.decode("utf-8", errors="replace").splitlines()
    return "\n".join(lines[-_STDERR_TAIL_LINES:])


def _describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, FileNotFoundError):
        return f"command not found: {exc.filename or exc}"
    if isinstance(exc, MCPError):
        if exc.code == types.CONNECTION_CLOSED:
            return "the connection closed before initialization finished (the process exited?)"
        return f"{exc.message} (JSON-RPC error {exc.code})"
    return f"{type(exc).__name__}: {exc}"
