"""`output_schema` for the tools Claude calls: the parameter, the requests, and the `result` field.

A tool given an `output_schema` (a JSON Schema object) asks for its answer through `llm.structured`
(the server's structured-output field, validation, one repair round) and returns the parsed value as
`structuredContent.result`, with the answer's text beside it. An invalid schema is refused before
anything is sent (`OutputSchemaError`); an answer still invalid after the repair round is an error that
shows the validation problem and the raw answer (`StructuredOutputError`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from pydantic import Field

from llm.models import ResolvedModel
from llm.results import ChatResult, OnEvent, ResponseResult
from llm.backends import Backend
from llm.structured import TypedAnswer, check_schema, schema_instructions, typed_chat, typed_response

OutputSchema = Annotated[
    dict[str, object] | None,
    Field(
        description=(
            "Optional JSON Schema (an object) the final answer must match, e.g. "
            '{"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}. '
            "The answer is then validated and also returned parsed, as structuredContent.result."
        )
    ),
]


def checked_schema(schema: Mapping[str, object] | None) -> dict[str, object] | None:
    """`schema` after checking it is a JSON Schema (None passes). Raises `OutputSchemaError`."""
    if schema is None:
        return None
    check_schema(schema)
    return dict(schema)


def typed_fields(typed: TypedAnswer | None) -> dict[str, object]:
    """The structured-content field a typed answer adds (`result`); none without an `output_schema`."""
    return {} if typed is None else {"result": typed.value}


def with_instructions(text: str | None, schema: Mapping[str, object] | None) -> str | None:
    """`text` with the schema's instructions after it (when there is a schema)."""
    if schema is None:
        return text
    return "\n\n".join(part for part in (text, schema_instructions(schema)) if part)


def _backend(model: ResolvedModel) -> Backend:
    assert model.backend is not None, "the catalog always routes a model to a server"
    return model.backend


async def chat(
    messages: Sequence[dict[str, Any]],
    *,
    model: ResolvedModel,
    schema: Mapping[str, object] | None,
    temperature: float,
    max_tokens: int | None,
    on_event: OnEvent | None = None,
) -> tuple[ChatResult, TypedAnswer | None]:
    """One streamed chat answer; typed when `schema` is given (the schema said in the system message)."""
    backend = _backend(model)
    if schema is None:
        result = await backend.client.chat_completion(
            list(messages), model=model, temperature=temperature, max_tokens=max_tokens, stream=True, on_event=on_event
        )
        return result, None
    rest = list(messages)
    system = rest.pop(0)["content"] if rest and rest[0]["role"] == "system" else None
    typed_messages = [{"role": "system", "content": with_instructions(system, schema)}, *rest]
    return await typed_chat(
        backend.client, typed_messages, model=model, schema=schema, capabilities=backend.capabilities,
        temperature=temperature, max_tokens=max_tokens, stream=True, on_event=on_event,
    )


async def respond(
    input: str,
    *,
    model: ResolvedModel,
    schema: Mapping[str, object] | None,
    previous_response_id: str | None,
    instructions: str | None,
    temperature: float | None,
    max_output_tokens: int | None,
) -> tuple[ResponseResult, TypedAnswer | None]:
    """One /v1/responses turn; typed when `schema` is given (the schema said in the instructions)."""
    backend = _backend(model)
    if schema is None:
        result = await backend.client.create_response(
            input, model=model, previous_response_id=previous_response_id, instructions=instructions,
            temperature=temperature, max_output_tokens=max_output_tokens,
        )
        return result, None
    return await typed_response(
        backend.client, input, model=model, schema=schema, capabilities=backend.capabilities,
        previous_response_id=previous_response_id, instructions=with_instructions(instructions, schema),
        temperature=temperature, max_output_tokens=max_output_tokens,
    )
