"""The hooks every run has: progress to Claude, metrics for `bridge_stats`, tracing spans, the log.

Each is a `RunHooks` that sees the runner's events and nothing else; each can be tested alone
and left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from tools.agent.events import (
    ModelDelta,
    ModelRequested,
    ModelTurnReceived,
    RoundFinished,
    RunFinished,
    RunHooks,
    RunStarted,
    ToolCallFinished,
    ToolCallStarted,
)
from tools.progress import ProgressReporter
from utils.metrics import Metrics, tracer

if TYPE_CHECKING:
    from opentelemetry.trace import Span

logger = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
"""How often a silent model is reported as still working (Claude Code times out a silent call)."""


class ProgressHook(RunHooks):
    """Progress notifications: start, each round, its first tool call and the end always; generation and
    the other tool calls throttled (at most one a second); a heartbeat while the model or a tool is silent."""

    def __init__(self, reporter: ProgressReporter, *, heartbeat_s: float = HEARTBEAT_S) -> None:
        self._reporter = reporter
        self._heartbeat_s = heartbeat_s
        # The beat is a timer, not a task: it is started and stopped twice a round, and a timer costs
        # nothing to cancel. Only when it fires does a report run (as a task, awaited on stop).
        self._beat: asyncio.TimerHandle | None = None
        self._beat_report: asyncio.Task[None] | None = None
        self._calls_reported_in: int | None = None

    async def on_run_started(self, event: RunStarted) -> None:
        run = event.run
        offered = [name for name in run.tools_offered if name in run.toolset]
        count = f"{len(offered)} of {len(run.toolset)}" if len(offered) < len(run.toolset) else f"{len(run.toolset)}"
        await self._reporter.report(
            f"started: {count} tools from {', '.join(run.servers) or 'no server'}; model {run.model.id}",
            force=True,
        )

    # `run.rounds` counts the model's turns received: while one is awaited, its round is the next.

    async def on_model_requested(self, event: ModelRequested) -> None:
        run = event.run
        await self._start_beat(lambda: f"round {run.rounds + 1}: waiting for {run.model.id} ({run.elapsed_s:.0f} s)")

    async def on_model_delta(self, event: ModelDelta) -> None:
        run = event.run
        await self._reporter.report(
            f"round {run.rounds + 1}: {run.model.id} generating ({event.event.chars_so_far} chars, "
            f"{run.elapsed_s:.0f} s)"
        )

    async def on_model_turn(self, event: ModelTurnReceived) -> None:
        await self._stop_beat()

    async def on_tool_call_started(self, event: ToolCallStarted) -> None:
        # The first call of a round always shows; the others are throttled like generation (a model
        # asking for 300 calls in one turn sent 303 notifications in 1.3 s).
        run = event.run
        first_of_round = run.rounds != self._calls_reported_in
        self._calls_reported_in = run.rounds
        name = event.tool.llm_name
        await self._reporter.report(f"round {run.rounds}: calling {name} ({run.elapsed_s:.0f} s)", force=first_of_round)
        await self._start_beat(lambda: f"round {run.rounds}: waiting for {name} ({run.elapsed_s:.0f} s)")

    async def on_tool_call_finished(self, event: ToolCallFinished) -> None:
        await self._stop_beat()

    async def on_round_finished(self, event: RoundFinished) -> None:
        run = event.run
        await self._reporter.report(
            f"round {run.rounds}: sending {len(event.outputs)} tool result(s) to {run.model.id} "
            f"({run.elapsed_s:.0f} s)",
            force=True,
        )

    async def on_run_finished(self, event: RunFinished) -> None:
        await self._stop_beat()
        if event.result.stop_reason != "cancelled":
            await self._reporter.report(
                f"finished: {event.result.stop_reason} after {event.result.rounds} round(s)", force=True
            )

    async def _start_beat(self, message: Callable[[], str]) -> None:
        await self._stop_beat()
        self._beat = asyncio.get_running_loop().call_later(self._heartbeat_s, self._fire, message)

    def _fire(self, message: Callable[[], str]) -> None:
        self._beat = asyncio.get_running_loop().call_later(self._heartbeat_s, self._fire, message)
        if self._beat_report is None or self._beat_report.done():
            self._beat_report = asyncio.create_task(self._reporter.report(message(), force=True))

    async def _stop_beat(self) -> None:
        beat, self._beat = self._beat, None
        if beat is not None:
            beat.cancel()
        report, self._beat_report = self._beat_report, None
        if report is not None and not report.done():
            # A beat being sent when its wait ended: it must not arrive after what comes next.
            report.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await report


class MetricsHook(RunHooks):
    """Counters and latencies of runs and tool calls, for `bridge_stats`."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def on_tool_call_finished(self, event: ToolCallFinished) -> None:
        record = event.record
        if record.server is None:
            return  # not a real call (unknown tool): nothing reached a server
        self._metrics.inc("tool_calls", server=record.server, ok=str(record.ok).lower())
        self._metrics.observe("tool_call_ms", record.ms, server=record.server)

    async def on_run_finished(self, event: RunFinished) -> None:
        result = event.result
        self._metrics.inc("autonomous_runs", stop_reason=result.stop_reason)
        for kind, count in result.assists.items():
            self._metrics.inc("agent_assists", count, kind=kind)
        self._metrics.observe("autonomous_rounds", float(result.rounds))
        self._metrics.observe("autonomous_run_ms", result.duration_s * 1000, model=result.model)


