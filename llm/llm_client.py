"""`LLMClient`: every HTTP request to LM Studio, and the one place `httpx` errors become `LLMError`s.

Every call goes through `_send` (retries, circuit breaker) and every failure through `_translate`:

    what happened                                              raised
    httpx.TimeoutException (connect, read, write, pool)        LLMTimeoutError (names the setting to raise)
    httpx.ConnectError / ReadError / RemoteProtocolError ...   LLMConnectionError(base_url=...)
    breaker open after repeated connection failures/timeouts   CircuitOpenError(base_url, retry_after_s)
    429                                                        LLMRateLimitError(.retry_after_s from Retry-After)
    400/404 "No models loaded"                                 NoModelLoadedError
    400/404 code model_not_found or "model ... not found"      ModelNotFoundError(.available_models, best effort)
    400/413 "context length|window", n_ctx, "tokens to keep",
            "exceeds" (error as a string or an object)         ContextLengthExceededError
    404/405/501 otherwise, or "Unexpected endpoint"            EndpointNotSupportedError
    other 4xx                                                  LLMStatusError(.status_code, .body)
    5xx                                                        LLMServerError
    200 whose body is not JSON, or not the expected shape      LLMResponseError
    200 carrying an error (in the body or mid-stream)          the row above for its text, else LLMResponseError
    200 stream with no content, no tool call, no finish        ContextLengthExceededError (LM Studio's
                                                               context-overflow bug; the message says so)
    200 stream with output that ends without a finish          LLMResponseError ("ended before the model finished")
    connection dropped or reset after the stream started       LLMConnectionError ("cut off mid-answer")
    streamed request answered with a JSON body                 the rows above for that body, never the overflow row

Status errors raised without an HTTP status behind them carry `status_code=0`.
Retried (per request, from settings): `RETRYABLE_ERRORS` except `CircuitOpenError`. A streamed
request is retried only until its response headers arrive, never once the body has started.
"""

from __future__ import annotations

import asyncio
import copy
import email.utils
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx

from config import Settings
from llm.exceptions import (
    RETRYABLE_ERRORS,
    CircuitOpenError,
    ContextLengthExceededError,
    EndpointNotSupportedError,
    LLMConnectionError,
    LLMError,
    LLMRateLimitError,
    LLMResponseError,
    LLMServerError,
    LLMStatusError,
    LLMTimeoutError,
    ModelNotFoundError,
    NoModelLoadedError,
)
from llm.streaming import (
    ChatResult,
    ChatStreamAccumulator,
    CompletionResult,
    OnEvent,
    ResponseResult,
    ResponsesStreamAccumulator,
    StreamEvent,
    ToolCall,
    Usage,
    aiter_sse,
    chat_result_from_body,
    completion_result_from_body,
    parse_usage,
    response_result_from_body,
)
from utils.error_handling import CircuitBreaker, CircuitBreakerOpen, retry_with_backoff
from utils.metrics import Metrics, tracer

