"""The work behind the weak-model suite's tasks: real servers and data, a weak model, a checked outcome.

A scenario builder takes the model's `Habits` and returns `Workspace -> Scenario`: in a fresh
directory it writes the data, names the real MCP servers (npm filesystem and memory servers,
mcp-server-time, the 60-tool server), builds the weak model's plan for the work, the autonomous tool
call Claude would make, and a `check` of what came back to Claude.

Secrets are random per run and live only on the servers' side (a file, the memory graph, the 60-tool
server's seed), so a check can pass only if the bridge really ran the calls; a check of written data
reads the memory server's own file. Every check also requires `stop_reason == "completed"`.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, timezone
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

from tests.support.conversation_view import View
from tests.support.fake_lmstudio import FakeModel
from tests.support.many_tools_server import SEED_VARIABLE, quote_id
from tests.support.mcp_servers import server_script
from tests.support.weak_models import Habits, Step, WeakModel, fill_from_schema, plan, relevance_choice

ROOT = Path(__file__).resolve().parents[2]
MODEL_ID = "qwen/qwen3-4b-2507"


def small_model(context: int = 32768, *, tool_use: bool = True, refuses_tools: bool = False) -> FakeModel:
    """The 4B model every task talks to, loaded with `context` tokens (LM Studio 0.4 reports both)."""
    return FakeModel(MODEL_ID, "llm", loaded=True, max_context_length=262144, loaded_context_length=context,
                     trained_for_tool_use=tool_use, refuses_tools=refuses_tools)


@dataclass(frozen=True)
class BridgeResult:
    """What the autonomous tool returned to Claude."""

    text: str
    structured: dict[str, object] | None
    is_error: bool

    @property
    def stop_reason(self) -> str | None:
        return None if self.structured is None else str(self.structured.get("stop_reason"))


Check = Callable[[BridgeResult], list[str]]
"""The problems with a result (none: the task succeeded)."""


@dataclass
class Scenario:
    """One prepared run: servers, the model and its stand-in settings, Claude's call, the check."""

    servers: dict[str, dict[str, object]]
    tool: str
    arguments: dict[str, object]
    model: WeakModel
    check: Check
    fake_model: FakeModel = field(default_factory=small_model)
    overflow: Literal["error", "empty_stream"] = "error"
    on_model_request: Callable[[], None] | None = None  # the world moving on between the model's turns
    bridge_env: dict[str, str] = field(default_factory=dict)  # bridge settings beyond the suite's own


