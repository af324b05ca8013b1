"""Streamed chunks in, results out: the accumulators behind every streamed LM Studio call.

    ChatStreamAccumulator       /v1/chat/completions and /v1/completions chunks -> ChatResult / CompletionResult
    ResponsesStreamAccumulator  /v1/responses events -> ResponseResult
    chat_result_from_body, completion_result_from_body, response_result_from_body
                                the same results from a non-streamed JSON body

The SSE parser is `llm.sse`; the result dataclasses live in `llm.results`. Accumulators are pure: `add()` returns the `StreamEvent`s a chunk
produced and the client hands them to the caller's `on_event`.

Nothing here strips `<think>...</think>` from content: some models put their reasoning inside the
answer, and deciding what to show is the agent's business, not the transport's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from llm.results import (
    ChatResult,
    CompletionResult,
    ResponseResult,
    StreamEvent,
    ToolCall,
    Usage,
    parse_usage,
)

def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


# --- SSE -------------------------------------------------------------------------------------



# --- chat / completions ----------------------------------------------------------------------


@dataclass
class _CallParts:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class _Counter:
    def __init__(self) -> None:
        self.chars = 0

    def event(self, kind: Literal["text", "reasoning", "tool_call"], delta: str) -> StreamEvent:
        self.chars += len(delta)
        return StreamEvent(kind=kind, delta=delta, chars_so_far=self.chars)


def _build_calls(parts: dict[int, _CallParts]) -> list[ToolCall]:
    # LM Studio sometimes sends an empty id; the index keeps a synthesised one stable for the turn.
    return [
        ToolCall(id=p.id or f"call_{index}", name=p.name, arguments="".join(p.arguments))
        for index, p in sorted(parts.items())
    ]


class ChatStreamAccumulator:
    """Joins chat-completions (or text-completions) chunks into one result.

    Tool-call fragments are joined by `index`: the first carries id and name, later ones pieces
    of the arguments.
    """

    def __init__(self) -> None:
        self._content: list[str] = []
        self._reasoning: list[str] = []
        self._calls: dict[int, _CallParts] = {}
        self._counter = _Counter()
        self.finish_reason: str | None = None
        self.model: str | None = None
        self.usage: Usage | None = None

    def add(self, chunk: dict[str, Any]) -> list[StreamEvent]:
        """Take one parsed chunk; returns the events it produced."""
        self.model = chunk.get("model") or self.model
        self.usage = parse_usage(chunk.get("usage")) or self.usage
        events: list[StreamEvent] = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta") or {}
            if text := _text(delta.get("content")) or _text(choice.get("text")):
                self._content.append(text)
                events.append(self._counter.event("text", text))
            if reasoning := _text(delta.get("reasoning_content")) or _text(delta.get("reasoning")):
                self._reasoning.append(reasoning)
                events.append(self._counter.event("reasoning", reasoning))
            for fragment in delta.get("tool_calls") or ():
                events.extend(self._add_fragment(fragment))
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
        return events

    def _add_fragment(self, fragment: dict[str, Any]) -> list[StreamEvent]:
        function = fragment.get("function") or {}
        call_id = _text(fragment.get("id"))
        index = fragment.get("index")
        if not isinstance(index, int):
            # Servers that omit the index send each call whole or continue the last one.
            known = {p.id: i for i, p in self._calls.items() if p.id}
            if call_id and call_id in known:
                index = known[call_id]
            elif call_id or not self._calls:
                index = len(self._calls)
            else:
                index = max(self._calls)
        parts = self._calls.setdefault(index, _CallParts())
        events = []
        parts.id = parts.id or call_id
        if (name := _text(function.get("name"))) and not parts.name:
            parts.name = name
            events.append(self._counter.event("tool_call", name))
        if arguments := _text(function.get("arguments")):
            parts.arguments.append(arguments)
            events.append(self._counter.event("tool_call", arguments))
        return events

    @property
    def ended_empty(self) -> bool:
        """No content, no tool call and no finish reason: LM Studio's sign of an overflowed context."""
        return not self._content and not self._calls and self.finish_reason is None

    def result(self) -> ChatResult:
        return ChatResult(
            content="".join(self._content),
            reasoning="".join(self._reasoning),
            tool_calls=_build_calls(self._calls),
            finish_reason=self.finish_reason,
            model=self.model,
            usage=self.usage,
        )

    def completion_result(self) -> CompletionResult:
        return CompletionResult(
            text="".join(self._content), finish_reason=self.finish_reason, model=self.model, usage=self.usage
        )


