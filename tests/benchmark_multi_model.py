"""What the bridge itself costs, measured apart from the model's time and the tools' time (issue #6).

Run by hand from the repository root (pytest does not collect this file; `tests/test_benchmark.py`
runs it with `--quick` so it cannot rot)::

    python tests/benchmark_multi_model.py             # full run, prints the table
    python tests/benchmark_multi_model.py --quick     # few repetitions, well under a minute
    python tests/benchmark_multi_model.py --json FILE # also write the figures as JSON

The model is played by the scripted stand-in (`FakeLMStudio`, in this process, on 127.0.0.1) and
the tools by real MCP servers: the reference filesystem server from npm and `mcp-server-time`.
Each figure is a median and a 95th percentile over repeated samples; how each one is taken is
described in docs/PERFORMANCE.md and next to the code that takes it. With `LMSTUDIO_LIVE=1` and
`LMSTUDIO_BASE_URL` the same small task also runs on the first two models of a real server.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script, `tests/` is on the path but the project root is not
    sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402
import httpx  # noqa: E402
from mcp import Client, StdioServerParameters  # noqa: E402

from config import load_config  # noqa: E402
from tests.support.bridge import (  # noqa: E402
    bridge_env,
    bridge_settings,
    subprocess_params,
    tool_outputs,
    write_mcp_json,
)
from tests.support.fake_lmstudio import FakeLMStudio, RecordedRequest, Turn, call  # noqa: E402
from tests.support.live_tasks import run_all as live_task_set  # noqa: E402
from tests.support.live_tasks import summary as live_summary  # noqa: E402
from tests.support.mcp_servers import entry_config, install_npm_servers, server_script  # noqa: E402
from tests.support.weak_model_suite import run_suite  # noqa: E402
from tools.agent import RunResult  # noqa: E402
from tools.app import AppState, bridge_state  # noqa: E402
from tools.downstream.discovery import MCPDiscovery  # noqa: E402
from tools.downstream.entries import ServerEntry, StdioEntry  # noqa: E402
from tools.downstream.pool import MCPSessionPool  # noqa: E402
from tools.downstream.session import SessionLease  # noqa: E402

logger = logging.getLogger("benchmark")

MODEL = "qwen/qwen3-coder-30b"  # loaded in the stand-in's default model list
LOOP_ROUNDS = 50  # rounds of one per-round run; also gives the request sizes at rounds 1, 10, 50
SIZE_ROUNDS = (1, 10, 50)
CONCURRENT_TASKS = (1, 16, 64)
CONCURRENT_ROUNDS = 3  # two tool rounds and a final answer
STAND_IN_LATENCY_S = 0.05
SECTION_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Reps:
    """How many samples each section takes."""

    batches: int  # batches of `batch` calls for the microsecond figures
    batch: int
    calls: int  # single timed calls (uncached validation, changed config, pooled calls)
    cold_starts: int
    loop_runs: int
    concurrency_runs: int
    startups: int


FULL = Reps(batches=50, batch=2000, calls=200, cold_starts=5, loop_runs=10, concurrency_runs=3, startups=5)
QUICK = Reps(batches=10, batch=500, calls=30, cold_starts=2, loop_runs=2, concurrency_runs=1, startups=2)

# (section, metric) -> (target, what it says) for the figures the plan sets a bar for.
TARGETS: dict[tuple[str, str], tuple[float, str]] = {
    ("validation", "cached_us"): (5.0, "<= 5 us"),
    ("hot_reload", "unchanged_us"): (20.0, "<= 20 us"),
    ("pooled_calls", "filesystem_pooled_ms"): (5.0, "<= 5 ms"),
    ("pooled_calls", "time_pooled_ms"): (5.0, "<= 5 ms"),
    ("loop_overhead", "responses_per_round_ms"): (3.0, "<= 3 ms"),
    ("loop_overhead", "chat_per_round_ms"): (3.0, "<= 3 ms"),
}


# --- figures -----------------------------------------------------------------------------------


def stat(samples: Sequence[float], unit: str) -> dict[str, object]:
    """Median and 95th percentile (inclusive method) of `samples`, rounded for reading."""
    ordered = sorted(samples)
    p95 = statistics.quantiles(ordered, n=20, method="inclusive")[18] if len(ordered) > 1 else ordered[0]
    return {"median": _round(statistics.median(ordered)), "p95": _round(p95), "n": len(ordered), "unit": unit}


def value(number: float, unit: str) -> dict[str, object]:
    """A single measured figure (a size, a ratio)."""
    return {"value": _round(number), "unit": unit}


def _round(number: float) -> float:
    return float(f"{number:.4g}")


def timed_batches(reps: Reps, step: Callable[[], object]) -> list[float]:
    """Microseconds per call of a synchronous `step`, one sample per batch (timer cost amortised)."""
    samples = []
    for _ in range(reps.batches):
        start = time.perf_counter()
        for _ in range(reps.batch):
            step()
        samples.append((time.perf_counter() - start) / reps.batch * 1e6)
    return samples


async def timed_async_batches(reps: Reps, step: Callable[[], Awaitable[object]]) -> list[float]:
    """Microseconds per call of an async `step` that does not wait, one sample per batch."""
    samples = []
    for _ in range(reps.batches):
        start = time.perf_counter()
        for _ in range(reps.batch):
            await step()
        samples.append((time.perf_counter() - start) / reps.batch * 1e6)
    return samples


class SpanRecorder:
    """Records (start, end) of every call of some async methods, by wrapping them on an instance or a class."""

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []

    @contextmanager
    def wrapping(self, owner: object, *names: str) -> Iterator[None]:
        own = {name: vars(owner)[name] for name in names if name in vars(owner)}
        for name in names:
            setattr(owner, name, self._timed(getattr(owner, name)))
        try:
            yield
        finally:
            for name in names:
                if name in own:
                    setattr(owner, name, own[name])  # a class's own method
                else:
                    delattr(owner, name)  # the class's method shows through again

    def _timed(self, original: Callable[..., Awaitable[object]]) -> Callable[..., Awaitable[object]]:
        async def timed(*args: object, **kwargs: object) -> object:
            start = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                self.spans.append((start, time.perf_counter()))

        return timed


# --- the world the bridge runs in ----------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """Real MCP servers and files for them to serve."""

    workdir: Path
    files: list[Path]
    filesystem: ServerEntry
    time: ServerEntry
    mcp_json: Path


def make_world(workdir: Path) -> World:
    prefix = install_npm_servers()
    data = workdir / "data"
    data.mkdir()
    files = []
    for index in range(LOOP_ROUNDS + 1):
        path = data / f"file_{index:03d}.txt"
        path.write_text(f"benchmark file {index:03d}\n")
        files.append(path)
    filesystem = StdioEntry(
        name="fs",
        transport="stdio",
        command=_which("node"),
        args=[str(server_script(prefix, "@modelcontextprotocol/server-filesystem")), str(data.resolve())],
    )
    time_server = StdioEntry(
        name="time", transport="stdio", command=sys.executable,
        args=["-m", "mcp_server_time", "--local-timezone", "UTC"],
    )
    mcp_json = write_mcp_json(workdir / ".mcp.json", {"fs": entry_config(filesystem), "time": entry_config(time_server)})
    return World(workdir, files, filesystem, time_server, mcp_json)


def _which(program: str) -> str:
    found = shutil.which(program)
    if found is None:
        raise SystemExit(f"{program} not found on PATH: the benchmark needs Node.js 20+ for the filesystem server")
    return found


def file_reading_script(files: list[Path], rounds: int) -> Callable[[RecordedRequest], Turn]:
    """The model's part of a `rounds`-round run: read file 1, 2, ... then answer.

    A pure function of the request (the round is read off the tool output it carries), so the
    same requests replayed get the same answers, and concurrent runs do not share a counter.
    Every call has distinct arguments: loop detection never triggers.
    """

    def script(request: RecordedRequest) -> Turn:
        outputs = tool_outputs(request) if _carries_tool_output(request) else []
        done = int(re.findall(r"benchmark file (\d+)", outputs[-1])[0]) if outputs else 0
        if done + 1 >= rounds:
            return Turn(text=f"Read {done} files.")
        return Turn(tool_calls=[call("read_text_file", path=str(files[done + 1]))])

    return script


def _carries_tool_output(request: RecordedRequest) -> bool:
    body = request.body or {}
    if request.path == "/v1/responses":
        return isinstance(body.get("input"), list)
    messages = body.get("messages")
    return isinstance(messages, list) and bool(messages) and messages[-1].get("role") == "tool"


# --- sections ----------------------------------------------------------------------------------


async def bench_validation(reps: Reps, fake: FakeLMStudio, world: World) -> dict[str, object]:
    """Resolving a model name from the cached list (batches), and with a fresh list each time (one fetch each)."""
    async with bridge_state(bridge_settings(fake.url, world.mcp_json)) as state:
        catalog = state.catalog
        await catalog.resolve(MODEL)  # fills the cache, learns the models route
        cached = await timed_async_batches(reps, lambda: catalog.resolve(MODEL))
        uncached = []
        for _ in range(reps.calls):
            start = time.perf_counter()
            await catalog.models(refresh=True)
            await catalog.resolve(MODEL)
            uncached.append((time.perf_counter() - start) * 1e3)
    return {"cached_us": stat(cached, "us"), "uncached_ms": stat(uncached, "ms")}


async def bench_hot_reload(reps: Reps, world: World) -> dict[str, object]:
    """`discovery.refresh()` when nothing changed (batches), and right after the file changed."""
    path = world.workdir / "reload.mcp.json"
    variants = [
        {"fs": entry_config(world.filesystem), "time": entry_config(world.time)},
        {"fs": entry_config(world.filesystem)},  # a different size: the change is seen whatever the clock
    ]
    write_mcp_json(path, variants[0])
    discovery = MCPDiscovery(path)
    discovery.refresh()
    unchanged = timed_batches(reps, discovery.refresh)
    changed = []
    for index in range(reps.calls):
        write_mcp_json(path, variants[(index + 1) % 2])
        start = time.perf_counter()
        change = discovery.refresh()
        changed.append((time.perf_counter() - start) * 1e6)
        assert change.added or change.removed, "the rewrite was not noticed"
    return {"unchanged_us": stat(unchanged, "us"), "changed_us": stat(changed, "us")}


async def bench_pooled_calls(reps: Reps, world: World) -> dict[str, object]:
    """A tool call on a warm pooled session, on a session of the SDK's client held directly, and a
    cold start (new pool: spawn, initialize, list tools, call) of the same server."""
    cases = [
        ("filesystem", world.filesystem, "read_text_file", {"path": str(world.files[0])}),
        ("time", world.time, "get_current_time", {"timezone": "UTC"}),
    ]
    figures: dict[str, object] = {}
    for label, entry, tool, arguments in cases:
        pooled, direct, cold = [], [], []
        params = StdioServerParameters(command=entry.command or "", args=list(entry.args), env=dict(entry.env) or None)
        async with MCPSessionPool(start_timeout_s=30, call_timeout_s=30, idle_timeout_s=0) as pool, \
                Client(params, read_timeout_seconds=30) as client:
            await pool.call_tool(entry, tool, arguments)  # start it
            await client.call_tool(tool, arguments)
            for _ in range(reps.calls):  # interleaved, so drift in the server's speed hits both alike
                start = time.perf_counter()
                result = await pool.call_tool(entry, tool, arguments)
                middle = time.perf_counter()
                await client.call_tool(tool, arguments)
                direct.append((time.perf_counter() - middle) * 1e3)
                pooled.append((middle - start) * 1e3)
                assert not result.is_error, result
        for _ in range(reps.cold_starts):
            async with MCPSessionPool(start_timeout_s=30, call_timeout_s=30, idle_timeout_s=0) as pool:
                start = time.perf_counter()
                await pool.call_tool(entry, tool, arguments)
                cold.append((time.perf_counter() - start) * 1e3)
        figures[f"{label}_pooled_ms"] = stat(pooled, "ms")
        figures[f"{label}_direct_sdk_ms"] = stat(direct, "ms")
        figures[f"{label}_pool_minus_direct_ms"] = value(statistics.median(pooled) - statistics.median(direct), "ms")
        figures[f"{label}_cold_start_ms"] = stat(cold, "ms")
    return figures


async def bench_loop(reps: Reps, world: World) -> tuple[dict[str, object], dict[str, object]]:
    """Per-round bridge overhead on both API paths, and request bytes per round.

    Each round's overhead = (gap between the end of one LLMClient call and the start of the next,
    minus the pool.call_tool time inside it: the agent's own work) + (the LLMClient call's time
    minus a bare httpx replay of the same request to the same stand-in: the client's own work).
    """
    overhead: dict[str, object] = {}
    sizes: dict[str, object] = {}
    for api in ("responses", "chat"):
        with FakeLMStudio(file_reading_script(world.files, LOOP_ROUNDS), responses_api=api == "responses") as fake:
            settings = bridge_settings(fake.url, world.mcp_json, LMSTUDIO_API_MODE=api)
            async with bridge_state(settings) as state, httpx.AsyncClient(timeout=30) as replayer:
                await run_files_task(state, LOOP_ROUNDS)  # warm up: starts the server, fills caches
                rounds, clients, setups = [], [], []
                for _ in range(reps.loop_runs):
                    fake.clear()
                    llm_spans, tool_spans = SpanRecorder(), SpanRecorder()
                    with llm_spans.wrapping(state.backends[0].client, "create_response", "chat_completion"), \
                            tool_spans.wrapping(SessionLease, "call_tool"):
                        run_start = time.perf_counter()
                        result = await run_files_task(state, LOOP_ROUNDS)
                    assert result.stop_reason == "completed" and result.rounds == LOOP_ROUNDS, result
                    requests = fake.generation_requests()
                    replays = [await replay(replayer, fake.url, r) for r in requests]
                    llm, tools = llm_spans.spans, tool_spans.spans
                    assert len(llm) == len(replays) == LOOP_ROUNDS and len(tools) == LOOP_ROUNDS - 1
                    setups.append((llm[0][0] - run_start) * 1e3)
                    for i in range(1, LOOP_ROUNDS):
                        agent_s = (llm[i][0] - llm[i - 1][1]) - (tools[i - 1][1] - tools[i - 1][0])
                        client_s = (llm[i][1] - llm[i][0]) - replays[i]
                        rounds.append((agent_s + client_s) * 1e3)
                        clients.append(client_s * 1e3)
                    last_run_requests = requests
            overhead[f"{api}_per_round_ms"] = stat(rounds, "ms")
            overhead[f"{api}_llmclient_part_ms"] = stat(clients, "ms")
            overhead[f"{api}_run_setup_ms"] = stat(setups, "ms")
            for n in SIZE_ROUNDS:
                sizes[f"{api}_round_{n}_bytes"] = value(last_run_requests[n - 1].size_bytes, "bytes")
    later = [f"responses_round_{n}_bytes" for n in SIZE_ROUNDS if n > 1]
    flat = [sizes[k]["value"] for k in later]  # type: ignore[index]
    sizes["responses_growth_10_to_50_bytes"] = value(flat[-1] - flat[0], "bytes")
    chat_50 = sizes["chat_round_50_bytes"]["value"]  # type: ignore[index]
    sizes["saving_at_round_50_pct"] = value(100 * (1 - flat[-1] / chat_50), "%")
    return overhead, sizes


async def run_files_task(state: AppState, rounds: int) -> RunResult:
    with anyio.fail_after(120):
        return await state.agent.run(["fs"], f"Read the files one by one ({rounds} rounds).", model=MODEL)


async def replay(client: httpx.AsyncClient, base_url: str, request: RecordedRequest) -> float:
    """Seconds a bare httpx client takes to send `request` again and read the whole answer."""
    content = json.dumps(request.body, separators=(",", ":")).encode()
    start = time.perf_counter()
    async with client.stream("POST", base_url + request.path, content=content,
                             headers={"Content-Type": "application/json"}) as response:
        await response.aread()
    elapsed = time.perf_counter() - start
    assert response.status_code == 200, response.text
    return elapsed


async def bench_concurrency(reps: Reps, world: World) -> dict[str, object]:
    """K simultaneous 3-round runs against a stand-in answering in 50 ms and one shared server."""
    figures: dict[str, object] = {}
    reset_peak_rss()
    with FakeLMStudio(file_reading_script(world.files, CONCURRENT_ROUNDS), latency_s=STAND_IN_LATENCY_S) as fake:
        for limit in (64, None):
            extra = {"LMSTUDIO_MAX_CONCURRENCY": str(limit)} if limit else {}
            label = f"limit_{limit}" if limit else "limit_default_4"
            async with bridge_state(bridge_settings(fake.url, world.mcp_json, **extra)) as state:
                await run_files_task(state, CONCURRENT_ROUNDS)  # warm up
                for tasks in CONCURRENT_TASKS:
                    walls, cpu = [], []
                    for _ in range(reps.concurrency_runs):
                        cpu_start = time.process_time()  # every thread: the bridge and the stand-in
                        walls.append(await concurrent_runs(state, tasks))
                        cpu.append((time.process_time() - cpu_start) * 1e3)
                    figures[f"{label}_{tasks}_tasks_wall_ms"] = stat([w * 1e3 for w in walls], "ms")
                    figures[f"{label}_{tasks}_tasks_cpu_ms"] = stat(cpu, "ms")
                    figures[f"{label}_{tasks}_tasks_per_s"] = value(tasks / statistics.median(walls), "tasks/s")
    figures["ideal_wall_ms"] = value(CONCURRENT_ROUNDS * STAND_IN_LATENCY_S * 1e3, "ms")
    figures["benchmark_peak_rss_mb"] = value(peak_rss_kb() / 1024, "MB")
    return figures


async def concurrent_runs(state: AppState, tasks: int) -> float:
    results = []

    async def one() -> None:
        results.append(await run_files_task(state, CONCURRENT_ROUNDS))

    start = time.perf_counter()
    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            for _ in range(tasks):
                tg.start_soon(one)
    wall = time.perf_counter() - start
    assert all(r.stop_reason == "completed" and r.rounds == CONCURRENT_ROUNDS for r in results), results
    return wall


def reset_peak_rss() -> None:
    """Reset this process's VmHWM (Linux: write 5 to clear_refs), so the peak is the section's."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        logger.warning("could not reset the peak RSS: the figure is the whole run's peak")


