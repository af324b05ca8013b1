"""The autonomous agent: a local model works a task out with the tools of the user's MCP servers.

One run, in order (see docs/ARCHITECTURE.md, "The data path"):
1. validate `model` (before anything is started: an unknown name fails fast, with suggestions);
2. re-read `.mcp.json` if it changed, look up the named servers, start or reuse their sessions;
3. offer their tools to the model (namespaced `server__tool` when several servers);
4. loop: ask the model -> run the calls it asked for, in order -> send the outputs back,
   until it answers without tool calls or a bound stops it.

Stop reasons: `completed`, `max_rounds`, `timeout` (AUTONOMOUS_TIMEOUT_S), `loop_detected`
(the same call with the same arguments AUTONOMOUS_REPEAT_LIMIT times), `cancelled` (the
caller cancelled: recorded, then the cancellation propagates), `error` (LM Studio failed
mid-run). Every run returns what the model said last and why it stopped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import anyio
from mcp.types import (
    AudioContent,
    CallToolResult,
    EmbeddedResource,
    ImageContent,
    ResourceLink,
    TextContent,
    TextResourceContents,
    Tool,
)

from config import Settings
from llm.conversation import (
    ChatConversation,
    Conversation,
    FunctionSpec,
    GenerationOptions,
    ModelTurn,
    ResponsesConversation,
    ToolOutput,
)
from llm.exceptions import (
    ContextLengthExceededError,
    EndpointNotSupportedError,
    LLMError,
    LLMRateLimitError,
    LLMStatusError,
    NoModelLoadedError,
)
from llm.llm_client import LLMClient, StreamEvent, ToolCall
from llm.model_validator import ModelValidator, resolve_model_for_call
from llm.reasoning import split_reasoning
from tools.exceptions import MCPBridgeError, MCPConfigError
from tools.mcp_discovery import MCPDiscovery, ServerEntry
from tools.progress import ProgressReporter
from tools.session_pool import MCPSessionPool
from tools.tool_policy import apply_tool_policy
from tools.tool_schema import ArgumentError, BridgedTool, build_toolset, parse_arguments
from utils.logging import run_id
from utils.metrics import Metrics, tracer

logger = logging.getLogger(__name__)

DEFAULT_MAX_ROUNDS = 10000
"""The plan's default: no artificial round limit; time, loop detection and cancellation bound a run."""

_NOT_ABOUT_TOOLS = (ContextLengthExceededError, EndpointNotSupportedError, LLMRateLimitError, NoModelLoadedError)
"""Status errors with a known cause: probing the tools one by one would not help."""

StopReason = Literal["completed", "max_rounds", "timeout", "loop_detected", "cancelled", "error"]

INSTRUCTIONS = """\
You are an autonomous agent working on a task for a user. You have tools; call them to gather \
facts or act, one step at a time, and read their results before deciding the next step. When \
the task is done, answer with the final result in plain text and call no more tools. If a tool \
returns an error, fix your call or try another way. Do not invent tool results."""


@dataclass
class ToolCallRecord:
    """One tool call of a run, for the structured result."""

    name: str
    server: str | None
    ok: bool
    ms: float
    error: str | None = None


@dataclass
class RunResult:
    """The outcome of an autonomous run."""

    answer: str
    model: str
    stop_reason: StopReason
    rounds: int
    tool_calls: list[ToolCallRecord]
    duration_s: float
    api: str
    servers: list[str]
    usage: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def text(self) -> str:
        """The answer for Claude, with a one-line footer when the run did not simply complete."""
        if self.stop_reason == "completed":
            return self.answer or "(the model gave no answer)"
        why = {
            "max_rounds": f"it reached max_rounds ({self.rounds} rounds)",
            "timeout": f"it ran out of time after {self.duration_s:.0f} s (AUTONOMOUS_TIMEOUT_S)",
            "loop_detected": "the model repeated the same tool call with the same arguments",
            "cancelled": "it was cancelled",
            "error": f"of an error: {(self.error or '').rstrip('.')}",
        }[self.stop_reason]
        if not self.answer:
            return f"[Run stopped early because {why}. The model had given no answer yet.]"
        return f"{self.answer}\n\n[Run stopped early because {why}.]"

    def structured(self) -> dict[str, object]:
        return {
            "answer": self.answer,
            "model": self.model,
            "stop_reason": self.stop_reason,
            "rounds": self.rounds,
            "tool_calls": [
                {"name": c.name, "server": c.server, "ok": c.ok, "ms": round(c.ms, 1), "error": c.error}
                for c in self.tool_calls
            ],
            "duration_s": round(self.duration_s, 3),
            "api": self.api,
            "servers": self.servers,
            "usage": self.usage or None,
            "notes": self.notes,
            "error": self.error,
        }


