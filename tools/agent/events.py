"""What a run is and what happens in it: the run's state and the typed events the runner emits.

The runner (`tools.agent.runner`) only loops; everything that watches a run (progress to Claude,
metrics, tracing, logging) is a `RunHooks` subclass that overrides the events it cares about, in
the shape of the OpenAI Agents SDK's `lifecycle.py`:

    RunStarted -> (ModelRequested -> ModelDelta* -> ModelTurnReceived
                   -> (ToolCallStarted -> ToolCallFinished)* -> RoundFinished)* -> RunFinished

`RunFinished` is always emitted, also for a run that was cancelled or failed, so a hook can rely
on it to let go of what it holds. A hook's own failure is logged and never stops the run.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from llm.capabilities import ApiKind
from llm.conversation import ModelTurn, ToolOutput
from llm.models import ResolvedModel
from llm.reasoning import split_reasoning
from llm.results import StreamEvent, ToolCall
from tools.agent.result import RunResult, StopReason, ToolCallRecord
from tools.downstream.toolset import BridgedTool

logger = logging.getLogger(__name__)


@dataclass
class RunContext:
    """One run's state: what it works with (fixed at start) and what it has gathered so far."""

    task: str
    model: ResolvedModel
    servers: list[str]
    toolset: dict[str, BridgedTool]
    notes: list[str] = field(default_factory=list)
    run_id: str = "-"
    started: float = field(default_factory=time.monotonic)
    api: ApiKind | None = None
    rounds: int = 0
    answer: str = ""
    calls: list[ToolCallRecord] = field(default_factory=list)
    usage: Counter[str] = field(default_factory=Counter)
    reported_models: set[str] = field(default_factory=set)
    assists: Counter[str] = field(default_factory=Counter)
    """What the bridge did for the model: calls read from text, arguments repaired, outputs cut, ..."""
    tools_offered: list[str] = field(default_factory=list)
    context: dict[str, object] = field(default_factory=dict)
    output_schema: dict[str, object] | None = None
    """The JSON Schema the final answer must match (`tools.agent.typed_answer`), if the call gave one."""
    typed_result: object = None
    approvals: list[dict[str, object]] | None = None
    """Calls that needed the user's approval and what came of each (`tools.agent.approval`); None: the
    approval policy is off."""

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def take(self, turn: ModelTurn) -> None:
        """Keep what a model turn tells: its answer (reasoning left out), the model named, token usage."""
        answer, _ = split_reasoning(turn.text or "")
        if answer:
            self.answer = answer
        if turn.model:
            self.reported_models.add(turn.model)
        if turn.usage:
            for key in ("input_tokens", "output_tokens", "total_tokens"):
                value = getattr(turn.usage, key, None)
                if value:
                    self.usage[key] += value

    def result(self, stop: StopReason, error: str | None = None) -> RunResult:
        return RunResult(
            answer=self.answer,
            model=self.model.id,
            stop_reason=stop,
            rounds=self.rounds,
            tool_calls=list(self.calls),
            duration_s=self.elapsed_s,
            api=self.api or "chat",
            servers=list(self.servers),
            usage=dict(self.usage),
            notes=list(self.notes),
            error=error,
            assists={key: count for key, count in sorted(self.assists.items()) if count},
            tools_offered=list(self.tools_offered),
            context=dict(self.context),
            typed=self.output_schema is not None,
            result=self.typed_result,
            approvals=None if self.approvals is None else list(self.approvals),
        )


@dataclass(frozen=True)
class RunStarted:
    run: RunContext


@dataclass(frozen=True)
class ModelRequested:
    """The runner is about to wait for the model (the first turn, or tool results sent back)."""

    run: RunContext


@dataclass(frozen=True)
class ModelDelta:
    """A piece of the model's answer arrived (streamed requests only)."""

    run: RunContext
    event: StreamEvent


@dataclass(frozen=True)
class ModelTurnReceived:
    run: RunContext
    turn: ModelTurn


@dataclass(frozen=True)
class ToolCallStarted:
    run: RunContext
    call: ToolCall
    tool: BridgedTool


@dataclass(frozen=True)
class ToolCallFinished:
    run: RunContext
    record: ToolCallRecord
    tool: BridgedTool | None


@dataclass(frozen=True)
class RoundFinished:
    """Every call of a round ran; `outputs` go back to the model next."""

    run: RunContext
    outputs: Sequence[ToolOutput]


@dataclass(frozen=True)
class RunFinished:
    run: RunContext
    result: RunResult


class RunHooks:
    """Watches runs; override what you need (every method does nothing by default)."""

    async def on_run_started(self, event: RunStarted) -> None: ...

    async def on_model_requested(self, event: ModelRequested) -> None: ...

    async def on_model_delta(self, event: ModelDelta) -> None: ...

    async def on_model_turn(self, event: ModelTurnReceived) -> None: ...

    async def on_tool_call_started(self, event: ToolCallStarted) -> None: ...

    async def on_tool_call_finished(self, event: ToolCallFinished) -> None: ...

    async def on_round_finished(self, event: RoundFinished) -> None: ...

    async def on_run_finished(self, event: RunFinished) -> None: ...


_HANDLERS: dict[type, str] = {
    RunStarted: "on_run_started",
    ModelRequested: "on_model_requested",
    ModelDelta: "on_model_delta",
    ModelTurnReceived: "on_model_turn",
    ToolCallStarted: "on_tool_call_started",
    ToolCallFinished: "on_tool_call_finished",
    RoundFinished: "on_round_finished",
    RunFinished: "on_run_finished",
}

Event = (
    RunStarted | ModelRequested | ModelDelta | ModelTurnReceived | ToolCallStarted | ToolCallFinished
    | RoundFinished | RunFinished
)


class HookSet:
    """Several hooks as one: `emit(event)` calls each hook's handler for it, in order."""

    def __init__(self, hooks: Sequence[RunHooks]) -> None:
        self.hooks = list(hooks)

    async def emit(self, event: Event) -> None:
        name = _HANDLERS[type(event)]
        for hook in self.hooks:
            try:
                await getattr(hook, name)(event)
            except Exception:
                # Watching a run must never break it.
                logger.exception("%s.%s failed", type(hook).__name__, name)