__all__ = [
    "ChatResult",
    "CompletionResult",
    "EmbeddingsResult",
    "LLMClient",
    "ModelInfo",
    "OnEvent",
    "ResponseResult",
    "StreamEvent",
    "ToolCall",
    "Usage",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_MODEL_ROUTES = ("/api/v1/models", "/api/v0/models", "/v1/models")
DEFAULT_CONCURRENCY = 4
"""Requests in flight per model when neither LMSTUDIO_MAX_CONCURRENCY nor LM Studio says (its own default)."""

_NO_MODEL_LOADED = re.compile(r"no models? (is |are )?loaded")
_MODEL_NOT_FOUND = re.compile(
    r"model\b.{0,200}?\b(not found|does not exist|is not available)|invalid model|unknown model"
)
_CONTEXT_FULL = re.compile(r"context (length|window|size)|n_ctx|tokens to keep|exceed|context overflow")
_NO_ROUTE = re.compile(r"unexpected endpoint|unknown (endpoint|route)")


@dataclass(frozen=True)
class ModelInfo:
    id: str
    type: str | None
    state: str | None
    max_context_length: int | None
    loaded_instances: tuple[str, ...] = ()
    trained_for_tool_use: bool | None = None
    parallel: int | None = None  # predictions a loaded instance runs at once (LM Studio 0.4+)

    @property
    def is_embedding(self) -> bool:
        return "embed" in (self.type or "")


@dataclass
class EmbeddingsResult:
    embeddings: list[list[float]]
    model: str | None
    usage: Usage | None


class _StreamEndedEarly(Exception):
    """A stream that carried some output but closed before the model finished (no finish reason)."""

    def __init__(self, chars: int) -> None:
        super().__init__(f"stream ended after {chars} characters without a finish")
        self.chars = chars


class _ErrorIn200(Exception):
    """A 200 answer that carries an error, or an empty stream (`message` empty)."""

    def __init__(self, message: str, body: str = "") -> None:
        super().__init__(message or "empty stream")
        self.message = message
        self.body = body


@dataclass
class _Shared:
    """What `with_model` clones share: one connection pool, one breaker, one queue per model."""

    http: httpx.AsyncClient
    breaker: CircuitBreaker
    metrics: Metrics
    semaphores: dict[str, asyncio.Semaphore] = field(default_factory=dict)
    parallel: dict[str, int] = field(default_factory=dict)
    models_route: str | None = None


class LLMClient:
    """Client of LM Studio's OpenAI-compatible and native APIs; an async context manager."""

    def __init__(
        self,
        config: Settings,
        *,
        model: str | None = None,
        http: httpx.AsyncClient | None = None,
        breaker: CircuitBreaker | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._config = config
        self._model = model
        self._owns_http = http is None
        if http is None:
            # Several models can each have max_concurrency requests in flight, plus model listings.
            slots = (config.lmstudio_max_concurrency or DEFAULT_CONCURRENCY) * 4 + 4
            http = httpx.AsyncClient(
                timeout=httpx.Timeout(config.lmstudio_request_timeout_s, connect=config.lmstudio_connect_timeout_s),
                limits=httpx.Limits(max_connections=slots, max_keepalive_connections=slots),
            )
        self._shared = _Shared(
            http=http,
            metrics=metrics if metrics is not None else Metrics(),
            breaker=breaker
            or CircuitBreaker(config.lmstudio_circuit_failures, config.lmstudio_circuit_reset_s, name=config.base_url),
        )
        self._headers = {"Accept": "application/json"}
        if config.lmstudio_api_key is not None:
            self._headers["Authorization"] = f"Bearer {config.lmstudio_api_key.get_secret_value()}"
        self._send = retry_with_backoff(
            max_retries=config.lmstudio_retry_attempts,
            base_delay=config.lmstudio_retry_base_delay_s,
            max_delay=config.lmstudio_retry_max_delay_s,
            exceptions=RETRYABLE_ERRORS,
            # Retrying against an open breaker would only wait to fail the same way.
            should_retry=lambda error: not isinstance(error, CircuitOpenError),
            on_retry=lambda error, attempt, delay: self._shared.metrics.inc("llm_retries", kind=type(error).__name__),
            sleep=sleep,
        )(self._send_once)

    @property
    def base_url(self) -> str:
        return self._config.base_url

    @property
    def model(self) -> str | None:
        return self._model

    def with_model(self, model: str | None) -> LLMClient:
        """A client for another model sharing this one's HTTP client, breaker and queues."""
        # The copy keeps `_send`, bound to this instance: it uses nothing model-specific.
        clone = copy.copy(self)
        clone._model = model
        clone._owns_http = False
        return clone

    async def aclose(self) -> None:
        """Close the HTTP client if this client created it."""
        if self._owns_http:
            await self._shared.http.aclose()

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- models ------------------------------------------------------------------------------

    async def list_models(self) -> list[ModelInfo]:
        """The models LM Studio offers, from the richest listing it has (the route that worked is kept).

        Raises:
            LLMConnectionError, LLMTimeoutError: LM Studio cannot be reached.
            LLMResponseError: no listing route answered usefully.
        """
        known = self._shared.models_route
        *fallible, last = (known,) if known else _MODEL_ROUTES
        for route in fallible:
            try:
                return await self._list_models_from(route)
            except LLMResponseError as exc:
                # An older LM Studio, or another server, lacks the richer listings.
                logger.debug("Model listing %s unusable, trying the next: %s", route, exc)
        return await self._list_models_from(last)

    async def _list_models_from(self, route: str) -> list[ModelInfo]:
        data = await self._get_json(route)
        try:
            models = _parse_models(data)
        except ValueError as exc:
            raise await self._translate(exc, path=route) from exc
        self._shared.models_route = route
        for info in models:
            if info.parallel:
                self._shared.parallel[info.id] = info.parallel
        return models

    async def resolve_model(self, model: str | None = None) -> str:
        """The model to send: `model` or this client's; None/"default" -> DEFAULT_MODEL, else the loaded LLM,
        else the first LLM LM Studio lists (it will load it just in time).

        Raises:
            NoModelLoadedError: LM Studio lists no model that can generate text.
        """
        name = model or self._model
        if name and name != "default":
            return name
        if self._config.default_model:
            return self._config.default_model
        llms = [m for m in await self.list_models() if not m.is_embedding]
        loaded = [m for m in llms if m.state == "loaded" or m.loaded_instances]
        if chosen := (loaded or llms):
            return chosen[0].id
        raise NoModelLoadedError(
            "LM Studio lists no model that can generate text. Download or load one in LM Studio, "
            "or set DEFAULT_MODEL.",
            status_code=0,
        )

    # --- generation --------------------------------------------------------------------------

    async def chat_completion(
        self,
        messages: list[dict],
        *,
        model: str | None = None,
        temperature: float = 0.7,
        max_tokens: int | None = None,
        tools: list[dict] | None = None,
        tool_choice: str | dict | None = None,
        response_format: dict | None = None,
        stream: bool = False,
        on_event: OnEvent | None = None,
    ) -> ChatResult:
        """POST /v1/chat/completions; with `stream` the deltas go to `on_event` as they arrive."""
        name = await self.resolve_model(model)
        body = self._generation_body(
            name,
            messages=messages,
            temperature=temperature,
            max_tokens=max_tokens,
            tools=tools or None,
            tool_choice=tool_choice,
            response_format=response_format,
        )
        path = "/v1/chat/completions"
        async with self._slot(name):
            if not stream:
                return await self._post_parsed(path, body, name, chat_result_from_body)
            accumulator = ChatStreamAccumulator()
            await self._stream_chat(path, body, name, accumulator, on_event)
            return accumulator.result()

    async def text_completion(
        self,
        prompt: str,
        *,
        model: str | None = None,
        temperature: float = 0.7,
        max_tokens: int | None = None,
        stop: list[str] | None = None,
        stream: bool = False,
        on_event: OnEvent | None = None,
    ) -> CompletionResult:
        """POST /v1/completions (raw text continuation)."""
        name = await self.resolve_model(model)
        body = self._generation_body(name, prompt=prompt, temperature=temperature, max_tokens=max_tokens, stop=stop)
        path = "/v1/completions"
        async with self._slot(name):
            if not stream:
                return await self._post_parsed(path, body, name, completion_result_from_body)
            accumulator = ChatStreamAccumulator()
            await self._stream_chat(path, body, name, accumulator, on_event)
            return accumulator.completion_result()

    async def generate_embeddings(self, input: str | list[str], *, model: str | None = None) -> EmbeddingsResult:
        """POST /v1/embeddings; one vector per input, in input order."""
        name = await self.resolve_model(model)
        async with self._slot(name):
            return await self._post_parsed(
                "/v1/embeddings", self._generation_body(name, input=input), name, _embeddings_from_body
            )

    async def create_response(
        self,
        input: str | list[dict],
        *,
        model: str | None = None,
        previous_response_id: str | None = None,
        tools: list[dict] | None = None,
        instructions: str | None = None,
        temperature: float | None = None,
        max_output_tokens: int | None = None,
        stream: bool = False,
        on_event: OnEvent | None = None,
    ) -> ResponseResult:
        """POST /v1/responses (stateful: pass the last result's id as `previous_response_id`).

        Tools given in the chat format (`{"type": "function", "function": {...}}`) are sent flat.

        Raises:
            EndpointNotSupportedError: the server has no /v1/responses.
        """
        name = await self.resolve_model(model)
        body = self._generation_body(
            name,
            input=input,
            previous_response_id=previous_response_id,
            tools=[_flat_tool(t) for t in tools] if tools else None,
            instructions=instructions,
            temperature=temperature,
            max_output_tokens=max_output_tokens,
        )
        path = "/v1/responses"
        async with self._slot(name):
            if not stream:
                return await self._post_parsed(path, body, name, response_result_from_body)
            return await self._stream_response(path, body, name, on_event)

    # --- the request path --------------------------------------------------------------------

    def _generation_body(self, model: str, **fields: object) -> dict[str, object]:
        body: dict[str, object] = {"model": model}
        body.update((key, value) for key, value in fields.items() if value is not None)
        if self._config.lmstudio_model_ttl_s > 0:
            body["ttl"] = self._config.lmstudio_model_ttl_s
        return body

    def _slot(self, model: str) -> asyncio.Semaphore:
        """The queue of `model`: LMSTUDIO_MAX_CONCURRENCY in flight, else the slots LM Studio reports."""
        semaphores = self._shared.semaphores
        if model not in semaphores:
            limit = (
                self._config.lmstudio_max_concurrency
                or self._shared.parallel.get(model.split(":")[0])
                or DEFAULT_CONCURRENCY
            )
            logger.debug("at most %d requests in flight for %s", limit, model)
            semaphores[model] = asyncio.Semaphore(limit)
        return semaphores[model]

    async def _send_once(
        self, method: str, path: str, body: dict[str, object] | None, model: str | None, stream: bool
    ) -> httpx.Response:
        """One attempt: breaker check, request, status check. Returns a successful response."""
        breaker = self._shared.breaker
        try:
            breaker.before_call()
        except CircuitBreakerOpen as exc:
            raise CircuitOpenError(self.base_url, exc.retry_after_s) from exc
        request = self._shared.http.build_request(method, self.base_url + path, json=body, headers=self._headers)
        logger.debug("%s %s (model %s, stream %s)", method, path, model, stream)
        metrics = self._shared.metrics
        metrics.inc("llm_requests", endpoint=path)
        started = time.perf_counter()
        try:
            # The span covers the wait for the response headers (all of it unless streamed).
            with tracer.start_as_current_span("llm_request") as span:
                span.set_attribute("http.route", path)
                span.set_attribute("llm.model", model or "")
                response = await self._shared.http.send(request, stream=stream)
                span.set_attribute("http.status_code", response.status_code)
        except httpx.HTTPError as exc:
            error = await self._translate(exc, path=path, model=model)
            metrics.inc("llm_failures", kind=type(error).__name__)
            if isinstance(error, (LLMConnectionError, LLMTimeoutError)):
                breaker.record_failure()
            raise error from exc
        breaker.record_success()
        # Time to the response headers: the whole answer unless streamed.
        metrics.observe("llm_request_ms", (time.perf_counter() - started) * 1000, endpoint=path)
        if not response.is_error:
            return response
        try:
            await response.aread()
        except httpx.HTTPError as exc:
            raise await self._translate(exc, path=path, model=model) from exc
        finally:
            await response.aclose()
        error = await self._translate(response, path=path, model=model)
        metrics.inc("llm_failures", kind=type(error).__name__)
        raise error

    async def _get_json(self, path: str) -> object:
        response = await self._send("GET", path, None, None, False)
        try:
            return response.json()
        except ValueError as exc:
            raise await self._translate(exc, path=path) from exc

    async def _post_parsed(
        self, path: str, body: dict[str, object], model: str, parse: Callable[[dict[str, Any]], T]
    ) -> T:
        response = await self._send("POST", path, body, model, False)
        try:
            data = response.json()
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, got {type(data).__name__}")
            if data.get("error") and not {"choices", "output", "data"} & data.keys():
                raise _ErrorIn200(_error_message(data)[0], response.text)
            return parse(data)
        except (ValueError, _ErrorIn200) as exc:
            raise await self._translate(exc, path=path, model=model) from exc

    async def _stream_payloads(
        self, path: str, body: dict[str, object], model: str
    ) -> AsyncIterator[tuple[str | None, dict[str, Any]]]:
        """The JSON payloads of a streamed answer with their SSE event names."""
        response = await self._send("POST", path, {**body, "stream": True}, model, True)
        try:
            if "json" in response.headers.get("content-type", ""):
                # Not a stream at all (an error, or a proxy's answer): judge it by its body, not as an
                # empty stream, which would read as LM Studio's context-overflow bug.
                await self._raise_for_json_instead_of_stream(await response.aread(), path, model)
            async for sse in aiter_sse(response.aiter_bytes()):
                try:
                    payload = sse.json()
                    if not isinstance(payload, dict):
                        raise ValueError(f"expected a JSON object in the stream, got {sse.data[:100]!r}")
                except ValueError as exc:
                    raise await self._translate(exc, path=path, model=model) from exc
                yield sse.event, payload
        except httpx.HTTPError as exc:
            raise await self._translate(exc, path=path, model=model, mid_stream=True) from exc
        finally:
            await response.aclose()

    async def _raise_for_json_instead_of_stream(self, raw: bytes, path: str, model: str) -> None:
        text = raw.decode("utf-8", errors="replace")
        if not text.strip():
            return  # an empty body is handled like an empty stream
        data = _json_or_text(text)
        message = _error_message(data)[0] if isinstance(data, dict) and data.get("error") else ""
        problem: Exception = (
            _ErrorIn200(message, text)
            if message
            else ValueError(f"expected an event stream, got a JSON body: {text[:200]!r}")
        )
        raise await self._translate(problem, path=path, model=model)

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
                    failure = _ErrorIn200(_error_message(payload)[0] or "unknown error", json.dumps(payload))
                    raise await self._translate(failure, path=path, model=model)
                for event in accumulator.add(payload):
                    if on_event is not None:
                        await on_event(event)
        if accumulator.ended_empty:
            raise await self._translate(_ErrorIn200(""), path=path, model=model)
        if accumulator.finish_reason is None:
            partial = accumulator.result()
            raise await self._translate(_StreamEndedEarly(len(partial.content)), path=path, model=model)

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
                    failure = _ErrorIn200(accumulator.error, json.dumps(payload))
                    raise await self._translate(failure, path=path, model=model)
        if accumulator.ended_empty:
            raise await self._translate(_ErrorIn200(""), path=path, model=model)
        result = accumulator.result()
        if result.status in (None, "queued", "in_progress"):  # no response.completed/incomplete/failed came
            raise await self._translate(_StreamEndedEarly(len(result.text)), path=path, model=model)
        return result

    async def _translate(
        self, problem: BaseException | httpx.Response, *, path: str, model: str | None = None, mid_stream: bool = False
    ) -> LLMError:
        """The one place a transport failure, status or unusable answer becomes an `LLMError`.

        `mid_stream`: the failure came while reading a stream whose response had already begun.
        """
        where = f"{self.base_url}{path}"
        if mid_stream and isinstance(problem, (httpx.NetworkError, httpx.RemoteProtocolError)):
            return LLMConnectionError(
                f"LM Studio's stream from {where} was cut off mid-answer ({type(problem).__name__}: {problem}). "
                "LM Studio may have crashed, restarted or unloaded the model: check its server log, then retry.",
                problem,
                base_url=self.base_url,
            )
        if isinstance(problem, _StreamEndedEarly):
            return LLMResponseError(
                f"LM Studio's stream from {where} ended before the model finished ({problem.chars} characters "
                "of answer had arrived, then no finish). The connection was cut or LM Studio stopped "
                "generating: check its server log, then retry.",
                problem,
            )
        if isinstance(problem, httpx.TimeoutException):
            if isinstance(problem, httpx.ConnectTimeout):
                seconds, setting = self._config.lmstudio_connect_timeout_s, "LMSTUDIO_CONNECT_TIMEOUT_S"
                what = f"Connecting to LM Studio at {self.base_url} took longer than {seconds:g} s"
            else:
                seconds, setting = self._config.lmstudio_request_timeout_s, "LMSTUDIO_REQUEST_TIMEOUT_S"
                what = f"LM Studio did not answer {where} within {seconds:g} s"
            return LLMTimeoutError(
                f"{what} ({type(problem).__name__}). A big model or a long prompt can need more: raise {setting}.",
                problem,
            )
        if isinstance(problem, (httpx.NetworkError, httpx.RemoteProtocolError)):
            return LLMConnectionError(original_exception=problem, base_url=self.base_url)
        if isinstance(problem, httpx.HTTPError):
            return LLMResponseError(f"Request to {where} failed: {problem!r}", problem)
        if isinstance(problem, ValueError):
            what = "was not valid JSON" if isinstance(problem, json.JSONDecodeError) else "had an unexpected shape"
            return LLMResponseError(f"LM Studio's answer from {where} {what} ({problem}).", problem)

        if isinstance(problem, httpx.Response):
            status, body, headers = problem.status_code, problem.text, problem.headers
            message, code = _error_message(_json_or_text(body))
        elif isinstance(problem, _ErrorIn200):
            status, body, headers, message, code = 200, problem.body, httpx.Headers(), problem.message, ""
        else:
            return LLMResponseError(f"Request to {where} failed: {problem!r}", problem)
        text = f"{code} {message}".lower()
        shown = message or body[:300] or "(empty body)"
        if status == 429:
            retry_after = _retry_after_s(headers.get("Retry-After"))
            wait = f" Retry after {retry_after:g} s." if retry_after is not None else ""
            return LLMRateLimitError(
                f"LM Studio is rate limiting requests (429): {shown}.{wait}", body=body, retry_after_s=retry_after
            )
        if status in (200, 400, 404) and _NO_MODEL_LOADED.search(text):
            return NoModelLoadedError(
                f"LM Studio has no model loaded ({shown}). Load one in LM Studio (or `lms load <model>`), "
                "or set DEFAULT_MODEL to a model it can load just in time.",
                status_code=status,
                body=body,
            )
        if model and status in (200, 400, 404) and (code == "model_not_found" or _MODEL_NOT_FOUND.search(text)):
            try:
                available = [m.id for m in await self.list_models()]
            except LLMError:
                available = []
            return ModelNotFoundError(model, available)
        if status == 200 and not message:
            return ContextLengthExceededError(
                f"LM Studio ended the stream from {where} without any output. The conversation may no longer "
                "fit the model's context (LM Studio reports an overflow this way): shorten it, or load the "
                "model with a larger context length.",
                status_code=status,
                body=body,
            )
        if status in (200, 400, 413) and _CONTEXT_FULL.search(text):
            return ContextLengthExceededError(
                f"The conversation does not fit the model's context: {shown}. Send a shorter prompt or task "
                "(an autonomous run: fewer or smaller tool results, e.g. a lower TOOL_OUTPUT_MAX_CHARS), lower "
                "max_tokens, or load the model with a larger context length in LM Studio.",
                status_code=status,
                body=body,
            )
        if status in (404, 405, 501) or _NO_ROUTE.search(text):
            return EndpointNotSupportedError(
                f"The server at {self.base_url} does not support {path} ({status}: {shown}).",
                status_code=status,
                body=body,
            )
        if status == 200:
            return LLMResponseError(f"LM Studio reported an error from {where}: {shown}")
        if status >= 500:
            return LLMServerError(
                f"LM Studio failed internally ({status}) on {path}: {shown}. Check its server log; retrying may help.",
                status_code=status,
                body=body,
            )
        return LLMStatusError(
            f"LM Studio rejected the request to {path} ({status}): {shown}", status_code=status, body=body
        )


# --- parsing helpers ---------------------------------------------------------------------------


def _json_or_text(body: str) -> object:
    try:
        return json.loads(body)
    except ValueError:
        return body


def _error_message(data: object) -> tuple[str, str]:
    """(message, code) from LM Studio's error bodies: `{"error": "..."}`, `{"error": {...}}`, or plain text."""
    if isinstance(data, str):
        return data.strip(), ""
    if not isinstance(data, dict):
        return "", ""
    error = data.get("error", data)
    if isinstance(error, str):
        return error, str(data.get("code") or "")
    if isinstance(error, dict):
        message = error.get("message") or error.get("detail") or ""
        return str(message), str(error.get("code") or data.get("code") or "")
    return "", ""


def _retry_after_s(value: str | None) -> float | None:
    """Retry-After as seconds, from either its delta-seconds or its HTTP-date form."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _parse_models(data: object) -> list[ModelInfo]:
    """ModelInfos from any of the three listings (fields the poorer ones lack stay None)."""
    entries = None
    if isinstance(data, dict):
        entries = data.get("models") if isinstance(data.get("models"), list) else data.get("data")
    if not isinstance(entries, list):
        raise ValueError("the model listing has no 'models' or 'data' list")
    models = []
    for entry in entries:
        if not isinstance(entry, dict) or not (model_id := entry.get("key") or entry.get("id")):
            continue
        raw_instances = entry.get("loaded_instances")
        instances = tuple(
            str(i.get("id") if isinstance(i, dict) else i) for i in raw_instances or () if i
        )
        state = entry.get("state")
        if state is None and isinstance(raw_instances, list):
            state = "loaded" if instances else "not-loaded"
        parallel = sum(
            i["config"]["parallel"]
            for i in raw_instances or ()
            if isinstance(i, dict) and isinstance(i.get("config"), dict) and isinstance(i["config"].get("parallel"), int)
        )
        capabilities = entry.get("capabilities")
        tool_use = capabilities.get("trained_for_tool_use") if isinstance(capabilities, dict) else None
        context = entry.get("max_context_length")
        models.append(
            ModelInfo(
                id=str(model_id),
                # LM Studio 0.4 says "embedding", 0.3 "embeddings": one word for everything above.
                type="embeddings" if entry.get("type") == "embedding" else entry.get("type"),
                state=state,
                max_context_length=context if isinstance(context, int) else None,
                loaded_instances=instances,
                trained_for_tool_use=tool_use if isinstance(tool_use, bool) else None,
                parallel=parallel or None,
            )
        )
    return models


def _embeddings_from_body(body: dict[str, Any]) -> EmbeddingsResult:
    items = body.get("data")
    if not isinstance(items, list):
        raise ValueError("no 'data' list in the embeddings answer")
    try:
        ordered = sorted(items, key=lambda item: item.get("index", 0))
        vectors = [[float(x) for x in item["embedding"]] for item in ordered]
    except (AttributeError, KeyError, TypeError) as exc:
        raise ValueError(f"malformed embeddings item ({exc!r})") from exc
    return EmbeddingsResult(embeddings=vectors, model=body.get("model"), usage=parse_usage(body.get("usage")))


def _flat_tool(tool: dict) -> dict:
    """A chat-format tool (`{"type": "function", "function": {...}}`) in the flat /v1/responses format."""
    function = tool.get("function")
    if tool.get("type") == "function" and isinstance(function, dict):
        return {"type": "function", **function}
    return tool
