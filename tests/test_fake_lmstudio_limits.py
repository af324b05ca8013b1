"""The stand-in's opt-in model limits: LM Studio 0.4's listing, the loaded context and its overflow, refused tools."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.support.bridge import bridge_settings, in_process_bridge
from tests.support.fake_lmstudio import FakeLMStudio, FakeModel, Turn
from tests.support.lmstudio_limits import estimate_tokens

SMALL = FakeModel("qwen/qwen3-4b-2507", loaded_context_length=1000, trained_for_tool_use=True, parallel=2)
PLAIN = FakeModel("google/gemma-3-1b", loaded_context_length=None, trained_for_tool_use=False, refuses_tools=True)
IDLE = FakeModel("mistralai/magistral-small-2509", loaded=False, loaded_context_length=4096)
EMBED = FakeModel("text-embedding-nomic-embed-text-v1.5", "embeddings", loaded=True, max_context_length=2048)
TOOL = {"type": "function", "name": "read_file", "description": "Read a file", "parameters": {"type": "object"}}


@pytest.fixture
def fake() -> Iterator[FakeLMStudio]:
    with FakeLMStudio(models=[SMALL, PLAIN, IDLE, EMBED], lmstudio_version="0.4") as server:
        yield server


def _chat(fake: FakeLMStudio, text: str, model: str = SMALL.id, **extra: object) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    return httpx.post(f"{fake.url}/v1/chat/completions", json=body, timeout=5)


def test_lm_studio_0_4_lists_loaded_instances_with_their_context_and_capabilities(fake: FakeLMStudio) -> None:
    models = {m["key"]: m for m in httpx.get(f"{fake.url}/api/v1/models").json()["models"]}

    assert models[SMALL.id]["loaded_instances"] == [
        {"id": SMALL.id, "config": {"context_length": 1000, "parallel": 2}}
    ]
    assert models[SMALL.id]["capabilities"]["trained_for_tool_use"] is True
    assert models[PLAIN.id]["capabilities"]["trained_for_tool_use"] is False
    # Loaded without a set context: the instance has the model's whole context.
    assert models[PLAIN.id]["loaded_instances"][0]["config"]["context_length"] == PLAIN.max_context_length
    assert models[IDLE.id]["loaded_instances"] == []
    assert models[EMBED.id]["type"] == "embedding" and "capabilities" not in models[EMBED.id]
    assert models[SMALL.id]["max_context_length"] == SMALL.max_context_length


def test_api_v0_reports_loaded_context_length_only_for_loaded_models_that_set_one(fake: FakeLMStudio) -> None:
    rich = {m["id"]: m for m in httpx.get(f"{fake.url}/api/v0/models").json()["data"]}

    assert rich[SMALL.id]["loaded_context_length"] == 1000
    assert "loaded_context_length" not in rich[PLAIN.id]
    assert "loaded_context_length" not in rich[IDLE.id]


def test_lm_studio_0_3_keeps_api_v1_models_absent_even_with_limits_set() -> None:
    with FakeLMStudio(models=[SMALL]) as fake:
        assert httpx.get(f"{fake.url}/api/v1/models").status_code == 404


async def test_the_bridge_reads_the_0_4_listing_loaded_state_and_tool_capability(fake: FakeLMStudio) -> None:
    async with in_process_bridge(bridge_settings(fake.url)) as client:
        listed = await client.call_tool("list_models", {})
    by_id = {m["id"]: m for m in listed.structured_content["models"]}
    assert by_id[SMALL.id]["trained_for_tool_use"] is True
    assert by_id[PLAIN.id]["trained_for_tool_use"] is False
    assert by_id[IDLE.id]["state"] == "not-loaded"


def test_token_estimate_is_about_four_bytes_a_token_over_the_prompt_fields() -> None:
    body = {"messages": [{"role": "user", "content": "x" * 4000}], "model": "m" * 10000, "temperature": 0.7}
    tokens = estimate_tokens(body)

    assert 1000 <= tokens <= 1020  # the JSON around the text adds a few bytes; other fields do not count
    assert estimate_tokens({**body, "tools": [TOOL]}) > tokens
    assert estimate_tokens(body, history=[{"role": "user", "content": "y" * 400}]) >= tokens + 100


def test_a_request_over_the_loaded_context_gets_lm_studio_s_overflow_400_and_the_script_is_kept() -> None:
    with FakeLMStudio(script=[Turn(text="fits")], models=[SMALL]) as fake:
        refused = _chat(fake, "x" * 4200)
        answered = _chat(fake, "short question")

    assert refused.status_code == 400
    error = refused.json()["error"]
    assert isinstance(error, str)
    assert error.startswith("Trying to keep the first 10")
    assert "loaded with context length of only 1000 tokens" in error
    assert answered.json()["choices"][0]["message"]["content"] == "fits"


def test_a_model_without_loaded_context_length_is_never_limited() -> None:
    with FakeLMStudio(script=[Turn(text="fine")], models=[PLAIN]) as fake:
        assert _chat(fake, "x" * 100_000, model=PLAIN.id).json()["choices"][0]["message"]["content"] == "fine"


def test_empty_stream_overflow_answers_200_with_nothing_to_streamed_requests_only() -> None:
    with FakeLMStudio(models=[SMALL], context_overflow="empty_stream") as fake:
        streamed = _chat(fake, "x" * 4200, stream=True)
        unstreamed = _chat(fake, "x" * 4200)

    assert streamed.status_code == 200 and streamed.content == b""
    assert unstreamed.status_code == 400 and "context length of only 1000" in unstreamed.json()["error"]


def test_responses_count_the_stored_conversation_of_previous_response_id() -> None:
    with FakeLMStudio(script=[Turn(text="a" * 4400), Turn(text="never")], models=[SMALL]) as fake:
        first = httpx.post(f"{fake.url}/v1/responses", json={"model": SMALL.id, "input": "hi"}).json()
        small_followup = {"model": SMALL.id, "input": "and then?", "previous_response_id": first["id"]}
        chained = httpx.post(f"{fake.url}/v1/responses", json=small_followup)
        alone = httpx.post(f"{fake.url}/v1/responses", json={"model": SMALL.id, "input": "and then?"})

    assert chained.status_code == 400
    assert "context length of only 1000" in chained.json()["error"]
    assert alone.status_code == 200
    assert alone.json()["output"][0]["content"][0]["text"] == "never"


def test_a_model_that_refuses_tools_answers_400_to_a_tools_field_and_serves_requests_without_one() -> None:
    with FakeLMStudio(script=[Turn(text="plain answer")], models=[PLAIN]) as fake:
        refused = _chat(fake, "hi", model=PLAIN.id, tools=[{"type": "function", "function": TOOL}])
        empty_list = _chat(fake, "hi", model=PLAIN.id, tools=[])
        generated = len(fake.generation_requests())

    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == "tools param requires --jinja flag"
    assert empty_list.json()["choices"][0]["message"]["content"] == "plain answer"
    assert generated == 2


def test_refused_tools_on_responses_too() -> None:
    with FakeLMStudio(models=[PLAIN]) as fake:
        refused = httpx.post(f"{fake.url}/v1/responses", json={"model": PLAIN.id, "input": "hi", "tools": [TOOL]})
    assert refused.status_code == 400
    assert json.loads(refused.text)["error"]["code"] == 400