class TracingHook(RunHooks):
    """An `autonomous_run` span around the run, a `tool_call` span around each call (children of it)."""

    def __init__(self) -> None:
        self._run_span: Span | None = None
        self._run_token: object | None = None
        self._tool_span: Span | None = None

    async def on_run_started(self, event: RunStarted) -> None:
        from opentelemetry import context, trace

        self._run_span = tracer().start_span("autonomous_run")
        self._run_span.set_attribute("llm.model", event.run.model.id)
        # Current for the rest of the run's task, so tool and LLM spans nest under it.
        self._run_token = context.attach(trace.set_span_in_context(self._run_span))

    async def on_tool_call_started(self, event: ToolCallStarted) -> None:
        self._tool_span = tracer().start_span("tool_call")
        self._tool_span.set_attribute("mcp.server", event.tool.server)
        self._tool_span.set_attribute("mcp.tool", event.tool.tool_name)

    async def on_tool_call_finished(self, event: ToolCallFinished) -> None:
        if self._tool_span is not None:
            self._tool_span.set_attribute("ok", event.record.ok)
            self._tool_span.end()
            self._tool_span = None

    async def on_run_finished(self, event: RunFinished) -> None:
        if self._tool_span is not None:  # cancelled mid-call
            self._tool_span.end()
        if self._run_span is not None:
            self._run_span.set_attribute("stop_reason", event.result.stop_reason)
            self._run_span.set_attribute("rounds", event.result.rounds)
            self._run_span.end()
        if self._run_token is not None:
            from opentelemetry import context

            context.detach(self._run_token)  # type: ignore[arg-type]


class LoggingHook(RunHooks):
    """The run's story in the bridge's log (every line carries the run id)."""

    async def on_run_started(self, event: RunStarted) -> None:
        run = event.run
        logger.info("autonomous run: model %s, servers %s, %d tools", run.model.id, run.servers, len(run.toolset))

    async def on_tool_call_finished(self, event: ToolCallFinished) -> None:
        record = event.record
        logger.info(
            "round %d: %s on %s %s in %.0f ms",
            event.run.rounds,
            event.tool.tool_name if event.tool else record.name,
            record.server or "(no server)",
            "ok" if record.ok else "failed",
            record.ms,
        )

    async def on_run_finished(self, event: RunFinished) -> None:
        result = event.result
        logger.info(
            "autonomous run finished: %s, %d rounds, %d tool calls, %.1f s",
            result.stop_reason,
            result.rounds,
            len(result.tool_calls),
            result.duration_s,
        )
