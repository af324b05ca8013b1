"""The composition root: the objects one running bridge shares, built in one place, closed in one place.

`bridge_state(settings)` builds them (the MCP server's lifespan and `doctor` both use it, so what
`doctor` reports is what the server sees) and closes them on exit: the downstream MCP sessions,
then the HTTP client.

    Settings ─► LLMClient (one server's HTTP, retries, breaker)
             ├► ModelCatalog (which model; queues)          ◄── the client's model listing
             ├► ServerCapabilities (what the server's API can do)
             ├► MCPDiscovery (.mcp.json) ─► MCPSessionPool (sessions, leases)
             ├► DynamicAutonomousAgent (uses all of the above), Metrics
             └► BackgroundRuns (autonomous_start's runs; closed first: its runs use everything above)
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from mcp.server.mcpserver import Context

from config import Settings
from llm.capabilities import ServerCapabilities
from llm.llm_client import ClientOptions, LLMClient
from llm.model_guard import GuardPolicy, ModelGuard
from llm.models import ModelCatalog
from tools.agent import DynamicAutonomousAgent
from tools.background import BackgroundRuns
from tools.downstream.discovery import MCPDiscovery
from tools.downstream.pool import MCPSessionPool
from utils.logging import register_secret
from utils.metrics import Metrics
from utils.version import __version__

logger = logging.getLogger(__name__)


@dataclass
class AppState:
    """Long-lived parts of the bridge: built on start, closed on exit."""

    settings: Settings
    llm: LLMClient
    catalog: ModelCatalog
    capabilities: ServerCapabilities
    discovery: MCPDiscovery
    pool: MCPSessionPool
    agent: DynamicAutonomousAgent
    metrics: Metrics
    runs: BackgroundRuns


@asynccontextmanager
async def bridge_state(settings: Settings) -> AsyncIterator[AppState]:
    """Build the bridge's long-lived parts, and close them all (MCP sessions, HTTP client) on exit."""
    register_secret(settings.lmstudio_api_key.get_secret_value() if settings.lmstudio_api_key else None)
    async with AsyncExitStack() as stack:
        metrics = Metrics()
        llm = await stack.enter_async_context(LLMClient(ClientOptions.from_settings(settings), metrics=metrics))
        catalog = ModelCatalog(
            llm.list_models,
            base_url=llm.base_url,
            ttl_s=settings.model_cache_ttl_s,
            aliases=settings.model_aliases,
            default_model=settings.default_model,
            max_concurrency=settings.lmstudio_max_concurrency,
            guard=ModelGuard(
                GuardPolicy(settings.lmstudio_auto_load, settings.model_context_tokens, settings.model_mismatch),
                load=lambda model_id, context: llm.load_model(model_id, context_length=context),
                can_load=lambda: llm.has_load_api,
            ),
        )
        capabilities = ServerCapabilities(llm.base_url, settings.lmstudio_api_mode)
        discovery = MCPDiscovery(settings.mcp_json_path)
        pool = await stack.enter_async_context(
            MCPSessionPool(
                start_timeout_s=settings.mcp_start_timeout_s,
                call_timeout_s=settings.mcp_tool_timeout_s,
                idle_timeout_s=settings.mcp_idle_timeout_s,
            )
        )
        agent = DynamicAutonomousAgent(
            settings=settings,
            llm=llm,
            catalog=catalog,
            capabilities=capabilities,
            discovery=discovery,
            pool=pool,
            metrics=metrics,
        )
        # Entered last, so it exits first: runs still going are cancelled while their sessions still work.
        runs = await stack.enter_async_context(
            BackgroundRuns(
                max_running=settings.autonomous_max_background_runs, keep_s=settings.autonomous_result_ttl_s
            )
        )
        logger.info("bridge %s ready; LM Studio at %s", __version__, llm.base_url)
        yield AppState(
            settings=settings,
            llm=llm,
            catalog=catalog,
            capabilities=capabilities,
            discovery=discovery,
            pool=pool,
            agent=agent,
            metrics=metrics,
            runs=runs,
        )
        logger.info("bridge shutting down: closing MCP sessions and the LM Studio client")


def app_state(ctx: Context) -> AppState:
    """The running bridge's state, from a tool's request context."""
    state = ctx.request_context.lifespan_context
    assert isinstance(state, AppState), "tools run only inside the bridge's lifespan"
    return state
