"""`LLMClient`: every request to one model server (LM Studio or any OpenAI-compatible one).

The request path (breaker, retries, error mapping, answer cap) is `llm.transport.Transport`; this
module knows the endpoints: which route, which body, how the answer is read.

Generation methods take a `ResolvedModel` from the catalog (`llm.models`): which model is the
catalog's decision, and the request waits in that model's queue.

Bounds (`llm.bounds`): a generation call, from its wait in the model's queue to the last byte of
the answer, retries included, ends within LMSTUDIO_CALL_TIMEOUT_S; no answer, streamed or not, is
read past LMSTUDIO_MAX_ANSWER_MB.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any

import httpx

from llm.bounds import bounded_call
from llm.error_mapping import StatusFailure, StreamEndedEarly, error_message
from llm.exceptions import LLMResponseError, ModelLoadError
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
    chat_result_from_body,
    completion_result_from_body,
    response_result_from_body,
)
from llm.transport import ClientOptions, Transport
from utils.error_handling import CircuitBreaker
from utils.metrics import Metrics

logger = logging.getLogger(__name__)

__all__ = ["ClientOptions", "LLMClient"]

_MODEL_ROUTES = ("/api/v1/models", "/api/v0/models", "/v1/models")
_NATIVE_MODELS = "/api/v1/models"


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
        self._transport = Transport(options, http=http, breaker=breaker, sleep=sleep, metrics=metrics)
        self.metrics = self._transport.metrics
        self._models_route: str | None = None

    @property
    def base_url(self) -> str:
        return self.options.base_url

    @property
    def breaker_state(self) -> str:
        """`closed`, `open` (failing fast after repeated connection failures) or `half_open`."""
        return self._transport.breaker_state

    async def aclose(self) -> None:
        """Close the HTTP client if this client created it."""
        await self._transport.aclose()

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
        response = await self._transport.send("GET", route, None, None, False)
        try:
            models = parse_models(response.json())
        except ValueError as exc:
            raise self._transport.error(exc, route) from exc
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
            return await self._transport.post_parsed(
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
                return await self._transport.post_parsed(path, body, model.id, chat_result_from_body)
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
                return await self._transport.post_parsed(path, body, model.id, completion_result_from_body)
            accumulator = ChatStreamAccumulator()
            await self._stream_chat(path, body, model.id, accumulator, on_event)
            return accumulator.completion_result()

    async def generate_embeddings(self, input: str | list[str], *, model: ResolvedModel) -> EmbeddingsResult:
        """POST /v1/embeddings; one vector per input, in input order."""
        async with bounded_call(
            model.queue, self.options.call_timeout_s, url=self.base_url + "/v1/embeddings", model=model.id
        ):
            return await self._transport.post_parsed(
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
                return await self._transport.post_parsed(path, body, model.id, response_result_from_body)
            return await self._stream_response(path, body, model.id, on_event)

    # --- bodies and streams -------------------------------------------------------------------

    def _generation_body(self, model: str, **fields: object) -> dict[str, object]:
        body: dict[str, object] = {"model": model}
        body.update((key, value) for key, value in fields.items() if value is not None)
        if self.options.model_ttl_s > 0:
            body["ttl"] = self.options.model_ttl_s
        return body

    async def _stream_chat(
        self,
        path: str,
        body: dict[str, object],
        model: str,
        accumulator: ChatStreamAccumulator,
        on_event: OnEvent | None,
    ) -> None:
        body = {**body, "stream_options": {"include_usage": True}}
        async with aclosing(self._transport.stream_payloads(path, body, model)) as payloads:
            async for _, payload in payloads:
                if payload.get("error"):
                    message = error_message(payload)[0] or "unknown error"
                    raise self._transport.error(StatusFailure.in_200(message, json.dumps(payload)), path, model)
                for event in accumulator.add(payload):
                    if on_event is not None:
                        await on_event(event)
        if accumulator.ended_empty:
            raise self._transport.error(StatusFailure.in_200(""), path, model)
        if accumulator.finish_reason is None:
            raise self._transport.error(StreamEndedEarly(len(accumulator.result().content)), path, model)

    async def _stream_response(
        self, path: str, body: dict[str, object], model: str, on_event: OnEvent | None
    ) -> ResponseResult:
        accumulator = ResponsesStreamAccumulator()
        async with aclosing(self._transport.stream_payloads(path, body, model)) as payloads:
            async for name, payload in payloads:
                for event in accumulator.add(name, payload):
                    if on_event is not None:
                        await on_event(event)
                if accumulator.error is not None:
                    raise self._transport.error(StatusFailure.in_200(accumulator.error, json.dumps(payload)), path, model)
        if accumulator.ended_empty:
            raise self._transport.error(StatusFailure.in_200(""), path, model)
        result = accumulator.result()
        if result.status in (None, "queued", "in_progress"):  # no response.completed/incomplete/failed came
            raise self._transport.error(StreamEndedEarly(len(result.text)), path, model)
        return result
