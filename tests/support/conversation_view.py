"""What a model sees in one generation request, whichever API carried it: tools, prompt, what came back.

The weak models of the suite react to the request as a model would, so they must read it the same way
on `/v1/chat/completions` (the whole history in `messages`) and on `/v1/responses` (only the new
`input` items, the rest stored by the server under `previous_response_id`). This module turns both into
one `View`; it depends on nothing of the bridge, only on the two wire formats.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from tests.support.fake_lmstudio import RecordedRequest

__all__ = ["OfferedTool", "StoredConversation", "View", "read_request"]

StoredConversation = Callable[[str], list[dict[str, object]]]
"""`FakeLMStudio.conversation`: the items stored under a response id."""


@dataclass(frozen=True)
class OfferedTool:
    """A tool the request declares in its `tools` field."""

    name: str
    description: str
    parameters: Mapping[str, object]


@dataclass(frozen=True)
class View:
    """One request as the model reads it.

    `prompt` is the instructions, system messages and the first user message (the task); `observations`
    are the texts that came back after the model's first own turn, in order: tool outputs (`role: tool`
    messages, `function_call_output` items) and later user or system messages. Whatever form a bridge uses
    to hand a result back, it lands here.
    """

    tools: tuple[OfferedTool, ...]
    prompt: str
    observations: tuple[str, ...]

    @property
    def text(self) -> str:
        """Everything but the model's own turns, for a model that learns its tools from the prompt."""
        return "\n".join((self.prompt, *self.observations))


def read_request(request: RecordedRequest, stored: StoredConversation | None = None) -> View:
    """The `View` of a chat-completions or responses request (`stored` resolves `previous_response_id`)."""
    body = request.body or {}
    tools = tuple(_offered(tool) for tool in body.get("tools") or [] if isinstance(tool, dict))
    if request.path == "/v1/responses":
        items: list[dict[str, object]] = []
        previous = body.get("previous_response_id")
        if previous and stored is not None:
            items.extend(stored(str(previous)))
        items.extend(_input_items(body.get("input")))
        prompt_parts = [str(body["instructions"])] if body.get("instructions") else []
    else:
        items = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        prompt_parts = []
    observations: list[str] = []
    spoke = False
    for item in items:
        kind = _kind(item)
        if kind == "own":
            spoke = True
        elif kind == "text":
            # Until the model first speaks, system text and the task are its prompt.
            (observations if spoke else prompt_parts).append(_text(item))
    return View(tools=tools, prompt="\n".join(prompt_parts), observations=tuple(observations))


def _offered(tool: Mapping[str, object]) -> OfferedTool:
    function = tool.get("function") if isinstance(tool.get("function"), dict) else tool
    assert isinstance(function, Mapping)
    parameters = function.get("parameters")
    return OfferedTool(
        name=str(function.get("name", "")),
        description=str(function.get("description") or ""),
        parameters=parameters if isinstance(parameters, Mapping) else {},
    )


def _input_items(raw: object) -> list[dict[str, object]]:
    if raw is None:
        return []
    if isinstance(raw, list):
        return [item if isinstance(item, dict) else {"role": "user", "content": str(item)} for item in raw]
    return [{"role": "user", "content": str(raw)}]


def _kind(item: Mapping[str, object]) -> str:
    """`own` (the model's turns: messages and calls), `skip` (its reasoning) or `text` (everything else)."""
    if item.get("type") == "reasoning":
        return "skip"
    if item.get("type") == "function_call" or item.get("role") == "assistant":
        return "own"
    return "text"


def _text(item: Mapping[str, object]) -> str:
    if item.get("type") == "function_call_output":
        return _flatten(item.get("output"))
    return _flatten(item.get("content"))


def _flatten(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "\n".join(
            str(part.get("text", "")) if isinstance(part, Mapping) else str(part) for part in content
        )
    return "" if content is None else str(content)
