"""LLMClient against a mocked LM Studio (respx): the error table, retries, breaker, bodies, streams."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import respx

from config import Settings
from llm.exceptions import (
    CircuitOpenError,
    ContextLengthExceededError,
    EndpointNotSupportedError,
    LLMConnectionError,
    LLMRateLimitError,
    LLMResponseError,
    LLMServerError,
    LLMStatusError,
    LLMTimeoutError,
    ModelNotFoundError,
    NoModelLoadedError,
)
from llm.llm_client import ClientOptions, LLMClient
from llm.listing import LoadedInstance, ModelInfo
from llm.models import ResolvedModel
from llm.results import StreamEvent, ToolCall, Usage
from utils.error_handling import CircuitBreaker

BASE = "http://lmstudio.test:1234"
CHAT = f"{BASE}/v1/chat/completions"
RESPONSES = f"{BASE}/v1/responses"

CHAT_OK = {
    "model": "qwen/qwen3-4b",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
}
V0_MODELS = {
    "data": [
        {"id": "text-embedding-nomic", "type": "embeddings", "state": "loaded", "max_context_length": 2048},
        {"id": "google/gemma-3-4b", "type": "vlm", "state": "not-loaded", "max_context_length": 8192},
        {"id": "qwen/qwen3-4b", "type": "llm", "state": "loaded", "max_context_length": 32768},
    ]
}


def settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "lmstudio_base_url": BASE,
        "default_model": "qwen/qwen3-4b",
        "lmstudio_retry_attempts": 1,
        "lmstudio_model_ttl_s": 0,
    }
    values.update(overrides)
    return Settings(**values)


def options(**overrides: object) -> ClientOptions:
    return ClientOptions.from_settings(settings(**overrides))


def resolved(model_id: str = "qwen/qwen3-4b", limit: int = 4) -> ResolvedModel:
    """A model as the catalog would hand it over (the client sends exactly this id)."""
    return ResolvedModel(model_id, "requested", None, asyncio.Semaphore(limit))


QWEN = resolved()


class Sleeps:
    """An injected sleep that records instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


@pytest.fixture
async def client(mock: respx.MockRouter) -> AsyncIterator[LLMClient]:
    async with LLMClient(options(), sleep=Sleeps()) as c:
        yield c


def sent_json(route: respx.Route, call: int = -1) -> dict:
    return json.loads(route.calls[call].request.content)


def sse(*payloads: dict | str, events: bool = False) -> bytes:
    lines = []
    for p in payloads:
        data = p if isinstance(p, str) else json.dumps(p)
        prefix = f"event: {p['type']}\n" if events and isinstance(p, dict) else ""
        lines.append(f"{prefix}data: {data}\n\n")
    return "".join(lines).encode()


def sse_response(body: bytes) -> httpx.Response:
    return httpx.Response(200, content=body, headers={"Content-Type": "text/event-stream"})


# --- the error table -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc", [httpx.ConnectError("refused"), httpx.RemoteProtocolError("closed"), httpx.ReadError("reset")]
)
async def test_transport_failures_become_connection_errors_naming_the_base_url(
    client: LLMClient, mock: respx.MockRouter, exc: httpx.HTTPError
) -> None:
    mock.post(CHAT).mock(side_effect=exc)
    with pytest.raises(LLMConnectionError) as info:
        await client.chat_completion([{"role": "user", "content": "hi"}], model=QWEN)
    assert info.value.base_url == BASE
    assert BASE in str(info.value)
    assert isinstance(info.value.__cause__, type(exc))


@pytest.mark.parametrize(
    ("exc", "setting"),
    [
        (httpx.ReadTimeout("slow"), "LMSTUDIO_REQUEST_TIMEOUT_S"),
        (httpx.ConnectTimeout("slow"), "LMSTUDIO_CONNECT_TIMEOUT_S"),
    ],
)
async def test_timeouts_become_timeout_errors_naming_the_setting_to_raise(
    client: LLMClient, mock: respx.MockRouter, exc: httpx.HTTPError, setting: str
) -> None:
    mock.post(CHAT).mock(side_effect=exc)
    with pytest.raises(LLMTimeoutError, match=setting) as info:
        await client.chat_completion([{"role": "user", "content": "hi"}], model=QWEN)
    assert info.value.__cause__ is exc


