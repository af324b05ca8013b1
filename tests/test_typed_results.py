"""End to end: `output_schema` on chat_completion, create_response and the autonomous tools, through the bridge
as a subprocess; the stand-in takes the structured-output field as LM Studio does, as llama-cpp-python does,
or not at all, and the scripted model answers JSON (or not) as a test needs."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from mcp import Client

from tests.support.bridge import bridge_env, model_requests, subprocess_params, text_of, tool_outputs, write_mcp_json
from tests.support.fake_lmstudio import FakeLMStudio, RecordedRequest, Turn, call

pytestmark = pytest.mark.slow

SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "year": {"type": "integer"}},
    "required": ["title", "year"],
}
DUNE = {"title": "Dune", "year": 1965}
TIME_SERVER = {"command": sys.executable, "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]}


def bridge(fake: FakeLMStudio, mcp_json: Path | None = None, **extra: str) -> Client:
    return Client(subprocess_params(bridge_env(fake.url, mcp_json, **extra)), read_timeout_seconds=60)


def answers(*texts: str, reasoning: str | None = None) -> Callable[[RecordedRequest], Turn]:
    """A model that gives `texts` in turn (the last one again when they run out)."""
    queue = list(texts)

    def script(request: RecordedRequest) -> Turn:
        return Turn(text=queue.pop(0) if len(queue) > 1 else queue[0], reasoning=reasoning)

    return script


def last_user_text(request: RecordedRequest) -> str:
    body = request.body or {}
    if isinstance(body.get("input"), str):
        return str(body["input"])
    messages = body.get("messages") or body.get("input") or []
    users = [m for m in messages if m.get("role") == "user"]
    return str(users[-1]["content"]) if users else ""


async def test_chat_completion_returns_the_typed_result_beside_the_text_with_reasoning_kept_out() -> None:
    script = answers('<think>Dune? 1965.</think>{"title": "Dune", "year": 1965}', reasoning="I recall")
    with FakeLMStudio(script) as fake:
        with anyio.fail_after(60):
            async with bridge(fake) as client:
                arguments = {"prompt": "Name a novel.", "system_prompt": "Be brief.", "output_schema": SCHEMA}
                result = await client.call_tool("chat_completion", arguments)
    assert not result.is_error, text_of(result)
    data = result.structured_content
    assert data["result"] == DUNE
    assert text_of(result) == data["answer"] == '{"title": "Dune", "year": 1965}'
    assert data["reasoning"] == "I recall\n\nDune? 1965."
    (request,) = fake.generation_requests()
    assert request.body["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": SCHEMA}
    }
    system = request.body["messages"][0]["content"]
    assert system.startswith("Be brief.\n\n") and json.dumps(SCHEMA) in system


@pytest.mark.parametrize(
    ("server_takes", "forms_sent"),
    [("json_object", ["json_schema", "json_object"]), ("none", ["json_schema", "json_object", None])],
)
async def test_a_server_without_lm_studios_field_gets_the_schema_another_way_and_is_remembered(
    server_takes: str, forms_sent: list[str | None]
) -> None:
    with FakeLMStudio(answers('{"title": "Dune", "year": 1965}'), response_format=server_takes) as fake:  # type: ignore[arg-type]
        with anyio.fail_after(60):
            async with bridge(fake) as client:
                first = await client.call_tool("chat_completion", {"prompt": "A novel?", "output_schema": SCHEMA})
                second = await client.call_tool("chat_completion", {"prompt": "Another?", "output_schema": SCHEMA})
    assert first.structured_content["result"] == second.structured_content["result"] == DUNE
    sent = [(r.body.get("response_format") or {}).get("type") for r in fake.generation_requests()]
    # The first call finds the form that works; the second starts with it.
    assert sent == [*forms_sent, forms_sent[-1]]


async def test_an_answer_that_does_not_match_is_repaired_once_with_the_problem_quoted() -> None:
    with FakeLMStudio(answers('{"title": "Dune"}', '{"title": "Dune", "year": 1965}')) as fake:
        with anyio.fail_after(60):
            async with bridge(fake) as client:
                result = await client.call_tool("chat_completion", {"prompt": "A novel?", "output_schema": SCHEMA})
    assert result.structured_content["result"] == DUNE
    first, repair = fake.generation_requests()
    assert repair.body["messages"][-2] == {"role": "assistant", "content": '{"title": "Dune"}'}
    assert "'year' is a required property" in last_user_text(repair)


async def test_an_answer_still_invalid_after_the_repair_round_is_an_error_with_the_problem_and_the_raw_answer() -> None:
    with FakeLMStudio(answers("Dune, from 1965.", '{"title": "Dune", "year": "1965"}')) as fake:
        with anyio.fail_after(60):
            async with bridge(fake) as client:
                result = await client.call_tool("chat_completion", {"prompt": "A novel?", "output_schema": SCHEMA})
    assert result.is_error
    assert result.structured_content["error"] == "StructuredOutputError"
    assert text_of(result) == (
        "Error: The model's answer does not match output_schema, even after one repair round: at year: '1965' is "
        """not of type 'integer'. Its answer was: '{"title": "Dune", "year": "1965"}'. Try a simpler schema, a """
        "clearer task, or a larger model."
    )


async def test_create_response_asks_with_text_format_and_validates_what_lm_studio_does_not_enforce() -> None:
    fenced = '```json\n{"title": "Dune", "year": 1965}\n```'
    with FakeLMStudio(answers(fenced)) as fake:
        with anyio.fail_after(60):
            async with bridge(fake) as client:
                result = await client.call_tool("create_response", {"input": "A novel?", "output_schema": SCHEMA})
    assert not result.is_error, text_of(result)
    assert result.structured_content["result"] == DUNE
    assert result.structured_content["response_id"]
    (request,) = fake.generation_requests()
    assert request.body["text"]["format"]["schema"] == SCHEMA
    assert json.dumps(SCHEMA) in request.body["instructions"]
    with FakeLMStudio(answers('{"title": "Dune", "year": 1965}'), text_format=False) as refusing:
        with anyio.fail_after(60):
            async with bridge(refusing) as client:
                result = await client.call_tool("create_response", {"input": "A novel?", "output_schema": SCHEMA})
    assert result.structured_content["result"] == DUNE
    assert ["text" in r.body for r in refusing.generation_requests()] == [True, False]


async def test_a_schema_that_is_not_json_schema_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    mcp_json = write_mcp_json(tmp_path / ".mcp.json", {"time": TIME_SERVER})
    with FakeLMStudio(answers("{}")) as fake:
        with anyio.fail_after(60):
            async with bridge(fake, mcp_json) as client:
                chat = await client.call_tool("chat_completion", {"prompt": "x", "output_schema": {"type": "objekt"}})
                run = await client.call_tool(
                    "autonomous_with_mcp", {"mcp_name": "time", "task": "x", "output_schema": {"required": "title"}}
                )
    for result in (chat, run):
        assert result.is_error and result.structured_content["error"] == "OutputSchemaError"
        assert text_of(result).startswith("Error: output_schema is not a valid JSON Schema:")
    assert fake.generation_requests() == []


def run_script(final: list[str]) -> Callable[[RecordedRequest], Turn]:
    """Calls the time tool, answers in prose, then gives `final` answers to the typed step in turn."""

    def script(request: RecordedRequest) -> Turn:
        if "JSON Schema:" in last_user_text(request):
            return Turn(text=final.pop(0), reasoning="only the JSON counts")
        if tool_outputs(request):
            return Turn(text="Dune, published in 1965.")
        return Turn(tool_calls=[call("get_current_time", timezone="UTC")])

    return script


@pytest.mark.parametrize("api", ["responses", "chat"])
async def test_an_autonomous_run_ends_with_its_final_answer_typed_on_both_api_paths(api: str, tmp_path: Path) -> None:
    mcp_json = write_mcp_json(tmp_path / ".mcp.json", {"time": TIME_SERVER})
    script = run_script(['{"title": "Dune"}', '{"title": "Dune", "year": 1965}'])
    with FakeLMStudio(script, responses_api=api == "responses") as fake:
        with anyio.fail_after(60):
            async with bridge(fake, mcp_json) as client:
                arguments = {"mcp_name": "time", "task": "A novel and its year?", "output_schema": SCHEMA}
                result = await client.call_tool("autonomous_with_mcp", arguments)
    assert not result.is_error, text_of(result)
    data = result.structured_content
    assert (data["stop_reason"], data["api"], data["result"]) == ("completed", api, DUNE)
    assert text_of(result) == data["answer"] == "Dune, published in 1965."
    assert data["assists"]["typed_answer_repaired"] == 1
    *_, final, repair = model_requests(fake)
    assert "tools" not in final.body and "tools" not in repair.body
    if api == "chat":
        assert final.body["response_format"]["type"] == "json_schema"
        assert final.body["messages"][-2] == {"role": "assistant", "content": "Dune, published in 1965."}
    else:
        assert final.body["text"]["format"]["type"] == "json_schema"
        assert final.body["previous_response_id"] and repair.body["previous_response_id"]


@pytest.mark.parametrize("api", ["responses", "chat"])
async def test_an_autonomous_run_whose_answer_stays_invalid_ends_in_an_error_with_the_raw_answer(
    api: str, tmp_path: Path
) -> None:
    mcp_json = write_mcp_json(tmp_path / ".mcp.json", {"time": TIME_SERVER})
    with FakeLMStudio(run_script(["Dune", "still Dune"]), responses_api=api == "responses") as fake:
        with anyio.fail_after(60):
            async with bridge(fake, mcp_json) as client:
                result = await client.call_tool(
                    "autonomous_with_mcp", {"mcp_name": "time", "task": "A novel?", "output_schema": SCHEMA}
                )
    assert result.is_error
    data = result.structured_content
    assert data["stop_reason"] == "error" and data["result"] is None
    assert "does not match output_schema, even after one repair round: it is not JSON" in data["error"]
    assert "Its answer was: 'still Dune'" in data["error"]
    assert data["answer"] == "Dune, published in 1965."
