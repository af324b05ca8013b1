"""The tool executor alone: a scripted lease stands in for the session, hooks record what they see."""

from __future__ import annotations

import asyncio
import json

import pytest
from mcp.types import CallToolResult, ImageContent, TextContent, Tool

from llm.models import ResolvedModel
from llm.results import ToolCall
from tools.agent.events import (
    HookSet,
    RunContext,
    RunHooks,
    ToolCallFinished,
    ToolCallStarted,
)
from tools.agent.tool_execution import ToolExecutor, render_tool_result
from tools.downstream.errors import MCPToolTimeoutError
from tools.downstream.toolset import build_toolset

READ = Tool(
    name="read_file",
    description="Read a file",
    input_schema={"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
)


class ScriptedLease:
    """Answers each call with the next scripted result (or raises it)."""

    def __init__(self, *results: CallToolResult | Exception) -> None:
        self.results = list(results)
        self.calls: list[tuple[str, dict[str, object]]] = []

    async def call_tool(self, tool: str, arguments: dict[str, object], **_: object) -> CallToolResult:
        self.calls.append((tool, arguments))
        result = self.results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result


class Recorder(RunHooks):
    def __init__(self) -> None:
        self.events: list[object] = []

    async def on_tool_call_started(self, event: ToolCallStarted) -> None:
        self.events.append(("started", event.tool.tool_name))

    async def on_tool_call_finished(self, event: ToolCallFinished) -> None:
        self.events.append(("finished", event.record.name, event.record.ok))


def text(value: str, *, error: bool = False) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=value)], is_error=error)


def make(lease: ScriptedLease, max_chars: int = 200) -> tuple[ToolExecutor, RunContext, Recorder]:
    toolset, _ = build_toolset({"fs": [READ]}, namespaced=False)
    run = RunContext(task="t", model=ResolvedModel("m", "requested", None, asyncio.Semaphore(1)), servers=["fs"],
                     toolset=toolset)
    recorder = Recorder()
    executor = ToolExecutor({"fs": lease}, HookSet([recorder]), output_max_chars=max_chars)  # type: ignore[dict-item]
    return executor, run, recorder


async def test_a_call_runs_on_its_servers_lease_and_its_text_goes_back() -> None:
    lease = ScriptedLease(text("hello"))
    executor, run, recorder = make(lease)
    output = (await executor.execute(run, ToolCall("c1", "read_file", '{"path": "a.txt"}'), 0)).output
    assert (output.call_id, output.output) == ("c1", "hello")
    assert lease.calls == [("read_file", {"path": "a.txt"})]
    assert recorder.events == [("started", "read_file"), ("finished", "read_file", True)]
    assert run.calls[0].ok and run.calls[0].server == "fs"


async def test_a_long_output_is_cut_with_a_marker_saying_how_much() -> None:
    executor, run, _ = make(ScriptedLease(text("x" * 1000)), max_chars=200)
    output = (await executor.execute(run, ToolCall("c1", "read_file", '{"path": "a"}'), 0)).output
    assert output.output == "x" * 200 + "\n[... truncated: 800 of 1000 characters cut]"


async def test_bad_arguments_never_reach_the_server() -> None:
    lease = ScriptedLease()
    executor, run, _ = make(lease)
    output = (await executor.execute(run, ToolCall("", "read_file", '{"file": "a"}'), 3)).output
    assert output.call_id == "call_0_3"
    assert output.output.startswith("Error: arguments for read_file do not match its schema")
    assert lease.calls == [] and run.calls[0].ok is False


async def test_an_unknown_tool_lists_the_tools_there_are_and_runs_nothing() -> None:
    executor, run, recorder = make(ScriptedLease())
    output = (await executor.execute(run, ToolCall("c1", "write_file", "{}"), 0)).output
    assert "no tool named 'write_file'" in output.output and "read_file" in output.output
    assert recorder.events == [("finished", "write_file", False)]


@pytest.mark.parametrize(
    ("answer", "starts"),
    [
        (text("no such file", error=True), "Error (reported by the tool): no such file"),
        (MCPToolTimeoutError("fs", "read_file", 5), "Error: Tool 'read_file' of MCP server 'fs' did not answer"),
    ],
)
async def test_failures_go_back_to_the_model_as_outputs(answer: object, starts: str) -> None:
    executor, run, _ = make(ScriptedLease(answer))  # type: ignore[arg-type]
    output = (await executor.execute(run, ToolCall("c1", "read_file", '{"path": "a"}'), 0)).output
    assert output.output.startswith(starts)
    assert run.calls[0].ok is False


def test_images_become_placeholders_and_structured_content_is_kept_when_there_is_no_text() -> None:
    image = CallToolResult(content=[ImageContent(type="image", data="QUJD", mime_type="image/png")])
    assert render_tool_result(image) == "[image image/png, 3 bytes, not shown]"
    structured = CallToolResult(content=[], structured_content={"a": 1})
    assert json.loads(render_tool_result(structured)) == {"a": 1}


async def test_a_name_off_by_case_or_dashes_runs_the_tool_and_is_counted() -> None:
    lease = ScriptedLease(text("hello"))
    executor, run, _ = make(lease)
    output = (await executor.execute(run, ToolCall("c1", "Read-File", '{"path": "a"}'), 0)).output
    assert output.output == "hello" and lease.calls == [("read_file", {"path": "a"})]
    assert run.assists == {"tool_names_matched": 1}


async def test_stringified_arguments_are_coerced_to_the_schema() -> None:
    counted = Tool(
        name="head",
        description="First lines of a file",
        input_schema={
            "type": "object",
            "properties": {"path": {"type": "array", "items": {"type": "string"}}, "lines": {"type": "integer"},
                           "raw": {"type": "boolean"}},
            "required": ["path", "lines"],
        },
    )
    toolset, _ = build_toolset({"fs": [counted]}, namespaced=False)
    run = RunContext(task="t", model=ResolvedModel("m", "requested", None, asyncio.Semaphore(1)), servers=["fs"],
                     toolset=toolset)
    lease = ScriptedLease(text("ok"))
    executor = ToolExecutor({"fs": lease}, HookSet([]), output_max_chars=100)  # type: ignore[dict-item]
    await executor.execute(run, ToolCall("c1", "head", '{"path": "a.txt", "lines": "5", "raw": "true"}'), 0)
    assert lease.calls == [("head", {"path": ["a.txt"], "lines": 5, "raw": True})]
    assert run.assists == {"arguments_repaired": 1}
