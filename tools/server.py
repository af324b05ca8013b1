"""The bridge's MCP server: its lifespan owns the long-lived parts (`tools.app`), every tool is registered here."""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, InputRequiredResult
from pydantic import ValidationError

from config import Settings
from tools.app import AppState, bridge_state
from tools.autonomous_tools import register_autonomous_tools
from tools.background_tools import register_background_tools
from tools.bridge_tools import register_bridge_tools
from tools.lmstudio_tools import register_lmstudio_tools
from utils.version import __version__

logger = logging.getLogger(__name__)

INSTRUCTIONS = """\
Tools to hand work to local models served by LM Studio.
- chat_completion / text_completion / create_response / generate_embeddings: one request to a local model.
- autonomous_with_mcp / autonomous_with_multiple_mcps / autonomous_discover_and_execute: the local model
  works a task out on its own with the tools of the user's other MCP servers (list them with
  list_available_mcps) and returns its answer.
- autonomous_start / autonomous_status / autonomous_result / autonomous_cancel: the same as a background
  run, for tasks that take longer than a client waits for one call (about 60 s in Claude Desktop).
Every model-running tool takes an optional `model` (see list_models); leave it out for the default."""


class BridgeServer(MCPServer[AppState]):
    """The SDK's server, with argument errors worded for the caller: `Error: invalid arguments ...`."""

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[AppState, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            if isinstance(exc.__cause__, ValidationError):
                raise ToolError(describe_invalid_arguments(name, exc.__cause__)) from exc.__cause__
            raise


def describe_invalid_arguments(tool: str, error: ValidationError) -> str:
    """One line per bad parameter, alternatives of a union joined by "or", without pydantic's noise."""
    problems: dict[str, list[str]] = {}
    given: dict[str, object] = {}
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else "(arguments)"
        message = item["msg"]
        if message not in problems.setdefault(field, []):
            problems[field].append(message)
        if item["type"] != "missing":
            given.setdefault(field, item.get("input"))
    lines = "; ".join(
        f"{field}: {' or '.join(messages)}" + (f" (got {_short(given[field])})" if field in given else "")
        for field, messages in problems.items()
    )
    return f"Error: invalid arguments for {tool}: {lines}. Correct them and call {tool} again."


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def create_server(settings: Settings) -> MCPServer[AppState]:
    """Build the MCP server; nothing connects until a client starts its lifespan."""

    @asynccontextmanager
    async def lifespan(_: MCPServer[AppState]) -> AsyncIterator[AppState]:
        async with bridge_state(settings) as state:
            yield state

    mcp: MCPServer[AppState] = BridgeServer(
        "lmstudio-bridge-enhanced",
        version=__version__,
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        log_level=settings.log_level,
    )
    register_lmstudio_tools(mcp)
    register_autonomous_tools(mcp)
    register_background_tools(mcp)
    register_bridge_tools(mcp)
    return mcp


async def serve_stdio(mcp: MCPServer[AppState]) -> None:
    """Serve over stdio until the client closes stdin or SIGTERM/SIGINT arrives, then clean up.

    Handling the signals (instead of dying on them) lets the lifespan close every downstream
    MCP server, so no child process outlives the bridge.
    """
    async with anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for received in signals:
                    logger.info("received %s: shutting down", signal.Signals(received).name)
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(stop_on_signal)
        await mcp.run_stdio_async()
        tg.cancel_scope.cancel()
