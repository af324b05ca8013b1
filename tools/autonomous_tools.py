"""The three autonomous tools as Claude sees them: parameters, descriptions, results.

Results: the answer as text, and structured content (answer, model, stop_reason, rounds,
tool_calls, duration_s, usage, ...). Errors before the loop (unknown server or model,
LM Studio down) come back with `isError: true` and text starting `Error:`; a run stopped by
`max_rounds` or `timeout` is a result, not an error.
"""

from __future__ import annotations

from typing import Annotated, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import CallToolResult, ToolAnnotations
from pydantic import Field

from tools.agent import DEFAULT_MAX_ROUNDS, RunResult
from tools.agent.approval import ElicitationApprover
from tools.app import AppState, app_state
from tools.progress import ProgressReporter
from tools.results import failure, reports_errors, success
from tools.typed_results import OutputSchema

Task = Annotated[
    str,
    Field(
        description=(
            "Task for the local LLM to execute autonomously, e.g. 'Read README.md and list every "
            "configuration variable it documents'."
        ),
        min_length=1,
        max_length=10000,
    ),
]
MaxRounds = Annotated[
    int,
    Field(
        description=(
            "Maximum rounds for autonomous loop (default: 10000, no artificial limit; the task timeout "
            "and loop detection still end a run). Use e.g. 20 to cap a quick task."
        ),
        ge=1,
        strict=True,  # an integer: not "5", 5.0 or true
    ),
]
MaxTokens = Annotated[
    Annotated[int, Field(ge=1, le=131072, strict=True)] | Literal["auto"],
    Field(
        description=(
            "Maximum tokens per LLM response ('auto' for default: a quarter of the model's loaded context, "
            "256 to 2048; or an integer such as 4096 to override)."
        )
    ),
]
Model = Annotated[
    str | None,
    Field(
        description=(
            "Optional: Model to use for this task (e.g., 'qwen/qwen3-coder-30b'). If not specified, uses "
            "the default model (DEFAULT_MODEL, else the one loaded in LM Studio). See list_models."
        ),
        max_length=300,
    ),
]

_RUNS_TOOLS = ToolAnnotations(readOnlyHint=False, destructiveHint=True, openWorldHint=True)


async def _run(
    ctx: Context, servers: list[str] | None, task: str, max_rounds: int, max_tokens: int | str, model: str | None,
    output_schema: dict[str, object] | None = None,
) -> CallToolResult:
    state = app_state(ctx)
    # Approvals are asked in this call, when the client can be asked (tools.agent.approval).
    approver = ElicitationApprover.from_context(ctx, timeout_s=state.settings.mcp_approval_timeout_s)
    run: RunResult = await state.agent.run(
        servers, task, max_rounds=max_rounds, max_tokens=max_tokens, model=model, progress=ProgressReporter(ctx),
        output_schema=output_schema, approver=approver,
    )
    if run.stop_reason == "error":
        return failure(run.text, run.structured())
    return success(run.text, run.structured())


def register_autonomous_tools(mcp: MCPServer[AppState]) -> None:
    """Add `autonomous_with_mcp`, `autonomous_with_multiple_mcps`, `autonomous_discover_and_execute`."""

    @mcp.tool(annotations=_RUNS_TOOLS)
    @reports_errors
    async def autonomous_with_mcp(
        mcp_name: Annotated[
            str,
            Field(
                description="Name of the MCP to use (e.g., 'filesystem', 'memory', 'fetch', 'github'); "
                "see list_available_mcps.",
                min_length=1,
                max_length=200,
            ),
        ],
        task: Task,
        ctx: Context,
        max_rounds: MaxRounds = DEFAULT_MAX_ROUNDS,
        max_tokens: MaxTokens = "auto",
        model: Model = None,
        output_schema: OutputSchema = None,
    ) -> CallToolResult:
        """Execute a task autonomously with the local LLM using the tools of a SINGLE MCP server.

        The local model calls the server's tools as often as it needs and returns its final answer;
        progress is reported every round. Example: mcp_name='filesystem', task='Summarise docs/*.md'.
        """
        return await _run(ctx, [mcp_name], task, max_rounds, max_tokens, model, output_schema)

    @mcp.tool(annotations=_RUNS_TOOLS)
    @reports_errors
    async def autonomous_with_multiple_mcps(
        mcp_names: Annotated[
            list[Annotated[str, Field(min_length=1, max_length=200)]],
            Field(
                description="Names of the MCPs to use together (e.g., ['filesystem', 'memory']); their tools "
                "are offered as 'server__tool'.",
                min_length=1,
                max_length=32,
            ),
        ],
        task: Task,
        ctx: Context,
        max_rounds: MaxRounds = DEFAULT_MAX_ROUNDS,
        max_tokens: MaxTokens = "auto",
        model: Model = None,
        output_schema: OutputSchema = None,
    ) -> CallToolResult:
        """Execute a task autonomously with the local LLM using the tools of SEVERAL MCP servers at once.

        Example: mcp_names=['filesystem', 'memory'], task='Read notes.txt and store each person in memory'.
        A server that fails to start is reported and the others are still used.
        """
        return await _run(ctx, mcp_names, task, max_rounds, max_tokens, model, output_schema)

    @mcp.tool(annotations=_RUNS_TOOLS)
    @reports_errors
    async def autonomous_discover_and_execute(
        task: Task,
        ctx: Context,
        max_rounds: MaxRounds = DEFAULT_MAX_ROUNDS,
        max_tokens: MaxTokens = "auto",
        model: Model = None,
        output_schema: OutputSchema = None,
    ) -> CallToolResult:
        """Execute a task autonomously with the local LLM using EVERY enabled MCP server in the config file.

        Use when you do not know which server has the right tools. Example: task='What time is it in Tokyo,
        and save it to memory'.
        """
        return await _run(ctx, None, task, max_rounds, max_tokens, model, output_schema)
