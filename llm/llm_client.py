"""`LLMClient`: every HTTP request to one model server (LM Studio or any OpenAI-compatible one).

Each request goes through `_send` (circuit breaker, retries of what a retry can fix) and each
failure through `llm.error_mapping.map_error`, the one place `httpx` errors and error statuses
become `LLMError`s (its docstring has the table). Retried (per request), with backoff: what
`llm.error_mapping.worth_retrying` allows (connect failures, 429, 5xx; never an open circuit, never
a generation's read timeout); a streamed request only until its response headers arrive, never once
the body has started. Apart from that, a request whose reused keep-alive connection the server had
closed (`StaleConnectionError`) is sent once more at once on a new connection, logged as that.

Generation methods take a `ResolvedModel` from the catalog (`llm.models`): which model is the
catalog's decision, and the request waits in that model's queue.

Bounds (`llm.bounds`): a generation call, from its wait in the model's queue to the last byte of
the answer, retries included, ends within LMSTUDIO_CALL_TIMEOUT_S; no answer, streamed or not, is
read past LMSTUDIO_MAX_ANSWER_MB.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from config import Settings
from llm.error_mapping import (
    StatusFailure,
    StreamEndedEarly,
    Where,
    error_message,
    json_or_text,
    map_error,
    worth_retrying,
)
from llm.bounds import bounded_call, buffered, capped_bytes
from llm.exceptions import (
    RETRYABLE_ERRORS,
    CircuitOpenError,
    LLMConnectionError,
    LLMError,
    LLMResponseError,
    LLMTimeoutError,
    ModelLoadError,
    StaleConnectionError,
)
from llm.listing import ModelInfo, parse_models
from llm.models import ResolvedModel
from llm.results import (
    ChatResult,
    CompletionResult,
    EmbeddingsResult,
    LoadResult,
    OnEvent,
    ResponseResult,
    embeddings_result_from_body,
    load_result_from_body,
)
from llm.streaming import (
    ChatStreamAccumulator,
    ResponsesStreamAccumulator,
    aiter_sse,
    chat_result_from_body,
    completion_result_from_body,
    response_result_from_body,
)
from utils.error_handling import CircuitBreaker, CircuitBreakerOpen, retry_with_backoff
from utils.metrics import Metrics, tracer

logger = logging.getLogger(__name__)

T = TypeVar("T")

_MODEL_ROUTES = ("/api/v1/models", "/api/v0/models", "/v1/models")
_NATIVE_MODELS = "/api/v1/models"


@dataclass(frozen=True)
class ClientOptions:
    """What the client needs to know about its server and how patient to be."""

    base_url: str
    name: str = "lmstudio"  # the server's name among the bridge's backends (labels its metrics)
    api_key: str | None = None
    connect_timeout_s: float = 5.0
    request_timeout_s: float = 300.0
    retry_attempts: int = 3
    retry_base_delay_s: float = 0.5
    retry_max_delay_s: float = 8.0
    circuit_failures: int = 5
    circuit_reset_s: float = 15.0
    model_ttl_s: int = 600
    max_connections: int = 20
    call_timeout_s: float = 600.0
    max_answer_bytes: int = 32_000_000

    @classmethod
    def from_settings(cls, settings: Settings) -> ClientOptions:
        return cls(
            base_url=settings.base_url,
            api_key=settings.lmstudio_api_key.get_secret_value() if settings.lmstudio_api_key else None,
            connect_timeout_s=settings.lmstudio_connect_timeout_s,
            request_timeout_s=settings.lmstudio_request_timeout_s,
            retry_attempts=settings.lmstudio_retry_attempts,
            retry_base_delay_s=settings.lmstudio_retry_base_delay_s,
            retry_max_delay_s=settings.lmstudio_retry_max_delay_s,
            circuit_failures=settings.lmstudio_circuit_failures,
            circuit_reset_s=settings.lmstudio_circuit_reset_s,
            model_ttl_s=settings.lmstudio_model_ttl_s,
            call_timeout_s=settings.lmstudio_call_timeout_s,
            max_answer_bytes=int(settings.lmstudio_max_answer_mb * 1_000_000),
            # Several models can each have their slots in flight, plus model listings.
            max_connections=(settings.lmstudio_max_concurrency or 4) * 4 + 4,
        )


class LLMClient:
    """Client of one server's OpenAI-compatible and native APIs; an async context manager."""

    def __init__(
        self,
        options: ClientOptions,
        *,
        http: httpx.AsyncClient | None = None,
        breaker: CircuitBreaker | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.options = options
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(options.request_timeout_s, connect=options.connect_timeout_s),
            limits=httpx.Limits(max_connections=options.max_connections, max_keepalive_connections=options.max_connections),
        )
        self._breaker = breaker or CircuitBreaker(options.circuit_failures, options.circuit_reset_s, name=options.base_url)
        self.metrics = metrics if metrics is not None else Metrics()
        self._models_route: str | None = None
        self._headers = {"Accept": "application/json"}
        if options.api_key is not None:
            self._headers["Authorization"] = f"Bearer {options.api_key}"
        retrying = functools.partial(
            retry_with_backoff,
            max_retries=options.retry_attempts,
            base_delay=options.retry_base_delay_s,
            max_delay=options.retry_max_delay_s,
            exceptions=RETRYABLE_ERRORS,
            on_retry=lambda error, attempt, delay: self.metrics.inc(
                "llm_retries", kind=type(error).__name__, server=options.name
            ),
            sleep=sleep,
        )
        self._send_listing = retrying(should_retry=functools.partial(worth_retrying, generation=False))(
            self._send_once
        )
        self._send_generation = retrying(should_retry=functools.partial(worth_retrying, generation=True))(
            self._send_once
        )

    @property
    def base_url(self) -> str:
        return self.options.base_url

    @property
    def breaker_state(self) -> str:
        """`closed`, `open` (failing fast after repeated connection failures) or `half_open`."""
        return self._breaker.state

    async def aclose(self) -> None:
        """Close the HTTP client if this client created it."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- models ------------------------------------------------------------------------------

    async def list_models(self) -> list[ModelInfo]:
        """The server's models, from the richest listing it has (the route that worked is kept).

        Raises:
            LLMConnectionError, LLMTimeoutError: the server cannot be reached.
            LLMResponseError: no listing route answered usefully.
        """
        known = self._models_route
        *fallible, last = (known,) if known else _MODEL_ROUTES
        for route in fallible:
            try:
                return await self._list_models_from(route)
            except LLMResponseError as exc:
                # An older LM Studio, or another server, lacks the richer listings.
                logger.debug("Model listing %s unusable, trying the next: %s", route, exc)
        return await self._list_models_from(last)

    async def _list_models_from(self, route: str) -> list[ModelInfo]:
        response = await self._send("GET", route, None, None, False)
        try:
            models = parse_models(response.json())
        except ValueError as exc:
            raise self._error(exc, route) from exc
        self._models_route = route
        return models

    @property
    def has_load_api(self) -> bool:
        """Whether the server lists its models through LM Studio 0.4's native API, which also loads them."""
        return self._models_route == _NATIVE_MODELS

    async def load_model(self, model_id: str, *, context_length: int | None = None) -> LoadResult:
        """POST /api/v1/models/load (LM Studio 0.4): load `model_id`, with `context_length` when given.

        The route takes no `ttl`: a model loaded this way stays until it is unloaded or evicted.

        Raises:
            ModelLoadError: LM Studio answered, but did not load it (its reason in the message).
            LLMConnectionError, LLMTimeoutError: the server cannot be reached.
        """
        body: dict[str, object] = {"model": model_id, "echo_load_config": True}
        if context_length is not None:
            body["context_length"] = context_length
        try:
            return await self._post_parsed(
                _NATIVE_MODELS + "/load", body, model_id, lambda data: load_result_from_body(data, model_id)
            )
        except LLMResponseError as exc:
            raise ModelLoadError(model_id, exc.message, exc) from exc

    # --- generation --------------------------------------------------------------------------

    async def chat_completion(
        self,
        messages: list[dict[str, Any]],
        *,
        model: ResolvedModel,
        temperature: float = 0.7,
        max_tokens: int | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        response_format: dict[str, Any] | None = None,
        stream: bool = False,
        on_event: OnEvent | None = None,
    ) -> ChatResult:
        """POST /v1/chat/completions; with `stream` the deltas go to `on_event` as they arrive."""
        body = self._generation_body(
            model.id,
            messages=messages,
            temperature=temperature,
            max_tokens=max_tokens,
            tools=tools or None,
            tool_choice=tool_choice,
            response_format=response_format,
        )
        path = "/v1/chat/completions"
        async with bounded_call(model.queue, self.options.call_timeout_s, url=self.base_url + path, model=model.id):
            if not stream:
                return await self._post_parsed(path, body, model.id, chat_result_from_body)
            accumulator = ChatStreamAccumulator()
            await self._stream_chat(path, body, model.id, accumulator, on_event)
            return accumulator.result()

    async def text_completion(
        self,
        prompt: str,
        *,
        model: ResolvedModel,
        temperature: float = 0.7,
        max_tokens: int | None = None,
        stop: list[str] | None = None,
        stream: bool = False,
        on_event: OnEvent | None = None,
    ) -> CompletionResult:
        """POST /v1/completions (raw text continuation)."""
        body = self._generation_body(model.id, prompt=prompt, temperature=temperature, max_tokens=max_tokens, stop=stop)
        path = "/v1/completions"
        async with bounded_call(model.queue, self.options.call_timeout_s, url=self.base_url + path, model=model.id):
            if not stream:
                return await self._post_parsed(path, body, model.id, completion_result_from_body)
            accumulator = ChatStreamAccumulator()
            await self._stream_chat(path, body, model.id, accumulator, on_event)
            return accumulator.completion_result()

    async def generate_embeddings(self, input: str | list[str], *, model: ResolvedModel) -> EmbeddingsResult:
        """POST /v1/embeddings; one vector per input, in input order."""
        async with bounded_call(
            model.queue, self.options.call_timeout_s, url=self.base_url + "/v1/embeddings", model=model.id
        ):
            return await self._post_parsed(
                "/v1/embeddings", self._generation_body(model.id, input=input), model.id, embeddings_result_from_body
            )

    async def create_response(
        self,
        input: str | list[dict[str, Any]],
        *,
        model: ResolvedModel,
        previous_response_id: str | None = None,
        tools: list[dict[str, Any]] | None = None,
        instructions: str | None = None,
        temperature: float | None = None,
        max_output_tokens: int | None = None,
        text_format: dict[str, Any] | None = None,
        stream: bool = False,
        on_event: OnEvent | None = None,
    ) -> ResponseResult:
        """POST /v1/responses (stateful: pass the last result's id as `previous_response_id`).

        Tools are taken in the flat form this route uses (`FunctionSpec.for_responses()`);
        `text_format` is sent as `text.format` (structured output; LM Studio does not enforce it).

        Raises:
            EndpointNotSupportedError: the server has no /v1/responses.
        """
        body = self._generation_body(
            model.id,
            input=input,
            previous_response_id=previous_response_id,
            tools=tools or None,
            instructions=instructions,
            temperature=temperature,
            max_output_tokens=max_output_tokens,
            text={"format": text_format} if text_format is not None else None,
        )
        path = "/v1/responses"
        async with bounded_call(model.queue, self.options.call_timeout_s, url=self.base_url + path, model=model.id):
            if not stream:
                return await self._post_parsed(path, body, model.id, response_result_from_body)
            return await self._stream_response(path, body, model.id, on_event)

    # --- the request path --------------------------------------------------------------------

    def _generation_body(self, model: str, **fields: object) -> dict[str, object]:
        body: dict[str, object] = {"model": model}
        body.update((key, value) for key, value in fields.items() if value is not None)
        if self.options.model_ttl_s > 0:
            body["ttl"] = self.options.model_ttl_s
        return body

    def _error(self, problem: BaseException | StatusFailure, path: str, model: str | None = None, *,
               mid_stream: bool = False, reused_connection: bool = False) -> LLMError:
        where = Where(self.base_url, path, self.options.connect_timeout_s, self.options.request_timeout_s, model)
        return map_error(problem, where, mid_stream=mid_stream, reused_connection=reused_connection)

    async def _send(
        self, method: str, path: str, body: dict[str, object] | None, model: str | None, stream: bool
    ) -> httpx.Response:
        """Send one request with the retry policy of its kind (a POST runs the model); a successful response."""
        send = self._send_generation if method == "POST" else self._send_listing
        return await send(method, path, body, model, stream)

    async def _send_once(
        self, method: str, path: str, body: dict[str, object] | None, model: str | None, stream: bool
    ) -> httpx.Response:
        """One attempt; sent again at once, on a new connection, if the server had closed the reused one."""
        try:
            return await self._attempt(method, path, body, model, stream)
        except StaleConnectionError as exc:
            logger.info("%s: sending the request again on a new connection", exc)
            self.metrics.inc("llm_stale_connections", server=self.options.name)
            return await self._attempt(method, path, body, model, stream)

    async def _attempt(
        self, method: str, path: str, body: dict[str, object] | None, model: str | None, stream: bool
    ) -> httpx.Response:
        """Breaker check, request, status check. Returns a successful response."""
        try:
            self._breaker.before_call()
        except CircuitBreakerOpen as exc:
            raise CircuitOpenError(self.base_url, exc.retry_after_s) from exc
        connection = _ConnectionTrace()
        request = self._http.build_request(
            method, self.base_url + path, json=body, headers=self._headers, extensions={"trace": connection.record}
        )
        logger.debug("%s %s (model %s, stream %s)", method, path, model, stream)
        self.metrics.inc("llm_requests", endpoint=path, server=self.options.name)
        started = time.perf_counter()
        try:
            # The span covers the wait for the response headers, and the body unless streamed.
            with tracer().start_as_current_span("llm_request") as span:
                span.set_attribute("http.route", path)
                span.set_attribute("llm.model", model or "")
                response = await self._http.send(request, stream=True)
                span.set_attribute("http.status_code", response.status_code)
                if not stream or response.is_error:
                    response = await buffered(response, self.options.max_answer_bytes)
        except httpx.HTTPError as exc:
            error = self._error(exc, path, model, reused_connection=connection.reused)
            self.metrics.inc("llm_failures", kind=type(error).__name__, server=self.options.name)
            # A closed idle connection says nothing against the server: it answered on it before.
            if isinstance(error, (LLMConnectionError, LLMTimeoutError)) and not isinstance(error, StaleConnectionError):
                self._breaker.record_failure()
            raise error from exc
        self._breaker.record_success()
        self.metrics.observe(
            "llm_request_ms", (time.perf_counter() - started) * 1000, endpoint=path, server=self.options.name
        )
        if not response.is_error:
            return response
        error = self._error(StatusFailure.from_response(response), path, model)
        self.metrics.inc("llm_failures", kind=type(error).__name__, server=self.options.name)
        raise error

    async def _post_parsed(
        self, path: str, body: dict[str, object], model: str, parse: Callable[[dict[str, Any]], T]
    ) -> T:
        response = await self._send("POST", path, body, model, False)
        try:
            data = response.json()
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        except ValueError as exc:
            raise self._error(exc, path, model) from exc
        if data.get("error") and not {"choices", "output", "data"} & data.keys():
            raise self._error(StatusFailure.in_200(error_message(data)[0], response.text), path, model)
        try:
            return parse(data)
        except ValueError as exc:
            raise self._error(exc, path, model) from exc

    async def _stream_payloads(
        self, path: str, body: dict[str, object], model: str
    ) -> AsyncIterator[tuple[str | None, dict[str, Any]]]:
        """The JSON payloads of a streamed answer with their SSE event names."""
        response = await self._send("POST", path, {**body, "stream": True}, model, True)
        try:
            if "json" in response.headers.get("content-type", ""):
                # Not a stream at all (an error, or a proxy's answer): judge it by its body, not as an
                # empty stream, which would read as LM Studio's context-overflow bug.
                self._raise_for_json_instead_of_stream(await response.aread(), path, model)
            async for sse in aiter_sse(capped_bytes(response, self.options.max_answer_bytes)):
                try:
                    payload = sse.json()
                    if not isinstance(payload, dict):
                        raise ValueError(f"expected a JSON object in the stream, got {sse.data[:100]!r}")
                except ValueError as exc:
                    raise self._error(exc, path, model) from exc
                yield sse.event, payload
        except httpx.HTTPError as exc:
            raise self._error(exc, path, model, mid_stream=True) from exc
        finally:
            await response.aclose()

    def _raise_for_json_instead_of_stream(self, raw: bytes, path: str, model: str) -> None:
        text = raw.decode("utf-8", errors="replace")
        if not text.strip():
            return  # an empty body is handled like an empty stream
        data = json_or_text(text)
        message = error_message(data)[0] if isinstance(data, dict) and data.get("error") else ""
        if message:
            raise self._error(StatusFailure.in_200(message, text), path, model)
        raise self._error(ValueError(f"expected an event stream, got a JSON body: {text[:200]!r}"), path, model)

    async def _stream_chat(
        self,
        path: str,
        body: dict[str, object],
        model: str,
        accumulator: ChatStreamAccumulator,
        on_event: OnEvent | None,
    ) -> None:
        body = {**body, "stream_options": {"include_usage": True}}
        async with aclosing(self._stream_payloads(path, body, model)) as payloads:
            async for _, payload in payloads:
                if payload.get("error"):
                    message = error_message(payload)[0] or "unknown error"
                    raise self._error(StatusFailure.in_200(message, json.dumps(payload)), path, model)
                for event in accumulator.add(payload):
                    if on_event is not None:
                        await on_event(event)
        if accumulator.ended_empty:
            raise self._error(StatusFailure.in_200(""), path, model)
        if accumulator.finish_reason is None:
            raise self._error(StreamEndedEarly(len(accumulator.result().content)), path, model)

    async def _stream_response(
        self, path: str, body: dict[str, object], model: str, on_event: OnEvent | None
    ) -> ResponseResult:
        accumulator = ResponsesStreamAccumulator()
        async with aclosing(self._stream_payloads(path, body, model)) as payloads:
            async for name, payload in payloads:
                for event in accumulator.add(name, payload):
                    if on_event is not None:
                        await on_event(event)
                if accumulator.error is not None:
                    raise self._error(StatusFailure.in_200(accumulator.error, json.dumps(payload)), path, model)
        if accumulator.ended_empty:
            raise self._error(StatusFailure.in_200(""), path, model)
        result = accumulator.result()
        if result.status in (None, "queued", "in_progress"):  # no response.completed/incomplete/failed came
            raise self._error(StreamEndedEarly(len(result.text)), path, model)
        return result



class _ConnectionTrace:
    """Whether a request went out on a connection an earlier request had opened (httpcore's `trace` extension)."""

    def __init__(self) -> None:
        self.connected = False
        self.sent = False

    async def record(self, event: str, info: dict[str, Any]) -> None:
        if event.startswith("connection.connect_"):
            self.connected = True
        elif event.endswith("send_request_headers.started"):
            self.sent = True

    @property
    def reused(self) -> bool:
        return self.sent and not self.connected
