"""One persistent MCP client session per downstream server: started on first use, then reused.

Each session lives in a runner task of its own that enters the SDK client (and so its anyio task
groups and cancel scopes), signals ready, waits for a stop request or for its process to exit,
then leaves the client in that same task: anyio requires that a cancel scope be exited by the
task that entered it, so no request task ever enters or exits a transport.

    caller task ──list_tools/call_tool──► ServerSession.client (shared, safe across tasks)
    runner task ── enters Client(transport) ─ ready ─ waits(stop | process exit) ─ exits Client

Leases: a run takes a `SessionLease` per server (`pool.lease(entry)`) and makes every call of the
run through it, so the run works on the session it started with: a config reload that changes
or removes the server retires that session, and it is closed only once the last lease on it is
released (new runs get a new session with the new entry). A leased session is never reaped as
idle, even while its run waits minutes on its model. A session that crashes under a lease is
started again, with the lease's entry, on the lease's next call.

Bounds: start + initialize + the first tools/list within `start_timeout_s`; each call within
`call_timeout_s` (or its own `timeout_s`); sessions unused and unleased for `idle_timeout_s` are
closed by a reaper task (0 keeps them); `aclose()` stops every runner, and each child's process
group is gone within 1.1 s (`transports.stop_soon`), so no child outlives the pool; on Linux a
child also dies with the bridge if the bridge is killed.

How a request's SDK errors become `tools.downstream.errors` is `tools.downstream.session`; how a
connection is opened (and every SDK workaround) is `tools.downstream.transports`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc
import mcp.types as types
from mcp import Client

from tools.downstream.discovery import DiscoveryChange
from tools.downstream.entries import ServerEntry, StdioEntry
from tools.downstream.errors import MCPServerStartError
from tools.downstream.session import (
    ServerSession,
    SessionLease,
    SessionStatus,
    describe,
    fetch_tools,
)
from tools.downstream.transports import StderrTail, open_transport, stop_soon

logger = logging.getLogger(__name__)

# "legacy" (the initialize handshake) rather than "auto": measured on the reference servers the
# server/discover probe costs nothing noticeable either way (all answer within the noise of a
# ~150-480 ms start), but "auto" moves Python mcp>=2.3 servers (mcp-server-time) to the 2026-07-28
# protocol, where tools/list_changed is only sent to `subscriptions/listen` streams. With the
# handshake every server sends it unsolicited, so one code path keeps every tool list fresh.
_PROTOCOL_MODE = "legacy"
# The SDK's stdio shutdown is bounded by 0.5 s flush + 2 s grace + 2 s TERM + 2 s reap; margin on top.
_STOP_TIMEOUT_S = 10.0
_REAP_MIN_WAIT_S = 0.01


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
        self.call_timeout_s = call_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._on_close = on_close
        self._clock = clock
        self._sessions: dict[str, ServerSession] = {}
        self._retired: set[ServerSession] = set()
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

    def lease(self, entry: ServerEntry) -> SessionLease:
        """A hold on `entry`'s session for one run (nothing starts until its first use); release it after."""
        return SessionLease(self, entry)

    async def list_tools(self, entry: ServerEntry) -> list[types.Tool]:
        """The server's tools (a one-call lease; see `SessionLease.list_tools`)."""
        lease = self.lease(entry)
        try:
            return await lease.list_tools()
        finally:
            lease.release()

    async def call_tool(
        self, entry: ServerEntry, tool: str, arguments: dict[str, Any], *, timeout_s: float | None = None
    ) -> types.CallToolResult:
        """Call `tool` on the server (a one-call lease; see `SessionLease.call_tool`)."""
        lease = self.lease(entry)
        try:
            return await lease.call_tool(tool, arguments, timeout_s=timeout_s)
        finally:
            lease.release()

    async def apply(self, change: DiscoveryChange) -> None:
        """Retire the sessions of changed and removed entries; changed ones start anew on next use.

        A session no run holds closes now; a leased one keeps serving its runs and closes when the
        last of them lets go.
        """
        closing = []
        for name in change.changed | change.removed:
            session = self._sessions.get(name)
            if session is None:
                continue
            self._forget(session)
            reason = "config changed" if name in change.changed else "removed from config"
            if session.leases:
                session.retired = reason
                self._retired.add(session)
            else:
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
        sessions = [*self._sessions.values(), *self._retired]
        self._sessions.clear()
        self._retired.clear()
        # Claude gives a closing bridge about 2 s before SIGTERM: each child's group is signalled in time.
        stopping = [stop_soon(s.process) for s in sessions if s.process is not None]
        await asyncio.gather(*(self._close(s, "shutdown") for s in sessions), *list(self._closing), *stopping)

    # --- sessions -----------------------------------------------------------------------------

    async def _session_for(self, entry: ServerEntry) -> ServerSession:
        """A ready session running exactly `entry`, started if needed (concurrent callers share a start)."""
        if self._closed:
            raise MCPServerStartError(entry.name, "the bridge is shutting down")
        if entry.disabled:
            raise MCPServerStartError(
                entry.name, 'its entry is disabled ("disabled": true in the config file); set it to false to use it'
            )
        session = self._find(entry)
        if session is None:
            current = self._sessions.get(entry.name)
            if current is not None and current.usable and current.leases:
                # Another entry of this name is in use by runs (a run on an older snapshot whose own
                # session died, or the other way round): start this one beside it, unregistered.
                session = self._start(entry, register=False)
                session.retired = "an older entry of a running task"
                self._retired.add(session)
            else:
                if current is not None:
                    self._forget(current)
                    self._close_soon(current, "config changed" if current.usable else "restart")
                # No await between the lookup and this insert: concurrent first uses share this start.
                session = self._start(entry)
        await self._wait_ready(session)
        session.last_used = self._clock()
        return session

    def _find(self, entry: ServerEntry) -> ServerSession | None:
        current = self._sessions.get(entry.name)
        if current is not None and current.usable and current.entry == entry:
            return current
        return next((s for s in self._retired if s.usable and s.entry == entry), None)

    def _hold(self, session: ServerSession) -> None:
        session.leases += 1

    def _let_go(self, session: ServerSession) -> None:
        session.leases -= 1
        session.last_used = self._clock()
        if session.leases == 0 and session.retired is not None:
            self._retired.discard(session)
            self._close_soon(session, session.retired)

    def _start(self, entry: ServerEntry, *, register: bool = True) -> ServerSession:
        session = ServerSession(entry, self._clock())
        session.runner = asyncio.create_task(self._run(session), name=f"mcp-session-{entry.name}")
        if register:
            self._sessions[entry.name] = session
        if self._idle_timeout_s > 0 and self._reaper is None:
            self._reaper = asyncio.create_task(self._reap_idle(), name="mcp-session-reaper")
        return session

    async def _wait_ready(self, session: ServerSession) -> None:
        try:
            # The runner enforces start_timeout_s itself; this bound only guards against a stuck runner.
            await asyncio.wait_for(asyncio.shield(session.ready), self._start_timeout_s + _STOP_TIMEOUT_S)
        except TimeoutError:
            self._forget(session)
            self._close_soon(session, "start timed out")
            raise MCPServerStartError(
                session.entry.name, f"it did not finish starting within {self._start_timeout_s:g} s"
            ) from None

    async def _run(self, session: ServerSession) -> None:
        """The runner: owns the client's whole life, from spawn/connect to exit, in this one task."""
        entry = session.entry
        error: BaseException | None = None
        start_scope = anyio.CancelScope(deadline=anyio.current_time() + self._start_timeout_s)
        stderr = StderrTail() if isinstance(entry, StdioEntry) else None
        with contextlib.ExitStack() as closing:
            if stderr is not None:
                closing.callback(stderr.close)
            try:
                with start_scope:
                    async with AsyncExitStack() as stack:
                        client = Client(
                            open_transport(entry, stderr, session.took_process, timeout_s=self._start_timeout_s),
                            # No SDK timeout: initialize is bounded by start_timeout_s (the scope above), not
                            # by the call timeout (a slow starter, npx fetching a package, is not a slow tool),
                            # and every later request by `ServerSession.request`. So a -32001 error can only
                            # be the server's own (see tools.downstream.session).
                            read_timeout_seconds=None,
                            message_handler=session.on_message,
                            mode=_PROTOCOL_MODE,
                            cache=None,  # the pool caches the tool list itself and refreshes on list_changed
                        )
                        await stack.enter_async_context(client)
                        session.tools = await fetch_tools(client)
                        start_scope.deadline = math.inf
                        session.client = client
                        session.ready.set_result(None)
                        self._last_errors.pop(entry.name, None)  # it works again: an old failure is history
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
                self._finish(session, error, timed_out, stderr.tail() if stderr is not None else "")

    async def _serve_until_stopped(self, session: ServerSession) -> None:
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

    def _finish(self, session: ServerSession, error: BaseException | None, timed_out: bool, stderr_tail: str) -> None:
        name = session.entry.name
        exit_code = session.process.returncode if session.process is not None else None
        if not session.ready.done():
            if timed_out:
                reason, exit_code = f"it did not finish starting within {self._start_timeout_s:g} s", None
            elif session.close_reason is not None:
                reason, exit_code = f"the session was closed while starting ({session.close_reason})", None
            else:
                reason = describe(error) if error is not None else "it ended during start-up"
            hint = None
            if not isinstance(session.entry, StdioEntry):
                hint = f"Is the server running at {session.entry.url}? Check its url and headers in the config file."
            start_error = MCPServerStartError(name, reason, stderr_tail, exit_code, hint=hint)
            self._last_errors[name] = str(start_error)
            logger.warning("%s", start_error)
            session.ready.set_exception(start_error)
            outcome = "start failed"
        elif session.crashed or error is not None:
            detail = f"exit code {exit_code}" if exit_code is not None else describe(error) if error else "ended"
            self._last_errors[name] = f"crashed ({detail}); stderr tail: {stderr_tail}"
            logger.warning("MCP server %r stopped unexpectedly (%s). Stderr tail:\n%s", name, detail, stderr_tail)
            outcome = "crashed"
        else:
            outcome = session.close_reason or "closed"
            logger.info("MCP server %r session closed (%s)", name, outcome)
        if self._on_close is not None:
            self._on_close(name, outcome)

    # --- closing ------------------------------------------------------------------------------

    def _forget(self, session: ServerSession) -> None:
        if self._sessions.get(session.entry.name) is session:
            del self._sessions[session.entry.name]

    def _close_soon(self, session: ServerSession, reason: str) -> None:
        task = asyncio.create_task(self._close(session, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, session: ServerSession, reason: str) -> None:
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
                if session.leases or not session.ready.done() or not session.usable:
                    continue
                due = session.last_used + idle
                if due <= now:
                    self._forget(session)
                    self._close_soon(session, "idle")
                else:
                    next_due = min(next_due, due)
            await asyncio.sleep(max(next_due - now, _REAP_MIN_WAIT_S))
