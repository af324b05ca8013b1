"""The autonomous loop, and nothing else: ask the model, run the calls it asked for, decide to go on.

    Runner.run(run) -> RunResult
      open the conversation (`/v1/responses` unless the server lacks it, else chat completions;
        tool schemas the server refuses are probed and left out; if it refuses them all, or the
        model was not trained for tool use, the run goes on *prompted*: tools described in the
        instructions, calls read from the text)
      loop: model turn -> calls written as text are read back as calls (`text_calls`)
                       -> no tool calls? done
                       -> max_rounds reached? stop (the calls not run are named in the notes)
                       -> each call: the loop guard, then the executor (names and arguments mended)
                       -> the outputs, cut to the room the context has left, go back to the model
                          (history compacted first if needed; an overflow is survived once)
      with an output_schema: the final answer asked for once more, typed (`typed_answer`)
      bounded by AUTONOMOUS_TIMEOUT_S; an LM Studio error ends the run with what was said so far

Everything that watches the run is a hook (`tools.agent.events`); running a call is the executor's
business (`tool_execution`), fitting the context the keeper's (`context`), which tools are offered
the offer's (`tool_selection`).

Stop reasons: `completed`, `max_rounds`, `timeout`, `loop_detected`, `cancelled` (recorded, then
the cancellation propagates), `error`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import anyio

from llm.capabilities import ServerCapabilities
from llm.conversation import (
    ChatConversation,
    Conversation,
    GenerationOptions,
    ModelTurn,
    ResponsesConversation,
    ToolOutput,
)
from llm.exceptions import EndpointNotSupportedError, LLMError
from llm.llm_client import LLMClient
from llm.models import ResolvedModel
from llm.results import StreamEvent
from tools.agent.context import ContextKeeper
from tools.agent.events import (
    HookSet,
    ModelDelta,
    ModelRequested,
    ModelTurnReceived,
    RoundFinished,
    RunContext,
    RunFinished,
    RunStarted,
)
from tools.agent.loop_guard import LoopGuard
from tools.agent.result import RunResult, StopReason
from tools.agent.schema_probe import refusal_about_tools, refused_tools
from tools.agent.text_calls import recover_tool_calls
from tools.agent.tool_execution import ToolExecutor
from tools.agent.tool_selection import ToolOffer
from tools.agent.typed_answer import TypedAnswerStep

logger = logging.getLogger(__name__)

INSTRUCTIONS = """\
You are an autonomous agent working on a task for a user. You have tools; call them to gather \
facts or act, one step at a time, and read their results before deciding the next step. When \
the task is done, answer with the final result in plain text and call no more tools. If a tool \
returns an error, fix your call or try another way. Do not invent tool results."""


@dataclass(frozen=True)
class RunLimits:
    """The bounds of one run."""

    max_rounds: int
    timeout_s: float
    repeat_limit: int


class Runner:
    """Runs one autonomous conversation to its end."""

    def __init__(
        self,
        *,
        llm: LLMClient,
        capabilities: ServerCapabilities,
        executor: ToolExecutor,
        hooks: HookSet,
        limits: RunLimits,
        offer: ToolOffer,
        context: ContextKeeper,
        check_answer: Callable[[ResolvedModel, str | None], str | None] = lambda model, answered: None,
        typed: TypedAnswerStep | None = None,
    ) -> None:
        self._llm = llm
        self._typed = typed
        self._check_answer = check_answer
        self._capabilities = capabilities
        self._executor = executor
        self._hooks = hooks
        self._limits = limits
        self._offer = offer
        self._context = context
        self._conversation: Conversation | None = None
        self._prompted = False

    async def run(self, run: RunContext) -> RunResult:
        """Work the task out; returns why it stopped. Re-raises cancellation after recording it."""
        await self._hooks.emit(RunStarted(run))
        stop: StopReason = "completed"
        error: str | None = None
        try:
            with anyio.move_on_after(self._limits.timeout_s) as deadline:
                stop = await self._loop(run)
                if stop == "completed" and self._typed is not None and self._conversation is not None:
                    await self._hooks.emit(ModelRequested(run))
                    await self._typed.answer(run, self._conversation)
            if deadline.cancelled_caught:
                stop = "timeout"
        except LLMError as exc:
            stop, error = "error", str(exc)
            logger.warning("autonomous run stopped by an LM Studio error: %s", exc)
        except asyncio.CancelledError:
            logger.info("autonomous run cancelled by the caller after %d rounds", run.rounds)
            with anyio.CancelScope(shield=True):
                await self._hooks.emit(RunFinished(run, run.result("cancelled")))
            raise
        result = run.result(stop, error)
        await self._hooks.emit(RunFinished(run, result))
        return result

    async def _loop(self, run: RunContext) -> StopReason:
        turn = await self._ask(run, lambda: self._open(run))
        guard = LoopGuard(self._limits.repeat_limit)
        while turn.tool_calls:
            if run.rounds >= self._limits.max_rounds:
                run.notes.append("max_rounds reached; not run: " + _calls_text(turn))
                return "max_rounds"
            as_text = turn.calls_from_text or self._prompted
            outputs: list[ToolOutput] = []
            for index, call in enumerate(turn.tool_calls):
                if guard.held_back(call):
                    logger.warning("loop detected: %s called again, and it got the same result", call.name)
                    run.notes.append(f"loop detected; not run: {call.name}({call.arguments[:200]})")
                    return "loop_detected"
                done = await self._executor.execute(run, call, index, as_text=as_text)
                hint = guard.record(call, done.raw, ok=done.ok)
                run.assists["loop_hints"] += bool(hint)
                outputs.append(replace(done.output, output=done.output.output + hint) if hint else done.output)
            conversation = self._conversation
            assert conversation is not None
            outputs = self._context.shape_round(conversation, outputs)
            run.rounds += 1
            await self._hooks.emit(RoundFinished(run, outputs))
            conversation.set_tools(self._offer.specs(), self._offer.instructions(INSTRUCTIONS, prompted=self._prompted))
            turn = await self._ask(
                run,
                lambda: self._context.send(conversation, lambda: conversation.send_tool_outputs(outputs), outputs),
            )
        if turn.cut:
            # Claude must not take a cut answer for the whole one.
            run.notes.append(
                f"the model's answer stopped at max_tokens ({self._context.budget.output_tokens} tokens a round), "
                "not where the model ended it: it may be incomplete. Ask for a shorter answer, or pass a larger "
                "max_tokens"
            )
        return "completed"

    async def _ask(self, run: RunContext, request: Callable[[], Awaitable[ModelTurn]]) -> ModelTurn:
        await self._hooks.emit(ModelRequested(run))
        turn = await request()
        # Who answered, before its words are kept: another model than the one named ends the run
        # (ModelMismatchError), unless MODEL_MISMATCH=note.
        if (note := self._check_answer(run.model, turn.model)) and note not in run.notes:
            run.notes.append(note)
        if not turn.tool_calls and (found := recover_tool_calls(turn.text, run.toolset, round_index=run.rounds)):
            logger.info("read %d tool call(s) written as text (%s format)", len(found.calls), found.format)
            run.assists["tool_calls_from_text"] += len(found.calls)
            turn.tool_calls, turn.text, turn.calls_from_text = found.calls, found.remaining_text, True
        run.take(turn)
        await self._hooks.emit(ModelTurnReceived(run, turn))
        return turn

    async def _open(self, run: RunContext) -> ModelTurn:
        """The first turn; without the tools the server refuses, or prompted if it refuses them all."""
        self._prompted = run.model.info is not None and run.model.info.trained_for_tool_use is False
        try:
            return await self._start(run)
        except LLMError as exc:
            if not refusal_about_tools(exc) or not run.toolset or self._prompted:
                raise
            tools = list(run.toolset.values())
            rejected = await refused_tools(self._llm, run.model, self._capabilities, tools)
            if not rejected:
                raise
            if len(rejected) == len(tools):
                logger.warning("the model server refuses every tool schema: describing the tools in the prompt")
                run.notes.append(f"the model server refused the tools field ({str(exc)[:200]}): tools were "
                                 "described in the instructions and calls read from the text")
                self._prompted = True
            else:
                for name, why in rejected.items():
                    del run.toolset[name]
                    run.notes.append(f"{name} left out: the model server refused its schema ({why[:200]})")
                logger.warning("the model server refused %d tool schema(s): %s", len(rejected), ", ".join(rejected))
                self._offer.forget(rejected)
            return await self._start(run)

    async def _start(self, run: RunContext) -> ModelTurn:
        """Start the conversation on /v1/responses when the server has it, else on chat completions."""
        run.assists["prompted_tool_calling"] = int(self._prompted)
        run.tools_offered = self._offer.names()

        async def on_event(event: StreamEvent) -> None:
            await self._hooks.emit(ModelDelta(run, event))

        options = GenerationOptions(
            model=run.model,
            instructions=self._offer.instructions(INSTRUCTIONS, prompted=self._prompted),
            capabilities=self._capabilities,
            max_tokens=self._context.budget.output_tokens,
            on_event=on_event,
            prompted=self._prompted,
        )
        specs = self._offer.specs()
        if self._capabilities.conversation_api == "responses":
            run.api = "responses"
            self._conversation = ResponsesConversation(self._llm, specs, options)
            try:
                turn = await self._conversation.start(run.task)
                self._capabilities.responses_api_works()
                run.rounds = 1
                return turn
            except EndpointNotSupportedError:
                if not self._capabilities.responses_api_missing():
                    raise
        run.api = "chat"
        self._conversation = ChatConversation(self._llm, specs, options)
        turn = await self._conversation.start(run.task)
        run.rounds = 1
        return turn


def _calls_text(turn: ModelTurn) -> str:
    return ", ".join(f"{c.name}({c.arguments[:200]})" for c in turn.tool_calls)

