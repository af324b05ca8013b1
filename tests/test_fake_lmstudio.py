"""The scripted LM Studio stand-in behaves like the parts of LM Studio the bridge relies on."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.fake_lmstudio import (
    FakeLMStudio,
    FakeModel,
    RecordedRequest,
    Turn,
    call,
)

MODEL = "qwen/qwen3-coder-30b"


@pytest.fixture
def fake() -> Iterator[FakeLMStudio]:
    with FakeLMStudio() as server:
        yield server


def _chat(fake: FakeLMStudio, **extra: object) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **extra}
    return httpx.post(f"{fake.url}/v1/chat/completions", json=body, timeout=5)


def _sse_payloads(response: httpx.Response) -> list[dict]:
    payloads = []
    for line in response.text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            payloads.append(json.loads(line[len("data: "):]))
    return payloads


def test_models_endpoints_list_default_models_with_type_and_state(fake: FakeLMStudio) -> None:
    openai = httpx.get(f"{fake.url}/v1/models").json()
    rich = httpx.get(f"{fake.url}/api/v0/models").json()["data"]

    assert openai["object"] == "list"
    assert [m["id"] for m in openai["data"]] == [
        "qwen/qwen3-coder-30b",
        "mistralai/magistral-small-2509",
        "text-embedding-nomic-embed-text-v1.5",
    ]
    by_id = {m["id"]: m for m in rich}
    assert by_id["qwen/qwen3-coder-30b"]["state"] == "loaded"
    assert by_id["mistralai/magistral-small-2509"]["state"] == "not-loaded"
    assert by_id["text-embedding-nomic-embed-text-v1.5"]["type"] == "embeddings"
    assert all(isinstance(m["max_context_length"], int) for m in rich)


def test_newer_api_v1_models_is_absent_like_older_lm_studio(fake: FakeLMStudio) -> None:
    assert httpx.get(f"{fake.url}/api/v1/models").status_code == 404


def test_custom_models_replace_the_defaults() -> None:
    with FakeLMStudio(models=[FakeModel("google/gemma-3-270m")]) as fake:
        ids = [m["id"] for m in httpx.get(f"{fake.url}/v1/models").json()["data"]]
    assert ids == ["google/gemma-3-270m"]


def test_unknown_model_gets_404_model_not_found_without_consuming_the_script() -> None:
    with FakeLMStudio(script=[Turn(text="first")]) as fake:
        refused = httpx.post(f"{fake.url}/v1/chat/completions", json={"model": "nope/x", "messages": []})
        answered = _chat(fake)

    assert refused.status_code == 404
    assert refused.json()["error"]["code"] == "model_not_found"
    assert '"nope/x"' in refused.json()["error"]["message"]
    assert answered.json()["choices"][0]["message"]["content"] == "first"


def test_chat_turn_with_tool_calls_renders_openai_message_non_stream() -> None:
    turn = Turn(text="Let me look.", reasoning="need the file", tool_calls=[call("read_file", path="a.txt")],
                usage=(12, 7))
    with FakeLMStudio(script=[turn]) as fake:
        body = _chat(fake).json()

    choice = body["choices"][0]
    message = choice["message"]
    assert choice["finish_reason"] == "tool_calls"
    assert message["content"] == "Let me look."
    assert message["reasoning_content"] == "need the file"
    [tool_call] = message["tool_calls"]
    assert tool_call["type"] == "function" and tool_call["id"]
    assert tool_call["function"]["name"] == "read_file"
    assert json.loads(tool_call["function"]["arguments"]) == {"path": "a.txt"}
    assert body["usage"] == {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}


def test_plain_chat_turn_finishes_with_stop_and_no_tool_calls() -> None:
    with FakeLMStudio(script=[Turn(text="done")]) as fake:
        choice = _chat(fake).json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert "tool_calls" not in choice["message"]


def test_streamed_chat_splits_content_and_tool_call_arguments_into_fragments() -> None:
    turn = Turn(
        text="Reading two files now.",
        reasoning="plan first",
        tool_calls=[call("read_file", path="a.txt"), call("write_file", path="b.txt", content="x")],
    )
    with FakeLMStudio(script=[turn]) as fake:
        response = _chat(fake, stream=True, stream_options={"include_usage": True})

    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.rstrip().endswith("data: [DONE]")
    chunks = _sse_payloads(response)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    content_deltas = [d["content"] for d in deltas if d.get("content")]
    assert len(content_deltas) > 1
    assert "".join(content_deltas) == "Reading two files now."
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "plan first"

    calls: dict[int, dict] = {}
    fragments_per_call: dict[int, int] = {}
    for delta in deltas:
        for fragment in delta.get("tool_calls", []):
            entry = calls.setdefault(fragment["index"], {"id": None, "name": None, "arguments": ""})
            if "id" in fragment:
                entry["id"] = fragment["id"]
                entry["name"] = fragment["function"]["name"]
            arguments = fragment["function"].get("arguments", "")
            if arguments:
                fragments_per_call[fragment["index"]] = fragments_per_call.get(fragment["index"], 0) + 1
            entry["arguments"] += arguments
    assert [calls[i]["name"] for i in sorted(calls)] == ["read_file", "write_file"]
    assert all(calls[i]["id"] for i in calls)
    assert json.loads(calls[1]["arguments"]) == {"path": "b.txt", "content": "x"}
    assert all(count >= 2 for count in fragments_per_call.values())

    finishing = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishing[-1] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


def test_malformed_tool_arguments_are_sent_verbatim() -> None:
    with FakeLMStudio(script=[Turn(tool_calls=[("read_file", '{"path": "a.txt"')])]) as fake:
        message = _chat(fake).json()["choices"][0]["message"]
    assert message["tool_calls"][0]["function"]["arguments"] == '{"path": "a.txt"'


def test_script_is_consumed_in_order_then_reports_exhaustion() -> None:
    with FakeLMStudio(script=[Turn(text="one"), Turn(text="two")]) as fake:
        texts = [_chat(fake).json()["choices"][0]["message"]["content"] for _ in range(3)]
    assert texts == ["one", "two", "(script exhausted)"]


def test_set_script_replaces_the_remaining_turns(fake: FakeLMStudio) -> None:
    fake.set_script([Turn(text="phase two")])
    assert _chat(fake).json()["choices"][0]["message"]["content"] == "phase two"


def test_scripted_error_turns_send_status_and_body_like_lm_studio() -> None:
    overflow = "Trying to keep the first 5000 tokens when context the overflows..."
    script = [Turn(error=(400, overflow)), Turn(error=(404, {"error": {"message": "gone", "code": "model_not_found"}}))]
    with FakeLMStudio(script=script) as fake:
        first, second = _chat(fake), _chat(fake)
    assert (first.status_code, first.json()) == (400, {"error": overflow})
    assert second.status_code == 404 and second.json()["error"]["code"] == "model_not_found"


def test_empty_stream_turn_answers_200_with_no_events() -> None:
    with FakeLMStudio(script=[Turn(empty_stream=True)]) as fake:
        response = _chat(fake, stream=True)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.content == b""


def test_text_completion_returns_the_scripted_text_streamed_or_not() -> None:
    with FakeLMStudio(script=[Turn(text="four"), Turn(text="and five more")]) as fake:
        plain = httpx.post(f"{fake.url}/v1/completions", json={"model": MODEL, "prompt": "2+2="}).json()
        streamed = httpx.post(f"{fake.url}/v1/completions", json={"model": MODEL, "prompt": "x", "stream": True})
    assert plain["choices"][0]["text"] == "four"
    assert "".join(c["choices"][0]["text"] for c in _sse_payloads(streamed)) == "and five more"


def test_embeddings_are_deterministic_small_vectors_per_text(fake: FakeLMStudio) -> None:
    url = f"{fake.url}/v1/embeddings"
    model = "text-embedding-nomic-embed-text-v1.5"
    first = httpx.post(url, json={"model": model, "input": ["alpha", "beta"]}).json()["data"]
    again = httpx.post(url, json={"model": model, "input": "alpha"}).json()["data"]
    assert first[0]["embedding"] == again[0]["embedding"]
    assert first[0]["embedding"] != first[1]["embedding"]
    assert 0 < len(first[0]["embedding"]) <= 16


def test_responses_chain_with_previous_response_id_and_keep_the_conversation() -> None:
    script = [Turn(tool_calls=[call("list_dir", path=".")]), Turn(text="There are 3 files.")]
    with FakeLMStudio(script=script) as fake:
        url = f"{fake.url}/v1/responses"
        first = httpx.post(url, json={"model": MODEL, "input": "what is here?"}).json()
        [function_call] = first["output"]
        output_item = {"type": "function_call_output", "call_id": function_call["call_id"], "output": "a b c"}
        second = httpx.post(url, json={"model": MODEL, "previous_response_id": first["id"],
                                       "input": [output_item]}).json()
        conversation = fake.conversation(second["id"])

    assert first["id"].startswith("resp_") and second["id"] != first["id"]
    assert first["object"] == "response" and first["status"] == "completed"
    assert function_call["type"] == "function_call" and function_call["name"] == "list_dir"
    assert json.loads(function_call["arguments"]) == {"path": "."}
    message = second["output"][0]
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["content"][0] == {"type": "output_text", "text": "There are 3 files.", "annotations": []}
    assert set(second["usage"]) == {"input_tokens", "output_tokens", "total_tokens"}
    assert [item.get("type", item.get("role")) for item in conversation] == [
        "user", "function_call", "function_call_output", "message"
    ]


def test_responses_with_unknown_previous_response_id_get_400(fake: FakeLMStudio) -> None:
    response = httpx.post(f"{fake.url}/v1/responses",
                          json={"model": MODEL, "previous_response_id": "resp_999", "input": "hi"})
    assert response.status_code == 400
    assert "resp_999" in response.json()["error"]["message"]


def test_streamed_responses_emit_the_event_sequence_and_complete_with_the_full_response() -> None:
    turn = Turn(text="Looking around now.", reasoning="think", tool_calls=[call("list_dir", path="src")])
    with FakeLMStudio(script=[turn]) as fake:
        response = httpx.post(f"{fake.url}/v1/responses", json={"model": MODEL, "input": "go", "stream": True})

    events = _sse_payloads(response)
    types = [e["type"] for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert "response.reasoning_text.delta" in types
    assert types.count("response.output_item.added") == types.count("response.output_item.done") == 3
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == "Looking around now."
    argument_deltas = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert len(argument_deltas) >= 2
    [done] = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert "".join(argument_deltas) == done["arguments"] == '{"path": "src"}'
    completed = events[-1]["response"]
    assert [item["type"] for item in completed["output"]] == ["reasoning", "message", "function_call"]
    assert fake.conversation(completed["id"])[-1]["name"] == "list_dir"


def test_disabled_responses_api_answers_404_like_llama_cpp() -> None:
    with FakeLMStudio(responses_api=False) as fake:
        response = httpx.post(f"{fake.url}/v1/responses", json={"model": MODEL, "input": "hi"})
    assert response.status_code == 404


def test_every_request_is_recorded_with_its_body_and_byte_size(fake: FakeLMStudio) -> None:
    httpx.get(f"{fake.url}/v1/models")
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 1000}]}
    raw = json.dumps(payload).encode()
    httpx.post(f"{fake.url}/v1/chat/completions", content=raw, headers={"content-type": "application/json"})

    models, chat = fake.requests
    assert (models.method, models.path, models.body, models.size_bytes) == ("GET", "/v1/models", None, 0)
    assert chat.body == payload and chat.size_bytes == len(raw)
    assert chat.headers["content-type"] == "application/json"
    assert fake.generation_requests() == [chat]
    fake.clear()
    assert fake.requests == []


def test_fail_next_fails_that_many_generation_requests_then_recovers() -> None:
    with FakeLMStudio(script=[Turn(text="recovered")]) as fake:
        fake.fail_next(500, "boom", count=2)
        models = httpx.get(f"{fake.url}/v1/models")
        statuses = [_chat(fake).status_code for _ in range(2)]
        recovered = _chat(fake)
    assert models.status_code == 200
    assert statuses == [500, 500]
    assert recovered.json()["choices"][0]["message"]["content"] == "recovered"


def test_api_key_is_required_as_a_bearer_token_when_set() -> None:
    with FakeLMStudio(api_key="sekret") as fake:
        missing = httpx.get(f"{fake.url}/v1/models")
        wrong = httpx.get(f"{fake.url}/v1/models", headers={"Authorization": "Bearer nope"})
        right = httpx.get(f"{fake.url}/v1/models", headers={"Authorization": "Bearer sekret"})
        recorded = len(fake.requests)
    assert (missing.status_code, wrong.status_code, right.status_code) == (401, 401, 200)
    assert recorded == 3


async def test_callable_script_decides_each_turn_from_the_request() -> None:
    def decide(request: RecordedRequest) -> Turn:
        messages = (request.body or {}).get("messages", [])
        if any(m.get("role") == "tool" for m in messages):
            return Turn(text="got " + messages[-1]["content"])
        return Turn(tool_calls=[call("lookup", key=messages[-1]["content"])])

    with FakeLMStudio(script=decide) as fake:
        async with httpx.AsyncClient(base_url=fake.url) as client:
            first = (await client.post("/v1/chat/completions", json={
                "model": MODEL, "messages": [{"role": "user", "content": "k1"}]})).json()
            [tool_call] = first["choices"][0]["message"]["tool_calls"]
            second = (await client.post("/v1/chat/completions", json={"model": MODEL, "messages": [
                {"role": "user", "content": "k1"},
                {"role": "assistant", "content": "", "tool_calls": [tool_call]},
                {"role": "tool", "tool_call_id": tool_call["id"], "content": "v1"},
            ]})).json()
    assert json.loads(tool_call["function"]["arguments"]) == {"key": "k1"}
    assert second["choices"][0]["message"]["content"] == "got v1"


async def test_latency_applies_to_concurrent_requests_in_parallel() -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    with FakeLMStudio(latency_s=0.2) as fake:
        async with httpx.AsyncClient(base_url=fake.url) as client:
            started = time.perf_counter()
            responses = await asyncio.gather(*(client.post("/v1/chat/completions", json=body) for _ in range(2)))
            elapsed = time.perf_counter() - started
    assert all(r.status_code == 200 for r in responses)
    assert 0.2 <= elapsed < 0.35


async def test_hanging_turn_waits_until_the_client_gives_up() -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    with FakeLMStudio(script=[Turn(hang=True), Turn(text="next")]) as fake:
        async with httpx.AsyncClient(base_url=fake.url) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.post("/v1/chat/completions", json=body, timeout=0.2)
            after = await client.post("/v1/chat/completions", json=body, timeout=5)
    assert after.json()["choices"][0]["message"]["content"] == "next"


def test_stop_releases_a_hanging_request_and_closes_the_port() -> None:
    fake = FakeLMStudio(script=[Turn(hang=True)])
    with fake:
        url = fake.url
        client = httpx.Client(base_url=url, timeout=5)
        # A request left hanging with its connection open must not keep stop() from returning.
        stream = client.stream("POST", "/v1/chat/completions",
                               json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
        pending = threading.Thread(target=lambda: _swallow(stream), daemon=True)
        pending.start()
        deadline = time.monotonic() + 5
        while not fake.generation_requests() and time.monotonic() < deadline:
            pending.join(0.01)
        assert fake.generation_requests()
    pending.join(5)
    client.close()
    assert not pending.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/v1/models", timeout=1)


def _swallow(stream: object) -> None:
    try:
        with stream as response:  # type: ignore[attr-defined]
            response.read()
    except httpx.HTTPError:
        pass
