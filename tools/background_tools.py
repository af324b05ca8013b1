"""The background-run tools: autonomous_start, autonomous_status, autonomous_result, autonomous_cancel.

For clients that stop a tool call after about 60 s whatever the server sends (Claude Desktop): the run
goes on in the bridge (`tools.background.BackgroundRuns`) and each call here returns well within that
limit. `autonomous_result` waits up to `wait_s` (at most 50 s) and reports progress meanwhile.
"""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import CallToolResult, ToolAnnotations
from pydantic import Field

from tools.agent import DEFAULT_MAX_ROUNDS, RunResult
from tools.agent.events import RunHooks
from tools.app import AppState, app_state
from tools.autonomous_tools import MaxRounds, MaxTokens, Model, Task
from tools.background import BackgroundRun
from tools.progress import ProgressReporter
from tools.results import failure, reports_errors, success
from tools.typed_results import OutputSchema, checked_schema

RunId = Annotated[
    str,
    Field(description="The run_id autonomous_start returned, e.g. 'run_1a2b3c4d'.", min_length=1, max_length=100),
]
WaitS = Annotated[
    float,
    Field(
        description="Seconds to wait for the run to end before answering 'still running' (0 to 50; keep it "
        "below your client's time limit for one call, about 60 s in Claude Desktop), e.g. 30.",
        ge=0,
        le=50,
    ),
]
McpNames = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=200)]] | None,
    Field(
        description="Names of the MCP servers to use (e.g., ['filesystem', 'memory']); leave out to use every "
        "enabled server in the config file.",
        min_length=1,
        max_length=32,
    ),
]

_STARTS = ToolAnnotations(readOnlyHint=False, destructiveHint=True, openWorldHint=True)
_LOOKS = ToolAnnotations(readOnlyHint=True, openWorldHint=False)
_STOPS = ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=True, openWorldHint=False)
PROGRESS_EVERY_S = 5.0


def _line(status: dict[str, object]) -> str:
    """One line about a run, for the text of each tool."""
    text = (
        f"Run {status['run_id']}: {status['state']}, {status['rounds']} round(s), {status['tool_calls']} tool "
        f"call(s), {status['elapsed_s']} s"
    )
    return text + (f"; last progress: {status['last_progress']}" if status["last_progress"] else "")


def _finished(handle: BackgroundRun, result: RunResult) -> CallToolResult:
    data = {"run_id": handle.id, "state": handle.state, **result.structured()}
    return failure(result.text, data) if result.stop_reason == "error" else success(result.text, data)


def register_background_tools(mcp: MCPServer[AppState]) -> None:
    """Add the four background-run tools to `mcp`."""

    @mcp.tool(annotations=_STARTS)
    @reports_errors
    async def autonomous_start(
        task: Task,
        ctx: Context,
        mcp_names: McpNames = None,
        max_rounds: MaxRounds = DEFAULT_MAX_ROUNDS,
        max_tokens: MaxTokens = "auto",
        model: Model = None,
        output_schema: OutputSchema = None,
    ) -> CallToolResult:
        """Start an autonomous task in the background and return its run_id at once.

        For long tasks, and for clients that stop a call after about 60 s (Claude Desktop): then call
        autonomous_result(run_id, wait_s=30) until it is done. The run uses the tools of the servers named
        (or every enabled one), like autonomous_with_multiple_mcps. Calls that need the user's approval
        are not run in the background (no one to ask); the result lists them.
        """
        state = app_state(ctx)
        schema = checked_schema(output_schema)
        names = list(mcp_names) if mcp_names is not None else None

        async def run(progress: ProgressReporter, watch: RunHooks) -> RunResult:
            return await state.agent.run(
                names, task, max_rounds=max_rounds, max_tokens=max_tokens, model=model, progress=progress,
                hooks=[watch], output_schema=schema,
            )

        handle = state.runs.start(run, model=model, servers=names)
        return success(
            f"Started background run {handle.id}. Collect it with autonomous_result(run_id='{handle.id}', "
            "wait_s=30), again while it is still running; autonomous_status shows its progress and "
            "autonomous_cancel stops it.",
            handle.status(state.runs.now()),
        )

    @mcp.tool(annotations=_LOOKS)
    @reports_errors
    async def autonomous_status(run_id: RunId, ctx: Context) -> CallToolResult:
        """Show a background run's state, rounds, tool calls so far, last progress message and elapsed time."""
        runs = app_state(ctx).runs
        status = runs.get(run_id).status(runs.now())
        return success(_line(status), status)

    @mcp.tool(annotations=_LOOKS)
    @reports_errors
    async def autonomous_result(run_id: RunId, ctx: Context, wait_s: WaitS = 30) -> CallToolResult:
        """Wait up to wait_s seconds for a background run, then return its result, or say it is still running.

        The result has the same fields as autonomous_with_mcp's, plus run_id and state.
        """
        runs = app_state(ctx).runs
        handle = runs.get(run_id)
        async with ProgressReporter(ctx).heartbeat(lambda: _line(handle.status(runs.now())), every_s=PROGRESS_EVERY_S):
            await runs.wait(run_id, wait_s)
        status = handle.status(runs.now())
        if handle.result is not None:
            return _finished(handle, handle.result)
        if handle.failure is not None:
            message = str(handle.failure)
            return failure(message, {"error": type(handle.failure).__name__, "message": message, "run_id": handle.id,
                                     "state": handle.state})
        if handle.state == "cancelled":
            return success(f"{_line(status)}. It was cancelled before it could return a result.", status)
        return success(
            f"{_line(status)}. Still running: call autonomous_result again to keep waiting, or autonomous_cancel "
            "to stop it.",
            status,
        )

    @mcp.tool(annotations=_STOPS)
    @reports_errors
    async def autonomous_cancel(run_id: RunId, ctx: Context) -> CallToolResult:
        """Stop a background run (its servers stay ready for other calls); a run that has ended stays as it is."""
        runs = app_state(ctx).runs
        before = runs.get(run_id).state
        handle = await runs.cancel(run_id)
        status = handle.status(runs.now())
        if before != "running":
            return success(f"{_line(status)}. It had already ended: nothing to cancel.", status)
        return success(f"{_line(status)}. Cancelled.", status)
