"""The two ways to hold a tool-calling conversation with the model, behind one interface.

- `ResponsesConversation`: LM Studio's stateful `POST /v1/responses`. The server keeps the
  history; each round sends only the new items (tool outputs as `function_call_output`
  keyed by `call_id`) plus `previous_response_id`, so a request stays the same size however
  long the run. Tools are declared flat: `{"type": "function", "name", "description", "parameters"}`.
- `ChatConversation`: `POST /v1/chat/completions` for servers without a response store
  (llama.cpp's server, Ollama, ...). The bridge keeps the history and resends it; tools are
  nested: `{"type": "function", "function": {...}}`; results go back as `role: tool` messages.

Both return a `ModelTurn` per round; the agent never needs to know which one it has. Both also:
- take a new tool set between rounds (`set_tools`: a tool found by search is offered next round);
- run *prompted*, with no `tools` field (the tools are described in the instructions, calls are
  read from the text), for a model or server that cannot take the field;
- send a result as a plain user message when its call was written as text (`ToolOutput.as_text`),
  since the server never saw that call;
- keep a count of the characters the model has in its context (`size_chars`), and `compact()` to
  fit a budget: chat drops the oldest tool outputs; responses starts a new chain from a compacted
  transcript (the server's stored history cannot be trimmed).
"""

from __future__ import annotations

import json
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

DROPPED = "[output dropped to fit the model's context ({} characters); call the tool again if you need it]"


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
    """What one tool call produced, to send back to the model (`as_text`: its call was written as text)."""

    call_id: str
    name: str
    output: str
    as_text: bool = False

    def as_message(self) -> str:
        return f"Result of {self.name}:\n{self.output}"


@dataclass
class ModelTurn:
    """One answer of the model: text, reasoning kept apart, and the tool calls it asked for."""

    text: str
    reasoning: str
    tool_calls: list[ToolCall]
    usage: Usage | None = None
    response_id: str | None = None
    model: str | None = None  # as the server reports it
    calls_from_text: bool = False  # the calls were read from the text (the server never saw them as calls)
    cut: bool = False  # the answer stopped at max_tokens, not where the model ended it


@dataclass
class GenerationOptions:
    """Per-run generation settings shared by both strategies."""

    model: ResolvedModel
    instructions: str
    capabilities: ServerCapabilities
    max_tokens: int | None = None
    temperature: float | None = None
    on_event: OnEvent | None = None
    prompted: bool = False  # no `tools` field: the tools are in the instructions


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

    async def resend(self) -> ModelTurn: ...

    def set_tools(self, tools: list[FunctionSpec], instructions: str) -> None: ...

    def size_chars(self) -> int: ...

    def compact(self, target_chars: int, keep_last: int = 0) -> int: ...


@dataclass
class _Entry:
    """One step of the conversation as the bridge remembers it (for sizes and compaction)."""

    role: str  # "task", "assistant", "output"
    text: str
    name: str = ""
    dropped: bool = False


@dataclass
class _Base:
    llm: LLMClient
    tools: list[FunctionSpec]
    options: GenerationOptions
    transcript: list[_Entry] = field(default_factory=list)
    # The tools' size as sent, measured when the set changes (it is asked for several times a round).
    _tools_size: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._tools_size = _tools_chars(self.tools)

    def set_tools(self, tools: list[FunctionSpec], instructions: str) -> None:
        if tools != self.tools:  # usually the same set every round
            self.tools = list(tools)
            self._tools_size = _tools_chars(self.tools)
        self.options.instructions = instructions

    def size_chars(self) -> int:
        fixed = len(self.options.instructions) + (0 if self.options.prompted else self._tools_size)
        return fixed + sum(len(entry.text) for entry in self.transcript)

    def _remember(self, turn: ModelTurn) -> None:
        calls = " ".join(f"{c.name}({c.arguments})" for c in turn.tool_calls)
        self.transcript.append(_Entry("assistant", f"{turn.text}{calls}"))

    def _drop_oldest(self, target_chars: int, keep_last: int) -> int:
        """Drop the text of the oldest outputs (not the last `keep_last`) until the size fits."""
        outputs = [e for e in self.transcript if e.role == "output" and not e.dropped]
        dropped = 0
        for entry in outputs[: max(0, len(outputs) - keep_last)]:
            if self.size_chars() <= target_chars:
                break
            entry.text, entry.dropped = DROPPED.format(len(entry.text)), True
            dropped += 1
        return dropped


def _tools_chars(tools: list[FunctionSpec]) -> int:
    return sum(len(json.dumps(t.for_chat())) for t in tools)