async def test_429_becomes_rate_limit_error_with_retry_after(client: LLMClient, mock: respx.MockRouter) -> None:
    mock.post(CHAT).respond(429, json={"error": "slow down"}, headers={"Retry-After": "7"})
    with pytest.raises(LLMRateLimitError) as info:
        await client.chat_completion([], model=QWEN)
    assert (info.value.status_code, info.value.retry_after_s) == (429, 7.0)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (404, {"error": {"message": "Model 'qwen/nope' not found", "code": "model_not_found"}}),
        (400, {"error": "model qwen2.5/nope was not found. Please check the name"}),
    ],
)
async def test_a_model_the_server_refuses_is_model_not_found_pointing_to_list_models(
    client: LLMClient, mock: respx.MockRouter, status: int, body: dict
) -> None:
    models = mock.get(url__regex=r".*/models$").respond(json=V0_MODELS)
    mock.post(CHAT).respond(status, json=body)
    with pytest.raises(ModelNotFoundError, match="list_models") as info:
        await client.chat_completion([], model=resolved("qwen/nope"))
    assert info.value.model_name == "qwen/nope"
    # Classifying an error does no I/O: the list is the catalog's business.
    assert models.call_count == 0


@pytest.mark.parametrize("status", [400, 404])
async def test_no_models_loaded_tells_the_user_to_load_one_or_set_default_model(
    client: LLMClient, mock: respx.MockRouter, status: int
) -> None:
    text = "No models loaded. Please load a model in the developer page or use the `lms load` command."
    mock.post(CHAT).respond(status, json={"error": {"message": text}})
    with pytest.raises(NoModelLoadedError, match="DEFAULT_MODEL") as info:
        await client.chat_completion([], model=QWEN)
    assert info.value.status_code == status


@pytest.mark.parametrize(
    "body",
    [
        {"error": "Trying to keep the first 5000 tokens when context the overflows. However, the model is loaded "
                  "with context length of only 4096 tokens"},
        {"error": {"message": "the request exceeds the available context size (n_ctx 4096)"}},
        {"error": "The number of tokens to keep from the initial prompt is greater than the context window"},
    ],
)
async def test_context_overflow_becomes_context_length_error_whether_error_is_string_or_object(
    client: LLMClient, mock: respx.MockRouter, body: dict
) -> None:
    mock.post(CHAT).respond(400, json=body)
    with pytest.raises(ContextLengthExceededError) as info:
        await client.chat_completion([], model=QWEN)
    assert info.value.status_code == 400
    assert "context" in info.value.body


@pytest.mark.parametrize("status", [404, 405, 501])
async def test_missing_route_becomes_endpoint_not_supported(
    client: LLMClient, mock: respx.MockRouter, status: int
) -> None:
    mock.post(RESPONSES).respond(status, text="Not Found")
    with pytest.raises(EndpointNotSupportedError) as info:
        await client.create_response("hi", model=QWEN)
    assert info.value.status_code == status


async def test_unexpected_endpoint_error_in_a_200_body_becomes_endpoint_not_supported(
    client: LLMClient, mock: respx.MockRouter
) -> None:
    mock.post(RESPONSES).respond(200, json={"error": "Unexpected endpoint or method. (POST /v1/responses)"})
    with pytest.raises(EndpointNotSupportedError):
        await client.create_response("hi", model=QWEN)


async def test_other_4xx_becomes_status_error_with_code_and_body(client: LLMClient, mock: respx.MockRouter) -> None:
    mock.post(CHAT).respond(422, json={"error": {"message": "messages must be a list"}})
    with pytest.raises(LLMStatusError) as info:
        await client.chat_completion([], model=QWEN)
    assert type(info.value) is LLMStatusError
    assert info.value.status_code == 422
    assert "messages must be a list" in info.value.body
    assert "messages must be a list" in str(info.value)


async def test_5xx_becomes_server_error(client: LLMClient, mock: respx.MockRouter) -> None:
    mock.post(CHAT).respond(500, text="llama_decode failed")
    with pytest.raises(LLMServerError) as info:
        await client.chat_completion([], model=QWEN)
    assert (info.value.status_code, info.value.body) == (500, "llama_decode failed")


