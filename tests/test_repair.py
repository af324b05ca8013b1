"""Argument repair: JSON a small model almost got right, and values coerced to the schema where unambiguous."""

from __future__ import annotations

import pytest
from mcp.types import Tool

from tools.agent.repair import repair_arguments
from tools.downstream.toolset import ArgumentError, build_toolset

SCHEMA = {
    "type": "object",
    "properties": {
        "path": {"type": "string"},
        "head": {"type": "integer"},
        "ratio": {"type": "number"},
        "dryRun": {"type": "boolean"},
        "names": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["path"],
}
TOOL = build_toolset({"fs": [Tool(name="read", input_schema=SCHEMA)]}, namespaced=False)[0]["read"]


def test_valid_arguments_are_taken_as_they_are() -> None:
    assert repair_arguments(TOOL, '{"path": "a", "head": 3}') == ({"path": "a", "head": 3}, [])


@pytest.mark.parametrize(
    ("raw", "expected", "repairs"),
    [
        ('{"path": "a",}', {"path": "a"}, ["json"]),
        ("{'path': 'a'}", {"path": "a"}, ["json"]),
        ('{"path": "a"', {"path": "a"}, ["json"]),
        ('{"path": "a", "head": "3"}', {"path": "a", "head": 3}, ["integer"]),
        ('{"path": "a", "ratio": "0.5"}', {"path": "a", "ratio": 0.5}, ["number"]),
        ('{"path": "a", "dryRun": "true"}', {"path": "a", "dryRun": True}, ["boolean"]),
        ('{"path": "a", "names": "x"}', {"path": "a", "names": ["x"]}, ["array"]),
        ('{"path": 7}', {"path": "7"}, ["string"]),
    ],
)
def test_almost_right_arguments_are_repaired_and_the_repairs_named(
    raw: str, expected: dict[str, object], repairs: list[str]
) -> None:
    assert repair_arguments(TOOL, raw) == (expected, repairs)


@pytest.mark.parametrize("raw", ["path is a", '{"head": "three"}', '{"path": "a", "head": "3.5"}', "[1, 2]"])
def test_what_cannot_be_repaired_is_refused_with_the_schema(raw: str) -> None:
    with pytest.raises(ArgumentError, match='"properties"'):
        repair_arguments(TOOL, raw)


def test_a_repair_that_would_invent_a_value_is_refused() -> None:
    with pytest.raises(ArgumentError, match="not valid JSON"):
        repair_arguments(TOOL, '{"path": ')