class ResponsesConversation(_Base):
    """Stateful conversation over `/v1/responses`, chained by `previous_response_id`."""

    api: ApiKind = "responses"

    def __init__(self, llm: LLMClient, tools: list[FunctionSpec], options: GenerationOptions) -> None:
        super().__init__(llm, list(tools), options)
        self.previous_response_id: str | None = None
        self._last_input: str | list[dict[str, object]] = ""
        self._restart = False

    async def start(self, task: str) -> ModelTurn:
        self.transcript = [_Entry("task", task)]
        return await self._send(task)

    async def send_tool_outputs(self, outputs: list[ToolOutput]) -> ModelTurn:
        items: list[dict[str, object]] = []
        for o in outputs:
            self.transcript.append(_Entry("output", o.output, o.name))
            if o.as_text:
                items.append({"role": "user", "content": o.as_message()})
            else:
                items.append({"type": "function_call_output", "call_id": o.call_id, "output": o.output})
        return await self._send(items)

    async def resend(self) -> ModelTurn:
        """Send the last step again (after `compact`, as the start of a new chain)."""
        return await self._send(self._last_input)

    def compact(self, target_chars: int, keep_last: int = 0) -> int:
        """Start a new chain from the transcript with the oldest outputs dropped (not the last `keep_last`);
        returns how many were."""
        dropped = self._drop_oldest(target_chars, keep_last)
        self._restart = True
        return dropped

    async def _send(self, input_: str | list[dict[str, object]]) -> ModelTurn:
        options = self.options
        self._last_input = input_
        if self._restart:
            # The server's stored history cannot be trimmed: replay the compacted transcript instead.
            input_, self.previous_response_id, self._restart = self._replay(), None, False
        result = await generate(
            options,
            lambda stream: self.llm.create_response(
                input_,
                model=options.model,
                previous_response_id=self.previous_response_id,
                tools=None if options.prompted else [t.for_responses() for t in self.tools] or None,
                instructions=options.instructions,
                temperature=options.temperature,
                max_output_tokens=options.max_tokens,
                stream=stream,
                on_event=options.on_event,
            ),
        )
        # Chain from the newest response: the whole point of the stateful API.
        self.previous_response_id = result.id
        turn = ModelTurn(
            text=result.text,
            reasoning=result.reasoning,
            tool_calls=list(result.tool_calls),
            usage=result.usage,
            response_id=result.id,
            model=result.model,
            cut=result.status == "incomplete",
        )
        self._remember(turn)
        return turn

    def _replay(self) -> list[dict[str, object]]:
        """The transcript as plain messages: what a new chain needs to go on where the old one was."""
        items: list[dict[str, object]] = []
        for entry in self.transcript:
            if entry.role == "task":
                items.append({"role": "user", "content": entry.text})
            elif entry.role == "assistant":
                items.append({"role": "assistant", "content": entry.text or "(called tools)"})
            else:
                items.append({"role": "user", "content": f"Result of {entry.name}:\n{entry.text}"})
        return items


class ChatConversation(_Base):
    """Conversation over `/v1/chat/completions` with the history kept here."""

    api: ApiKind = "chat"

    def __init__(self, llm: LLMClient, tools: list[FunctionSpec], options: GenerationOptions) -> None:
        super().__init__(llm, list(tools), options)
        self.messages: list[dict[str, object]] = []
        self._output_messages: list[tuple[_Entry, dict[str, object]]] = []

    async def start(self, task: str) -> ModelTurn:
        self.transcript = [_Entry("task", task)]
        self.messages = [
            {"role": "system", "content": self.options.instructions},
            {"role": "user", "content": task},
        ]
        return await self._send()

    async def send_tool_outputs(self, outputs: list[ToolOutput]) -> ModelTurn:
        for o in outputs:
            entry = _Entry("output", o.output, o.name)
            if o.as_text:
                message: dict[str, object] = {"role": "user", "content": o.as_message()}
            else:
                message = {"role": "tool", "tool_call_id": o.call_id, "name": o.name, "content": o.output}
            self.transcript.append(entry)
            self.messages.append(message)
            self._output_messages.append((entry, message))
        return await self._send()

    async def resend(self) -> ModelTurn:
        return await self._send()

    def set_tools(self, tools: list[FunctionSpec], instructions: str) -> None:
        super().set_tools(tools, instructions)
        if self.messages:
            self.messages[0]["content"] = instructions

    def compact(self, target_chars: int, keep_last: int = 0) -> int:
        """Drop the oldest tool outputs (not the last `keep_last`) until the history fits; returns how many."""
        dropped = self._drop_oldest(target_chars, keep_last)
        for entry, message in self._output_messages:
            if entry.dropped:
                message["content"] = entry.text if message["role"] == "tool" else f"Result of {entry.name}:\n{entry.text}"
        return dropped

    async def _send(self) -> ModelTurn:
        options = self.options
        offer = not options.prompted and bool(self.tools)
        result = await generate(
            options,
            lambda stream: self.llm.chat_completion(
                self.messages,
                model=options.model,
                temperature=options.temperature if options.temperature is not None else 0.7,
                max_tokens=options.max_tokens,
                tools=[t.for_chat() for t in self.tools] if offer else None,
                tool_choice="auto" if offer else None,
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
        turn = ModelTurn(
            text=result.content,
            reasoning=result.reasoning,
            tool_calls=list(result.tool_calls),
            usage=result.usage,
            model=result.model,
            cut=result.finish_reason == "length",
        )
        self._remember(turn)
        return turn
