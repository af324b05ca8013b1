"""Tool calls written into the message text are read back as calls, in every common format, and prose is not."""

from __future__ import annotations

import json

import pytest

from tools.agent.text_calls import match_tool_name, recover_tool_calls

OFFERED = {"read_file", "search_nodes", "filesystem__list_directory"}


@pytest.mark.parametrize(
    ("text", "form"),
    [
        ('<tool_call>\n{"name": "read_file", "arguments": {"path": "a.txt"}}\n</tool_call>', "hermes"),
        ('<tool_call>{"name": "read_file", "arguments": {"path": "a.txt"}}', "hermes"),  # closing tag cut off
        ("<tool_call>\n<function=read_file>\n<parameter=path>\na.txt\n</parameter>\n</function>\n</tool_call>",
         "qwen3-coder"),
        ('<function=read_file>{"path": "a.txt"}</function>', "llama"),
        ('[TOOL_CALLS][{"name": "read_file", "arguments": {"path": "a.txt"}}]', "mistral"),
        ('{"name": "read_file", "arguments": {"path": "a.txt"}}', "json"),
        ('I will read it.\n```json\n{"name": "read_file", "parameters": {"path": "a.txt"}}\n```', "json"),
    ],
)
def test_each_common_format_is_read_as_a_call(text: str, form: str) -> None:
    found = recover_tool_calls(text, OFFERED, round_index=2)
    assert found is not None and found.format == form
    [call] = found.calls
    assert (call.id, call.name, json.loads(call.arguments)) == ("text_call_2_0", "read_file", {"path": "a.txt"})


@pytest.mark.parametrize(
    "text",
    [
        "I will use read_file next to look at a.txt.",
        "Call read_file with {\"path\": \"a.txt\"} if you want to see it.",
        '{"name": "Alice", "age": 30}',  # JSON with a name, but not a call envelope
        '<tool_call>{"name": "delete_everything", "arguments": {}}</tool_call>',  # not an offered tool
        "The answer is 42.",
    ],
)
def test_prose_and_calls_to_tools_not_offered_are_not_calls(text: str) -> None:
    assert recover_tool_calls(text, OFFERED) is None


def test_several_calls_in_one_message_are_all_read_and_the_rest_of_the_text_kept() -> None:
    text = (
        "Let me check both.\n"
        '<tool_call>{"name": "read_file", "arguments": {"path": "a"}}</tool_call>\n'
        '<tool_call>{"name": "search_nodes", "arguments": {"query": "x"}}</tool_call>'
    )
    found = recover_tool_calls(text, OFFERED)
    assert found is not None
    assert [c.name for c in found.calls] == ["read_file", "search_nodes"]
    assert found.remaining_text == "Let me check both."


def test_almost_json_inside_a_call_is_repaired() -> None:
    found = recover_tool_calls("<tool_call>{'name': 'read_file', 'arguments': {'path': 'a'},}</tool_call>", OFFERED)
    assert found is not None and json.loads(found.calls[0].arguments) == {"path": "a"}


@pytest.mark.parametrize(
    ("written", "meant"),
    [
        ("Read_File", "read_file"),
        ("read-file", "read_file"),
        ("list_directory", "filesystem__list_directory"),  # prefix left out
        ("memory__search_nodes", "search_nodes"),  # a prefix added
        ("write_file", None),
    ],
)
def test_tool_names_match_leniently_but_never_guess(written: str, meant: str | None) -> None:
    assert match_tool_name(written, OFFERED) == meant


def test_a_name_that_could_mean_two_tools_matches_neither() -> None:
    assert match_tool_name("read_file", {"a__read_file", "b__read_file"}) is None
