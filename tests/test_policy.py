"""Allow and deny lists and read-only mode decide which tools the local model sees."""

from mcp.types import Tool, ToolAnnotations

from config import load_config
from tools.downstream.policy import apply_tool_policy

READ = Tool(name="read_file", input_schema={}, annotations=ToolAnnotations(readOnlyHint=True))
WRITE = Tool(name="write_file", input_schema={}, annotations=ToolAnnotations(readOnlyHint=False))
DELETE = Tool(name="delete_file", input_schema={})


def names(env: dict[str, str], server: str = "fs") -> list[str]:
    kept, _ = apply_tool_policy({server: [READ, WRITE, DELETE]}, load_config(env))
    return [t.name for t in kept[server]]


def test_without_a_policy_every_tool_is_offered() -> None:
    assert names({}) == ["read_file", "write_file", "delete_file"]


def test_an_allow_list_offers_only_matching_tools() -> None:
    assert names({"MCP_TOOL_ALLOW": '{"fs": ["read_*"]}'}) == ["read_file"]


def test_a_deny_list_for_every_server_holds_tools_back() -> None:
    assert names({"MCP_TOOL_DENY": '{"*": ["delete_*"]}'}) == ["read_file", "write_file"]


def test_deny_wins_over_allow() -> None:
    env = {"MCP_TOOL_ALLOW": '{"fs": ["*_file"]}', "MCP_TOOL_DENY": '{"fs": ["write_*"]}'}
    assert names(env) == ["read_file", "delete_file"]


def test_rules_of_another_server_do_not_apply() -> None:
    assert names({"MCP_TOOL_ALLOW": '{"memory": ["read_*"]}'}) == ["read_file", "write_file", "delete_file"]


def test_read_only_mode_offers_only_tools_that_declare_read_only() -> None:
    assert names({"MCP_READ_ONLY_TOOLS": "true"}) == ["read_file"]


def test_held_back_tools_are_noted() -> None:
    _, notes = apply_tool_policy({"fs": [READ, WRITE]}, load_config({"MCP_READ_ONLY_TOOLS": "1"}))
    assert notes == ["fs: 1 of 2 tools not offered (MCP_TOOL_ALLOW/DENY, MCP_READ_ONLY_TOOLS)"]


def test_patterns_match_tool_names_whatever_their_case() -> None:
    shouting = [Tool(name="Delete_Things", input_schema={}), Tool(name="DELETE_ALL", input_schema={}), READ]
    kept, _ = apply_tool_policy({"fs": shouting}, load_config({"MCP_TOOL_DENY": '{"*": ["delete_*"]}'}))
    assert [t.name for t in kept["fs"]] == ["read_file"]
    assert names({"MCP_TOOL_ALLOW": '{"fs": ["READ_*"]}'}) == ["read_file"]