def peak_rss_kb() -> float:
    return _proc_status_kb(os.getpid(), "VmHWM")


def _proc_status_kb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


async def bench_startup(reps: Reps, fake: FakeLMStudio, world: World) -> dict[str, object]:
    """`lmstudio-bridge` as a subprocess: spawn to a listed tool set, then its resident memory."""
    start_ms, rss_mb = [], []
    for _ in range(reps.startups):
        params = subprocess_params(bridge_env(fake.url, world.mcp_json))
        with anyio.fail_after(60):
            start = time.perf_counter()
            async with Client(params, read_timeout_seconds=30) as client:
                tools = (await client.list_tools()).tools
                start_ms.append((time.perf_counter() - start) * 1e3)
                assert tools, "the bridge listed no tools"
                rss_mb.append(_proc_status_kb(bridge_pid(), "VmRSS") / 1024)
    return {"start_to_tools_ms": stat(start_ms, "ms"), "idle_rss_mb": stat(rss_mb, "MB")}


def bridge_pid() -> int:
    """The pid of this process's child running the bridge's main.py."""
    marker = str(ROOT / "main.py").encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == os.getpid() and marker in cmdline:
            return int(entry.name)
    raise RuntimeError("the bridge process was not found among this process's children")


async def bench_live(world: World) -> dict[str, object]:
    """The plan's model comparison: one small task on the first two models of a real server."""
    if os.environ.get("LMSTUDIO_LIVE") != "1":
        return {"skipped": "set LMSTUDIO_LIVE=1 and LMSTUDIO_BASE_URL to compare real models"}
    base_url = os.environ.get("LMSTUDIO_BASE_URL", "http://localhost:1234")
    settings = load_config({**os.environ, "MCP_JSON_PATH": str(world.mcp_json)})
    figures: dict[str, object] = {"base_url": base_url}
    async with bridge_state(settings) as state:
        with anyio.fail_after(60):
            infos = await state.catalog.models()
        models = [i.id for i in infos if i.type not in ("embeddings",)][:2]
        if not models:
            return {"skipped": f"{base_url} offers no chat model"}
        for model in models:
            with anyio.fail_after(600):
                result = await state.agent.run(
                    ["time"], "What is the current time in UTC? Use a tool, then answer in one sentence.",
                    model=model, max_rounds=5,
                )
            figures[model] = {
                "duration_s": value(result.duration_s, "s"),
                "rounds": result.rounds,
                "stop_reason": result.stop_reason,
                "answer": result.answer[:120],
            }
    # The fixed live task set (tests/support/live_tasks.py) on the first model: completions and stops.
    outcomes = await live_task_set(base_url, models[0])
    done = live_summary(outcomes)
    figures["task_set"] = {
        "model": models[0],
        "completed": f"{done['completed']}/{done['tasks']}",
        "stop_reasons": done["stop_reasons"],
        "median_s": value(float(done["median_s"]), "s"),  # type: ignore[arg-type]
        "assists": done["assists"],
    }
    return figures


