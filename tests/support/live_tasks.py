"""A fixed set of short delegated tasks for a REAL model server: do they complete, and how do they stop?

The weak-model suite measures the bridge's help with a scripted model; this set measures what a real
model does with it. Each task is what a user would ask, on the real filesystem and memory MCP servers,
with a machine check of what came back. The bridge is driven the way Claude drives it: as a subprocess,
over stdio, through `autonomous_with_mcp`, with every tool of the server (the bridge narrows the set
itself). The tasks are written for a capable model and are not tuned to the small model CI serves:
a 270M base model fails most of them, and the report says so.

    python -m tests.support.live_tasks [--model NAME] [--json-file PATH]   # needs LMSTUDIO_BASE_URL
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import anyio
from mcp import Client

from tests.support.bridge import bridge_env, subprocess_params, write_mcp_json
from tests.support.mcp_servers import install_npm_servers, server_script

TASK_TIMEOUT_S = 180
"""AUTONOMOUS_TIMEOUT_S of each task (a CPU-served small model needs seconds a round)."""
MAX_ROUNDS = 8

Check = Callable[[dict[str, object], Path], bool]


def _answer_has(*fragments: str) -> Check:
    return lambda result, _: all(f.lower() in str(result.get("answer", "")).lower() for f in fragments)


def _file_holds(name: str, fragment: str) -> Check:
    def check(_: dict[str, object], root: Path) -> bool:
        path = root / "project" / name
        return path.is_file() and fragment in path.read_text(errors="replace")

    return check


def _memory_holds(fragment: str) -> Check:
    def check(_: dict[str, object], root: Path) -> bool:
        path = root / "memory.jsonl"
        return path.is_file() and fragment in path.read_text(errors="replace")

    return check


@dataclass(frozen=True)
class LiveTask:
    id: str
    server: str  # "filesystem" or "memory"
    task: str
    check: Check


TASKS: tuple[LiveTask, ...] = (
    LiveTask("list_files", "filesystem", "List the files in the project folder.", _answer_has("notes.txt", "config.json")),
    LiveTask("read_secret", "filesystem", "Read notes.txt and tell me the launch code.", _answer_has("PELICAN-42")),
    LiveTask("config_port", "filesystem", "Which port does config.json set?", _answer_has("8080")),
    LiveTask("readme_settings", "filesystem",
             "Read README.md and list the configuration variables it documents",  # the README's first task
             _answer_has("PORT", "LOG_LEVEL", "DATA_DIR")),
    LiveTask("write_file", "filesystem", "Create a file hello.txt in the project folder containing the word hi.",
             _file_holds("hello.txt", "hi")),
    LiveTask("count_todos", "filesystem", "How many lines of todo.md start with '- [ ]'?", _answer_has("2")),
    LiveTask("remember", "memory", "Remember that Alice works at Acme as an engineer.", _memory_holds("Alice")),
    LiveTask("recall", "memory", "What do you know about Bob?", _answer_has("Globex")),
    LiveTask("relate", "memory", "Record that Carol manages Dave.", _memory_holds("manages")),
)


def make_workspace(root: Path) -> None:
    """The files and memory the tasks work on (the same every run)."""
    project = root / "project"
    project.mkdir(parents=True)
    (project / "notes.txt").write_text("The launch code is PELICAN-42.\n")
    (project / "config.json").write_text(json.dumps({"host": "0.0.0.0", "port": 8080, "debug": False}, indent=2))
    (project / "README.md").write_text(
        "# Demo service\n\nConfiguration (environment variables):\n\n- `PORT` (default 8080): where it listens\n"
        "- `LOG_LEVEL` (default INFO): how much it logs\n- `DATA_DIR`: where it keeps its data\n"
    )
    (project / "todo.md").write_text("# Todo\n- [ ] write docs\n- [x] ship it\n- [ ] add tests\n")
    bob = {"type": "entity", "name": "Bob", "entityType": "person", "observations": ["works at Globex"]}
    (root / "memory.jsonl").write_text(json.dumps(bob) + "\n")


@dataclass
class LiveOutcome:
    task: str
    completed: bool
    stop_reason: str
    rounds: int
    seconds: float
    tool_calls: int
    assists: dict[str, int] = field(default_factory=dict)
    answer: str = ""


async def run_task(task: LiveTask, base_url: str, model: str | None, prefix: Path) -> LiveOutcome:
    """One task in a fresh workspace, through a fresh bridge subprocess."""
    with tempfile.TemporaryDirectory(prefix=f"live-{task.id}-") as tmp:
        root = Path(tmp)
        make_workspace(root)
        servers = {
            "filesystem": {"command": "node", "args": [str(server_script(prefix, "@modelcontextprotocol/server-filesystem")),
                                                     str(root / "project")]},
            "memory": {"command": "node", "args": [str(server_script(prefix, "@modelcontextprotocol/server-memory"))],
                       "env": {"MEMORY_FILE_PATH": str(root / "memory.jsonl")}},
        }
        mcp_json = write_mcp_json(root / ".mcp.json", servers)
        env = bridge_env(base_url, mcp_json, AUTONOMOUS_TIMEOUT_S=str(TASK_TIMEOUT_S),
                         LMSTUDIO_REQUEST_TIMEOUT_S=str(TASK_TIMEOUT_S))
        if os.environ.get("LMSTUDIO_API_KEY"):
            env["LMSTUDIO_API_KEY"] = os.environ["LMSTUDIO_API_KEY"]
        arguments: dict[str, object] = {"mcp_name": task.server, "task": task.task, "max_rounds": MAX_ROUNDS}
        if model:
            arguments["model"] = model
        started = time.perf_counter()
        with anyio.fail_after(TASK_TIMEOUT_S + 60):
            async with Client(subprocess_params(env), read_timeout_seconds=TASK_TIMEOUT_S + 30) as client:
                result = await client.call_tool("autonomous_with_mcp", arguments)
        seconds = time.perf_counter() - started
        data = result.structured_content if isinstance(result.structured_content, dict) else {}
        completed = data.get("stop_reason") == "completed" and task.check(data, root)
        return LiveOutcome(
            task=task.id,
            completed=bool(completed),
            stop_reason=str(data.get("stop_reason", "error")),
            rounds=int(data.get("rounds") or 0),
            seconds=round(seconds, 1),
            tool_calls=len(data.get("tool_calls") or []),  # type: ignore[arg-type]
            assists=dict(data.get("assists") or {}),  # type: ignore[arg-type]
            answer=re.sub(r"\s+", " ", str(data.get("answer", "")))[:160],
        )


async def run_all(base_url: str, model: str | None = None) -> list[LiveOutcome]:
    prefix = install_npm_servers()
    return [await run_task(task, base_url, model, prefix) for task in TASKS]


def summary(outcomes: list[LiveOutcome]) -> dict[str, object]:
    stops: dict[str, int] = {}
    for o in outcomes:
        stops[o.stop_reason] = stops.get(o.stop_reason, 0) + 1
    assists: dict[str, int] = {}
    for o in outcomes:
        for kind, n in o.assists.items():
            assists[kind] = assists.get(kind, 0) + n
    return {
        "completed": sum(o.completed for o in outcomes),
        "tasks": len(outcomes),
        "stop_reasons": stops,
        "median_s": statistics.median(o.seconds for o in outcomes) if outcomes else 0,
        "max_s": max((o.seconds for o in outcomes), default=0),
        "assists": assists,
    }


def table(outcomes: list[LiveOutcome]) -> str:
    lines = ["| task | completed | stop_reason | rounds | tool calls | seconds | bridge assists | answer |",
             "|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        helped = ", ".join(f"{k} {v}" for k, v in sorted(o.assists.items())) or "-"
        answer = o.answer.replace("|", "\\|") or "(none)"
        lines.append(f"| {o.task} | {'yes' if o.completed else 'no'} | {o.stop_reason} | {o.rounds} | {o.tool_calls} "
                     f"| {o.seconds} | {helped} | {answer} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the live task set against LMSTUDIO_BASE_URL.")
    parser.add_argument("--model", help="the model to use (default: the bridge's default model)")
    parser.add_argument("--json-file", type=Path, help="also write the outcomes and summary as JSON here")
    args = parser.parse_args(argv)
    base_url = os.environ.get("LMSTUDIO_BASE_URL")
    if not base_url:
        print("set LMSTUDIO_BASE_URL to the model server", file=sys.stderr)
        return 2
    outcomes = anyio.run(run_all, base_url, args.model)
    print(table(outcomes))
    print()
    print(json.dumps(summary(outcomes), indent=2))
    if args.json_file:
        args.json_file.write_text(json.dumps({"summary": summary(outcomes), "outcomes": [asdict(o) for o in outcomes]},
                                             indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
