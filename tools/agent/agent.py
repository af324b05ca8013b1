"""The autonomous agent: a local model works a task out with the tools of the user's MCP servers.

`DynamicAutonomousAgent.run` prepares a run and hands it to the runner, local checks before remote ones
(a typo in a server name is reported as such even when LM Studio is down):
1. the request itself: a task with some text, at least one server name (`RunRequestError`);
2. the servers: the config file re-read if it changed, the named entries looked up (unknown or
   disabled ones refused);
3. the model, resolved by the catalog (the first request to LM Studio; an unknown name fails with
   suggestions, before any server starts);
4. one lease per server taken (the run's snapshot: a reload meanwhile does not touch its sessions),
   their tools, started concurrently, filtered by the tool policy, named and cleaned (namespaced
   `server__tool` when several servers); the context budget of the model (`budget`) and the tools
   offered out of it (`tool_selection`: the most relevant ones and `search_tools` when too many);
5. the loop (`tools.agent.runner.Runner`), watched by the progress, metrics, tracing and logging
   hooks; the leases are released when it ends, however it ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import anyio
from mcp.types import Tool

from config import Settings
from llm.exceptions import LLMError
from llm.models import ModelCatalog
from llm.structured import check_schema
from tools.agent.approval import ApprovalGate, ApprovalPolicy, Approver
from tools.agent.budget import ContextBudget
from tools.agent.context import ContextKeeper
from tools.agent.events import HookSet, RunContext, RunHooks
from tools.agent.hooks import HEARTBEAT_S, LoggingHook, MetricsHook, ProgressHook, TracingHook
from tools.agent.result import RunResult
from tools.agent.runner import RunLimits, Runner
from tools.agent.tool_execution import ToolExecutor
from tools.agent.tool_selection import SEARCH_TOOL, ToolOffer
from tools.agent.typed_answer import TypedAnswerStep
from tools.downstream.discovery import MCPDiscovery
from tools.downstream.entries import ServerEntry
from tools.downstream.errors import MCPBridgeError, MCPConfigError
from tools.downstream.policy import apply_tool_policy
from tools.downstream.pool import MCPSessionPool
from tools.downstream.session import SessionLease
from tools.downstream.toolset import build_toolset
from tools.progress import ProgressReporter
from utils.logging import new_run_id, run_id
from utils.metrics import Metrics

logger = logging.getLogger(__name__)

DEFAULT_MAX_ROUNDS = 10000
"""The plan's default: no artificial round limit; time, loop detection and cancellation bound a run."""


class RunRequestError(ValueError):
    """The task or the server names of a run cannot be used as given (found before anything is asked)."""


def check_request(servers: Sequence[str] | None, task: str) -> None:
    """Refuse a run that cannot mean anything, before the config file or LM Studio is consulted.

    Raises:
        RunRequestError: the task has no text, or `servers` names no server (or a blank one).
    """
    if not task.strip():
        raise RunRequestError(
            "The task is empty: say what the local model should do, e.g. 'List the files in the project'."
        )
    if servers is not None and (not servers or any(not name.strip() for name in servers)):
        raise RunRequestError(
            f"No usable MCP server names in {list(servers)!r}: give at least one, each as list_available_mcps "
            "shows it."
        )