async def bench_weak_models() -> dict[str, object]:
    """The weak-model suite (tests/support/weak_model_suite.py): completion rate per habit and API path."""
    report = await run_suite()
    figures: dict[str, object] = {}
    for group in ("mode", "api"):
        for key, (done, runs) in report.rates(group).items():
            figures[f"{key}_completed_pct"] = value(100 * done / runs, "%")
    figures["all_completed_pct"] = value(100 * sum(o.success for o in report.outcomes) / len(report.outcomes), "%")
    return figures


# --- environment and output --------------------------------------------------------------------


def environment() -> dict[str, object]:
    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "mcp": version("mcp"),
        "httpx": version("httpx"),
        "git_commit": git_commit(ROOT),
        "load_avg_1min": round(os.getloadavg()[0], 2),  # other work on the machine skews every figure
    }


def git_commit(root: Path) -> str:
    """The checked-out commit, read from .git without running git; "unknown" when there is none."""
    git = root / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:12]
        ref = head[5:]
        if (git / ref).is_file():
            return (git / ref).read_text().strip()[:12]
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0][:12]
    except OSError:
        pass
    return "unknown"


def render_table(results: dict[str, object]) -> str:
    lines = [f"{'section':<14} {'metric':<38} {'median':>10} {'p95':>10} {'n':>6}  {'unit':<8} target"]
    lines.append("-" * len(lines[0]) + "-" * 12)
    for section, figures in results["sections"].items():  # type: ignore[union-attr]
        if "skipped" in figures:
            lines.append(f"{section:<14} skipped: {figures['skipped']}")
            continue
        for metric, figure in figures.items():
            if not isinstance(figure, dict):
                lines.append(f"{section:<14} {metric:<38} {figure}")
                continue
            if "unit" not in figure:  # a live model's entry
                parts = (f"{k}={_cell(v)}" for k, v in figure.items())
                lines.append(f"{section:<14} {metric:<38} " + ", ".join(parts))
                continue
            target = TARGETS.get((section, metric))
            verdict = ""
            if target is not None:
                verdict = f"{target[1]}: {'met' if figure['median'] <= target[0] else 'NOT met'}"
            if "median" in figure:
                cells = f"{figure['median']:>10g} {figure['p95']:>10g} {figure['n']:>6}"
            else:
                cells = f"{figure['value']:>10g} {'':>10} {'':>6}"
            lines.append(f"{section:<14} {metric:<38} {cells}  {figure['unit']:<8} {verdict}")
    return "\n".join(lines)


