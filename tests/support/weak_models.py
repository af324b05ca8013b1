"""Scripted "weak models": stand-ins for 1-30B local models that try to do the task, with their habits.

A `WeakModel` is a stand-in script (`request -> Turn`). Each request it reads as a model would
(`conversation_view.View`: the tools offered, the prompt, what came back after its own turns), decides
what to do with a `Policy` (the part that understood the task: which tool, which arguments, what the
answer is), and writes its decision with its `Habits` (the part that is weak):

- `call_format`: a native call in `tool_calls`, or the call written into the message text as Hermes/Qwen
  `<tool_call>{json}</tool_call>`, Qwen3-coder `<function=NAME><parameter=P>V</parameter></function>`,
  Llama `<function=NAME>{json}</function>`, Mistral `[TOOL_CALLS][{json}]`, bare or ```json fenced JSON;
- `arguments`: clean JSON, stringified values (`"5"`, `"true"`, a lone string for a one-item array), a
  trailing comma, single quotes, a missing closing brace;
- `names`: the offered name, or it wrong-cased, with the `server__` prefix dropped or added, `-` for `_`;
- `tools_from`: the `tools` field, or only tool names the prompt text mentions (a model not trained
  for tool use, behind a server that refuses the field).

Habits persist: error feedback does not cure them within a run (each is how the model writes, not a
one-off slip), so a weak model retries the same way a bounded number of times, then gives up and says
so. The answer is always derived from what really came back: a model that never saw the output of a
call cannot produce what only that output holds. Nothing here knows which bridge it talks to.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from tests.support.conversation_view import OfferedTool, StoredConversation, View, read_request
from tests.support.fake_lmstudio import RecordedRequest, Turn

__all__ = [
    "Answer",
    "Call",
    "Habits",
    "Policy",
    "Step",
    "WeakModel",
    "fill_from_schema",
    "looks_like_error",
    "plan",
    "relevance_choice",
]

CallFormat = Literal["native", "hermes", "qwen3_coder", "llama", "mistral", "bare_json", "fenced_json"]
ArgumentHabit = Literal["clean", "stringified", "trailing_comma", "single_quotes", "unclosed_brace"]
NameHabit = Literal["exact", "wrong_case", "drop_prefix", "add_prefix", "dashes"]


@dataclass(frozen=True)
class Habits:
    """How a model writes its calls (see the module docstring); the defaults are a well-behaved model."""

    call_format: CallFormat = "native"
    arguments: ArgumentHabit = "clean"
    names: NameHabit = "exact"
    prefix: str = ""  # the server name it adds under names="add_prefix"
    tools_from: Literal["field", "prompt"] = "field"


@dataclass(frozen=True)
class Call:
    """Call `tool` (the name the model resolved, or its server's own name) with `arguments`."""

    tool: str
    arguments: Mapping[str, object]


@dataclass(frozen=True)
class Answer:
    """Answer in plain text and stop calling tools."""

    text: str


Policy = Callable[[View], Call | Answer]
ToolChoice = str | Callable[[View], str | None]
Arguments = Mapping[str, object] | Callable[[View, str, Sequence[str]], Mapping[str, object]]

_ERROR_START = re.compile(r"^\s*(\[?error\b|tool error|mcp error|failed\b)", re.IGNORECASE)


def looks_like_error(output: str) -> bool:
    """Whether a tool result reads as a failure to a model (it starts with "Error", "Tool error", ...)."""
    return bool(_ERROR_START.match(output))


@dataclass(frozen=True)
class Step:
    """One step of a plan: call `tool` until a result satisfies `done`, at most `attempts` times.

    `arguments` may depend on the step's earlier results (a model that reads the tail after a cut output).
    """

    tool: ToolChoice
    arguments: Arguments
    done: Callable[[str], bool] = lambda output: not looks_like_error(output)
    attempts: int = 3


def plan(steps: Sequence[Step], answer: Callable[[Sequence[str]], str | None], missing: str) -> Policy:
    """A policy that walks `steps` in order, then answers with `answer(results)` (or `missing` if None).

    The results a request carries are matched to the steps in order; a step that used up its attempts
    ends the run with the model saying it could not do it, quoting the last result's first line.
    """

    def policy(view: View) -> Call | Answer:
        index = 0
        results: list[str] = []
        for output in view.observations:
            results.append(output)
            if steps[index].done(output):
                index, results = index + 1, []
                if index == len(steps):
                    break
            elif len(results) >= steps[index].attempts:
                first_line = output.strip().splitlines()[0][:200] if output.strip() else "(empty)"
                return Answer(f"I could not complete the task. The last tool result was: {first_line}")
        if index == len(steps):
            return Answer(answer(view.observations) or missing)
        step = steps[index]
        tool = step.tool(view) if callable(step.tool) else step.tool
        if tool is None:
            return Answer("None of the tools I have can do this.")
        arguments = step.arguments(view, tool, results) if callable(step.arguments) else step.arguments
        return Call(tool, arguments)

    return policy


_STOP = set("a an and are as at be by can do for from give i in is it its me my now of on or please right so "
            "that the this to what whats with you your".split())


def _words(text: str) -> set[str]:
    return {w.rstrip("s") for w in re.findall(r"[a-z]+", text.lower().replace("_", " ")) if w not in _STOP}


def relevance_choice(query: str, attention_span: int | None = None) -> Callable[[View], str | None]:
    """Pick the offered tool whose name and description share most words with `query` (ties: first listed).

    `attention_span` models a small model lost in a long tool list: it weighs only the first that many
    tools offered, so a long list in which the right tool comes late makes it pick a wrong one.
    """
    wanted = _words(query)

    def choose(view: View) -> str | None:
        considered = view.tools[:attention_span] if attention_span else view.tools
        scored = [(len(wanted & _words(f"{t.name} {t.description}")), -i, t.name) for i, t in enumerate(considered)]
        best = max(scored, default=None)
        return best[2] if best and best[0] > 0 else None

    return choose


def fill_from_schema(entity: str) -> Callable[[View, str, Sequence[str]], Mapping[str, object]]:
    """Arguments a model writes from a tool's schema alone: `entity` for strings, 1, false, [entity]."""
    filler: dict[str, object] = {"string": entity, "integer": 1, "number": 1, "boolean": False, "array": [entity]}

    def arguments(view: View, tool: str, results: Sequence[str]) -> Mapping[str, object]:
        offered = next((t for t in view.tools if t.name == tool), OfferedTool(tool, "", {}))
        properties = offered.parameters.get("properties") or {}
        required = offered.parameters.get("required") or list(properties)
        assert isinstance(properties, Mapping) and isinstance(required, list)
        return {name: filler.get(str((properties.get(name) or {}).get("type")), entity) for name in required}

    return arguments


@dataclass
class WeakModel:
    """A stand-in script: `policy` decides, `habits` write. `script(fake)` binds it to a stand-in.

    `log` records, one line per request, what the model saw and did (for a suite report's "why").
    """

    policy: Policy
    habits: Habits = field(default_factory=Habits)
    log: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def script(self, stored: StoredConversation) -> Callable[[RecordedRequest], Turn]:
        """The `Script` callable for a stand-in whose stored conversations `stored` returns."""
        return lambda request: self.respond(read_request(request, stored))

    def respond(self, view: View) -> Turn:
        """The model's turn for what it sees."""
        action = self.policy(view)
        if isinstance(action, Answer):
            self._note(view, f"answers {action.text[:80]!r}")
            return Turn(text=action.text)
        name = _resolve(action.tool, self._known_tools(view))
        if name is None:
            self._note(view, f"has no tool like {action.tool}; gives up")
            return Turn(text=f"I don't have a tool to do that ({action.tool} is not among my tools).")
        written = _mangle(name, self.habits)
        turn = _render(written, action.arguments, self.habits)
        self._note(view, f"calls {written} ({self.habits.call_format}, {self.habits.arguments} arguments)")
        return turn

    def _known_tools(self, view: View) -> set[str]:
        if self.habits.tools_from == "field":
            return {t.name for t in view.tools}
        return set(re.findall(r"[A-Za-z][A-Za-z0-9_-]*", view.text))

    def _note(self, view: View, what: str) -> None:
        with self._lock:
            self.log.append(f"{len(view.tools)} tools offered, {len(view.observations)} results back: {what}")


def _resolve(tool: str, known: set[str]) -> str | None:
    """The offered name for `tool`: itself, or the namespaced `server__tool` (what any model can read off)."""
    if tool in known:
        return tool
    return next((name for name in sorted(known) if name.endswith("__" + tool)), None)


def _mangle(name: str, habits: Habits) -> str:
    if habits.names == "wrong_case":
        return "_".join(part[:1].upper() + part[1:] for part in name.split("_"))
    if habits.names == "drop_prefix":
        return name.split("__", 1)[-1]
    if habits.names == "add_prefix" and "__" not in name:
        return f"{habits.prefix}__{name}"
    if habits.names == "dashes":
        return name.replace("_", "-")
    return name


def _stringify(value: object) -> object:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        if len(value) == 1 and isinstance(value[0], str):
            return value[0]
        return [_stringify(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _stringify(v) for k, v in value.items()}
    return value


def _arguments_text(arguments: Mapping[str, object], habit: ArgumentHabit) -> str:
    if habit == "stringified":
        return json.dumps(_stringify(arguments))
    text = json.dumps(arguments)
    if habit == "trailing_comma":
        return text[:-1] + ",}" if text != "{}" else text
    if habit == "single_quotes":
        return text.replace('"', "'")
    if habit == "unclosed_brace":
        return text[:-1]
    return text


def _render(name: str, arguments: Mapping[str, object], habits: Habits) -> Turn:
    args = _arguments_text(arguments, habits.arguments)
    envelope = f'{{"name": "{name}", "arguments": {args}}}'
    fmt = habits.call_format
    if fmt == "native":
        return Turn(tool_calls=[(name, args)])
    if fmt == "hermes":
        return Turn(text=f"<tool_call>\n{envelope}\n</tool_call>")
    if fmt == "qwen3_coder":
        parameters = "".join(
            f"<parameter={key}>\n{value if isinstance(value, str) else json.dumps(value)}\n</parameter>\n"
            for key, value in arguments.items()
        )
        return Turn(text=f"<tool_call>\n<function={name}>\n{parameters}</function>\n</tool_call>")
    if fmt == "llama":
        return Turn(text=f"<function={name}>{args}</function>")
    if fmt == "mistral":
        return Turn(text=f"[TOOL_CALLS][{envelope}]")
    if fmt == "bare_json":
        return Turn(text=envelope)
    return Turn(text=f"I'll use the {name} tool.\n```json\n{envelope}\n```")
