"""From downstream MCP tools to the tools a local model is offered, and back.

- Names: one server keeps its tool names; several are namespaced `server__tool`. Every name
  is sanitised to what OpenAI-style APIs accept (`^[a-zA-Z0-9_-]{1,64}$`) and made unique,
  so two tools can never collide.
- Schemas: cleaned for llama.cpp-based servers (an empty or missing schema becomes
  `{"type": "object", "properties": {}}`; `$schema` is dropped). A schema that is not valid
  JSON Schema is left out of the run with a note instead of breaking every tool.
- Arguments: the model's JSON text is parsed and checked against the tool's schema before
  anything runs; a problem becomes an error output that quotes the schema.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mcp.types import Tool

from llm.conversation import FunctionSpec

_NAME_OK = re.compile(r"[^a-zA-Z0-9_-]")
_MAX_NAME = 64
_MAX_DESCRIPTION = 1024


@dataclass(frozen=True)
class BridgedTool:
    """One downstream tool as offered to the model."""

    llm_name: str
    server: str
    tool_name: str
    description: str
    parameters: dict[str, object]
    read_only: bool = False  # the server declares readOnlyHint (approvals ask only for the others)

    def spec(self) -> FunctionSpec:
        return FunctionSpec(self.llm_name, self.description, self.parameters)


class ArgumentError(ValueError):
    """The model's arguments for a tool are not valid JSON or do not fit its schema."""


def sanitize_name(name: str) -> str:
    """`name` reduced to the characters and length LLM APIs accept (stable, hash-suffixed when cut)."""
    clean = _NAME_OK.sub("_", name) or "tool"
    if len(clean) <= _MAX_NAME:
        return clean
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{clean[: _MAX_NAME - 9]}_{digest}"


def clean_schema(schema: Mapping[str, object] | None) -> dict[str, object]:
    """A copy of `schema` that llama.cpp-style servers accept (treat it as read-only: it is cached).

    Checking a schema costs ~0.5 ms and the same tool lists come back on every run, so results
    are cached by the schema's JSON text.

    Raises:
        SchemaError: the schema is not valid JSON Schema.
    """
    return _clean_schema_text(json.dumps(schema or {}, sort_keys=True))


@functools.lru_cache(maxsize=2048)
def _clean_schema_text(text: str) -> dict[str, object]:
    cleaned = {k: v for k, v in json.loads(text).items() if k != "$schema"}
    cleaned.setdefault("type", "object")
    if cleaned.get("type") == "object" and not isinstance(cleaned.get("properties"), dict):
        cleaned["properties"] = {}
    from jsonschema import (
        Draft202012Validator,  # imported on first use: not needed to list the bridge's tools
    )

    Draft202012Validator.check_schema(cleaned)
    return cleaned


def _schema_error() -> type[Exception]:
    from jsonschema.exceptions import SchemaError

    return SchemaError


def build_toolset(
    tools_by_server: Mapping[str, Sequence[Tool]], *, namespaced: bool
) -> tuple[dict[str, BridgedTool], list[str]]:
    """The model's tool list, keyed by the name the model will use, and notes on tools left out."""
    toolset: dict[str, BridgedTool] = {}
    notes: list[str] = []
    for server, tools in tools_by_server.items():
        for tool in tools:
            try:
                parameters = clean_schema(tool.input_schema)
            except _schema_error() as exc:
                notes.append(f"{server}.{tool.name} left out: its input schema is invalid ({exc.message})")
                continue
            wanted = sanitize_name(f"{server}__{tool.name}" if namespaced else tool.name)
            name, n = wanted, 2
            while name in toolset:
                suffix = f"_{n}"
                name, n = wanted[: _MAX_NAME - len(suffix)] + suffix, n + 1
            toolset[name] = BridgedTool(
                llm_name=name,
                server=server,
                tool_name=tool.name,
                description=(tool.description or tool.title or tool.name)[:_MAX_DESCRIPTION],
                parameters=parameters,
                read_only=bool(tool.annotations and tool.annotations.read_only_hint),
            )
    return toolset, notes


def parse_arguments(tool: BridgedTool, raw: str) -> dict[str, object]:
    """The model's arguments for `tool`, parsed and checked against its schema.

    An empty string means no arguments (some servers send `""` for a call without any).

    Raises:
        ArgumentError: not a JSON object, or not valid for the schema; the message quotes the schema.
    """
    text = raw.strip() if raw else ""
    try:
        arguments = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        raise ArgumentError(
            f"arguments for {tool.llm_name} are not valid JSON ({exc.msg} at column {exc.colno}). "
            f"Call it again with a JSON object matching this schema: {_schema_text(tool)}"
        ) from exc
    if not isinstance(arguments, dict):
        raise ArgumentError(
            f"arguments for {tool.llm_name} must be a JSON object, got {type(arguments).__name__}. "
            f"Schema: {_schema_text(tool)}"
        )
    from jsonschema import Draft202012Validator

    errors = sorted(Draft202012Validator(tool.parameters).iter_errors(arguments), key=lambda e: list(e.path))
    if errors:
        problems = "; ".join(
            f"{'/'.join(str(p) for p in e.path) or '(top level)'}: {e.message}" for e in errors[:5]
        )
        raise ArgumentError(
            f"arguments for {tool.llm_name} do not match its schema ({problems}). "
            f"Call it again with arguments matching this schema: {_schema_text(tool)}"
        )
    return arguments


def _schema_text(tool: BridgedTool) -> str:
    return json.dumps(tool.parameters, separators=(",", ":"))[:2000]