def _cell(value: object) -> object:
    """A figure's value, or a count table (`{"completed": 5, ...}`) as `completed 5 / ...`."""
    if isinstance(value, dict):
        return value["value"] if "value" in value else " / ".join(f"{k} {v}" for k, v in value.items())
    return value


async def run_all(reps: Reps) -> dict[str, object]:
    sections: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="bridge-bench-") as tmp:
        world = make_world(Path(tmp))
        with FakeLMStudio() as fake:
            steps: list[tuple[str, Callable[[], Awaitable[object]]]] = [
                ("validation", lambda: bench_validation(reps, fake, world)),
                ("hot_reload", lambda: bench_hot_reload(reps, world)),
                ("pooled_calls", lambda: bench_pooled_calls(reps, world)),
            ]
            for name, step in steps:
                sections[name] = await _section(name, step)
            loop, sizes = await _section("loop_overhead", lambda: bench_loop(reps, world))  # type: ignore[misc]
            sections["loop_overhead"], sections["request_bytes"] = loop, sizes
            sections["concurrency"] = await _section("concurrency", lambda: bench_concurrency(reps, world))
            sections["startup"] = await _section("startup", lambda: bench_startup(reps, fake, world))
        sections["weak_models"] = await _section("weak_models", bench_weak_models)
        sections["live"] = await _section("live", lambda: bench_live(world))
    return {"environment": environment(), "mode": "quick" if reps is QUICK else "full", "sections": sections}


async def _section(name: str, step: Callable[[], Awaitable[object]]) -> object:
    logger.info("measuring %s ...", name)
    started = time.perf_counter()
    with anyio.fail_after(SECTION_TIMEOUT_S):
        figures = await step()
    logger.info("%s done in %.1f s", name, time.perf_counter() - started)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure what the bridge itself costs (see docs/PERFORMANCE.md).")
    parser.add_argument("--quick", action="store_true", help="few repetitions (under a minute)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures to FILE as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    for noisy in ("tools", "llm", "utils", "tests", "httpx", "mcp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    results = anyio.run(run_all, QUICK if args.quick else FULL, backend="asyncio")
    env = results["environment"]
    print("Environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))  # type: ignore[union-attr]
    print(f"Mode: {results['mode']}\n")
    print(render_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
