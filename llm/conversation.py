"""The two ways to hold a tool-calling conversation with the model, behind one interface.

- `ResponsesConversation`: LM Studio's stateful `POST /v1/responses`. The server keeps the
  history; each round sends only the new items (tool outputs as `function_call_output`
  keyed by `call_id`) plus `previous_response_id`, so a request stays the same size however
  long the run. Tools are declared flat: `{"type": "function", "name", "description", "parameters"}`.
- `ChatConversation`: `POST /v1/chat/completions` for servers without a response store
  (llama.cpp's server, Ollama, ...). The bridge keeps the history and resends it; tools are
  nested: `{"type": "function", "function": {...}}`; results go back as `role: tool` messages.

Both return a `ModelTurn` per round; the agent never needs to know which one it has.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from llm.capabilities import ApiKind, ServerCapabilities
from llm.exceptions import ContextLengthExceededError
from llm.llm_client import LLMClient
from llm.models import ResolvedModel
from llm.results import ChatResult, OnEvent, ResponseResult, ToolCall, Usage

T = TypeVar("T", ChatResult, ResponseResult)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FunctionSpec:
    """A tool as the model sees it: name, description and a JSON-schema `parameters` object."""

    name: str
    description: str
    parameters: dict[str, object]

    def for_responses(self) -> dict[str, object]:
        """The flat form `/v1/responses` takes."""
        return {"type": "function", "name": self.name, "description": self.description, "parameters": self.parameters}

    def for_chat(self) -> dict[str, object]:
        """The nested form `/v1/chat/completions` takes."""
        function = {"name": self.name, "description": self.description, "parameters": self.parameters}
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolOutput:
    """What one tool call produced, to send back to the model."""

    call_id: str
    name: str
    output: str


@dataclass
class ModelTurn:
    """One answer of the model: text, reasoning kept apart, and the tool calls it asked for."""

    text: str
    reasoning: str
    tool_calls: list[ToolCall]
    usage: Usage | None = None
    response_id: str | None = None
    model: str | None = None  # as the server reports it


@dataclass
class GenerationOptions:
    """Per-run generation settings shared by both strategies."""

    model: ResolvedModel
    instructions: str
    capabilities: ServerCapabilities
    max_tokens: int | None = None
    temperature: float | None = None
    on_event: OnEvent | None = None


async def generate(options: GenerationOptions, send: Callable[[bool], Awaitable[T]]) -> T:
    """`send(stream)`, streamed unless the server is known not to stream tool calls.

    An empty 200 stream is asked again once without streaming. That answer tells what the empty
    stream meant: tool calls prove the server cannot stream them (llama.cpp), and the capability
    is learned; anything else (LM Studio's context-overflow form gets its proper 400 now) proves
    nothing, and the next request streams again.
    """
    if not options.capabilities.stream:
        return await send(False)
    try:
        return await send(True)
    except ContextLengthExceededError as exc:
        if exc.status_code != 200:
            raise
    logger.info("a streamed answer came back empty: asking again without streaming")
    result = await send(False)
    if result.tool_calls:
        options.capabilities.streamed_tool_calls_come_back_empty()
    return result


class Conversation(Protocol):
    """A tool-calling conversation; `start` once, then `send_tool_outputs` each round."""

    api: ApiKind

    async def start(self, task: str) -> ModelTurn: ...

    async def send_tool_outputs(self, outputs: list[ToolOutput]) -> ModelTurn: ...


class ResponsesConversation:
    """Stateful conversation over `/v1/responses`, chained by `previous_response_id`."""

    api: ApiKind = "responses"

    def __init__(self, llm: LLMClient, tools: list[FunctionSpec], options: GenerationOptions) -> None:
        self._llm = llm
        self._tools = [t.for_responses() for t in tools]
        self._options = options
        self.previous_response_id: str | None = None

    async def start(self, task: str) -> ModelTurn:
        return await self._send(task)

    async def send_tool_outputs(self, outputs: list[ToolOutput]) -> ModelTurn:
        items = [{"type": "function_call_output", "call_id": o.call_id, "output": o.output} for o in outputs]
        return await self._send(items)

    async def _send(self, input_: str | list[dict[str, object]]) -> ModelTurn:
        options = self._options
        result = await generate(
            options,
            lambda stream: self._llm.create_response(
                input_,
                model=options.model,
                previous_response_id=self.previous_response_id,
                tools=self._tools or None,
                instructions=options.instructions,
                temperature=options.temperature,
                max_output_tokens=options.max_tokens,
                stream=stream,
                on_event=options.on_event,
            ),
        )
        # Chain from the newest response: the whole point of the stateful API.
        self.previous_response_id = result.id
        return ModelTurn(
            text=result.text,
            reasoning=result.reasoning,
            tool_calls=list(result.tool_calls),
            usage=result.usage,
            response_id=result.id,
            model=result.model,
        )


@dataclass
class ChatConversation:
    """Conversation over `/v1/chat/completions` with the history kept here."""

    llm: LLMClient
    tools: list[FunctionSpec]
    options: GenerationOptions
    messages: list[dict[str, object]] = field(default_factory=list)
    api: ApiKind = "chat"

    async def start(self, task: str) -> ModelTurn:
        self.messages = [
            {"role": "system", "content": self.options.instructions},
            {"role": "user", "content": task},
        ]
        return await self._send()

    async def send_tool_outputs(self, outputs: list[ToolOutput]) -> ModelTurn:
        self.messages.extend(
            {"role": "tool", "tool_call_id": o.call_id, "name": o.name, "content": o.output} for o in outputs
        )
        return await self._send()

    async def _send(self) -> ModelTurn:
        options = self.options
        result = await generate(
            options,
            lambda stream: self.llm.chat_completion(
                self.messages,
                model=options.model,
                temperature=options.temperature if options.temperature is not None else 0.7,
                max_tokens=options.max_tokens,
                tools=[t.for_chat() for t in self.tools] or None,
                tool_choice="auto" if self.tools else None,
                stream=stream,
                on_event=options.on_event,
            ),
        )
        assistant: dict[str, object] = {"role": "assistant", "content": result.content or ""}
        if result.tool_calls:
            assistant["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments or "{}"}}
                for c in result.tool_calls
            ]
        self.messages.append(assistant)
        return ModelTurn(
            text=result.content,
            reasoning=result.reasoning,
            tool_calls=list(result.tool_calls),
            usage=result.usage,
            model=result.model,
        )

