"""The request path to one model server: breaker, retries, bounds, and every failure as an `LLMError`.

Each request goes through `Transport.send` (circuit breaker, retries of what a retry can fix) and
each failure through `llm.error_mapping.map_error`, the one place `httpx` errors and error statuses
become `LLMError`s (its docstring has the table). Retried (per request), with backoff: what
`llm.error_mapping.worth_retrying` allows (connect failures, 429, 5xx; never an open circuit, never
a generation's read timeout); a streamed request only until its response headers arrive, never once
the body has started. Apart from that, a request whose reused keep-alive connection the server had
closed (`StaleConnectionError`) is sent once more at once on a new connection, logged as that.

No answer, streamed or not, is read past LMSTUDIO_MAX_ANSWER_MB (`llm.bounds`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from config import Settings
from llm.bounds import buffered, capped_bytes
from llm.error_mapping import StatusFailure, Where, error_message, json_or_text, map_error, worth_retrying
from llm.exceptions import (
    RETRYABLE_ERRORS,
    CircuitOpenError,
    LLMConnectionError,
    LLMError,
    LLMTimeoutError,
    StaleConnectionError,
)
from llm.sse import aiter_sse
from utils.error_handling import CircuitBreaker, CircuitBreakerOpen, retry_with_backoff
from utils.metrics import Metrics, tracer

logger = logging.getLogger(__name__)

T = TypeVar("T")

# How long to wait for the end of a stream after its `[DONE]` (normally already in the buffer).
_DRAIN_S = 0.1


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


class Transport:
    """HTTP to one server: `send`, `post_parsed`, `stream_payloads`; owns its httpx client unless given one."""

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
        """Close the HTTP client if this transport created it."""
        if self._owns_http:
            await self._http.aclose()

    def error(self, problem: BaseException | StatusFailure, path: str, model: str | None = None, *,
               mid_stream: bool = False, reused_connection: bool = False) -> LLMError:
        where = Where(self.base_url, path, self.options.connect_timeout_s, self.options.request_timeout_s, model)
        return map_error(problem, where, mid_stream=mid_stream, reused_connection=reused_connection)

    async def send(
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
            error = self.error(exc, path, model, reused_connection=connection.reused)
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
        error = self.error(StatusFailure.from_response(response), path, model)
        self.metrics.inc("llm_failures", kind=type(error).__name__, server=self.options.name)
        raise error

    async def post_parsed(
        self, path: str, body: dict[str, object], model: str, parse: Callable[[dict[str, Any]], T]
    ) -> T:
        response = await self.send("POST", path, body, model, False)
        try:
            data = response.json()
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        except ValueError as exc:
            raise self.error(exc, path, model) from exc
        if data.get("error") and not {"choices", "output", "data"} & data.keys():
            raise self.error(StatusFailure.in_200(error_message(data)[0], response.text), path, model)
        try:
            return parse(data)
        except ValueError as exc:
            raise self.error(exc, path, model) from exc

    async def stream_payloads(
        self, path: str, body: dict[str, object], model: str
    ) -> AsyncIterator[tuple[str | None, dict[str, Any]]]:
        """The JSON payloads of a streamed answer with their SSE event names."""
        response = await self.send("POST", path, {**body, "stream": True}, model, True)
        try:
            if "json" in response.headers.get("content-type", ""):
                # Not a stream at all (an error, or a proxy's answer): judge it by its body, not as an
                # empty stream, which would read as LM Studio's context-overflow bug.
                self._raise_for_json_instead_of_stream(await response.aread(), path, model)
            chunks = capped_bytes(response, self.options.max_answer_bytes)
            async for sse in aiter_sse(chunks):
                try:
                    payload = sse.json()
                    if not isinstance(payload, dict):
                        raise ValueError(f"expected a JSON object in the stream, got {sse.data[:100]!r}")
                except ValueError as exc:
                    raise self.error(exc, path, model) from exc
                yield sse.event, payload
            await _drain(chunks)
        except httpx.HTTPError as exc:
            raise self.error(exc, path, model, mid_stream=True) from exc
        finally:
            await response.aclose()

    def _raise_for_json_instead_of_stream(self, raw: bytes, path: str, model: str) -> None:
        text = raw.decode("utf-8", errors="replace")
        if not text.strip():
            return  # an empty body is handled like an empty stream
        data = json_or_text(text)
        message = error_message(data)[0] if isinstance(data, dict) and data.get("error") else ""
        if message:
            raise self.error(StatusFailure.in_200(message, text), path, model)
        raise self.error(ValueError(f"expected an event stream, got a JSON body: {text[:200]!r}"), path, model)


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    """Read what is left of a stream that ended with `[DONE]` (its chunked-encoding end), briefly.

    httpcore gives a connection back to the pool only when its response was read to the end; closed
    early, the connection is closed too, and the next round of a run pays for a new one.
    """
    try:
        async with asyncio.timeout(_DRAIN_S):
            async for _ in chunks:
                pass
    except (TimeoutError, httpx.HTTPError, LLMError):
        pass  # the answer is whole; only the connection is lost


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