@dataclass(frozen=True)
class Workspace:
    """A run's own directory, and the `.mcp.json` entries of the real servers the tasks use."""

    root: Path
    npm_prefix: Path

    def directory(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def filesystem(self, directory: Path) -> dict[str, object]:
        script = server_script(self.npm_prefix, "@modelcontextprotocol/server-filesystem")
        return {"command": shutil.which("node") or "node", "args": [str(script), str(directory.resolve())]}

    def memory(self, file: Path) -> dict[str, object]:
        script = server_script(self.npm_prefix, "@modelcontextprotocol/server-memory")
        return {"command": shutil.which("node") or "node", "args": [str(script)],
                "env": {"MEMORY_FILE_PATH": str(file.resolve())}}

    def time(self) -> dict[str, object]:
        return {"command": sys.executable, "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]}

    def many_tools(self, seed: str) -> dict[str, object]:
        return {"command": sys.executable, "args": ["-m", "tests.support.many_tools_server"], "cwd": str(ROOT),
                "env": {"PYTHONPATH": str(ROOT), SEED_VARIABLE: seed}}


Build = Callable[[Workspace], Scenario]

# --- checks --------------------------------------------------------------------------------------


def completed(result: BridgeResult) -> list[str]:
    if result.is_error or result.stop_reason != "completed":
        return [f"stop_reason {result.stop_reason}" + (" (isError)" if result.is_error else "")]
    return []


def answer_has(*expected: str) -> Check:
    """Completed, and the answer Claude reads contains one of `expected`."""

    def check(result: BridgeResult) -> list[str]:
        found = any(value in result.text for value in expected)
        return completed(result) + ([] if found else [f"answer lacks {expected[0]!r}: {result.text[:160]!r}"])

    return check


def memory_holds(file: Path, entity: str, fragment: str) -> Check:
    """Completed, and the memory server's own file holds `entity` with an observation containing `fragment`."""

    def check(result: BridgeResult) -> list[str]:
        lines = file.read_text().splitlines() if file.exists() else []
        records = [json.loads(line) for line in lines if line.strip()]
        stored = any(
            r.get("type") == "entity" and r.get("name") == entity
            and any(fragment in str(o) for o in r.get("observations", []))
            for r in records
        )
        return completed(result) + ([] if stored else [f"memory file has no {entity!r} with {fragment!r}"])

    return check


def both(first: Check, second: Check) -> Check:
    return lambda result: list(dict.fromkeys(first(result) + second(result)))


# --- what the model reads off results ------------------------------------------------------------


def _token(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4).upper()}"


def found(pattern: str, outputs: Sequence[str]) -> str | None:
    """The first group of `pattern` in the latest output that has it."""
    for output in reversed(outputs):
        if match := re.search(pattern, output):
            return match.group(1)
    return None


def say(pattern: str, template: str) -> Callable[[Sequence[str]], str | None]:
    """An answer function: `template` filled with what `pattern` finds in the results, else None."""

    def answer(outputs: Sequence[str]) -> str | None:
        value = found(pattern, outputs)
        return None if value is None else template.format(value)

    return answer


# --- scenario builders, one per kind of work ------------------------------------------------------


def file_secret(habits: Habits, fake_model: FakeModel | None = None) -> Build:
    """Read a notes file and report the launch code only it holds."""

    def build(ws: Workspace) -> Scenario:
        directory = ws.directory("project")
        code = _token("PELICAN")
        path = directory / "notes.txt"
        path.write_text(f"Team notes\n- Demo moved to Thursday.\n- The launch code is {code}.\n- Bring snacks.\n")
        steps = [Step("read_text_file", {"path": str(path)}, done=lambda o: "launch code is" in o)]
        answer = say(r"launch code is (PELICAN-\w+)", "The launch code is {}.")
        model = WeakModel(plan(steps, answer, "I could not find a launch code."), habits)
        task = f"Read {path} and tell me the launch code it mentions."
        return Scenario({"filesystem": ws.filesystem(directory)}, "autonomous_with_mcp",
                        {"mcp_name": "filesystem", "task": task}, model, answer_has(code),
                        fake_model=fake_model or small_model())

    return build


def memory_store(habits: Habits) -> Build:
    """Store a fact as an entity in the knowledge graph."""

    def build(ws: Workspace) -> Scenario:
        file = ws.directory("memory") / "graph.jsonl"
        code = _token("DOOR")
        entities = [{"name": "Lab 7", "entityType": "room", "observations": [f"door code {code}"]}]
        steps = [Step("create_entities", {"entities": entities})]
        model = WeakModel(plan(steps, lambda _: "Stored Lab 7 and its door code in the knowledge graph.", ""), habits)
        task = f"Remember this in the knowledge graph: Lab 7 is a room, and its door code is {code}."
        return Scenario({"memory": ws.memory(file)}, "autonomous_with_mcp", {"mcp_name": "memory", "task": task},
                        model, memory_holds(file, "Lab 7", code))

    return build


def memory_lookup(habits: Habits, tool: Literal["search_nodes", "open_nodes"]) -> Build:
    """Find a fact the knowledge graph already holds."""

    def build(ws: Workspace) -> Scenario:
        file = ws.directory("memory") / "graph.jsonl"
        code = _token("BH")
        record = {"type": "entity", "name": "Project Heron", "entityType": "project",
                  "observations": ["started in March", f"budget code {code}"]}
        file.write_text(json.dumps(record) + "\n")
        arguments = {"query": "Project Heron"} if tool == "search_nodes" else {"names": ["Project Heron"]}
        steps = [Step(tool, arguments, done=lambda o: "budget code" in o)]
        answer = say(r"budget code (BH-\w+)", "Project Heron's budget code is {}.")
        model = WeakModel(plan(steps, answer, "The knowledge graph has no budget code for Project Heron."), habits)
        task = "What is the budget code of Project Heron? It is in the knowledge graph."
        return Scenario({"memory": ws.memory(file)}, "autonomous_with_mcp", {"mcp_name": "memory", "task": task},
                        model, answer_has(code))

    return build


def convert_time(habits: Habits, source: str, clock: str, target: str, question: str) -> Build:
    """Convert a time between zones; the answer must quote the server's exact converted date-time."""

    def build(ws: Workspace) -> Scenario:
        hour, minute = map(int, clock.split(":"))
        today = datetime.now(timezone.utc).date()
        expected = [
            datetime.combine(today + timedelta(days=d), time(hour, minute), ZoneInfo(source))
            .astimezone(ZoneInfo(target)).isoformat()
            for d in (0, -1, 1)  # the server takes "today" in the source zone
        ]
        arguments = {"source_timezone": source, "time": clock, "target_timezone": target}
        steps = [Step("convert_time", arguments, done=lambda o: '"target"' in o)]
        answer = say(r'"target"[^}]*?"datetime": "([^"]+)"', "That is {} in " + target + ".")
        model = WeakModel(plan(steps, answer, "I could not convert the time."), habits)
        return Scenario({"time": ws.time()}, "autonomous_discover_and_execute", {"task": question}, model,
                        answer_has(*expected))

    return build


def changelog_head(habits: Habits) -> Build:
    """Read only the first lines of a long file (`head`, a number)."""

    def build(ws: Workspace) -> Scenario:
        directory = ws.directory("repo")
        codename = _token("OTTER")
        path = directory / "CHANGELOG.md"
        older = "".join(f"## 3.{n}.0\n- Fixes and small improvements.\n" for n in range(40, 0, -1))
        path.write_text(f"# Changelog\n## 4.0.0 (codename {codename})\n- New importer.\n{older}")
        steps = [Step("read_text_file", {"path": str(path), "head": 3}, done=lambda o: "codename" in o)]
        answer = say(r"codename (OTTER-\w+)", "The newest release, 4.0.0, is codenamed {}.")
        model = WeakModel(plan(steps, answer, "I could not find the codename."), habits)
        task = f"{path} is long; read just its first 3 lines and tell me the codename of the newest release."
        return Scenario({"filesystem": ws.filesystem(directory)}, "autonomous_with_mcp",
                        {"mcp_name": "filesystem", "task": task}, model, answer_has(codename))

    return build


def dry_run_edit(habits: Habits) -> Build:
    """Preview an edit without making it (`dryRun`, a boolean): the file must stay as it was."""

    def build(ws: Workspace) -> Scenario:
        directory = ws.directory("deploy")
        build_id = _token("B")
        path = directory / "release.env"
        path.write_text(f"name=heron\nrelease={build_id}-beta\n")
        arguments = {"path": str(path), "edits": [{"oldText": "-beta", "newText": "-rc1"}], "dryRun": True}
        steps = [Step("edit_file", arguments, done=lambda o: "-rc1" in o)]
        answer = say(r"\+(release=\S+-rc1)", "The edit would change the line to: {}")
        model = WeakModel(plan(steps, answer, "I could not preview the edit."), habits)
        task = f"Show me what changing '-beta' to '-rc1' in {path} would look like, without changing the file."

        def unchanged(result: BridgeResult) -> list[str]:
            return [] if path.read_text().endswith("-beta\n") else ["the dry run changed the file"]

        return Scenario({"filesystem": ws.filesystem(directory)}, "autonomous_with_mcp",
                        {"mcp_name": "filesystem", "task": task}, model,
                        both(answer_has(f"release={build_id}-rc1"), unchanged))

    return build


def contact_to_memory(habits: Habits) -> Build:
    """Two servers (names `server__tool`): read a file, then store what it says in the knowledge graph."""

    def build(ws: Workspace) -> Scenario:
        directory = ws.directory("inbox")
        file = ws.directory("memory") / "graph.jsonl"
        account = _token("ACCT")
        path = directory / "supplier.txt"
        path.write_text(f"New supplier contact: Dana Whitfield, phone 555-0142, account {account}.\n")

        def entities(view: View, tool: str, results: Sequence[str]) -> dict[str, object]:
            seen = found(r"account (ACCT-\w+)", view.observations) or "unknown"
            return {"entities": [{"name": "Dana Whitfield", "entityType": "person",
                                  "observations": [f"supplier contact, account {seen}"]}]}

        steps = [Step("read_text_file", {"path": str(path)}, done=lambda o: "account" in o),
                 Step("create_entities", entities)]
        model = WeakModel(plan(steps, lambda _: "Saved Dana Whitfield to the knowledge graph.", ""), habits)
        task = f"Read {path} and save the person it names in the knowledge graph, with their account number."
        return Scenario({"filesystem": ws.filesystem(directory), "memory": ws.memory(file)},
                        "autonomous_with_multiple_mcps", {"mcp_names": ["filesystem", "memory"], "task": task},
                        model, memory_holds(file, "Dana Whitfield", account))

    return build


def big_log(habits: Habits, context: int, overflow: Literal["error", "empty_stream"]) -> Build:
    """A 50 KB log on a model loaded with a small context; the answer is on the log's last line."""

    def build(ws: Workspace) -> Scenario:
        directory = ws.directory("logs")
        code = _token("E")
        path = directory / "service.log"
        lines = [f"2026-11-30T{h % 24:02}:{m % 60:02}:{m * 7 % 60:02}Z INFO worker-{m % 8} processed batch {m} "
                 f"in {m * 13 % 90 + 10} ms" for h, m in ((i // 60, i) for i in range(720))]
        path.write_text("\n".join(lines) + f"\n2026-12-01T03:17:44Z FATAL worker-3 crashed: error code {code}\n")

        def read(view: View, tool: str, earlier: Sequence[str]) -> dict[str, object]:
            # A first read, then, if the result was cut or failed, only the end of the file.
            return {"path": str(path)} if not earlier else {"path": str(path), "tail": 5}

        steps = [Step("read_text_file", read, done=lambda o: "FATAL" in o, attempts=2)]
        answer = say(r"error code (E-\w+)", "The last line is a FATAL crash of worker-3 with error code {}.")
        model = WeakModel(plan(steps, answer, "I could not find the error code."), habits)
        task = f"Our service died overnight. Look at {path} and tell me the error code on its last line."
        return Scenario({"filesystem": ws.filesystem(directory)}, "autonomous_with_mcp",
                        {"mcp_name": "filesystem", "task": task}, model, answer_has(code),
                        fake_model=small_model(context), overflow=overflow)

    return build


def stock_quote(habits: Habits, attention_span: int) -> Build:
    """One right tool among 60: the quote id only `get_stock_quote` gives, from the server's secret seed."""

    def build(ws: Workspace) -> Scenario:
        seed = secrets.token_hex(8)
        task = "What is ACME's share price right now? Give me the quote id too, I need it for the trade log."
        steps = [Step(relevance_choice(task, attention_span), fill_from_schema("ACME"),
                      done=lambda o: "quote_id" in o, attempts=1)]
        answer = say(r'"quote_id": "(Q-\w+)"', "ACME's latest quote has id {}.")
        model = WeakModel(plan(steps, answer, "I could not find a quote id for ACME."), habits)
        return Scenario({"toolbox": ws.many_tools(seed)}, "autonomous_with_mcp", {"mcp_name": "toolbox", "task": task},
                        model, answer_has(quote_id(seed, "ACME")))

    return build


def growing_log(habits: Habits, steps_before_done: int = 4, repeat_limit: int | None = None) -> Build:
    """Poll a build log that grows between the model's turns until it says BUILD DONE.

    `repeat_limit` sets the bridge's AUTONOMOUS_REPEAT_LIMIT (None: its default).
    """

    def build(ws: Workspace) -> Scenario:
        directory = ws.directory("build")
        artifact = f"heron-{secrets.token_hex(4)}.tar.gz"
        path = directory / "build.log"
        path.write_text("[00:00] build started\n")
        ticks = iter(range(1, 1000))

        def build_moves_on() -> None:
            tick = next(ticks)
            line = (f"[00:{tick:02}] step {tick}/{steps_before_done}: compiling module {tick}\n"
                    if tick <= steps_before_done else f"[00:{tick:02}] BUILD DONE: artifact {artifact}\n")
            if "BUILD DONE" not in path.read_text():
                with path.open("a") as log:
                    log.write(line)

        steps = [Step("read_text_file", {"path": str(path)}, done=lambda o: "BUILD DONE" in o, attempts=8)]
        answer = say(r"BUILD DONE: artifact (\S+)", "The build finished and produced {}.")
        model = WeakModel(plan(steps, answer, "The build has not finished."), habits)
        task = (f"A build is running and writes its progress to {path}. Wait until it has finished (the log then "
                "says BUILD DONE) and tell me the name of the artifact it produced.")
        return Scenario({"filesystem": ws.filesystem(directory)}, "autonomous_with_mcp",
                        {"mcp_name": "filesystem", "task": task}, model, answer_has(artifact),
                        on_model_request=build_moves_on,
                        bridge_env={} if repeat_limit is None else {"AUTONOMOUS_REPEAT_LIMIT": str(repeat_limit)})

    return build
