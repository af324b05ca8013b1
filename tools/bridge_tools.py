"""Tools about the bridge itself: which MCP servers it can use, and its counters."""

from __future__ import annotations

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import CallToolResult, ToolAnnotations

from tools.app import AppState, app_state
from tools.results import as_json, reports_errors, success

_READ_ONLY = ToolAnnotations(readOnlyHint=True, openWorldHint=False)


def register_bridge_tools(mcp: MCPServer[AppState]) -> None:
    """Add `list_available_mcps` and `bridge_stats`."""

    @mcp.tool(annotations=_READ_ONLY)
    @reports_errors
    async def list_available_mcps(ctx: Context) -> CallToolResult:
        """List the MCP servers the autonomous tools can use (from the .mcp.json file), with their state.

        Shows name, transport, enabled/disabled, whether started and its tool count, and the config file used.
        An entry that cannot be used (an unset ${VAR}, a wrong field, a project's server the user has not
        approved) is listed with why.
        """
        state = app_state(ctx)
        discovery = state.discovery
        await state.agent.refresh_servers()
        rows = []
        for name, entry in sorted(discovery.servers().items()):
            status = state.pool.status(name)
            rows.append(
                {
                    "name": name,
                    "transport": entry.transport,
                    "enabled": not entry.disabled,
                    "usable": True,
                    "started": status.started,
                    "tool_count": status.tool_count,
                    "last_error": status.last_error,
                }
            )
        for name, why in sorted(discovery.unusable().items()):
            rows.append(
                {
                    "name": name,
                    "transport": None,
                    "enabled": False,
                    "usable": False,
                    "started": False,
                    "tool_count": None,
                    "last_error": why,
                }
            )
        data = {
            "config_file": str(discovery.path) if discovery.path else None,
            "config_error": discovery.parse_error,
            "excluded": dict(discovery.excluded),
            "untrusted": dict(discovery.untrusted),
            "servers": rows,
        }
        return success(as_json(data), data)

    @mcp.tool(annotations=_READ_ONLY)
    @reports_errors
    async def bridge_stats(ctx: Context) -> CallToolResult:
        """Counters and latency summaries of this bridge since it started (LLM requests per server, tool calls,
        runs), and what it has learned about each model server's API."""
        state = app_state(ctx)
        health = {h.name: h for h in state.catalog.health()}
        servers = [
            {
                "name": b.name,
                **b.capabilities.describe(),
                "breaker": b.client.breaker_state,
                "last_listing_ok": health[b.name].ok if b.name in health else None,
            }
            for b in state.backends
        ]
        snapshot = {**state.metrics.snapshot(), "model_servers": servers}
        return success(as_json(snapshot), snapshot)
