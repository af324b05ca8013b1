"""Typed answers: ask a model for JSON that matches a JSON Schema, check it, and repair it once.

    ask with the server's structured-output field ──► refused (400/422, or a refusal naming the field)? the next
    form, learned per API
      chat completions: response_format {"type": "json_schema", "json_schema": {...}}   (LM Studio)
                        response_format {"type": "json_object", "schema": {...}}      (llama-cpp-python)
                        no field: the schema in the prompt only
      responses:        text.format {"type": "json_schema", ...} (LM Studio takes it but is reported not
                        to enforce it), else no field
    ──► parse (code fence or prose around one JSON value tolerated; broken JSON is not mended) and
        validate (jsonschema) ──► invalid? ask once more, quoting the problem ──► still invalid:
        StructuredOutputError with the problem and the raw answer.

The schema is always also in the prompt (callers add `schema_instructions`): a server that enforces
the field is helped, one that ignores it (or refused it) is told. Only the answer is parsed: reasoning
(`reasoning_content`, reasoning items, `<think>` blocks) never reaches the typed result.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from llm.capabilities import ApiKind, ServerCapabilities
from llm.exceptions import LLMStatusError, OutputSchemaError, StructuredOutputError
from llm.llm_client import LLMClient
from llm.models import ResolvedModel
from llm.reasoning import split_reasoning
from llm.results import ChatResult, OnEvent, ResponseResult

logger = logging.getLogger(__name__)

OutputMode = Literal["json_schema", "json_object", "prompt"]
MODES: dict[ApiKind, tuple[OutputMode, ...]] = {
    "chat": ("json_schema", "json_object", "prompt"),
    "responses": ("json_schema", "prompt"),
}
_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```$", re.DOTALL)
_SCHEMA_NAME = "answer"


@dataclass(frozen=True)
class TypedAnswer:
    """A validated answer: the value, the JSON text it came from, the form that was used, whether repaired."""

    value: object
    raw: str
    mode: OutputMode
    repaired: bool


def check_schema(schema: Mapping[str, Any]) -> None:
    """Refuse an `output_schema` that is not a JSON Schema before anything is sent.

    Raises:
        OutputSchemaError: the schema is invalid (the message says where).
    """
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(dict(schema))
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise OutputSchemaError(f"{exc.message}" + (f" (at {where})" if where else "")) from exc


def schema_instructions(schema: Mapping[str, Any]) -> str:
    """What the prompt says about the answer's shape (also for servers that take no structured-output field)."""
    return (
        "Answer with only a JSON value, without prose or code fences, that matches this JSON Schema:\n"
        + json.dumps(schema, ensure_ascii=False)
    )


def repair_prompt(problem: str) -> str:
    return (
        f"Your answer does not match the JSON Schema: {problem}. "
        "Answer again with only the corrected JSON value, nothing else."
    )


def chat_response_format(schema: Mapping[str, Any], mode: OutputMode) -> dict[str, Any] | None:
    """The `response_format` field of /v1/chat/completions for `mode` (None: no field)."""
    if mode == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": _SCHEMA_NAME, "strict": True, "schema": dict(schema)}}
    if mode == "json_object":
        return {"type": "json_object", "schema": dict(schema)}
    return None


def responses_text_format(schema: Mapping[str, Any], mode: OutputMode) -> dict[str, Any] | None:
    """The `text.format` of /v1/responses for `mode` (None: no field)."""
    if mode == "prompt":
        return None
    return {"type": "json_schema", "name": _SCHEMA_NAME, "schema": dict(schema), "strict": True}


def parse_and_validate(text: str, schema: Mapping[str, Any]) -> tuple[object, str | None]:
    """(value, None) when `text` holds one JSON value valid for `schema`; else (None, what is wrong)."""
    answer, _ = split_reasoning(text)
    candidate = answer.strip()
    fenced = _FENCE.match(candidate)
    if fenced:
        candidate = fenced.group(1).strip()
    try:
        value = json.loads(candidate)
    except json.JSONDecodeError as exc:
        found = _one_value_inside(candidate)
        if found is None:
            return None, f"it is not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        value = found
    from jsonschema import Draft202012Validator

    errors = sorted(Draft202012Validator(dict(schema)).iter_errors(value), key=lambda e: list(e.path))
    if not errors:
        return value, None
    problems = "; ".join(f"at {'/'.join(str(p) for p in e.path) or '(top level)'}: {e.message}" for e in errors[:3])
    return None, problems


def _one_value_inside(text: str) -> object | None:
    """The JSON object or array inside prose ("Here it is: {...}"), when exactly one complete value is there."""
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if not starts:
        return None
    start = min(starts)
    try:
        value, end = json.JSONDecoder().raw_decode(text, start)
    except json.JSONDecodeError:
        return None
    rest = text[end:]
    return None if "{" in rest or "[" in rest else value