async def test_invalid_json_body_becomes_response_error(client: LLMClient, mock: respx.MockRouter) -> None:
    mock.post(CHAT).respond(200, text="<html>oops</html>")
    with pytest.raises(LLMResponseError, match="not valid JSON") as info:
        await client.chat_completion([], model=QWEN)
    assert isinstance(info.value.__cause__, json.JSONDecodeError)


async def test_body_of_the_wrong_shape_becomes_response_error(client: LLMClient, mock: respx.MockRouter) -> None:
    mock.post(CHAT).respond(200, json={"object": "chat.completion"})
    with pytest.raises(LLMResponseError, match="unexpected shape"):
        await client.chat_completion([], model=QWEN)


async def test_empty_200_stream_says_the_context_may_be_full(client: LLMClient, mock: respx.MockRouter) -> None:
    mock.post(CHAT).mock(return_value=sse_response(sse({"choices": [{"delta": {"role": "assistant"}}]}, "[DONE]")))
    with pytest.raises(ContextLengthExceededError, match="without any output") as info:
        await client.chat_completion([], model=QWEN, stream=True)
    assert info.value.status_code == 200


async def test_error_event_in_a_responses_stream_is_translated(client: LLMClient, mock: respx.MockRouter) -> None:
    body = sse({"type": "error", "message": "Context length exceeded: n_ctx 4096"}, events=True)
    mock.post(RESPONSES).mock(return_value=sse_response(body))
    with pytest.raises(ContextLengthExceededError):
        await client.create_response("hi", model=QWEN, stream=True)


# --- retries and the breaker -----------------------------------------------------------------


async def test_500_is_retried_until_success(mock: respx.MockRouter) -> None:
    sleeps = Sleeps()
    route = mock.post(CHAT)
    route.side_effect = [httpx.Response(500, text="busy"), httpx.Response(200, json=CHAT_OK)]
    async with LLMClient(options(lmstudio_retry_attempts=3), sleep=sleeps) as client:
        result = await client.chat_completion([{"role": "user", "content": "hi"}], model=QWEN)
    assert result.content == "Hello"
    assert route.call_count == 2
    assert len(sleeps.delays) == 1


async def test_400_is_not_retried(mock: respx.MockRouter) -> None:
    route = mock.post(CHAT).respond(400, json={"error": "bad request"})
    async with LLMClient(options(lmstudio_retry_attempts=3), sleep=Sleeps()) as client:
        with pytest.raises(LLMStatusError):
            await client.chat_completion([], model=QWEN)
    assert route.call_count == 1


async def test_persistent_503_raises_server_error_after_all_attempts(mock: respx.MockRouter) -> None:
    sleeps = Sleeps()
    route = mock.post(CHAT).respond(503, text="unavailable")
    async with LLMClient(options(lmstudio_retry_attempts=4), sleep=sleeps) as client:
        with pytest.raises(LLMServerError):
            await client.chat_completion([], model=QWEN)
    assert route.call_count == 4
    assert len(sleeps.delays) == 3


async def test_circuit_opens_after_connect_errors_fails_fast_then_closes_after_reset(mock: respx.MockRouter) -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout_s=10, clock=clock)
    route = mock.post(CHAT).mock(side_effect=httpx.ConnectError("refused"))
    async with LLMClient(options(), breaker=breaker, sleep=Sleeps()) as client:
        for _ in range(2):
            with pytest.raises(LLMConnectionError):
                await client.chat_completion([], model=QWEN)
        with pytest.raises(CircuitOpenError) as info:
            await client.chat_completion([], model=QWEN)
        assert route.call_count == 2
        assert info.value.retry_after_s == pytest.approx(10)

        clock.now = 10
        route.mock(side_effect=None, return_value=httpx.Response(200, json=CHAT_OK))
        assert (await client.chat_completion([], model=QWEN)).content == "Hello"
    assert breaker.state == "closed"


async def test_circuit_open_error_is_not_retried(mock: respx.MockRouter) -> None:
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout_s=10, clock=Clock())
    route = mock.post(CHAT).mock(side_effect=httpx.ConnectError("refused"))
    sleeps = Sleeps()
    async with LLMClient(options(lmstudio_retry_attempts=5), breaker=breaker, sleep=sleeps) as client:
        with pytest.raises(CircuitOpenError):
            await client.chat_completion([], model=QWEN)
    assert route.call_count == 2
    assert len(sleeps.delays) == 2


