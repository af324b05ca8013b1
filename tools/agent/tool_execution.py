"""Running the model's tool calls: find the tool, check the arguments, call it, render and cut the output.

`ToolExecutor.execute(run, call, index)` turns one `ToolCall` into the `ToolOutput` the model
reads next. Every failure becomes an output the model can act on (an unknown tool lists the
tools there are; bad arguments quote the schema; a server error says what happened); nothing
here raises for a bad call. Calls go through the run's leases (its snapshot of sessions), never
through a fresh look-up of the config.

What a small model gets almost right is mended first, and counted in the run's `assists`: a tool
name that differs in case, `-`/`_` or a `server__` prefix (`text_calls.match_tool_name`), and
arguments that need JSON repair or coercion to the schema (`repair.repair_arguments`).
`search_tools` (`tool_selection.ToolOffer`) runs here too, without a server.

A call that needs the user's approval (`approval.ApprovalGate`) is asked about after its arguments are
mended, and runs only when approved; otherwise the model reads why it did not.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass

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
from tools.agent.approval import ApprovalGate
from tools.agent.events import HookSet, RunContext, ToolCallFinished, ToolCallStarted
from tools.agent.repair import repair_arguments
from tools.agent.result import ToolCallRecord
from tools.agent.text_calls import match_tool_name
from tools.agent.tool_selection import SEARCH_TOOL, ToolOffer
from tools.downstream.errors import MCPBridgeError
from tools.downstream.session import SessionLease
from tools.downstream.toolset import ArgumentError, BridgedTool


@dataclass(frozen=True)
class Executed:
    """One call's outcome: what goes back to the model, and the raw result (for the loop guard)."""

    output: ToolOutput
    raw: str
    ok: bool


class ToolExecutor:
    """Executes one run's tool calls on the sessions the run leased."""

    def __init__(
        self,
        leases: Mapping[str, SessionLease],
        hooks: HookSet,
        *,
        output_max_chars: int,
        offer: ToolOffer | None = None,
        approvals: ApprovalGate | None = None,
    ) -> None:
        self._leases = leases
        self._approvals = approvals
        self._hooks = hooks
        self._output_max_chars = output_max_chars
        self._offer = offer

    async def execute(self, run: RunContext, call: ToolCall, index: int, *, as_text: bool = False) -> Executed:
        """Run `call` (the `index`-th of its round) and return what goes back to the model.

        `as_text`: the model wrote the call into its text; its result goes back as a message.
        """
        call_id = call.id or f"call_{run.rounds}_{index}"
        if call.name == SEARCH_TOOL and self._offer is not None and self._offer.narrowed:
            return await self._search(run, call, call_id, as_text)
        name = call.name if call.name in run.toolset else match_tool_name(call.name, run.toolset)
        tool = run.toolset.get(name) if name is not None else None
        if tool is None:
            output = (
                f"Error: there is no tool named '{call.name}'. Available tools: "
                f"{', '.join(run.tools_offered or run.toolset) or '(none)'}."
            )
            record = ToolCallRecord(call.name, None, False, 0.0, "unknown tool")
            run.calls.append(record)
            await self._hooks.emit(ToolCallFinished(run, record, None))
            return Executed(ToolOutput(call_id, call.name, output, as_text), output, False)
        if tool.llm_name != call.name:
            run.assists["tool_names_matched"] += 1
        await self._hooks.emit(ToolCallStarted(run, call, tool))
        started = time.monotonic()
        ok, output = await self._call(run, tool, call.arguments)
        record = ToolCallRecord(tool.llm_name, tool.server, ok, (time.monotonic() - started) * 1000, None if ok else output[:200])
        run.calls.append(record)
        await self._hooks.emit(ToolCallFinished(run, record, tool))
        return Executed(ToolOutput(call_id, call.name, self._truncate(output), as_text), output, ok)

    async def _search(self, run: RunContext, call: ToolCall, call_id: str, as_text: bool) -> Executed:
        assert self._offer is not None
        try:
            arguments = json.loads(call.arguments or "{}")
        except json.JSONDecodeError:
            arguments = {"query": call.arguments}
        output = self._offer.search(arguments if isinstance(arguments, dict) else {})
        run.assists["tool_searches"] += 1
        run.tools_offered = self._offer.names()
        record = ToolCallRecord(SEARCH_TOOL, None, not output.startswith("Error"), 0.0)
        run.calls.append(record)
        await self._hooks.emit(ToolCallFinished(run, record, None))
        return Executed(ToolOutput(call_id, call.name, output, as_text), output, record.ok)

    async def _call(self, run: RunContext, tool: BridgedTool, raw_arguments: str) -> tuple[bool, str]:
        try:
            arguments, repairs = repair_arguments(tool, raw_arguments)
        except ArgumentError as exc:
            return False, f"Error: {exc}"
        if repairs:
            run.assists["arguments_repaired"] += 1
        if self._approvals is not None and (refusal := await self._approvals.check(run, tool, arguments)):
            return False, refusal
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
