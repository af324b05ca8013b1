"""The runner's last step when a run was given an `output_schema`: the final answer, typed.

Once the model has answered without tool calls, one more request in the same conversation asks for
that answer as JSON matching the schema, through `llm.structured` (the server's structured-output
field, no tools offered, validation, one repair round). The run's prose answer stays its text; the
parsed value becomes `result`. Chat completions resend the history plus the request; `/v1/responses`
continues the chain from the last response. An answer still invalid after the repair round raises
`StructuredOutputError` (the run then ends with `stop_reason: "error"`, the problem and the raw answer
in its message).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

from llm.capabilities import ServerCapabilities
from llm.conversation import ChatConversation, Conversation, ResponsesConversation
from llm.llm_client import LLMClient
from llm.models import ResolvedModel
from llm.results import Usage
from llm.structured import TypedAnswer, schema_instructions, typed_chat, typed_response
from tools.agent.events import RunContext

FINAL_PROMPT = (
    "The task is done. Give your final answer now, using only what you found while working on it. "
)


def final_prompt(schema: Mapping[str, object]) -> str:
    return FINAL_PROMPT + schema_instructions(schema)


class TypedAnswerStep:
    """Asks for the run's final answer as JSON matching `schema`, and keeps it in the run."""

    def __init__(
        self,
        llm: LLMClient,
        capabilities: ServerCapabilities,
        schema: Mapping[str, object],
        *,
        max_tokens: int | None,
        check_answer: Callable[[ResolvedModel, str | None], str | None],
    ) -> None:
        self._llm = llm
        self._capabilities = capabilities
        self._schema = dict(schema)
        self._max_tokens = max_tokens
        self._check_answer = check_answer

    async def answer(self, run: RunContext, conversation: Conversation) -> TypedAnswer:
        """Ask, validate, repair once; the value goes to `run.typed_result`.

        Raises:
            StructuredOutputError: still invalid after the repair round.
            LLMError: the request failed.
        """
        prompt = final_prompt(self._schema)
        if isinstance(conversation, ResponsesConversation):
            response, typed = await typed_response(
                self._llm, prompt, model=run.model, schema=self._schema, capabilities=self._capabilities,
                previous_response_id=conversation.previous_response_id, max_output_tokens=self._max_tokens,
                temperature=conversation.options.temperature,
            )
            answered, usage = response.model, response.usage
        else:
            assert isinstance(conversation, ChatConversation)
            temperature = conversation.options.temperature
            chat, typed = await typed_chat(
                self._llm, [*conversation.messages, {"role": "user", "content": prompt}], model=run.model,
                schema=self._schema, capabilities=self._capabilities, max_tokens=self._max_tokens,
                temperature=temperature if temperature is not None else 0.7,
            )
            answered, usage = chat.model, chat.usage
        if (note := self._check_answer(run.model, answered)) and note not in run.notes:
            run.notes.append(note)
        _count_usage(run, usage)
        run.typed_result = typed.value
        run.assists["typed_answer_repaired"] += int(typed.repaired)
        if typed.mode == "prompt":
            run.notes.append("the model server took no structured-output field: the schema was given in the prompt")
        if not run.answer:
            run.answer = json.dumps(typed.value, ensure_ascii=False)
        return typed


def _count_usage(run: RunContext, usage: Usage | None) -> None:
    if usage is None:
        return
    for key in ("input_tokens", "output_tokens", "total_tokens"):
        value = getattr(usage, key, None)
        if value:
            run.usage[key] += value
