"""Turning downstream MCP tools into the model's tool list, and checking the model's arguments."""

import pytest
from mcp.types import Tool, ToolAnnotations

from tools.downstream.toolset import (
    ArgumentError,
    build_toolset,
    clean_schema,
    parse_arguments,
    sanitize_name,
)

READ = Tool(
    name="read_file",
    description="Read a file",
    input_schema={"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    annotations=ToolAnnotations(readOnlyHint=True),
)


def test_an_empty_schema_becomes_an_object_with_no_properties() -> None:
    assert clean_schema({}) == {"type": "object", "properties": {}}
    assert clean_schema(None) == {"type": "object", "properties": {}}


def test_the_schema_dialect_key_is_dropped_for_llama_cpp() -> None:
    cleaned = clean_schema({"$schema": "http://json-schema.org/draft-07/schema#", "type": "object", "properties": {}})
    assert "$schema" not in cleaned


def test_one_server_keeps_its_tool_names() -> None:
    toolset, notes = build_toolset({"filesystem": [READ]}, namespaced=False)
    assert list(toolset) == ["read_file"]
    assert notes == []


def test_several_servers_are_namespaced_and_never_collide() -> None:
    toolset, _ = build_toolset({"a": [READ], "b": [READ]}, namespaced=True)
    assert set(toolset) == {"a__read_file", "b__read_file"}
    assert toolset["b__read_file"].server == "b"


def test_names_are_sanitised_to_what_llm_apis_accept() -> None:
    weird = Tool(name="get.time/now", input_schema={"type": "object"})
    toolset, _ = build_toolset({"my server": [weird]}, namespaced=True)
    (name,) = toolset
    assert name == "my_server__get_time_now"
    assert toolset[name].tool_name == "get.time/now"


def test_sanitised_names_that_clash_get_distinct_suffixes() -> None:
    tools = [Tool(name="a.b", input_schema={}), Tool(name="a/b", input_schema={})]
    toolset, _ = build_toolset({"s": tools}, namespaced=False)
    assert set(toolset) == {"a_b", "a_b_2"}


def test_long_names_are_cut_to_64_characters_stably() -> None:
    name = sanitize_name("x" * 100)
    assert len(name) <= 64
    assert name == sanitize_name("x" * 100)
    assert name != sanitize_name("x" * 99 + "y")


def test_a_tool_with_an_invalid_schema_is_left_out_with_a_note() -> None:
    broken = Tool(name="broken", input_schema={"type": "object", "properties": {"x": {"type": "nonsense"}}})
    toolset, notes = build_toolset({"s": [READ, broken]}, namespaced=False)
    assert list(toolset) == ["read_file"]
    assert len(notes) == 1 and "broken" in notes[0]


def _read_tool():
    toolset, _ = build_toolset({"fs": [READ]}, namespaced=False)
    return toolset["read_file"]


def test_valid_arguments_are_parsed() -> None:
    assert parse_arguments(_read_tool(), '{"path": "a.txt"}') == {"path": "a.txt"}


def test_invalid_json_is_an_error_quoting_the_schema_never_an_empty_call() -> None:
    with pytest.raises(ArgumentError) as caught:
        parse_arguments(_read_tool(), '{"path": "a.txt"')
    assert "not valid JSON" in str(caught.value)
    assert '"required":["path"]' in str(caught.value)


def test_arguments_that_miss_a_required_field_are_an_error() -> None:
    with pytest.raises(ArgumentError) as caught:
        parse_arguments(_read_tool(), "{}")
    assert "'path' is a required property" in str(caught.value)


def test_arguments_that_are_not_an_object_are_an_error() -> None:
    with pytest.raises(ArgumentError):
        parse_arguments(_read_tool(), '["a.txt"]')


def test_empty_arguments_mean_no_arguments_for_a_tool_without_required_ones() -> None:
    toolset, _ = build_toolset({"t": [Tool(name="now", input_schema={})]}, namespaced=False)
    assert parse_arguments(toolset["now"], "") == {}
