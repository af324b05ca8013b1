"""Autonomous runs in the background: started by one call, looked at and collected by later ones.

Claude Desktop stops an MCP tool call after about 60 s whatever the server sends; a small model on a
CPU needs minutes. `autonomous_start` hands the run to `BackgroundRuns` and returns its id at once;
`autonomous_status`, `autonomous_result` (waits up to `wait_s`, below the client's limit) and
`autonomous_cancel` find it by that id. (Claude Code restarts its timer on every progress
notification, so there the blocking tools work as well.)

Bounds: at most AUTONOMOUS_MAX_BACKGROUND_RUNS run at once (another start is refused, naming them);
a finished run's result is kept AUTONOMOUS_RESULT_TTL_S, and at most `KEEP_FINISHED` of them. The
registry is an async context manager owned by the server's lifespan (`tools.app`): on exit every run
still going is cancelled and awaited (bounded), before the MCP sessions and the HTTP client close.

A background run reports no progress to a client (the call that started it is over) and cannot ask
the user anything (no elicitation): its status shows the newest progress message, and calls that
need approval are not run (see `tools.agent.approval`).

    BackgroundRunError(message)
    ├── RunNotFoundError      no run with that id (never, or kept no longer)   .run_id .known
    └── TooManyRunsError      the bound on running runs is reached              .limit .running
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from llm.exceptions import LLMError
from tools.agent.events import RunContext, RunHooks, RunStarted
from tools.agent.result import RunResult
from tools.downstream.errors import MCPBridgeError
from tools.progress import ProgressReporter

logger = logging.getLogger(__name__)

RunState = Literal["running", "finished", "failed", "cancelled"]
KEEP_FINISHED = 64
"""Most finished runs kept, whatever their age (the oldest go first)."""
SHUTDOWN_WAIT_S = 10.0
"""How long the lifespan waits for cancelled runs to wind down (release leases, record the stop)."""

StartRun = Callable[[ProgressReporter, RunHooks], Awaitable[RunResult]]
"""Runs one autonomous task with the given progress reporter and an extra hook; returns its result."""


class BackgroundRunError(Exception):
    """Base of the errors of background runs; the message says what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RunNotFoundError(BackgroundRunError):
    def __init__(self, run_id: str, known: list[str], keep_s: float) -> None:
        self.run_id = run_id
        self.known = known
        listed = ", ".join(known) if known else "none"
        super().__init__(
            f"No background run '{run_id}'. Known runs: {listed}. A finished run is kept "
            f"{keep_s:g} s (AUTONOMOUS_RESULT_TTL_S), and none survives a restart of the bridge: start it "
            "again with autonomous_start."
        )


class TooManyRunsError(BackgroundRunError):
    def __init__(self, limit: int, running: list[str]) -> None:
        self.limit = limit
        self.running = running
        super().__init__(
            f"{len(running)} background runs are already running, the most allowed "
            f"(AUTONOMOUS_MAX_BACKGROUND_RUNS={limit}): {', '.join(running)}. Wait for one with "
            "autonomous_result, or stop one with autonomous_cancel, then start again."
        )


class _Watch(RunHooks):
    """Keeps the run's context, so the status can show its rounds and tool calls while it goes."""

    def __init__(self) -> None:
        self.run: RunContext | None = None

    async def on_run_started(self, event: RunStarted) -> None:
        self.run = event.run


@dataclass
class BackgroundRun:
    """One run started in the background, and what is known of it so far."""

    id: str
    model: str | None
    servers: list[str] | None
    started: float
    progress: ProgressReporter = field(default_factory=lambda: ProgressReporter(None))
    watch: _Watch = field(default_factory=_Watch)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    finished_at: float | None = None
    result: RunResult | None = None
    failure: BaseException | None = None  # the run could not start (unknown model or server, ...)
    cancelled: bool = False

    @property
    def state(self) -> RunState:
        if not self.done.is_set():
            return "running"
        if self.cancelled or (self.result is not None and self.result.stop_reason == "cancelled"):
            return "cancelled"
        if self.failure is not None or (self.result is not None and self.result.stop_reason == "error"):
            return "failed"
        return "finished"

    def status(self, now: float) -> dict[str, object]:
        """What `autonomous_status` shows: the same keys whatever the state."""
        run = self.watch.run
        result = self.result
        end = self.finished_at if self.finished_at is not None else now
        error = str(self.failure) if self.failure is not None else result.error if result is not None else None
        return {
            "run_id": self.id,
            "state": self.state,
            "model": run.model.id if run is not None else self.model,
            "servers": list(run.servers) if run is not None else self.servers,
            "rounds": run.rounds if run is not None else 0,
            "tool_calls": len(run.calls) if run is not None else 0,
            "last_progress": self.progress.last_message,
            "elapsed_s": round(end - self.started, 1),
            "stop_reason": result.stop_reason if result is not None else None,
            "error": error,
        }


