"""The bridge's MCP server as Claude sees it: every refusal worded alike, and tool descriptions as written."""

from __future__ import annotations

import pytest

from tests.support.bridge import bridge_settings, in_process_bridge, text_of

NOWHERE = "http://127.0.0.1:9"  # nothing here is meant to reach LM Studio

BAD_INTEGERS: list[tuple[str, dict[str, object], str]] = [
    ("autonomous_with_mcp", {"max_tokens": True}, "max_tokens: Input should be a valid integer or Input should be 'auto' (got True)"),
    ("autonomous_with_mcp", {"max_tokens": "100"}, "max_tokens: Input should be a valid integer or Input should be 'auto' (got '100')"),
    ("autonomous_with_mcp", {"max_rounds": "5"}, "max_rounds: Input should be a valid integer (got '5')"),
    ("autonomous_with_mcp", {"max_rounds": 5.0}, "max_rounds: Input should be a valid integer (got 5.0)"),
    ("autonomous_with_mcp", {"max_rounds": True}, "max_rounds: Input should be a valid integer (got True)"),
    ("chat_completion", {"max_tokens": True}, "max_tokens: Input should be a valid integer (got True)"),
    ("text_completion", {"max_tokens": "64"}, "max_tokens: Input should be a valid integer (got '64')"),
    ("create_response", {"max_output_tokens": 10.0}, "max_output_tokens: Input should be a valid integer (got 10.0)"),
]
REQUIRED = {
    "autonomous_with_mcp": {"mcp_name": "toy", "task": "t"},
    "chat_completion": {"prompt": "hi"},
    "text_completion": {"prompt": "def f():"},
    "create_response": {"input": "hi"},
}


@pytest.mark.parametrize(("tool", "bad", "problem"), BAD_INTEGERS, ids=[f"{t}-{list(b.items())[0]}" for t, b, _ in BAD_INTEGERS])
async def test_integers_are_integers_not_strings_floats_or_booleans(tool: str, bad: dict[str, object], problem: str) -> None:
    async with in_process_bridge(bridge_settings(NOWHERE)) as client:
        result = await client.call_tool(tool, {**REQUIRED[tool], **bad})
    assert result.is_error
    assert text_of(result) == f"Error: invalid arguments for {tool}: {problem}. Correct them and call {tool} again."


async def test_an_unknown_tool_is_an_error_like_any_other_and_lists_the_tools() -> None:
    async with in_process_bridge(bridge_settings(NOWHERE)) as client:
        result = await client.call_tool("autonomous_with_mcps", {})
    assert result.is_error
    assert text_of(result).startswith(
        "Error: Unknown tool: autonomous_with_mcps. This server's tools: autonomous_cancel, "
        "autonomous_discover_and_execute, autonomous_result, autonomous_start, autonomous_status, autonomous_with_mcp, "
        "autonomous_with_multiple_mcps, bridge_stats,"
    )


async def test_tool_descriptions_are_sent_without_the_docstrings_indentation() -> None:
    async with in_process_bridge(bridge_settings(NOWHERE)) as client:
        tools = (await client.list_tools()).tools
    indented = {t.name: line for t in tools for line in (t.description or "").splitlines() if line.startswith(" ")}
    assert not indented, indented
    (autonomous,) = [t for t in tools if t.name == "autonomous_with_mcp"]
    assert "\n\nThe local model calls the server's tools as often as it needs" in (autonomous.description or "")
