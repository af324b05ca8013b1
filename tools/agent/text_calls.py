"""Tool calls a model wrote into its message text instead of `tool_calls`, read back as calls.

When a chat template's parser does not match the model (Qwen, Hermes, Llama and Mistral formats in
LM Studio and other hosts), the call arrives as text. These forms are read:

    Hermes / Qwen     <tool_call>{"name": "read_file", "arguments": {"path": "a"}}</tool_call>
    Qwen3-coder       <tool_call><function=read_file><parameter=path>a</parameter></function></tool_call>
    Llama             <function=read_file>{"path": "a"}</function>
    Mistral           [TOOL_CALLS][{"name": "read_file", "arguments": {"path": "a"}}]
    JSON              {"name": "read_file", "arguments": {...}}  the whole message, or in a ```json fence

Only structure counts: a call needs one of these shapes *and* a name that matches an offered tool
(`match_tool_name`: case, `-`/`_`, a missing or extra `server__` prefix). Prose that mentions a tool
("I will use read_file next") is never a call. Arguments are kept as written; the executor repairs
and checks them like any other call's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from dataclasses import dataclass

from llm.results import ToolCall

_HERMES = re.compile(r"<tool_call>\s*(\{.*?\})\s*(?:</tool_call>|$)", re.DOTALL)
_QWEN3_CODER = re.compile(r"<function=([\w.:-]+)>\s*((?:<parameter=[\w.-]+>.*?</parameter>\s*)*)</function>", re.DOTALL)
_PARAMETER = re.compile(r"<parameter=([\w.-]+)>\s*(.*?)\s*</parameter>", re.DOTALL)
_LLAMA = re.compile(r"<function=([\w.:-]+)>\s*(\{.*?\})\s*</function>", re.DOTALL)
_MISTRAL = re.compile(r"\[TOOL_CALLS\]\s*(\[.*\])", re.DOTALL)
_FENCED = re.compile(r"```(?:json|tool_call|tool)?\s*(\{.*?\}|\[.*?\])\s*```", re.DOTALL)
_MARKUP = re.compile(
    r"<tool_call>.*?(?:</tool_call>|$)|<function=[\w.:-]+>.*?</function>|\[TOOL_CALLS\].*|```(?:json|tool_call|tool)?\s*[\[{].*?```",
    re.DOTALL,
)


@dataclass(frozen=True)
class Recovered:
    """The calls read from a message, the format they were in, and the text left once they are taken out."""

    calls: list[ToolCall]
    format: str
    remaining_text: str


def recover_tool_calls(text: str, offered: Collection[str], *, round_index: int = 0) -> Recovered | None:
    """The tool calls written in `text`, or None when it holds no call to an offered tool."""
    if not text or not offered:
        return None
    for name, reader in _READERS:
        found = [(tool, arguments) for tool, arguments in reader(text) if match_tool_name(tool, offered)]
        if found:
            calls = [
                ToolCall(
                    id=f"text_call_{round_index}_{index}",
                    name=match_tool_name(tool, offered) or tool,
                    arguments=arguments,
                )
                for index, (tool, arguments) in enumerate(found)
            ]
            return Recovered(calls, name, _MARKUP.sub("", text).strip())
    return None


def match_tool_name(name: str, offered: Collection[str]) -> str | None:
    """The offered tool `name` means, allowing for case, `-` for `_`, and a missing or extra `server__`."""
    if name in offered:
        return name
    wanted = _normal(name)
    by_normal: dict[str, list[str]] = {}
    for tool in offered:
        by_normal.setdefault(_normal(tool), []).append(tool)
        by_normal.setdefault(_normal(tool.split("__", 1)[-1]), []).append(tool)  # prefix left out
    candidates = by_normal.get(wanted) or by_normal.get(_normal(name.split("__", 1)[-1]))  # extra prefix
    if candidates and len(set(candidates)) == 1:
        return candidates[0]
    return None


def _normal(name: str) -> str:
    return name.strip().replace("-", "_").casefold()


def _arguments_text(value: object) -> str:
    """Arguments as the raw JSON text a native call carries (a string is passed on as written)."""
    if isinstance(value, str):
        return value
    return json.dumps(value if value is not None else {})


def _from_envelope(data: object) -> list[tuple[str, str]]:
    """(name, arguments) from `{"name", "arguments" | "parameters"}` objects, alone or in a list."""
    items = data if isinstance(data, list) else [data]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return []
        extra = set(item) - {"name", "arguments", "parameters", "id", "type"}
        if extra:
            return []  # an object that merely has a "name" field is not a call
        calls.append((item["name"], _arguments_text(item.get("arguments", item.get("parameters", {})))))
    return calls


def _loads(text: str) -> object:
    """JSON, repaired if it is almost JSON (the executor repairs arguments the same way)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        import json_repair

        repaired = json_repair.loads(text)
        return repaired if repaired != "" else None


def _hermes(text: str) -> list[tuple[str, str]]:
    calls = []
    for body in _HERMES.findall(text):
        if "<function=" in body:
            continue
        calls.extend(_from_envelope(_loads(body)))
    return calls


def _qwen3_coder(text: str) -> list[tuple[str, str]]:
    calls = []
    for name, parameters in _QWEN3_CODER.findall(text):
        values: dict[str, object] = {}
        for key, raw in _PARAMETER.findall(parameters):
            try:
                values[key] = json.loads(raw)
            except json.JSONDecodeError:
                values[key] = raw
        calls.append((name, json.dumps(values)))
    return calls


def _llama(text: str) -> list[tuple[str, str]]:
    return [(name, arguments) for name, arguments in _LLAMA.findall(text)]


def _mistral(text: str) -> list[tuple[str, str]]:
    match = _MISTRAL.search(text)
    return _from_envelope(_loads(match.group(1))) if match else []


def _json(text: str) -> list[tuple[str, str]]:
    stripped = text.strip()
    if stripped.startswith(("{", "[")):
        try:
            return _from_envelope(json.loads(stripped))
        except json.JSONDecodeError:
            pass
    calls = []
    for body in _FENCED.findall(text):
        calls.extend(_from_envelope(_loads(body)))
    return calls


_READERS = (
    ("qwen3-coder", _qwen3_coder),
    ("hermes", _hermes),
    ("llama", _llama),
    ("mistral", _mistral),
    ("json", _json),
)
