"""Keeping a run inside the model's context: shaping outputs, compacting history, surviving an overflow.

The runner hands `ContextKeeper` each round's outputs before they go back and each request to the
model:

- `shape_round(outputs)`: each output cut to its share of the room the context has left (head and
  tail kept, the cut said, see `budget.shape`);
- `send(conversation, send)`: if the history no longer fits, the oldest tool outputs are dropped
  first (`conversation.compact`); if the server still reports an overflow (a 400, or LM Studio's
  empty 200 stream), the history is compacted harder and the request sent again, once; each turn's
  reported `input_tokens` calibrates the estimate.

Everything it does is counted in the run's `assists`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace

from llm.conversation import Conversation, ModelTurn, ToolOutput
from llm.exceptions import ContextLengthExceededError
from tools.agent.budget import ContextBudget, shape
from tools.agent.events import RunContext

logger = logging.getLogger(__name__)

_HARD_COMPACT = 0.6  # after an overflow, aim well below the estimate that failed


class ContextKeeper:
    """One run's context discipline (see the module docstring)."""

    def __init__(self, run: RunContext, budget: ContextBudget) -> None:
        self._run = run
        self.budget = budget

    def shape_round(self, conversation: Conversation, outputs: list[ToolOutput]) -> list[ToolOutput]:
        """The round's outputs, each cut to its share of the room left."""
        room = self.budget.room_chars(conversation.size_chars())
        pending = sorted(outputs, key=lambda o: len(o.output))
        shares: dict[int, int] = {}
        for position, output in enumerate(pending):
            # Small outputs take what they need; the rest share what is left equally.
            share = room // (len(pending) - position)
            shares[id(output)] = share
            room -= min(len(output.output), share)
        shaped = []
        for output in outputs:
            tool = self._run.toolset.get(output.name)
            text, cut = shape(
                output.output,
                shares[id(output)],
                tool=output.name,
                parameters=tool.parameters if tool is not None else {},
            )
            if cut:
                self._run.assists["outputs_shaped"] += 1
            shaped.append(replace(output, output=text))
        return shaped

    async def send(
        self, conversation: Conversation, request: Callable[[], Awaitable[ModelTurn]], pending: list[ToolOutput]
    ) -> ModelTurn:
        """`request()` (which sends `pending`), with the history compacted first if it would not fit, and
        once more, harder, on an overflow; the outputs being sent are never the ones dropped."""
        pending_chars = sum(len(o.output) for o in pending)
        if conversation.size_chars() + pending_chars > self.budget.input_chars:
            self._compact(conversation, self.budget.input_chars - pending_chars, keep_last=0)
        in_context = conversation.size_chars() + pending_chars
        try:
            turn = await request()
        except ContextLengthExceededError as exc:
            logger.info("context overflow (%s): compacting the history and asking again", exc.status_code)
            self._run.assists["context_overflow_retries"] += 1
            self._compact(conversation, int(self.budget.input_chars * _HARD_COMPACT), keep_last=len(pending))
            in_context = conversation.size_chars()
            turn = await conversation.resend()
        if turn.usage is not None:
            self.budget.calibrate(in_context, turn.usage.input_tokens)
            self._run.context = self.budget.describe()
        return turn

    def _compact(self, conversation: Conversation, target_chars: int, *, keep_last: int) -> None:
        dropped = conversation.compact(max(0, target_chars), keep_last)
        if dropped:
            self._run.assists["outputs_dropped"] += dropped
            logger.info("dropped %d old tool output(s) to fit the model's context", dropped)
