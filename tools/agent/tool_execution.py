"""Running the model's tool calls: find the tool, check the arguments, call it, render and cut the output.

`ToolExecutor.execute(run, call, index)` turns one `ToolCall` into the `ToolOutput` the model
reads next. Every failure becomes an output the model can act on (an unknown tool lists the
tools there are; bad arguments quote the schema; a server error says what happened); nothing
here raises for a bad call. Calls go through the run's leases (its snapshot of sessions), never
through a fresh look-up of the config.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

from mcp.types import (
    AudioContent,
    CallToolResult,
    EmbeddedResource,
    ImageContent,
    ResourceLink,
    TextContent,
    TextResourceContents,
)

from llm.conversation import ToolOutput
from llm.results import ToolCall
from tools.agent.events import HookSet, RunContext, ToolCallFinished, ToolCallStarted
from tools.agent.result import ToolCallRecord
from tools.downstream.errors import MCPBridgeError
from tools.downstream.session import SessionLease
from tools.downstream.toolset import ArgumentError, BridgedTool, parse_arguments


class ToolExecutor:
    """Executes one run's tool calls on the sessions the run leased."""

    def __init__(self, leases: Mapping[str, SessionLease], hooks: HookSet, *, output_max_chars: int) -> None:
        self._leases = leases
        self._hooks = hooks
        self._output_max_chars = output_max_chars

    async def execute(self, run: RunContext, call: ToolCall, index: int) -> ToolOutput:
        """Run `call` (the `index`-th of its round) and return what goes back to the model."""
        call_id = call.id or f"call_{run.rounds}_{index}"
        tool = run.toolset.get(call.name)
        if tool is None:
            output = (
                f"Error: there is no tool named '{call.name}'. Available tools: "
                f"{', '.join(run.toolset) or '(none)'}."
            )
            record = ToolCallRecord(call.name, None, False, 0.0, "unknown tool")
            run.calls.append(record)
            await self._hooks.emit(ToolCallFinished(run, record, None))
            return ToolOutput(call_id, call.name, output)
        await self._hooks.emit(ToolCallStarted(run, call, tool))
        started = time.monotonic()
        ok, output = await self._call(tool, call.arguments)
        record = ToolCallRecord(tool.llm_name, tool.server, ok, (time.monotonic() - started) * 1000, None if ok else output[:200])
        run.calls.append(record)
        await self._hooks.emit(ToolCallFinished(run, record, tool))
        return ToolOutput(call_id, call.name, self._truncate(output))

    async def _call(self, tool: BridgedTool, raw_arguments: str) -> tuple[bool, str]:
        try:
            arguments = parse_arguments(tool, raw_arguments)
        except ArgumentError as exc:
            return False, f"Error: {exc}"
        try:
            result = await self._leases[tool.server].call_tool(tool.tool_name, arguments)
        except MCPBridgeError as exc:
            return False, f"Error: {exc}"
        text = render_tool_result(result)
        return (not result.is_error), (f"Error (reported by the tool): {text}" if result.is_error else text)

    def _truncate(self, output: str) -> str:
        limit = self._output_max_chars
        if len(output) <= limit:
            return output
        return output[:limit] + f"\n[... truncated: {len(output) - limit} of {len(output)} characters cut]"


def render_tool_result(result: CallToolResult) -> str:
    """A tool result as text for the model: text kept, images and audio as short placeholders."""
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, TextContent):
            parts.append(block.text)
        elif isinstance(block, ImageContent):
            parts.append(f"[image {block.mime_type}, {len(block.data) * 3 // 4} bytes, not shown]")
        elif isinstance(block, AudioContent):
            parts.append(f"[audio {block.mime_type}, {len(block.data) * 3 // 4} bytes, not shown]")
        elif isinstance(block, EmbeddedResource):
            resource = block.resource
            if isinstance(resource, TextResourceContents):
                parts.append(resource.text)
            else:
                parts.append(f"[binary resource {resource.uri}, not shown]")
        elif isinstance(block, ResourceLink):
            parts.append(f"[resource link: {block.uri}]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts) if parts else "(no output)"
