"""The objects one running bridge shares between its tools, owned by the server's lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mcp.server.mcpserver import Context

from config import Settings
from llm.llm_client import LLMClient
from llm.model_validator import ModelValidator

if TYPE_CHECKING:
    from tools.dynamic_autonomous import DynamicAutonomousAgent
    from tools.mcp_discovery import MCPDiscovery
    from tools.session_pool import MCPSessionPool
    from utils.metrics import Metrics


@dataclass
class AppState:
    """Long-lived parts of the bridge: built on start, closed on exit (see `tools.server`)."""

    settings: Settings
    llm: LLMClient
    validator: ModelValidator
    discovery: MCPDiscovery
    pool: MCPSessionPool
    agent: DynamicAutonomousAgent
    metrics: Metrics


def app_state(ctx: Context) -> AppState:
    """The running bridge's state, from a tool's request context."""
    state = ctx.request_context.lifespan_context
    assert isinstance(state, AppState), "tools run only inside the bridge's lifespan"
    return state