_FIELD_NAMED = {
    "chat": re.compile(r"response_format"),
    "responses": re.compile(r"text\.format|'text',\s*'format'|\"text\",\s*\"format\""),
}


def _refused(exc: LLMStatusError, api: ApiKind) -> bool:
    """The structured-output field was not taken: the request itself was refused (not for context, model or
    route), with a 400/422, or with a message that names the field (llama-cpp-python's server refuses a
    `response_format` it does not know with 500 and pydantic's `'loc': ('body', 'response_format', 'type')`)."""
    if type(exc) is not LLMStatusError:
        return False
    return exc.status_code in (400, 422) or bool(_FIELD_NAMED[api].search(f"{exc.body} {exc.message}"))


Ask = Callable[[OutputMode, str | None], Awaitable[str]]
"""One request in a form; the second argument is the repair message to send after the last answer."""


async def ask_typed(
    ask: Ask, schema: Mapping[str, Any], *, api: ApiKind, capabilities: ServerCapabilities
) -> TypedAnswer:
    """The answer of `ask`, validated against `schema`, repaired once (see the module docstring).

    Raises:
        StructuredOutputError: invalid even after the repair round.
        LLMError: the request failed for another reason than the field.
    """
    mode, raw = await _first_accepted(ask, api, capabilities)
    value, problem = parse_and_validate(raw, schema)
    if problem is None:
        return TypedAnswer(value, raw, mode, repaired=False)
    logger.info("typed answer invalid (%s): asking once more", problem)
    raw = await ask(mode, repair_prompt(problem))
    value, problem = parse_and_validate(raw, schema)
    if problem is None:
        return TypedAnswer(value, raw, mode, repaired=True)
    raise StructuredOutputError(problem, split_reasoning(raw)[0])


async def _first_accepted(ask: Ask, api: ApiKind, capabilities: ServerCapabilities) -> tuple[OutputMode, str]:
    modes: Sequence[OutputMode] = MODES[api]
    learned = capabilities.output_modes.get(api)
    if learned in modes:
        modes = modes[modes.index(learned) :]  # type: ignore[arg-type]
    for mode in modes:
        try:
            raw = await ask(mode, None)
        except LLMStatusError as exc:
            if mode == "prompt" or not _refused(exc, api):
                raise
            logger.info("%s refused the %s structured-output form (%s): trying the next", api, mode, exc)
            continue
        if capabilities.output_modes.get(api) != mode:
            capabilities.output_modes[api] = mode
        return mode, raw
    raise AssertionError("the prompt form sends no field and cannot be refused")


async def typed_chat(
    llm: LLMClient,
    messages: Sequence[dict[str, Any]],
    *,
    model: ResolvedModel,
    schema: Mapping[str, Any],
    capabilities: ServerCapabilities,
    temperature: float = 0.7,
    max_tokens: int | None = None,
    stream: bool = False,
    on_event: OnEvent | None = None,
) -> tuple[ChatResult, TypedAnswer]:
    """A typed answer over /v1/chat/completions; `messages` already say what to answer (and the schema)."""
    history = list(messages)
    last: list[ChatResult] = []

    async def ask(mode: OutputMode, repair: str | None) -> str:
        if repair is not None:
            history.extend([{"role": "assistant", "content": last[-1].content}, {"role": "user", "content": repair}])
        result = await llm.chat_completion(
            history, model=model, temperature=temperature, max_tokens=max_tokens,
            response_format=chat_response_format(schema, mode), stream=stream, on_event=on_event,
        )
        last.append(result)
        return result.content

    typed = await ask_typed(ask, schema, api="chat", capabilities=capabilities)
    return last[-1], typed


async def typed_response(
    llm: LLMClient,
    input: str | list[dict[str, Any]],
    *,
    model: ResolvedModel,
    schema: Mapping[str, Any],
    capabilities: ServerCapabilities,
    previous_response_id: str | None = None,
    instructions: str | None = None,
    temperature: float | None = None,
    max_output_tokens: int | None = None,
) -> tuple[ResponseResult, TypedAnswer]:
    """A typed answer over /v1/responses (chained: a repair continues from the answer it repairs)."""
    last: list[ResponseResult] = []

    async def ask(mode: OutputMode, repair: str | None) -> str:
        result = await llm.create_response(
            input if repair is None else repair,
            model=model,
            previous_response_id=previous_response_id if repair is None else last[-1].id,
            instructions=instructions,
            temperature=temperature,
            max_output_tokens=max_output_tokens,
            text_format=responses_text_format(schema, mode),
        )
        last.append(result)
        return result.text

    typed = await ask_typed(ask, schema, api="responses", capabilities=capabilities)
    return last[-1], typed