class BackgroundRuns:
    """The background runs of one bridge: bounded, kept for a while, all cancelled on exit."""

    def __init__(
        self, *, max_running: int, keep_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_running = max_running
        self.keep_s = keep_s
        self._clock = clock
        self._runs: dict[str, BackgroundRun] = {}

    async def __aenter__(self) -> BackgroundRuns:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.cancel_all()

    def now(self) -> float:
        return self._clock()

    def start(self, run: StartRun, *, model: str | None, servers: list[str] | None) -> BackgroundRun:
        """Start `run` in the background and return its handle at once.

        Raises:
            TooManyRunsError: AUTONOMOUS_MAX_BACKGROUND_RUNS runs are already running.
        """
        self._forget_old()
        running = [r.id for r in self._runs.values() if r.state == "running"]
        if len(running) >= self.max_running:
            raise TooManyRunsError(self.max_running, running)
        handle = BackgroundRun(id=f"run_{secrets.token_hex(4)}", model=model, servers=servers, started=self.now())
        handle.task = asyncio.create_task(self._drive(handle, run), name=f"background {handle.id}")
        # A callback, not a `finally`: a task cancelled before its first step never runs its body.
        handle.task.add_done_callback(lambda task: self._ended(handle, task))
        self._runs[handle.id] = handle
        logger.info("background run %s started (%d running)", handle.id, len(running) + 1)
        return handle

    async def _drive(self, handle: BackgroundRun, run: StartRun) -> None:
        try:
            handle.result = await run(handle.progress, handle.watch)
        except Exception as exc:
            # An expected failure (unknown model or server, LM Studio down) or a bug: either way the
            # status says what happened; a bug's traceback goes to the log.
            handle.failure = exc
            logger.info("background run %s failed: %s", handle.id, exc, exc_info=not _expected(exc))

    def _ended(self, handle: BackgroundRun, task: asyncio.Task[None]) -> None:
        handle.cancelled = task.cancelled()
        handle.finished_at = self.now()
        handle.done.set()
        logger.info("background run %s ended: %s", handle.id, handle.state)

    def get(self, run_id: str) -> BackgroundRun:
        """The run with this id.

        Raises:
            RunNotFoundError: never started here, or finished longer ago than AUTONOMOUS_RESULT_TTL_S.
        """
        self._forget_old()
        handle = self._runs.get(run_id.strip())
        if handle is None:
            raise RunNotFoundError(run_id, list(self._runs), self.keep_s)
        return handle

    async def wait(self, run_id: str, timeout_s: float) -> BackgroundRun:
        """The run, once it has ended or `timeout_s` has passed (whichever is first)."""
        handle = self.get(run_id)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(handle.done.wait(), timeout_s)
        return handle

    async def cancel(self, run_id: str, *, wait_s: float = SHUTDOWN_WAIT_S) -> BackgroundRun:
        """Cancel the run if it is still running, and wait (bounded) until it has wound down."""
        handle = self.get(run_id)
        if handle.task is not None and not handle.done.is_set():
            handle.task.cancel()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(handle.done.wait(), wait_s)
        return handle

    async def cancel_all(self) -> None:
        """Cancel every run still going and wait for them (bounded): the bridge is shutting down."""
        tasks = [h.task for h in self._runs.values() if h.task is not None and not h.task.done()]
        if not tasks:
            return
        logger.info("cancelling %d background run(s)", len(tasks))
        for task in tasks:
            task.cancel()
        _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_WAIT_S)
        if pending:
            logger.warning("%d background run(s) did not stop within %.0f s", len(pending), SHUTDOWN_WAIT_S)

    def _forget_old(self) -> None:
        now = self.now()
        finished = sorted(
            (h for h in self._runs.values() if h.finished_at is not None), key=lambda h: h.finished_at or 0.0
        )
        too_many = max(0, len(finished) - KEEP_FINISHED)
        for index, handle in enumerate(finished):
            if index < too_many or now - (handle.finished_at or now) > self.keep_s:
                del self._runs[handle.id]


def _expected(exc: BaseException) -> bool:
    return isinstance(exc, (LLMError, MCPBridgeError))