def chat_result_from_body(body: dict[str, Any]) -> ChatResult:
    """A non-streamed chat-completions body as a result. Raises ValueError on the wrong shape."""
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("no choices in the chat completion")
    message = choices[0].get("message") or {}
    calls: dict[int, _CallParts] = {}
    for index, call in enumerate(message.get("tool_calls") or ()):
        function = call.get("function") or {}
        arguments = function.get("arguments")
        # Some servers send arguments already decoded; keep the contract of raw JSON text.
        text = arguments if isinstance(arguments, str) else json.dumps(arguments or {})
        calls[index] = _CallParts(id=_text(call.get("id")), name=_text(function.get("name")), arguments=[text])
    return ChatResult(
        content=_text(message.get("content")),
        reasoning=_text(message.get("reasoning_content")) or _text(message.get("reasoning")),
        tool_calls=_build_calls(calls),
        finish_reason=choices[0].get("finish_reason"),
        model=body.get("model"),
        usage=parse_usage(body.get("usage")),
    )


def completion_result_from_body(body: dict[str, Any]) -> CompletionResult:
    """A non-streamed /v1/completions body as a result. Raises ValueError on the wrong shape."""
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("no choices in the completion")
    return CompletionResult(
        text=_text(choices[0].get("text")),
        finish_reason=choices[0].get("finish_reason"),
        model=body.get("model"),
        usage=parse_usage(body.get("usage")),
    )


# --- responses -------------------------------------------------------------------------------


def _reasoning_of(item: dict[str, Any]) -> str:
    parts = [p for p in (item.get("content") or ()) if isinstance(p, dict)]
    if not parts:
        parts = [p for p in (item.get("summary") or ()) if isinstance(p, dict)]
    return "".join(_text(p.get("text")) for p in parts)


def response_result_from_body(body: dict[str, Any]) -> ResponseResult:
    """A /v1/responses body (non-streamed, or the one `response.completed` carries) as a result.

    Raises ValueError when the body has no `output` list.
    """
    output = body.get("output")
    if not isinstance(output, list):
        raise ValueError("no output in the response")
    text: list[str] = []
    reasoning: list[str] = []
    calls: list[ToolCall] = []
    for item in output:
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "message":
            text.extend(
                _text(part.get("text"))
                for part in item.get("content") or ()
                if isinstance(part, dict) and part.get("type") in ("output_text", "text")
            )
        elif kind == "reasoning":
            reasoning.append(_reasoning_of(item))
        elif kind == "function_call":
            call_id = _text(item.get("call_id")) or _text(item.get("id")) or f"call_{len(calls)}"
            calls.append(ToolCall(id=call_id, name=_text(item.get("name")), arguments=_text(item.get("arguments"))))
    return ResponseResult(
        id=_text(body.get("id")),
        text="".join(text) or _text(body.get("output_text")),
        reasoning="".join(reasoning),
        tool_calls=calls,
        status=body.get("status"),
        model=body.get("model"),
        usage=parse_usage(body.get("usage")),
    )


_REASONING_DELTAS = frozenset(
    {"response.reasoning_text.delta", "response.reasoning.delta", "response.reasoning_summary_text.delta"}
)