async def test_a_stream_is_retried_before_its_body_but_not_after_it_started(mock: respx.MockRouter) -> None:
    class BreaksMidway(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield sse({"choices": [{"delta": {"content": "Hel"}}]})
            raise httpx.ReadError("connection reset")

    route = mock.post(CHAT)
    route.side_effect = [httpx.Response(503), httpx.Response(200, stream=BreaksMidway())]
    async with LLMClient(options(lmstudio_retry_attempts=3), sleep=Sleeps()) as client:
        with pytest.raises(LLMConnectionError):
            await client.chat_completion([], model=QWEN, stream=True)
    assert route.call_count == 2


# --- request bodies and headers --------------------------------------------------------------


async def test_bearer_header_is_sent_only_when_an_api_key_is_set(mock: respx.MockRouter) -> None:
    route = mock.post(CHAT).respond(json=CHAT_OK)
    async with LLMClient(options(lmstudio_api_key="s3cret")) as client:
        await client.chat_completion([], model=QWEN)
    async with LLMClient(options()) as client:
        await client.chat_completion([], model=QWEN)
    assert route.calls[0].request.headers["Authorization"] == "Bearer s3cret"
    assert "Authorization" not in route.calls[1].request.headers


async def test_ttl_is_sent_when_set_and_left_out_when_zero(mock: respx.MockRouter) -> None:
    route = mock.post(CHAT).respond(json=CHAT_OK)
    async with LLMClient(options(lmstudio_model_ttl_s=600)) as client:
        await client.chat_completion([], model=QWEN)
    async with LLMClient(options(lmstudio_model_ttl_s=0)) as client:
        await client.chat_completion([], model=QWEN)
    assert sent_json(route, 0)["ttl"] == 600
    assert "ttl" not in sent_json(route, 1)


async def test_list_models_falls_back_through_the_three_listings_and_remembers_the_one_that_worked(
    mock: respx.MockRouter,
) -> None:
    v1_api = mock.get(f"{BASE}/api/v1/models").respond(404)
    v0_api = mock.get(f"{BASE}/api/v0/models").respond(404)
    openai = mock.get(f"{BASE}/v1/models").respond(json={"data": [{"id": "a/b"}, {"id": "c/d"}]})
    async with LLMClient(options()) as client:
        first = await client.list_models()
        await client.list_models()
    assert first == [ModelInfo(id="a/b"), ModelInfo(id="c/d")]
    assert (v1_api.call_count, v0_api.call_count, openai.call_count) == (1, 1, 2)


async def test_list_models_reads_lm_studio_0_4_listing(mock: respx.MockRouter) -> None:
    mock.get(f"{BASE}/api/v1/models").respond(
        json={
            "models": [
                {
                    "key": "qwen/qwen3-4b",
                    "type": "llm",
                    "max_context_length": 32768,
                    "loaded_instances": [{"id": "qwen/qwen3-4b"}, {"id": "qwen/qwen3-4b:2"}],
                    "capabilities": {"trained_for_tool_use": True},
                }
            ]
        }
    )
    async with LLMClient(options()) as client:
        [model] = await client.list_models()
    assert model == ModelInfo(
        id="qwen/qwen3-4b",
        type="llm",
        state="loaded",
        max_context_length=32768,
        loaded_instances=("qwen/qwen3-4b", "qwen/qwen3-4b:2"),
        instances=(LoadedInstance("qwen/qwen3-4b"), LoadedInstance("qwen/qwen3-4b:2")),
        trained_for_tool_use=True,
    )


# --- the endpoints ---------------------------------------------------------------------------


async def test_chat_completion_sends_tools_and_reads_tool_calls(client: LLMClient, mock: respx.MockRouter) -> None:
    body = {
        "model": "qwen/qwen3-4b",
        "choices": [
            {
                "finish_reason": "tool_calls",
                "message": {
                    "content": "",
                    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
                },
            }
        ],
    }
    route = mock.post(CHAT).respond(json=body)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    result = await client.chat_completion([{"role": "user", "content": "go"}], model=QWEN, tools=tools, tool_choice="auto")
    assert result.tool_calls == [ToolCall(id="c1", name="f", arguments="{}")]
    sent = sent_json(route)
    assert (sent["tools"], sent["tool_choice"], sent["model"]) == (tools, "auto", "qwen/qwen3-4b")
    assert "max_tokens" not in sent


async def test_embeddings_come_back_in_input_order(client: LLMClient, mock: respx.MockRouter) -> None:
    route = mock.post(f"{BASE}/v1/embeddings").respond(
        json={
            "model": "nomic",
            "data": [{"index": 1, "embedding": [0.3, 0.4]}, {"index": 0, "embedding": [0.1, 0.2]}],
            "usage": {"prompt_tokens": 4, "total_tokens": 4},
        }
    )
    result = await client.generate_embeddings(["a", "b"], model=resolved("nomic"))
    assert result.embeddings == [[0.1, 0.2], [0.3, 0.4]]
    assert result.usage == Usage(input_tokens=4, output_tokens=None, total_tokens=4)
    assert sent_json(route) == {"model": "nomic", "input": ["a", "b"]}


async def test_text_completion_sends_prompt_and_stop(client: LLMClient, mock: respx.MockRouter) -> None:
    route = mock.post(f"{BASE}/v1/completions").respond(
        json={"model": "m", "choices": [{"text": " upon a time", "finish_reason": "stop"}]}
    )
    result = await client.text_completion("Once", model=QWEN, stop=["\n"], max_tokens=10)
    assert (result.text, result.finish_reason) == (" upon a time", "stop")
    assert sent_json(route) == {"model": "qwen/qwen3-4b", "prompt": "Once", "temperature": 0.7, "max_tokens": 10,
                                "stop": ["\n"]}


async def test_text_completion_streams_text_chunks(client: LLMClient, mock: respx.MockRouter) -> None:
    chunks = [{"choices": [{"text": "a"}]}, {"choices": [{"text": "b", "finish_reason": "length"}]}, "[DONE]"]
    mock.post(f"{BASE}/v1/completions").mock(return_value=sse_response(sse(*chunks)))
    result = await client.text_completion("x", model=QWEN, stream=True)
    assert (result.text, result.finish_reason) == ("ab", "length")


async def test_create_response_sends_previous_response_id_and_flat_tools(
    client: LLMClient, mock: respx.MockRouter
) -> None:
    route = mock.post(RESPONSES).respond(
        json={
            "id": "resp_2",
            "status": "completed",
            "output": [{"type": "function_call", "call_id": "call_1", "name": "f", "arguments": '{"a": 1}'}],
        }
    )
    flat = {"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}}
    items = [{"type": "function_call_output", "call_id": "call_0", "output": "ok"}]
    result = await client.create_response(
        items, model=QWEN, previous_response_id="resp_1", tools=[flat], instructions="be brief"
    )
    sent = sent_json(route)
    assert sent["previous_response_id"] == "resp_1"
    assert sent["tools"] == [{"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}}]
    assert (sent["input"], sent["instructions"]) == (items, "be brief")
    assert "temperature" not in sent
    assert (result.id, result.tool_calls) == ("resp_2", [ToolCall(id="call_1", name="f", arguments='{"a": 1}')])


async def test_streaming_chat_joins_tool_call_fragments_and_reports_each_delta(
    client: LLMClient, mock: respx.MockRouter
) -> None:
    chunks = [
        {"model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "reasoning_content": "need file"}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "", "type": "function", "function": {"name": "read_file", "arguments": ""}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"path":'}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ' "a"}'}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}},
        "[DONE]",
    ]
    route = mock.post(CHAT).mock(return_value=sse_response(sse(*chunks)))
    seen: list[StreamEvent] = []

    async def on_event(event: StreamEvent) -> None:
        seen.append(event)

    result = await client.chat_completion([], model=QWEN, stream=True, on_event=on_event)
    assert result.tool_calls == [ToolCall(id="call_0", name="read_file", arguments='{"path": "a"}')]
    assert (result.reasoning, result.finish_reason, result.usage) == ("need file", "tool_calls", Usage(9, 3, 12))
    assert [(e.kind, e.delta) for e in seen] == [
        ("reasoning", "need file"), ("tool_call", "read_file"), ("tool_call", '{"path":'), ("tool_call", ' "a"}')
    ]
    assert sent_json(route)["stream"] is True


async def test_streaming_responses_reads_events_and_the_completed_response(
    client: LLMClient, mock: respx.MockRouter
) -> None:
    completed = {
        "id": "resp_9",
        "status": "completed",
        "model": "openai/gpt-oss-20b",
        "output": [
            {"type": "reasoning", "content": [{"type": "reasoning_text", "text": "think"}]},
            {"type": "message", "content": [{"type": "output_text", "text": "Hi!"}]},
        ],
        "usage": {"input_tokens": 11, "output_tokens": 2, "total_tokens": 13},
    }
    body = sse(
        {"type": "response.created", "response": {"id": "resp_9", "status": "in_progress"}},
        {"type": "response.reasoning_text.delta", "delta": "think"},
        {"type": "response.output_text.delta", "delta": "Hi"},
        {"type": "response.output_text.delta", "delta": "!"},
        {"type": "response.completed", "response": completed},
        events=True,
    )
    mock.post(RESPONSES).mock(return_value=sse_response(body))
    seen: list[StreamEvent] = []

    async def on_event(event: StreamEvent) -> None:
        seen.append(event)

    result = await client.create_response("hello", model=QWEN, stream=True, on_event=on_event)
    assert (result.id, result.text, result.reasoning, result.status) == ("resp_9", "Hi!", "think", "completed")
    assert result.usage == Usage(11, 2, 13)
    assert [e.delta for e in seen] == ["think", "Hi", "!"]
    assert seen[-1].chars_so_far == len("thinkHi!")


# --- the HTTP client and the queue ------------------------------------------------------------


async def test_an_injected_http_client_is_used_and_left_open(mock: respx.MockRouter) -> None:
    mock.post(CHAT).respond(json=CHAT_OK)
    through_shared: list[str] = []

    async def record(request: httpx.Request) -> None:
        through_shared.append(request.url.path)

    async with httpx.AsyncClient(event_hooks={"request": [record]}) as http:
        client = LLMClient(options(), http=http)
        await client.chat_completion([], model=resolved("google/gemma-3-4b"))
        await client.aclose()
        assert not http.is_closed
    assert through_shared == ["/v1/chat/completions"]


async def test_requests_carry_the_timeouts_from_settings(mock: respx.MockRouter) -> None:
    route = mock.post(CHAT).respond(json=CHAT_OK)
    config = settings(lmstudio_connect_timeout_s=2, lmstudio_request_timeout_s=30)
    async with LLMClient(ClientOptions.from_settings(config)) as client:
        await client.chat_completion([], model=QWEN)
    timeouts = route.calls[0].request.extensions["timeout"]
    assert (timeouts["connect"], timeouts["read"]) == (2, 30)


async def test_aclose_closes_the_http_client_the_client_made(mock: respx.MockRouter) -> None:
    route = mock.post(CHAT).respond(json=CHAT_OK)
    client = LLMClient(options())
    await client.chat_completion([], model=QWEN)
    await client.aclose()
    with pytest.raises(RuntimeError):
        await client.chat_completion([], model=QWEN)
    assert route.call_count == 1


async def test_requests_to_one_model_wait_in_its_queue(mock: respx.MockRouter) -> None:
    in_flight, peak = 0, 0
    release = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await release.wait()
        in_flight -= 1
        return httpx.Response(200, json=CHAT_OK)

    mock.post(CHAT).mock(side_effect=slow)
    a_b, c_d = resolved("a/b", limit=2), resolved("c/d", limit=2)
    async with LLMClient(options()) as client:
        calls = [asyncio.create_task(client.chat_completion([], model=a_b)) for _ in range(4)]
        other = asyncio.create_task(client.chat_completion([], model=c_d))
        for _ in range(20):
            await asyncio.sleep(0)
        assert peak == 3  # two for a/b, one for c/d
        release.set()
        await asyncio.wait_for(asyncio.gather(*calls, other), timeout=5)


async def test_lm_studio_0_4s_embedding_type_reads_as_embeddings(mock: respx.MockRouter) -> None:
    mock.get(f"{BASE}/api/v1/models").respond(json={"models": [{"key": "nomic-embed", "type": "embedding"}]})
    async with LLMClient(options()) as client:
        [model] = await client.list_models()
    assert model.type == "embeddings"
