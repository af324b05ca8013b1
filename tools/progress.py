"""Progress notifications to Claude, throttled.

Claude Code shows the message of each `notifications/progress` and resets the call's
timeout on each one, so a long run should report often enough to stay alive, but a
streaming generation must not flood the client with one notification per token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from mcp.server.mcpserver import Context

logger = logging.getLogger(__name__)


class ProgressReporter:
    """Sends `ctx.report_progress`, at most once per `min_interval_s` unless forced."""

    def __init__(
        self,
        ctx: Context | None,
        *,
        min_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ctx = ctx
        self._min_interval_s = min_interval_s
        self._clock = clock
        self._last_sent = float("-inf")
        self._step = 0.0
        self.sent = 0
        self.last_message: str | None = None
        """The newest message, sent or not (a background run's status shows it)."""

    async def report(self, message: str, *, force: bool = False) -> None:
        """Report `message` as the next step (throttled unless `force`)."""
        self.last_message = message
        if self._ctx is None:
            return
        now = self._clock()
        if not force and now - self._last_sent < self._min_interval_s:
            return
        self._last_sent = now
        self._step += 1
        try:
            await self._ctx.report_progress(self._step, None, message)
            self.sent += 1
        except Exception:
            # A client that went away must not fail the work it asked for; the run's own
            # cancellation (if any) arrives separately as CancelledError.
            logger.debug("progress notification not delivered", exc_info=True)

    @asynccontextmanager
    async def heartbeat(self, message: Callable[[], str], every_s: float = 5.0) -> AsyncIterator[None]:
        """While the body runs, report `message()` every `every_s` seconds.

        A generation that is not streamed (or streams slowly) would otherwise leave Claude
        with no sign of life, and Claude Code times a silent call out. The beat is a plain
        task, not a task group: a task group would wrap the body's own errors in an
        ExceptionGroup and hide them from the caller's `except` clauses. Without a client to tell (a
        background run) the beat still keeps `last_message` current, for `autonomous_status`.
        """
        async def beat() -> None:
            while True:
                await asyncio.sleep(every_s)
                await self.report(message(), force=True)

        task = asyncio.create_task(beat())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
