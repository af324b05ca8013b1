"""What LM Studio answers, as the rest of the bridge sees it: plain dataclasses, no I/O.

    ToolCall          one function call the model asked for (raw JSON arguments)
    Usage             token counts, from either API's naming
    ChatResult        /v1/chat/completions
    CompletionResult  /v1/completions
    ResponseResult    /v1/responses
    EmbeddingsResult  /v1/embeddings
    LoadResult        LM Studio 0.4's /api/v1/models/load
    StreamEvent       one piece of a streamed answer, handed to an `OnEvent` callback

The stream parser (`llm.streaming`), the client (`llm.llm_client`) and the agent all import these
from here, so none of them depends on another to name a result.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class ToolCall:
    """One function call the model asked for; `arguments` is the raw JSON text it produced."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Usage:
    input_tokens: int | None
    output_tokens: int | None
    total_tokens: int | None


@dataclass
class ChatResult:
    content: str
    reasoning: str
    tool_calls: list[ToolCall]
    finish_reason: str | None
    model: str | None
    usage: Usage | None


@dataclass
class CompletionResult:
    text: str
    finish_reason: str | None
    model: str | None
    usage: Usage | None


@dataclass
class ResponseResult:
    id: str
    text: str
    reasoning: str
    tool_calls: list[ToolCall]  # ToolCall.id is the call_id to answer with function_call_output
    status: str | None
    model: str | None
    usage: Usage | None


@dataclass
class EmbeddingsResult:
    embeddings: list[list[float]]
    model: str | None
    usage: Usage | None


@dataclass(frozen=True)
class LoadResult:
    """A model LM Studio loaded on request: the instance, how long it took, the context it got (if echoed)."""

    instance_id: str
    load_time_s: float | None
    context_length: int | None


@dataclass(frozen=True)
class StreamEvent:
    """A piece of a streamed answer; `chars_so_far` counts every kind together (a progress measure).

    For `tool_call` the delta is the function name when a call starts, then its argument fragments.
    """

    kind: Literal["text", "reasoning", "tool_call"]
    delta: str
    chars_so_far: int


OnEvent = Callable[[StreamEvent], Awaitable[None]]


def parse_usage(raw: object) -> Usage | None:
    """Usage from either API's naming (`prompt_tokens` / `input_tokens`, ...); None when absent."""
    if not isinstance(raw, dict):
        return None

    def first_int(*keys: str) -> int | None:
        for key in keys:
            value = raw.get(key)
            if isinstance(value, int):
                return value
        return None

    return Usage(
        input_tokens=first_int("input_tokens", "prompt_tokens"),
        output_tokens=first_int("output_tokens", "completion_tokens"),
        total_tokens=first_int("total_tokens"),
    )


def embeddings_result_from_body(body: dict[str, Any]) -> EmbeddingsResult:
    """The answer of /v1/embeddings, one vector per input in input order.

    Raises:
        ValueError: the body has no usable `data` list.
    """
    items = body.get("data")
    if not isinstance(items, list):
        raise ValueError("no 'data' list in the embeddings answer")
    try:
        ordered = sorted(items, key=lambda item: item.get("index", 0))
        vectors = [[float(x) for x in item["embedding"]] for item in ordered]
    except (AttributeError, KeyError, TypeError) as exc:
        raise ValueError(f"malformed embeddings item ({exc!r})") from exc
    return EmbeddingsResult(embeddings=vectors, model=body.get("model"), usage=parse_usage(body.get("usage")))


def load_result_from_body(body: dict[str, object], model_id: str) -> LoadResult:
    """A `LoadResult` from `/api/v1/models/load`'s answer (`load_config` only when echoed)."""
    config = body.get("load_config")
    context = config.get("context_length") if isinstance(config, dict) else None
    seconds = body.get("load_time_seconds")
    return LoadResult(
        instance_id=str(body.get("instance_id") or model_id),
        load_time_s=float(seconds) if isinstance(seconds, (int, float)) else None,
        context_length=context if isinstance(context, int) else None,
    )
