"""The bridge's MCP server: its lifespan owns the long-lived parts (`tools.app`), every tool is registered here."""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
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
from tools.results import bounded
from tools.stdio import serve_until_stopped
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
    """The SDK's server, with every refusal worded for the caller (`Error: invalid arguments ...`,
    `Error: Unknown tool: ...`), tool descriptions sent without the docstrings' indentation, and every
    result bounded on its way out (`tools.results.bounded`: RESULT_MAX_CHARS, one copy of a long text)."""

    result_max_chars: int = 80_000

    def add_tool(self, fn: Callable[..., Any], *args: Any, description: str | None = None, **kwargs: Any) -> None:
        if description is None:
            description = inspect.cleandoc(fn.__doc__ or "")
        super().add_tool(fn, *args, description=description, **kwargs)

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[AppState, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        try:
            result = await super().call_tool(name, arguments, context)
            return bounded(result, self.result_max_chars) if isinstance(result, CallToolResult) else result
        except ToolError as exc:
            if isinstance(exc.__cause__, ValidationError):
                raise ToolError(describe_invalid_arguments(name, exc.__cause__)) from exc.__cause__
            if str(exc).startswith("Error:"):
                raise
            # The SDK's own refusals ("Unknown tool: x") get the prefix every other failure has.
            message = f"Error: {exc}."
            if self._tool_manager.get_tool(name) is None:
                names = sorted(tool.name for tool in self._tool_manager.list_tools())
                message += f" This server's tools: {', '.join(names)}."
            raise ToolError(message) from exc


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


def create_server(settings: Settings, *, home: Path | None = None) -> MCPServer[AppState]:
    """Build the MCP server; nothing connects until a client starts its lifespan (`home`: see `bridge_state`)."""

    @asynccontextmanager
    async def lifespan(_: MCPServer[AppState]) -> AsyncIterator[AppState]:
        async with bridge_state(settings, home=home) as state:
            yield state

    mcp = BridgeServer(
        "lmstudio-bridge-enhanced",
        version=__version__,
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        log_level=settings.log_level,
    )
    mcp.result_max_chars = settings.result_max_chars
    register_lmstudio_tools(mcp)
    register_autonomous_tools(mcp)
    register_background_tools(mcp)
    register_bridge_tools(mcp)
    return mcp


async def serve_stdio(mcp: MCPServer[AppState]) -> None:
    """Serve over stdio until the client closes stdin or SIGTERM/SIGINT arrives, then clean up.

    Either way the lifespan closes every downstream MCP server, so no child outlives the bridge
    (`tools.stdio` says why the bridge reads stdin itself).
    """
    await serve_until_stopped(mcp)


_CLIENT_GONE = (BrokenPipeError, ConnectionResetError, anyio.ClosedResourceError, anyio.BrokenResourceError)


async def serve_until_client_leaves(mcp: MCPServer[AppState]) -> None:
    """`serve_stdio`, where a client that goes away mid-call ends the bridge like a stdin close: quietly.

    A client that quits (Claude Desktop closing, a killed `claude`) closes the bridge's pipes while
    a call may still be answering: writing that answer fails with a broken pipe, inside the SDK's
    task groups. By then the lifespan has already closed every downstream server (its exit runs
    while the error unwinds), so nothing is left to do but say so in one log line; anything else in
    the group is a real failure and propagates.
    """
    try:
        await serve_stdio(mcp)
    except BaseExceptionGroup as group:
        if group.split(_CLIENT_GONE)[1] is not None:
            raise
        logger.info("the client went away (its pipes closed) while a call was answering; shutting down")
        # Python flushes stdout once more on exit: point it at nothing rather than at the broken pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
