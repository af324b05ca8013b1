"""Which downstream tools the local model may see: allow and deny globs per server, read-only mode.

Configured by MCP_TOOL_ALLOW and MCP_TOOL_DENY (JSON objects of server name -> glob patterns;
the key "*" applies to every server) and MCP_READ_ONLY_TOOLS (only tools that declare
`readOnlyHint`). Deny wins over allow. A tool filtered out is never offered, so the model
cannot call it; a call by name is answered as an unknown tool.

Patterns match tool names case-insensitively (`delete_*` holds back `Delete_Things` and
`DELETE_ALL` too): servers name tools in every style, and a deny list that a capital letter slips
past protects nothing. Server names (the keys) are matched exactly, as in the config file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase

from mcp.types import Tool

from config import Settings


def _patterns(rules: Mapping[str, Sequence[str]], server: str) -> list[str]:
    return [*rules.get("*", ()), *rules.get(server, ())]


def _matches(name: str, pattern: str) -> bool:
    return fnmatchcase(name.casefold(), pattern.casefold())


def tool_allowed(server: str, tool: Tool, settings: Settings) -> bool:
    """Whether `tool` of `server` may be offered to the local model."""
    if any(_matches(tool.name, p) for p in _patterns(settings.mcp_tool_deny, server)):
        return False
    allowed = _patterns(settings.mcp_tool_allow, server)
    if allowed and not any(_matches(tool.name, p) for p in allowed):
        return False
    if settings.mcp_read_only_tools:
        return bool(tool.annotations and tool.annotations.read_only_hint)
    return True


def apply_tool_policy(
    tools_by_server: Mapping[str, Sequence[Tool]], settings: Settings
) -> tuple[dict[str, list[Tool]], list[str]]:
    """The tools that pass the policy, and a note per server saying how many were held back."""
    kept: dict[str, list[Tool]] = {}
    notes: list[str] = []
    for server, tools in tools_by_server.items():
        kept[server] = [t for t in tools if tool_allowed(server, t, settings)]
        hidden = len(tools) - len(kept[server])
        if hidden:
            notes.append(f"{server}: {hidden} of {len(tools)} tools not offered (MCP_TOOL_ALLOW/DENY, MCP_READ_ONLY_TOOLS)")
    return kept, notes
