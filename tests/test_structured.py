"""Typed answers (`llm.structured`): parsing and validating, the schema check, the form a server takes."""

from __future__ import annotations

import pytest

from llm.capabilities import ServerCapabilities
from llm.exceptions import (
    ContextLengthExceededError,
    LLMStatusError,
    OutputSchemaError,
    StructuredOutputError,
)
from llm.structured import (
    OutputMode,
    ask_typed,
    chat_response_format,
    check_schema,
    parse_and_validate,
    responses_text_format,
)

SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "year": {"type": "integer"}},
    "required": ["title", "year"],
}


def test_a_valid_answer_is_parsed_with_fences_prose_and_reasoning_left_out() -> None:
    for text in (
        '{"title": "Dune", "year": 1965}',
        '```json\n{"title": "Dune", "year": 1965}\n```',
        'Here it is: {"title": "Dune", "year": 1965} Enjoy.',
        '<think>the year is {"year": 1} maybe</think>{"title": "Dune", "year": 1965}',
    ):
        assert parse_and_validate(text, SCHEMA) == ({"title": "Dune", "year": 1965}, None), text


def test_an_invalid_answer_says_what_is_wrong_and_broken_json_is_not_mended() -> None:
    value, problem = parse_and_validate('{"title": "Dune", "year": "1965"}', SCHEMA)
    assert value is None and problem == "at year: '1965' is not of type 'integer'"
    value, problem = parse_and_validate('{"title": "Dune", "year": 19', SCHEMA)
    assert value is None and problem is not None and problem.startswith("it is not JSON")
    # Two values in the prose: which one was meant is not guessed.
    assert parse_and_validate('{"title": "A", "year": 1} or {"title": "B", "year": 2}', SCHEMA)[0] is None


def test_a_schema_that_is_not_json_schema_is_refused_with_an_example() -> None:
    with pytest.raises(OutputSchemaError) as caught:
        check_schema({"type": "objekt"})
    assert "output_schema is not a valid JSON Schema" in str(caught.value) and '"required"' in str(caught.value)
    check_schema(SCHEMA)


def test_the_forms_are_lm_studios_json_schema_llama_cpps_json_object_and_none() -> None:
    assert chat_response_format(SCHEMA, "json_schema") == {
        "type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": SCHEMA}
    }
    assert chat_response_format(SCHEMA, "json_object") == {"type": "json_object", "schema": SCHEMA}
    assert chat_response_format(SCHEMA, "prompt") is None
    assert responses_text_format(SCHEMA, "json_schema") == {
        "type": "json_schema", "name": "answer", "schema": SCHEMA, "strict": True
    }


class Server:
    """An `ask` that refuses some forms with 400 and answers from a list."""

    def __init__(self, answers: list[str], refuses: tuple[OutputMode, ...] = ()) -> None:
        self.answers = answers
        self.refuses = refuses
        self.asked: list[tuple[OutputMode, str | None]] = []

    async def ask(self, mode: OutputMode, repair: str | None) -> str:
        self.asked.append((mode, repair))
        if mode in self.refuses:
            raise LLMStatusError("'response_format.type' must be 'json_schema' or 'text'", status_code=400)
        return self.answers.pop(0)


async def test_a_refused_form_falls_back_to_the_next_and_the_server_is_remembered() -> None:
    capabilities = ServerCapabilities("http://x")
    server = Server(['{"title": "Dune", "year": 1965}'], refuses=("json_schema",))
    typed = await ask_typed(server.ask, SCHEMA, api="chat", capabilities=capabilities)
    assert (typed.value, typed.mode, typed.repaired) == ({"title": "Dune", "year": 1965}, "json_object", False)
    assert capabilities.output_modes == {"chat": "json_object"}
    again = Server(['{"title": "Emma", "year": 1815}'])
    await ask_typed(again.ask, SCHEMA, api="chat", capabilities=capabilities)
    assert [mode for mode, _ in again.asked] == ["json_object"]


async def test_a_refusal_that_names_the_field_with_another_status_is_a_refusal_too() -> None:
    """llama-cpp-python answers 500 (pydantic's message): the field is named, so the next form is tried."""
    refusal = LLMStatusError(
        "LM Studio rejected the request to /v1/chat/completions (500): 1 validation error: {'type': "
        "'literal_error', 'loc': ('body', 'response_format', 'type')}", status_code=500,
    )
    other = LLMStatusError("LM Studio rejected the request (500): 1 validation error: 'loc': ('body', 'tools')",
                           status_code=500)
    asked: list[OutputMode] = []

    async def ask(mode: OutputMode, repair: str | None) -> str:
        asked.append(mode)
        if mode == "json_schema":
            raise refusal
        return '{"title": "Dune", "year": 1965}'

    typed = await ask_typed(ask, SCHEMA, api="chat", capabilities=ServerCapabilities("http://x"))
    assert (asked, typed.mode) == (["json_schema", "json_object"], "json_object")

    async def refuses_tools(mode: OutputMode, repair: str | None) -> str:
        raise other

    with pytest.raises(LLMStatusError):
        await ask_typed(refuses_tools, SCHEMA, api="chat", capabilities=ServerCapabilities("http://x"))


async def test_an_invalid_answer_is_repaired_once_with_the_problem_quoted() -> None:
    server = Server(['{"title": "Dune"}', '{"title": "Dune", "year": 1965}'])
    typed = await ask_typed(server.ask, SCHEMA, api="responses", capabilities=ServerCapabilities("http://x"))
    assert typed.repaired and typed.value == {"title": "Dune", "year": 1965}
    repair = server.asked[1][1]
    assert repair is not None and "'year' is a required property" in repair


async def test_still_invalid_after_the_repair_round_is_an_error_with_the_problem_and_the_raw_answer() -> None:
    server = Server(["Dune, 1965", '<think>hmm</think>{"title": "Dune", "year": "1965"}'])
    with pytest.raises(StructuredOutputError) as caught:
        await ask_typed(server.ask, SCHEMA, api="chat", capabilities=ServerCapabilities("http://x"))
    assert caught.value.problem == "at year: '1965' is not of type 'integer'"
    assert caught.value.raw == '{"title": "Dune", "year": "1965"}'
    assert "hmm" not in str(caught.value)


async def test_errors_that_are_not_about_the_field_are_not_taken_for_a_refusal() -> None:
    async def overflow(mode: OutputMode, repair: str | None) -> str:
        raise ContextLengthExceededError("too long", status_code=400)

    capabilities = ServerCapabilities("http://x")
    with pytest.raises(ContextLengthExceededError):
        await ask_typed(overflow, SCHEMA, api="chat", capabilities=capabilities)
    assert capabilities.output_modes == {}
