"""The weak-model suite: do delegated tasks complete when the local model has small models' habits?

People run 1-30B models with 4K-32K of loaded context, and those fail in known ways (issue 14): tool
calls written as text (a), stringified or malformed arguments (b), misspelt tool names (c), tool output
larger than the loaded context (d), many tools (e), polling a result that changes (f), no `tools` field
(g). Each `Task` below pairs one habit with a task a user would give, real MCP servers, a scripted weak
model that still tries to do the task (`weak_models`), and a machine check of what came back to Claude
(`weak_scenarios`). Two control tasks use a well-behaved model.

The suite drives the bridge only through its MCP interface (`tests.support.bridge.in_process_bridge`,
`client.call_tool`), against the stand-in playing LM Studio 0.4 with the model's loaded context
enforced, once on `/v1/responses` and once on a chat-completions-only server, so it keeps measuring
the same thing whatever the bridge's insides become.

    python -m tests.support.weak_model_suite            # a table of completion per mode and API path
    python -m tests.support.weak_model_suite --json     # the full report as JSON (--json-file PATH: both)
    python -m tests.support.weak_model_suite --only a_hermes_read_file --api chat
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import anyio

from tests.support.bridge import bridge_settings, in_process_bridge, text_of, write_mcp_json
from tests.support.fake_lmstudio import FakeLMStudio, RecordedRequest, Turn
from tests.support.mcp_servers import NodeUnavailableError, install_npm_servers
from tests.support.weak_models import Habits
from tests.support.weak_scenarios import (
    BridgeResult,
    Build,
    Scenario,
    Workspace,
    big_log,
    changelog_head,
    contact_to_memory,
    convert_time,
    dry_run_edit,
    file_secret,
    growing_log,
    memory_lookup,
    memory_store,
    small_model,
    stock_quote,
)

logger = logging.getLogger(__name__)

API_PATHS = ("responses", "chat")
RUN_TIMEOUT_S = 120.0
"""Bound of one task run, servers' start included; the bridge's own bound is AUTONOMOUS_TIMEOUT_S below."""
BRIDGE_ENV = {"AUTONOMOUS_TIMEOUT_S": "60"}

TEXT_CALLS = "text tool-call recovery"
REPAIR = "argument repair"
NAMES = "lenient tool-name matching"
BUDGET = "context budget and output shaping"
FEW_TOOLS = "a ranked small tool set or a tool-search tool"
LOOPS = "result-aware loop detection"
PROMPTED = "prompted tool calling"


@dataclass(frozen=True)
class Task:
    """A suite task: `mode` and `habit` say what is measured, `feature` what in the bridge addresses it.

    `relieved` builds the same work with the obstacle taken away (the model's habit, its small
    context or attention, the bridge's repeat limit): today's bridge completes it, which shows that
    the task, its model and its check can succeed, and that the habit is what `build` measures.
    """

    id: str
    mode: str
    habit: str
    feature: str
    servers: tuple[str, ...]
    build: Build
    relieved: Build


def _task(task_id: str, habit: str, feature: str, servers: str, work: Callable[[Habits], Build], habits: Habits,
          relieved: Build | None = None) -> Task:
    """A task doing `work` with `habits`; relieved (by default) by a well-behaved model doing the same work.

    Its mode is its id's first two words ("a_text", "b_args", ...), or "control".
    """
    mode = "control" if task_id.startswith("control") else task_id[: task_id.index("_", 2)]
    return Task(task_id, mode, habit, feature, tuple(servers.split()), work(habits), relieved or work(Habits()))


def _time(source: str, clock: str, target: str, question: str) -> Callable[[Habits], Build]:
    return lambda habits: convert_time(habits, source, clock, target, question)


_FS, _MEM = "filesystem", "memory"
_LOOKUP = partial(memory_lookup, tool="search_nodes")
_OPEN = partial(memory_lookup, tool="open_nodes")
_TOKYO = _time("UTC", "14:30", "Asia/Tokyo", "What time will it be in Tokyo when it is 14:30 UTC today?")
_BERLIN = _time("America/New_York", "09:15", "Europe/Berlin",
                "I have a call at 09:15 New York time. What time is that in Berlin?")
_SYDNEY = _time("Europe/London", "10:00", "Australia/Sydney",
                "Our stand-up is at 10:00 London time; what time is that for our colleague in Sydney?")
_NO_TOOL_TRAINING = small_model(tool_use=False, refuses_tools=True)

TASKS: tuple[Task, ...] = (
    _task("control_read_file", "well-behaved: native calls, clean arguments", "", _FS, file_secret, Habits()),
    _task("control_memory_store", "well-behaved: native calls, clean arguments", "", _MEM, memory_store, Habits()),
    _task("a_text_hermes_read_file", "call written as Hermes/Qwen <tool_call>{json}</tool_call>", TEXT_CALLS, _FS,
          file_secret, Habits(call_format="hermes")),
    _task("a_text_qwen3_coder_lookup", "call written as Qwen3-coder <function=..><parameter=..>", TEXT_CALLS, _MEM,
          _LOOKUP, Habits(call_format="qwen3_coder")),
    _task("a_text_llama_convert_time", "call written as Llama <function=NAME>{json}</function>", TEXT_CALLS, "time",
          _TOKYO, Habits(call_format="llama")),
    _task("a_text_mistral_store", "call written as Mistral [TOOL_CALLS][{json}]", TEXT_CALLS, _MEM,
          memory_store, Habits(call_format="mistral")),
    _task("a_text_bare_json_changelog", "call written as a bare JSON object", TEXT_CALLS, _FS,
          changelog_head, Habits(call_format="bare_json")),
    _task("a_text_fenced_json_two_servers", "calls written as ```json fenced objects", TEXT_CALLS, f"{_FS} {_MEM}",
          contact_to_memory, Habits(call_format="fenced_json")),
    _task("b_args_stringified_number", 'a number sent as a string ("3")', REPAIR, _FS,
          changelog_head, Habits(arguments="stringified")),
    _task("b_args_stringified_boolean", 'a boolean sent as a string ("true")', REPAIR, _FS,
          dry_run_edit, Habits(arguments="stringified")),
    _task("b_args_string_for_array", "a lone string where an array is expected", REPAIR, _MEM,
          _OPEN, Habits(arguments="stringified")),
    _task("b_args_trailing_comma", "JSON arguments with a trailing comma", REPAIR, _FS,
          file_secret, Habits(arguments="trailing_comma")),
    _task("b_args_single_quotes", "JSON arguments in single quotes", REPAIR, _MEM,
          memory_store, Habits(arguments="single_quotes")),
    _task("b_args_unclosed_brace", "JSON arguments missing the closing brace", REPAIR, "time",
          _BERLIN, Habits(arguments="unclosed_brace")),
    _task("c_names_wrong_case", "tool name in the wrong case (Convert_Time)", NAMES, "time",
          _SYDNEY, Habits(names="wrong_case")),
    _task("c_names_missing_prefix", "server__ prefix left out with several servers", NAMES, f"{_FS} {_MEM}",
          contact_to_memory, Habits(names="drop_prefix")),
    _task("c_names_extra_prefix", "server__ prefix added with one server", NAMES, _FS,
          file_secret, Habits(names="add_prefix", prefix="filesystem")),
    _task("c_names_dashes", "'-' written for '_' (search-nodes)", NAMES, _MEM, _LOOKUP, Habits(names="dashes")),
    _task("d_context_4k_overflow_error", "4K loaded context, 50 KB tool output; LM Studio answers 400", BUDGET, _FS,
          lambda h: big_log(h, 4096, "error"), Habits(), relieved=big_log(Habits(), 32768, "error")),
    _task("d_context_4k_empty_stream", "4K loaded context, 50 KB tool output; LM Studio streams nothing", BUDGET,
          _FS, lambda h: big_log(h, 4096, "empty_stream"), Habits(),
          relieved=big_log(Habits(), 32768, "empty_stream")),
    _task("e_tools_sixty", "60 tools offered; the model weighs only the first 16", FEW_TOOLS, "toolbox",
          lambda h: stock_quote(h, attention_span=16), Habits(), relieved=stock_quote(Habits(), attention_span=None)),
    _task("f_repeat_polls_growing_log", "polls a log that grows (same call, new result each time)", LOOPS, _FS,
          growing_log, Habits(), relieved=growing_log(Habits(), repeat_limit=10)),
    _task("g_prompt_tools_field_refused", "no tool training: tools field refused, calls as text", PROMPTED, _FS,
          lambda h: file_secret(h, _NO_TOOL_TRAINING), Habits(call_format="hermes", tools_from="prompt"),
          relieved=file_secret(Habits())),
)


@dataclass
class TaskOutcome:
    """How one task went on one API path."""

    task: str
    mode: str
    api: str
    success: bool
    problems: list[str]
    stop_reason: str | None
    rounds: int | None
    tool_calls: list[str]
    answer: str
    duration_s: float
    model_log: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # the bridge's notes on the run (tools left out, ...)
    harness_error: str | None = None

    @property
    def why(self) -> str:
        """Why it failed, in one line ("" when it succeeded)."""
        if self.harness_error:
            return f"harness error: {self.harness_error}"
        last = self.model_log[-1] if self.model_log else "model never asked"
        return "" if self.success else f"{'; '.join(self.problems)} (model's last turn: {last})"


async def run_task(task: Task, api: str, workdir: Path, npm_prefix: Path, *, relieved: bool = False) -> TaskOutcome:
    """Run `task` (or its `relieved` form) on `api` ("responses" or "chat") in `workdir`.

    Never raises for a failed run: an exception in the harness itself is reported as `harness_error`.
    """
    started = time.monotonic()
    scenario = None
    try:
        scenario = (task.relieved if relieved else task.build)(Workspace(workdir, npm_prefix))
        result = await _drive(scenario, api, workdir)
        problems = scenario.check(result)
    except Exception as exc:  # a broken harness is reported, not mistaken for a failing bridge
        logger.exception("task %s on %s: harness error", task.id, api)
        model_log = list(scenario.model.log) if scenario else []
        return TaskOutcome(task.id, task.mode, api, False, [], None, None, [], "", time.monotonic() - started,
                           model_log, harness_error=f"{type(exc).__name__}: {exc}")
    structured = result.structured or {}
    calls = structured.get("tool_calls") or []
    assert isinstance(calls, list)
    rounds = structured.get("rounds")
    return TaskOutcome(
        task=task.id,
        mode=task.mode,
        api=api,
        success=not problems,
        problems=problems,
        stop_reason=result.stop_reason,
        rounds=rounds if isinstance(rounds, int) else None,
        tool_calls=[f"{c.get('name')}:{'ok' if c.get('ok') else 'failed'}" for c in calls if isinstance(c, dict)],
        answer=result.text[:300],
        duration_s=round(time.monotonic() - started, 2),
        model_log=list(scenario.model.log),
        notes=[str(note)[:300] for note in structured.get("notes") or [] if note][:5],
    )


async def _drive(scenario: Scenario, api: str, workdir: Path) -> BridgeResult:
    """The stand-in, the `.mcp.json` and an in-process bridge; Claude's one call; what came back."""
    mcp_json = write_mcp_json(workdir / ".mcp.json", scenario.servers)
    with FakeLMStudio(models=[scenario.fake_model], responses_api=api == "responses", lmstudio_version="0.4",
                      context_overflow=scenario.overflow) as fake:
        model_turn = scenario.model.script(fake.conversation)

        def script(request: RecordedRequest) -> Turn:
            if scenario.on_model_request is not None:
                scenario.on_model_request()
            return model_turn(request)

        fake.set_script(script)
        settings = bridge_settings(fake.url, mcp_json, **{**BRIDGE_ENV, **scenario.bridge_env})
        async with in_process_bridge(settings) as client:
            with anyio.fail_after(RUN_TIMEOUT_S):
                result = await client.call_tool(scenario.tool, scenario.arguments)
    structured = result.structured_content if isinstance(result.structured_content, dict) else None
    return BridgeResult(text_of(result), structured, bool(result.is_error))


@dataclass
class SuiteReport:
    """Every outcome, with completion rates per mode and per API path."""

    outcomes: list[TaskOutcome]

    def rates(self, by: str) -> dict[str, tuple[int, int]]:
        """`{key: (completed, runs)}` grouped by "mode", "api" or "task"."""
        rates: dict[str, tuple[int, int]] = {}
        for outcome in self.outcomes:
            done, total = rates.get(getattr(outcome, by), (0, 0))
            rates[getattr(outcome, by)] = (done + outcome.success, total + 1)
        return rates

    def to_json(self) -> dict[str, object]:
        return {
            "completed": sum(o.success for o in self.outcomes),
            "runs": len(self.outcomes),
            "by_mode": {k: {"completed": d, "runs": n} for k, (d, n) in self.rates("mode").items()},
            "by_api": {k: {"completed": d, "runs": n} for k, (d, n) in self.rates("api").items()},
            "outcomes": [{**asdict(o), "why": o.why} for o in self.outcomes],
        }

    def table(self) -> str:
        """Markdown: completion per mode and API path, then one row per run."""
        apis = list(dict.fromkeys(o.api for o in self.outcomes))
        features = {t.mode: t.feature or "(control)" for t in TASKS}
        lines = ["| mode | needs | " + " | ".join(apis) + " | all |", "|---|---|" + "---|" * (len(apis) + 1)]
        for mode in dict.fromkeys(o.mode for o in self.outcomes):
            cells = [_rate([o for o in self.outcomes if o.mode == mode and o.api == api]) for api in apis]
            lines.append(f"| {mode} | {features.get(mode, '')} | " + " | ".join(cells)
                         + f" | {_rate([o for o in self.outcomes if o.mode == mode])} |")
        cells = [_rate([o for o in self.outcomes if o.api == api]) for api in apis]
        lines.append("| **all** | | " + " | ".join(cells) + f" | {_rate(self.outcomes)} |")
        lines += ["", "| task | api | completed | stop_reason | rounds | why not |", "|---|---|---|---|---|---|"]
        for o in self.outcomes:
            why = o.why.replace("|", "\\|").replace("\n", " ")[:220]
            done = "yes" if o.success else "no"
            lines.append(f"| {o.task} | {o.api} | {done} | {o.stop_reason} | {o.rounds} | {why} |")
        return "\n".join(lines)


def _rate(outcomes: Sequence[TaskOutcome]) -> str:
    return f"{sum(o.success for o in outcomes)}/{len(outcomes)}" if outcomes else "-"


def select(only: Iterable[str] | None = None) -> list[Task]:
    """The tasks whose id is in `only` (all when None). Raises ValueError for an unknown id."""
    if only is None:
        return list(TASKS)
    wanted = list(only)
    unknown = sorted(set(wanted) - {t.id for t in TASKS})
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; known: {[t.id for t in TASKS]}")
    return [t for t in TASKS if t.id in wanted]


async def run_suite(api_paths: Sequence[str] = API_PATHS, only: Iterable[str] | None = None) -> SuiteReport:
    """Run the tasks (all, or those in `only`) on each API path, one at a time; a report of every outcome.

    Raises:
        NodeUnavailableError: the npm MCP servers cannot be installed (no node or npm).
    """
    tasks = select(only)
    prefix = install_npm_servers()
    outcomes = []
    for task in tasks:
        for api in api_paths:
            with tempfile.TemporaryDirectory(prefix=f"weak-{task.id}-") as directory:
                outcome = await run_task(task, api, Path(directory), prefix)
            logger.info("%-32s %-9s %s %s", task.id, api, "ok" if outcome.success else "FAILED", outcome.why)
            outcomes.append(outcome)
    return SuiteReport(outcomes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure task completion with scripted weak-model habits.")
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")
    parser.add_argument("--json-file", type=Path, metavar="PATH", help="also write the full report as JSON here")
    parser.add_argument("--only", nargs="+", metavar="TASK", help="run only these task ids")
    parser.add_argument("--api", choices=API_PATHS, action="append", help="API path(s); default: both")
    args = parser.parse_args(argv)
    try:
        report = asyncio.run(run_suite(tuple(args.api or API_PATHS), args.only))
    except (NodeUnavailableError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    if args.json_file is not None:
        args.json_file.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    sys.stdout.write((json.dumps(report.to_json(), indent=2) if args.json else report.table()) + "\n")
    return 0


def _log_progress_only() -> None:
    """One line per run on stderr; the bridge's and the servers' own logs only when they are errors."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    for noisy in ("httpx", "mcp", "tools", "llm", "utils"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


if __name__ == "__main__":
    _log_progress_only()
    sys.exit(main())