class DynamicAutonomousAgent:
    """Runs autonomous tasks; one instance serves every call of a bridge (runs share nothing else)."""

    def __init__(
        self,
        *,
        settings: Settings,
        catalog: ModelCatalog,
        discovery: MCPDiscovery,
        pool: MCPSessionPool,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.discovery = discovery
        self.pool = pool
        self.metrics = metrics or Metrics()
        self.heartbeat_s = HEARTBEAT_S
        """How often a silent step (a model loading, servers starting, a model or tool working) is reported."""

    @property
    def model_validator(self) -> ModelCatalog:
        """The plan's name for the model catalog (`get_available_models`, `validate_model`)."""
        return self.catalog

    # --- The plan's three methods: answer text, or "Error: ..." ------------------------------

    async def autonomous_with_mcp(
        self, mcp_name: str, task: str, max_rounds: int = DEFAULT_MAX_ROUNDS, max_tokens: int | str = "auto",
        model: str | None = None,
    ) -> str:
        """Work `task` out with the tools of one MCP server; returns the answer or `Error: ...`."""
        return await self._answer([mcp_name], task, max_rounds, max_tokens, model)

    async def autonomous_with_multiple_mcps(
        self, mcp_names: list[str], task: str, max_rounds: int = DEFAULT_MAX_ROUNDS,
        max_tokens: int | str = "auto", model: str | None = None,
    ) -> str:
        """Work `task` out with the tools of several MCP servers (names `server__tool`)."""
        return await self._answer(list(mcp_names), task, max_rounds, max_tokens, model)

    async def autonomous_discover_and_execute(
        self, task: str, max_rounds: int = DEFAULT_MAX_ROUNDS, max_tokens: int | str = "auto",
        model: str | None = None,
    ) -> str:
        """Work `task` out with every enabled MCP server in the config file."""
        return await self._answer(None, task, max_rounds, max_tokens, model)

    async def _answer(
        self, servers: list[str] | None, task: str, max_rounds: int, max_tokens: int | str, model: str | None
    ) -> str:
        try:
            result = await self.run(servers, task, max_rounds=max_rounds, max_tokens=max_tokens, model=model)
        except (LLMError, MCPBridgeError, RunRequestError) as exc:
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
        hooks: Sequence[RunHooks] = (),
        output_schema: dict[str, object] | None = None,
        approver: Approver | None = None,
    ) -> RunResult:
        """One autonomous run over `servers` (None: every enabled server).

        `output_schema`: the final answer is also asked for as JSON matching it (`RunResult.result`).
        `approver`: how to ask the user about calls that need approval (None: they cannot be asked, and
        such calls are not run; see `tools.agent.approval`).

        Raises:
            OutputSchemaError: `output_schema` is not a JSON Schema (checked before anything else).
            RunRequestError: an empty task or no server names (nothing else is consulted).
            MCPServerNotFoundError, MCPConfigError: a server name is unknown or disabled (LM Studio not asked).
            ModelNotFoundError, LLMConnectionError, ...: the model cannot be used (before any server starts).
            MCPServerStartError: the servers cannot be started.
        """
        if output_schema is not None:
            check_schema(output_schema)
        token = run_id.set(new_run_id())
        try:
            return await self._run(
                servers, task, max_rounds, max_tokens, model, progress, hooks, output_schema, approver
            )
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
        hooks: Sequence[RunHooks],
        output_schema: dict[str, object] | None = None,
        approver: Approver | None = None,
    ) -> RunResult:
        check_request(servers, task)
        reporter = progress or ProgressReporter(None)
        # AUTONOMOUS_TIMEOUT_S bounds the whole call: resolving the model and starting servers count too.
        started = time.monotonic()
        budget_s = self.settings.autonomous_timeout_s
        leases: dict[str, SessionLease] = {}
        phase, model_id = "reading the MCP config", model or "(default)"

        def waited() -> str:
            return f"{time.monotonic() - started:.0f} s"

        try:
            with anyio.move_on_after(budget_s) as preparing:
                # Local checks before remote ones: a typo in a server name is named as such even when
                # LM Studio is down.
                entries, notes = await self._entries(servers)
                phase = "resolving the model"
                # Resolving can mean loading the model (minutes for a big one), starting servers seconds
                # each: both report a heartbeat, so Claude Code's timer restarts and Claude sees why it waits.
                async with reporter.heartbeat(
                    lambda: f"waiting for LM Studio: model {model or '(default)'} ({waited()})", every_s=self.heartbeat_s
                ):
                    resolved = await self.catalog.resolve(model)
                model_id = resolved.id
                leases = {entry.name: self.pool.lease(entry) for entry in entries}
                phase = "starting MCP servers"
                names = ", ".join(leases)
                await reporter.report(f"connecting to MCP servers: {names}", force=True)
                async with reporter.heartbeat(
                    lambda: f"starting MCP servers: {names} ({waited()})", every_s=self.heartbeat_s
                ):
                    tools_by_server, start_notes = await self._tools(leases)
            if preparing.cancelled_caught:
                return self._out_of_time(started, phase, model_id, leases)
            tools_by_server, policy_notes = apply_tool_policy(tools_by_server, self.settings)
            toolset, schema_notes = build_toolset(tools_by_server, namespaced=len(tools_by_server) > 1)
            run = RunContext(
                task=task,
                model=resolved,
                servers=list(tools_by_server),
                toolset=toolset,
                notes=[*notes, *start_notes, *policy_notes, *schema_notes],
                run_id=run_id.get(),
                started=started,
                output_schema=output_schema,
            )
            policy = ApprovalPolicy.from_settings(self.settings)
            if policy.active:
                run.approvals = []
            budget = ContextBudget.for_model(
                resolved,
                configured=self.settings.model_context_tokens,
                max_tokens=max_tokens if isinstance(max_tokens, int) else None,
            )
            run.context = budget.describe()
            offer = ToolOffer(toolset, task, max_tools=self.settings.tool_offer_max, max_chars=budget.tools_chars)
            run.tools_offered = offer.names()
            if offer.narrowed:
                run.notes.append(
                    f"{len(toolset)} tools: offered the {len(offer.offered)} most relevant to the task, and "
                    f"{SEARCH_TOOL} to find the others"
                )
            hook_set = HookSet(
                [
                    LoggingHook(),
                    MetricsHook(self.metrics),
                    TracingHook(),
                    ProgressHook(reporter, heartbeat_s=self.heartbeat_s),
                    *hooks,
                ]
            )
            # A run stays on the server it started on: a response chain lives on one server.
            backend = resolved.backend
            assert backend is not None, "the catalog always routes a model to a server"
            runner = Runner(
                llm=backend.client,
                capabilities=backend.capabilities,
                executor=ToolExecutor(
                    leases, hook_set, output_max_chars=self.settings.tool_output_max_chars, offer=offer,
                    approvals=ApprovalGate(policy, approver, timeout_s=self.settings.mcp_approval_timeout_s)
                    if policy.active else None,
                ),
                hooks=hook_set,
                limits=RunLimits(
                    max_rounds=max_rounds,
                    timeout_s=max(budget_s - (time.monotonic() - started), 0.0),
                    repeat_limit=self.settings.autonomous_repeat_limit,
                ),
                offer=offer,
                context=ContextKeeper(run, budget),
                check_answer=self.catalog.check_answer,
                typed=None if output_schema is None else TypedAnswerStep(
                    backend.client, backend.capabilities, output_schema, max_tokens=budget.output_tokens,
                    check_answer=self.catalog.check_answer,
                ),
            )
            return await runner.run(run)
        finally:
            for lease in leases.values():
                lease.release()

    def _out_of_time(
        self, started: float, phase: str, model_id: str, leases: dict[str, SessionLease]
    ) -> RunResult:
        """The result of a run whose time ran out before the model was first asked."""
        if leases:
            waiting = [name for name in leases if not self.pool.status(name).started]
            phase += f" ({', '.join(waiting) or 'all'} still starting; MCP_START_TIMEOUT_S allows "
            phase += f"{self.settings.mcp_start_timeout_s:g} s)"
        logger.warning("autonomous run ran out of time while %s", phase)
        self.metrics.inc("autonomous_runs", stop_reason="timeout")
        return RunResult(
            answer="",
            model=model_id,
            stop_reason="timeout",
            rounds=0,
            tool_calls=[],
            duration_s=time.monotonic() - started,
            api=self.catalog.backends[0].capabilities.conversation_api,
            servers=list(leases),
            notes=[f"AUTONOMOUS_TIMEOUT_S ({self.settings.autonomous_timeout_s:g} s) ran out while {phase}"],
        )

    async def refresh_servers(self) -> None:
        """Re-read the config file if it changed, and retire the sessions of changed or removed servers.

        Retiring first means a changed server restarts with its new settings on this very call.
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
            if not entries and self.discovery.untrusted and not self.discovery.parse_error:
                why = next(iter(self.discovery.untrusted.values()))
                raise MCPConfigError(
                    f"None of the servers in {self.discovery.path} may start "
                    f"({', '.join(self.discovery.untrusted)}): {why}.",
                    path=self.discovery.path,
                )
            if not entries:
                raise MCPConfigError(
                    self.discovery.parse_error
                    or "No enabled MCP servers are configured. Add some to the .mcp.json file "
                    "(see list_available_mcps for where the bridge looks).",
                    path=self.discovery.path,
                )
            notes.extend(f"skipped {name}: {why}" for name, why in self.discovery.unusable().items())
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

    async def _tools(self, leases: dict[str, SessionLease]) -> tuple[dict[str, list[Tool]], list[str]]:
        """Each server's tool list, starting servers as needed (concurrently).

        A server that fails to start is an error when it was the only one asked for; with
        several, the others still work and the failure becomes a note.
        """
        results: dict[str, list[Tool]] = {}
        failures: dict[str, MCPBridgeError] = {}

        async def load(name: str, lease: SessionLease) -> None:
            try:
                results[name] = await lease.list_tools()
            except MCPBridgeError as exc:
                failures[name] = exc

        async with anyio.create_task_group() as tg:
            for name, lease in leases.items():
                tg.start_soon(load, name, lease)
        if failures and (len(leases) == 1 or not results):
            raise next(iter(failures.values()))
        ordered = {name: results[name] for name in leases if name in results}
        return ordered, [f"server {name} unavailable: {exc}" for name, exc in failures.items()]