class DynamicAutonomousAgent:
    """Runs autonomous tasks; one instance serves every call of a bridge (runs share nothing else)."""

    def __init__(
        self,
        *,
        settings: Settings,
        llm: LLMClient,
        validator: ModelValidator,
        discovery: MCPDiscovery,
        pool: MCPSessionPool,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.llm = llm
        self.model_validator = validator
        self.discovery = discovery
        self.pool = pool
        self.metrics = metrics or Metrics()
        self._streaming_works = True
        # None until the first run finds out whether the server has a response store.
        self._responses_supported: bool | None = {"auto": None, "responses": True, "chat": False}[
            settings.lmstudio_api_mode
        ]

    # --- The plan's three methods: answer text, or "Error: ..." ------------------------------

    async def autonomous_with_mcp(
        self,
        mcp_name: str,
        task: str,
        max_rounds: int = DEFAULT_MAX_ROUNDS,
        max_tokens: int | str = "auto",
        model: str | None = None,
    ) -> str:
        """Work `task` out with the tools of one MCP server; returns the answer or `Error: ...`."""
        return await self._answer([mcp_name], task, max_rounds, max_tokens, model)

    async def autonomous_with_multiple_mcps(
        self,
        mcp_names: list[str],
        task: str,
        max_rounds: int = DEFAULT_MAX_ROUNDS,
        max_tokens: int | str = "auto",
        model: str | None = None,
    ) -> str:
        """Work `task` out with the tools of several MCP servers (names `server__tool`)."""
        return await self._answer(list(mcp_names), task, max_rounds, max_tokens, model)

    async def autonomous_discover_and_execute(
        self,
        task: str,
        max_rounds: int = DEFAULT_MAX_ROUNDS,
        max_tokens: int | str = "auto",
        model: str | None = None,
    ) -> str:
        """Work `task` out with every enabled MCP server in the config file."""
        return await self._answer(None, task, max_rounds, max_tokens, model)

    async def _answer(
        self, servers: list[str] | None, task: str, max_rounds: int, max_tokens: int | str, model: str | None
    ) -> str:
        try:
            result = await self.run(servers, task, max_rounds=max_rounds, max_tokens=max_tokens, model=model)
        except (LLMError, MCPBridgeError) as exc:
            return f"Error: {exc}"
        return f"Error: {result.text}" if result.stop_reason == "error" else result.text

    # --- The run ---------------------------------------------------------------------------

    async def run(
        self,
        servers: Sequence[str] | None,
        task: str,
        *,
        max_rounds: int = DEFAULT_MAX_ROUNDS,
        max_tokens: int | str = "auto",
        model: str | None = None,
        progress: ProgressReporter | None = None,
    ) -> RunResult:
        """One autonomous run over `servers` (None: every enabled server).

        Raises:
            ModelNotFoundError, LLMConnectionError, ...: the model cannot be used (before any server starts).
            MCPServerNotFoundError, MCPConfigError, MCPServerStartError: the servers cannot be used.
        """
        token = run_id.set(uuid.uuid4().hex[:8])
        try:
            with tracer.start_as_current_span("autonomous_run") as span:
                result = await self._run(servers, task, max_rounds, max_tokens, model, progress)
                span.set_attribute("stop_reason", result.stop_reason)
                span.set_attribute("rounds", result.rounds)
                return result
        finally:
            run_id.reset(token)

    async def _run(
        self,
        servers: Sequence[str] | None,
        task: str,
        max_rounds: int,
        max_tokens: int | str,
        model: str | None,
        progress: ProgressReporter | None,
    ) -> RunResult:
        progress = progress or ProgressReporter(None)
        started = time.monotonic()
        # 1. The model, before anything is started.
        resolved = await resolve_model_for_call(
            self.model_validator, self.llm, model, default_model=self.settings.default_model
        )
        logger.info("autonomous run: model %s, servers %s", resolved, list(servers) if servers else "(all)")

        # 2. The servers and their tools.
        entries, notes = await self._entries(servers)
        tools_by_server, start_notes = await self._tools(entries)
        notes += start_notes
        tools_by_server, policy_notes = apply_tool_policy(tools_by_server, self.settings)
        notes += policy_notes
        toolset, schema_notes = build_toolset(tools_by_server, namespaced=len(tools_by_server) > 1)
        notes += schema_notes
        await progress.report(
            f"started: {len(toolset)} tools from {', '.join(tools_by_server) or 'no server'}; model {resolved}",
            force=True,
        )

        # 3. The loop.
        state = _RunState(started=started)

        async def on_event(event: StreamEvent) -> None:
            await progress.report(
                f"round {state.rounds}: {resolved} generating ({event.chars_so_far} chars, "
                f"{time.monotonic() - started:.0f} s)"
            )

        options = GenerationOptions(
            model=resolved,
            instructions=INSTRUCTIONS,
            max_tokens=max_tokens if isinstance(max_tokens, int) else None,
            on_event=on_event,
            stream=self._streaming_works,
        )

        def waiting() -> str:
            return f"round {state.rounds}: waiting for {resolved} ({time.monotonic() - started:.0f} s)"

        stop: StopReason = "completed"
        error: str | None = None
        api = "chat"
        try:
            with anyio.move_on_after(self.settings.autonomous_timeout_s) as deadline:
                async with progress.heartbeat(waiting):
                    conversation, turn = await self._open_dropping_rejected_tools(task, toolset, options, state, notes)
                api = conversation.api
                while True:
                    state.take(turn)
                    if not turn.tool_calls:
                        break
                    if state.rounds >= max_rounds:
                        stop = "max_rounds"
                        notes.append(
                            "max_rounds reached; not run: "
                            + ", ".join(f"{c.name}({c.arguments[:200]})" for c in turn.tool_calls)
                        )
                        break
                    outputs, looped = await self._execute(turn.tool_calls, toolset, state, progress)
                    if looped:
                        stop = "loop_detected"
                        break
                    state.rounds += 1
                    await progress.report(
                        f"round {state.rounds}: sending {len(outputs)} tool result(s) to {resolved} "
                        f"({time.monotonic() - started:.0f} s)",
                        force=True,
                    )
                    async with progress.heartbeat(waiting):
                        turn = await conversation.send_tool_outputs(outputs)
            if deadline.cancelled_caught:
                stop = "timeout"
        except LLMError as exc:
            stop, error = "error", str(exc)
            logger.warning("autonomous run stopped by an LM Studio error: %s", exc)
        except asyncio.CancelledError:
            self._record(resolved, "cancelled", state, started)
            logger.info("autonomous run cancelled by the caller after %d rounds", state.rounds)
            raise

        notes += _model_mismatch(resolved, state.reported_models)
        if not options.stream and self._streaming_works:
            self._streaming_works = False  # learnt this run: later runs ask unstreamed at once
        result = RunResult(
            answer=state.answer,
            model=resolved,
            stop_reason=stop,
            rounds=state.rounds,
            tool_calls=state.calls,
            duration_s=time.monotonic() - started,
            api=api,
            servers=list(tools_by_server),
            usage=dict(state.usage),
            notes=notes,
            error=error,
        )
        self._record(resolved, stop, state, started)
        await progress.report(f"finished: {stop} after {state.rounds} round(s)", force=True)
        logger.info(
            "autonomous run finished: %s, %d rounds, %d tool calls, %.1f s",
            stop,
            state.rounds,
            len(state.calls),
            result.duration_s,
        )
        return result

    async def refresh_servers(self) -> None:
        """Re-read the config file if it changed, and close the sessions of changed or removed servers.

        Closing first means a changed server restarts with its new settings on this very call.
        """
        change = self.discovery.refresh()
        if change:
            await self.pool.apply(change)

    async def _entries(self, names: Sequence[str] | None) -> tuple[list[ServerEntry], list[str]]:
        """The entries to use, from the current config file (re-read only if it changed)."""
        await self.refresh_servers()
        notes: list[str] = []
        if self.discovery.parse_error:
            notes.append(self.discovery.parse_error)
        if names is None:
            entries = [e for e in self.discovery.servers().values() if not e.disabled]
            if not entries:
                raise MCPConfigError(
                    self.discovery.parse_error
                    or "No enabled MCP servers are configured. Add some to the .mcp.json file "
                    "(see list_available_mcps for where the bridge looks).",
                    path=self.discovery.path,
                )
            return entries, notes
        entries = []
        for name in dict.fromkeys(names):
            entry = self.discovery.get(name)
            if entry.disabled:
                raise MCPConfigError(
                    f"MCP server '{name}' is disabled in {self.discovery.path}. Remove \"disabled\": true "
                    "from its entry to use it.",
                    path=self.discovery.path,
                )
            entries.append(entry)
        return entries, notes

    async def _tools(
        self, entries: list[ServerEntry]
    ) -> tuple[dict[str, list[Tool]], list[str]]:
        """Each server's tool list, starting servers as needed (concurrently).

        A server that fails to start is an error when it was the only one asked for; with
        several, the others still work and the failure becomes a note.
        """
        results: dict[str, list[Tool]] = {}
        failures: dict[str, MCPBridgeError] = {}

        async def load(entry: ServerEntry) -> None:
            try:
                results[entry.name] = list(await self.pool.list_tools(entry))
            except MCPBridgeError as exc:
                failures[entry.name] = exc

        async with anyio.create_task_group() as tg:
            for entry in entries:
                tg.start_soon(load, entry)
        if failures and (len(entries) == 1 or not results):
            raise next(iter(failures.values()))
        ordered = {e.name: results[e.name] for e in entries if e.name in results}
        return ordered, [f"server {name} unavailable: {exc}" for name, exc in failures.items()]

    async def _open_dropping_rejected_tools(
        self,
        task: str,
        toolset: dict[str, BridgedTool],
        options: GenerationOptions,
        state: _RunState,
        notes: list[str],
    ) -> tuple[Conversation, ModelTurn]:
        """Open the conversation; if the server refuses the request, leave out the tools it refuses.

        One schema the server cannot handle (llama.cpp turns schemas into grammars) would
        otherwise fail every run that offers that server's tools. Each tool is tried alone
        with a one-token request, the refused ones are dropped with a note, and the run goes on.
        """
        try:
            return await self._open(task, [t.spec() for t in toolset.values()], options, state)
        except LLMStatusError as exc:
            if isinstance(exc, _NOT_ABOUT_TOOLS) or not toolset:
                raise
            rejected = await self._tools_refused(list(toolset.values()), options.model)
            if not rejected:
                raise
            for name, why in rejected.items():
                del toolset[name]
                notes.append(f"{name} left out: the model server refused its schema ({why[:200]})")
            logger.warning("the model server refused %d tool schema(s): %s", len(rejected), ", ".join(rejected))
            return await self._open(task, [t.spec() for t in toolset.values()], options, state)

    async def _tools_refused(self, tools: list[BridgedTool], model: str) -> dict[str, str]:
        """The tools the server refuses when offered alone, with its reason."""
        refused: dict[str, str] = {}
        for tool in tools:
            spec = tool.spec()
            try:
                # The same API the refused request used: its schema handling is what matters.
                if self._responses_supported is not False:
                    await self.llm.create_response(
                        "ping", model=model, max_output_tokens=1, tools=[spec.for_responses()]
                    )
                else:
                    await self.llm.chat_completion(
                        [{"role": "user", "content": "ping"}], model=model, max_tokens=1, tools=[spec.for_chat()]
                    )
            except LLMStatusError as exc:
                if isinstance(exc, _NOT_ABOUT_TOOLS):
                    raise
                refused[tool.llm_name] = str(exc)
        return refused

    async def _open(
        self, task: str, specs: list[FunctionSpec], options: GenerationOptions, state: _RunState
    ) -> tuple[Conversation, ModelTurn]:
        """Start the conversation on /v1/responses when the server has it, else on chat completions."""
        if self._responses_supported is not False:
            conversation: Conversation = ResponsesConversation(self.llm, specs, options)
            try:
                turn = await conversation.start(task)
                self._responses_supported = True
                state.rounds = 1
                return conversation, turn
            except EndpointNotSupportedError:
                if self.settings.lmstudio_api_mode == "responses":
                    raise
                logger.info("%s has no /v1/responses: using chat completions from now on", self.llm.base_url)
                self._responses_supported = False
        conversation = ChatConversation(self.llm, specs, options)
        turn = await conversation.start(task)
        state.rounds = 1
        return conversation, turn

    async def _execute(
        self,
        calls: list[ToolCall],
        toolset: dict[str, BridgedTool],
        state: _RunState,
        progress: ProgressReporter,
    ) -> tuple[list[ToolOutput], bool]:
        """Run the round's calls in order; returns their outputs and whether a loop was detected."""
        outputs: list[ToolOutput] = []
        for index, call in enumerate(calls):
            call_id = call.id or f"call_{state.rounds}_{index}"
            signature = (call.name, _canonical(call.arguments))
            state.seen[signature] += 1
            if state.seen[signature] >= self.settings.autonomous_repeat_limit:
                logger.warning("loop detected: %s called %d times with the same arguments", call.name, state.seen[signature])
                return outputs, True
            tool = toolset.get(call.name)
            started = time.monotonic()
            if tool is None:
                output = (
                    f"Error: there is no tool named '{call.name}'. Available tools: "
                    f"{', '.join(toolset) or '(none)'}."
                )
                state.calls.append(ToolCallRecord(call.name, None, False, 0.0, "unknown tool"))
                outputs.append(ToolOutput(call_id, call.name, output))
                continue
            await progress.report(
                f"round {state.rounds}: calling {tool.llm_name} ({time.monotonic() - state.started:.0f} s)", force=True
            )
            with tracer.start_as_current_span("tool_call") as span:
                span.set_attribute("mcp.server", tool.server)
                span.set_attribute("mcp.tool", tool.tool_name)
                ok, output = await self._call(tool, call.arguments)
                span.set_attribute("ok", ok)
            elapsed_ms = (time.monotonic() - started) * 1000
            logger.info(
                "round %d: %s on %s %s in %.0f ms", state.rounds, tool.tool_name, tool.server,
                "ok" if ok else "failed", elapsed_ms,
            )
            self.metrics.inc("tool_calls", server=tool.server, ok=str(ok).lower())
            self.metrics.observe("tool_call_ms", elapsed_ms, server=tool.server)
            state.calls.append(ToolCallRecord(tool.llm_name, tool.server, ok, elapsed_ms, None if ok else output[:200]))
            outputs.append(ToolOutput(call_id, call.name, self._truncate(output)))
        return outputs, False

    async def _call(self, tool: BridgedTool, raw_arguments: str) -> tuple[bool, str]:
        """Run one tool call; every failure becomes an output the model can read and act on."""
        try:
            arguments = parse_arguments(tool, raw_arguments)
        except ArgumentError as exc:
            return False, f"Error: {exc}"
        try:
            entry = self.discovery.get(tool.server)
            result = await self.pool.call_tool(entry, tool.tool_name, arguments)
        except MCPBridgeError as exc:
            return False, f"Error: {exc}"
        text = render_tool_result(result)
        return (not result.is_error), (f"Error (reported by the tool): {text}" if result.is_error else text)

    def _truncate(self, output: str) -> str:
        limit = self.settings.tool_output_max_chars
        if len(output) <= limit:
            return output
        return output[:limit] + f"\n[... truncated: {len(output) - limit} of {len(output)} characters cut]"

    def _record(self, model: str, stop: str, state: _RunState, started: float) -> None:
        self.metrics.inc("autonomous_runs", stop_reason=stop)
        self.metrics.observe("autonomous_rounds", float(state.rounds))
        self.metrics.observe("autonomous_run_ms", (time.monotonic() - started) * 1000, model=model)


@dataclass
class _RunState:
    """What a run has gathered so far."""

    started: float
    rounds: int = 0
    answer: str = ""
    calls: list[ToolCallRecord] = field(default_factory=list)
    seen: Counter[tuple[str, str]] = field(default_factory=Counter)
    usage: Counter[str] = field(default_factory=Counter)
    reported_models: set[str] = field(default_factory=set)

    def take(self, turn: ModelTurn) -> None:
        answer, _ = split_reasoning(turn.text or "")
        if answer:
            self.answer = answer
        if turn.model:
            self.reported_models.add(turn.model)
        if turn.usage:
            for key in ("input_tokens", "output_tokens", "total_tokens"):
                value = getattr(turn.usage, key, None)
                if value:
                    self.usage[key] += value


def _model_mismatch(asked: str, reported: set[str]) -> list[str]:
    """A note when the server says another model answered (LM Studio ignores the name with one model loaded)."""
    base = asked.split(":")[0].lower()
    others = sorted(m for m in reported if m.split(":")[0].lower() != base)
    if not others:
        return []
    return [
        f"LM Studio reports that {', '.join(others)} answered although {asked} was asked for: with a single "
        "model loaded, LM Studio uses it whatever the name. Load the model you want (or unload the other)."
    ]


def _canonical(arguments: str) -> str:
    """Arguments in a form where the same call always compares equal (key order, spacing)."""
    try:
        return json.dumps(json.loads(arguments or "{}"), sort_keys=True, separators=(",", ":"))
    except json.JSONDecodeError:
        return arguments.strip()


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
