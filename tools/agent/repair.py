"""Arguments a small model got almost right, repaired before the call runs.

`repair_arguments(tool, raw)` first takes the arguments as they are (`toolset.parse_arguments`).
Only when that fails does it try, in order:

1. JSON repair with `json-repair` (a maintained library, MIT): a trailing comma, single quotes, a
   missing closing brace, a call wrapped in prose or a fence; never a repair that has to invent a
   value (`{"text": ` cut off after its key is refused, not sent as an empty string);
2. coercion to the schema where the intent is unambiguous: `"5"` to 5 for an integer, `"2.5"` for a
   number, `"true"`/`"false"` for a boolean, a single value where an array is expected, a number
   where a string is expected;

then checks the result against the schema again. What still does not fit goes back to the model
with the schema, as before. Each repair made is named, for the run's counters.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from tools.downstream.toolset import ArgumentError, BridgedTool, parse_arguments

_TRUE, _FALSE = frozenset({"true", "yes", "1"}), frozenset({"false", "no", "0"})


def repair_arguments(tool: BridgedTool, raw: str) -> tuple[dict[str, object], list[str]]:
    """The arguments for `tool`, and the repairs that made them fit (empty when none was needed).

    Raises:
        ArgumentError: they cannot be repaired; the message quotes the schema (as `parse_arguments`).
    """
    try:
        return parse_arguments(tool, raw), []
    except ArgumentError as original:
        repairs: list[str] = []
        value = _as_object(raw, repairs)
        if value is None:
            raise original from None
        coerced = _coerce_object(value, tool.parameters, repairs)
        if not repairs:
            raise original from None
        try:
            return parse_arguments(tool, json.dumps(coerced)), repairs
        except ArgumentError:
            raise original from None


def _as_object(raw: str, repairs: list[str]) -> dict[str, object] | None:
    text = (raw or "").strip()
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError:
        import json_repair  # imported on first use: most calls never need it

        value = json_repair.loads(text)
        if value == "" or value is None or (_has_empty_string(value) and '""' not in text and "''" not in text):
            return None  # not JSON at all, or a value the repair had to invent (the text was cut off)
        repairs.append("json")
    return value if isinstance(value, dict) else None


def _has_empty_string(value: object) -> bool:
    if isinstance(value, dict):
        return any(_has_empty_string(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_empty_string(item) for item in value)
    return value == ""


def _coerce_object(value: dict[str, object], schema: Mapping[str, object], repairs: list[str]) -> dict[str, object]:
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return value
    return {
        key: _coerce(item, properties[key], repairs) if isinstance(properties.get(key), Mapping) else item
        for key, item in value.items()
    }


def _coerce(value: object, schema: Mapping[str, object], repairs: list[str]) -> object:
    kinds = schema.get("type")
    kinds = set(kinds) if isinstance(kinds, list) else {kinds}
    if _fits(value, kinds):
        if isinstance(value, dict) and "object" in kinds:
            return _coerce_object(value, schema, repairs)
        if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
            return [_coerce(item, schema["items"], repairs) for item in value]  # type: ignore[arg-type]
        return value
    if isinstance(value, str):
        text = value.strip()
        if "integer" in kinds and _is_int(text):
            repairs.append("integer")
            return int(text)
        if "number" in kinds and _is_number(text):
            repairs.append("number")
            return float(text) if not _is_int(text) else int(text)
        if "boolean" in kinds and text.lower() in _TRUE | _FALSE:
            repairs.append("boolean")
            return text.lower() in _TRUE
    if "array" in kinds and not isinstance(value, list):
        repairs.append("array")
        items = schema.get("items")
        return [_coerce(value, items, repairs) if isinstance(items, Mapping) else value]
    if "string" in kinds and isinstance(value, int | float) and not isinstance(value, bool):
        repairs.append("string")
        return str(value)
    return value


def _fits(value: object, kinds: set[object]) -> bool:
    checks = {
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "array": lambda v: isinstance(v, list),
        "object": lambda v: isinstance(v, dict),
        "null": lambda v: v is None,
    }
    known = [checks[k] for k in kinds if isinstance(k, str) and k in checks]
    return not known or any(check(value) for check in known)


def _is_int(text: str) -> bool:
    return text.lstrip("+-").isdigit()


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
