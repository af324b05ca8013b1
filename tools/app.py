"""The composition root: the objects one running bridge shares, built in one place, closed in one place.

`bridge_state(settings)` builds them (the MCP server's lifespan and `doctor` both use it, so what
`doctor` reports is what the server sees) and closes them on exit: the downstream MCP sessions,
then the HTTP client.

    Settings ─► Backend per model server (LLMClient: HTTP, retries, breaker; ServerCapabilities)
             ├► ModelCatalog (which model, on which server; queues)   ◄── every backend's listing
             ├► MCPDiscovery (.mcp.json) ─► MCPSessionPool (sessions, leases)
             ├► DynamicAutonomousAgent (uses all of the above), Metrics
             └► BackgroundRuns (autonomous_start's runs; closed first: its runs use everything above)
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from mcp.server.mcpserver import Context

from config import Settings
from llm.backends import Backend, ResponseChains, open_backends
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
    backends: list[Backend]
    catalog: ModelCatalog
    discovery: MCPDiscovery
    pool: MCPSessionPool
    agent: DynamicAutonomousAgent
    metrics: Metrics
    runs: BackgroundRuns
    responses: ResponseChains = field(default_factory=ResponseChains)


@asynccontextmanager
async def bridge_state(settings: Settings, *, home: Path | None = None) -> AsyncIterator[AppState]:
    """Build the bridge's long-lived parts, and close them all (MCP sessions, HTTP client) on exit.

    `home` is where the user's own files are looked for (config files, Claude Code's approvals);
    the user's home directory unless a test gives another.
    """
    register_secret(settings.lmstudio_api_key.get_secret_value() if settings.lmstudio_api_key else None)
    for spec in settings.lmstudio_backends:
        register_secret(spec.api_key.get_secret_value() if spec.api_key else None)
    stack = AsyncExitStack()
    try:
        metrics = Metrics()
        backends = await open_backends(settings, metrics, stack)
        catalog = ModelCatalog(
            backends,
            ttl_s=settings.model_cache_ttl_s,
            aliases=settings.model_aliases,
            default_model=settings.default_model,
            guard=ModelGuard(
                GuardPolicy(settings.lmstudio_auto_load, settings.model_context_tokens, settings.model_mismatch),
                load=lambda server, model_id, context: _backend(backends, server).client.load_model(
                    model_id, context_length=context
                ),
                can_load=lambda server: _backend(backends, server).client.has_load_api,
            ),
        )
        discovery = MCPDiscovery(
            settings.mcp_json_path, home=home, trust_project=settings.mcp_trust_project_config
        )
        pool = await stack.enter_async_context(
            MCPSessionPool(
                start_timeout_s=settings.mcp_start_timeout_s,
                call_timeout_s=settings.mcp_tool_timeout_s,
                idle_timeout_s=settings.mcp_idle_timeout_s,
            )
        )
        agent = DynamicAutonomousAgent(
            settings=settings, catalog=catalog, discovery=discovery, pool=pool, metrics=metrics
        )
        # Entered last, so it exits first: runs still going are cancelled while their sessions still work.
        runs = await stack.enter_async_context(
            BackgroundRuns(
                max_running=settings.autonomous_max_background_runs, keep_s=settings.autonomous_result_ttl_s
            )
        )
        if len(backends) == 1:
            logger.info("bridge %s ready; LM Studio at %s", __version__, backends[0].base_url)
        else:
            servers = ", ".join(f"{b.name} at {b.base_url}" for b in backends)
            logger.info("bridge %s ready; model servers: %s", __version__, servers)
        yield AppState(
            settings=settings,
            backends=backends,
            catalog=catalog,
            discovery=discovery,
            pool=pool,
            agent=agent,
            metrics=metrics,
            runs=runs,
        )
        logger.info("bridge shutting down: closing MCP sessions and the LM Studio client")
    finally:
        # Shielded: a shutdown that began as a cancellation must still stop every child (each close is bounded).
        with anyio.CancelScope(shield=True):
            await stack.aclose()


def _backend(backends: list[Backend], name: str | None) -> Backend:
    """The backend called `name` (the first one when the name is not known: the one-server case)."""
    return next((b for b in backends if b.name == name), backends[0])


def app_state(ctx: Context) -> AppState:
    """The running bridge's state, from a tool's request context."""
    state = ctx.request_context.lifespan_context
    assert isinstance(state, AppState), "tools run only inside the bridge's lifespan"
    return state