class ResponsesStreamAccumulator:
    """Joins /v1/responses stream events into one result.

    `response.completed` carries the whole response and wins; what was streamed fills any gap it
    leaves. A `response.failed` or `error` event sets `error` (the client turns it into an LLMError).
    """

    def __init__(self) -> None:
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._calls: dict[int, _CallParts] = {}
        self._item_index: dict[str, int] = {}
        self._counter = _Counter()
        self._final: ResponseResult | None = None
        self.id = ""
        self.status: str | None = None
        self.model: str | None = None
        self.usage: Usage | None = None
        self.error: str | None = None

    def add(self, event_type: str | None, payload: dict[str, Any]) -> list[StreamEvent]:
        """Take one event (type from the SSE `event:` line or the payload's `type`)."""
        kind = payload.get("type") or event_type or ""
        if kind in ("response.created", "response.in_progress", "response.completed", "response.failed",
                    "response.incomplete"):
            self._take_response(payload.get("response") or {}, completed=kind == "response.completed")
        if kind == "response.failed":
            failure = (payload.get("response") or {}).get("error")
            self.error = _error_message(failure) or "the response failed"
        elif kind == "error":
            self.error = _error_message(payload.get("error") or payload) or "unknown error"
        elif kind == "response.output_text.delta":
            if delta := _text(payload.get("delta")):
                self._text.append(delta)
                return [self._counter.event("text", delta)]
        elif kind in _REASONING_DELTAS:
            if delta := _text(payload.get("delta")):
                self._reasoning.append(delta)
                return [self._counter.event("reasoning", delta)]
        elif kind in ("response.output_item.added", "response.output_item.done"):
            return self._take_item(payload, done=kind.endswith(".done"))
        elif kind == "response.function_call_arguments.delta":
            if (parts := self._parts_for(payload)) is not None and (delta := _text(payload.get("delta"))):
                parts.arguments.append(delta)
                return [self._counter.event("tool_call", delta)]
        elif kind == "response.function_call_arguments.done":
            if (parts := self._parts_for(payload)) is not None and isinstance(payload.get("arguments"), str):
                parts.arguments = [payload["arguments"]]
        return []

    def _take_response(self, response: dict[str, Any], *, completed: bool) -> None:
        self.id = _text(response.get("id")) or self.id
        self.status = response.get("status") or self.status
        self.model = response.get("model") or self.model
        self.usage = parse_usage(response.get("usage")) or self.usage
        if completed and isinstance(response.get("output"), list):
            self._final = response_result_from_body(response)

    def _take_item(self, payload: dict[str, Any], *, done: bool) -> list[StreamEvent]:
        item = payload.get("item") or {}
        if item.get("type") != "function_call":
            return []
        index = payload.get("output_index")
        if not isinstance(index, int):
            index = self._item_index.get(_text(item.get("id")), len(self._calls))
        if item_id := _text(item.get("id")):
            self._item_index[item_id] = index
        parts = self._calls.setdefault(index, _CallParts())
        parts.id = parts.id or _text(item.get("call_id"))
        events = []
        if (name := _text(item.get("name"))) and not parts.name:
            parts.name = name
            events.append(self._counter.event("tool_call", name))
        if done and isinstance(item.get("arguments"), str) and item["arguments"]:
            parts.arguments = [item["arguments"]]
        return events

    def _parts_for(self, payload: dict[str, Any]) -> _CallParts | None:
        index = payload.get("output_index")
        if not isinstance(index, int):
            index = self._item_index.get(_text(payload.get("item_id")))
        return self._calls.get(index) if index is not None else None

    @property
    def ended_empty(self) -> bool:
        """Nothing arrived that makes an answer: no text, no call, no completed response."""
        return not self._text and not self._calls and self._final is None

    def result(self) -> ResponseResult:
        streamed_calls = _build_calls(self._calls)
        final = self._final
        if final is None:
            return ResponseResult(
                id=self.id,
                text="".join(self._text),
                reasoning="".join(self._reasoning),
                tool_calls=streamed_calls,
                status=self.status,
                model=self.model,
                usage=self.usage,
            )
        return ResponseResult(
            id=final.id or self.id,
            text=final.text or "".join(self._text),
            reasoning=final.reasoning or "".join(self._reasoning),
            tool_calls=final.tool_calls or streamed_calls,
            status=final.status or self.status,
            model=final.model or self.model,
            usage=final.usage or self.usage,
        )


def _error_message(error: object) -> str:
    if isinstance(error, str):
        return error
    if isinstance(error, dict):
        return _text(error.get("message")) or _text(error.get("code"))
    return ""
