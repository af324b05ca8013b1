"""Progress notifications: throttled while streaming, and a heartbeat while a model is silent."""

from __future__ import annotations

import anyio

from tools.progress import ProgressReporter


class RecordingContext:
    """Stands in for the MCP request context: records each progress notification."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.arrived = anyio.Event()

    async def report_progress(self, progress: float, total: float | None = None, message: str | None = None) -> None:
        self.messages.append(message or "")
        self.arrived.set()


async def test_reports_closer_than_the_interval_are_dropped_unless_forced() -> None:
    now = [100.0]
    ctx = RecordingContext()
    reporter = ProgressReporter(ctx, min_interval_s=1.0, clock=lambda: now[0])  # type: ignore[arg-type]
    await reporter.report("a")
    await reporter.report("b")
    await reporter.report("c", force=True)
    now[0] += 1.5
    await reporter.report("d")
    assert ctx.messages == ["a", "c", "d"]


async def test_the_heartbeat_reports_while_the_body_waits() -> None:
    ctx = RecordingContext()
    reporter = ProgressReporter(ctx)  # type: ignore[arg-type]
    with anyio.fail_after(5):
        async with reporter.heartbeat(lambda: "still waiting", every_s=0.01):
            await ctx.arrived.wait()
    assert ctx.messages[0] == "still waiting"


async def test_without_a_client_context_nothing_is_sent() -> None:
    reporter = ProgressReporter(None)
    async with reporter.heartbeat(lambda: "x", every_s=0.01):
        await reporter.report("y", force=True)
    assert reporter.sent == 0


async def test_an_error_in_the_body_comes_out_as_itself_not_wrapped() -> None:
    reporter = ProgressReporter(RecordingContext())  # type: ignore[arg-type]
    try:
        async with reporter.heartbeat(lambda: "x", every_s=10):
            raise KeyError("the body's own error")
    except KeyError as exc:
        assert exc.args == ("the body's own error",)
    else:
        raise AssertionError("the error was swallowed")


async def test_the_heartbeat_while_the_model_is_awaited_names_the_round_in_progress() -> None:
    """`rounds` counts the turns received: waiting for the first answer is round 1, not round 0."""
    import asyncio

    from llm.models import ResolvedModel
    from tools.agent.events import ModelRequested, RunContext
    from tools.agent.hooks import ProgressHook

    ctx = RecordingContext()
    run = RunContext("t", ResolvedModel("m", "requested", None, asyncio.Semaphore(1)), [], {})
    hook = ProgressHook(ProgressReporter(ctx), heartbeat_s=0.01)  # type: ignore[arg-type]
    with anyio.fail_after(5):
        await hook.on_model_requested(ModelRequested(run))
        await ctx.arrived.wait()
        first = ctx.messages[0]
        run.rounds = 1
        ctx.arrived = anyio.Event()
        ctx.messages.clear()
        await hook.on_model_requested(ModelRequested(run))
        await ctx.arrived.wait()
        await hook.on_model_turn(None)  # type: ignore[arg-type]
    assert first.startswith("round 1: waiting for m (") and ctx.messages[0].startswith("round 2: waiting for m (")


async def test_the_heartbeat_repeats_while_the_model_is_silent_and_stops_when_it_answers() -> None:
    import asyncio

    from llm.models import ResolvedModel
    from tools.agent.events import ModelRequested, RunContext
    from tools.agent.hooks import ProgressHook

    ctx = RecordingContext()
    run = RunContext("t", ResolvedModel("m", "requested", None, asyncio.Semaphore(1)), [], {})
    hook = ProgressHook(ProgressReporter(ctx), heartbeat_s=0.01)  # type: ignore[arg-type]
    await hook.on_model_requested(ModelRequested(run))
    await asyncio.sleep(0.1)
    await hook.on_model_turn(None)  # type: ignore[arg-type]
    beats = len(ctx.messages)
    await asyncio.sleep(0.1)

    assert beats >= 3, ctx.messages  # every 10 ms for 100 ms, allowing for a slow machine
    assert len(ctx.messages) == beats, "a beat came after the model answered"
