"""Long runs in every client: background runs (the registry alone, then end to end through the bridge as a
subprocess), and progress while servers start and tool calls run."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client

from llm.exceptions import ModelNotFoundError
from tests.support.bridge import (
    ROOT,
    bridge_env,
    bridge_settings,
    model_requests,
    processes_mentioning,
    subprocess_params,
    text_of,
    write_mcp_json,
)
from tests.support.fake_lmstudio import FakeLMStudio, Turn, call
from tools.agent.events import RunHooks
from tools.agent.result import RunResult
from tools.app import bridge_state
from tools.background import BackgroundRuns, RunNotFoundError, TooManyRunsError
from tools.progress import ProgressReporter

TIME_SERVER = {"command": sys.executable, "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]}


def toy_server(**env: str) -> dict[str, object]:
    return {"command": sys.executable, "args": ["-m", "tests.support.toy_server"], "cwd": str(ROOT),
            "env": {"PYTHONPATH": str(ROOT), **env}}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def result(answer: str = "done") -> RunResult:
    return RunResult(answer, "m", "completed", 1, [], 0.1, "chat", ["time"])


class Gate:
    """A run that waits for `release` (or is cancelled), then returns `answer`."""

    def __init__(self, answer: str = "done", error: Exception | None = None) -> None:
        self.release = asyncio.Event()
        self.answer = answer
        self.error = error

    async def __call__(self, progress: ProgressReporter, watch: RunHooks) -> RunResult:
        await progress.report("round 1: waiting for the model")
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return result(self.answer)


# --- the registry ---------------------------------------------------------------------------------


async def test_a_run_started_in_the_background_returns_at_once_and_is_collected_later() -> None:
    async with BackgroundRuns(max_running=2, keep_s=60) as runs:
        gate = Gate()
        handle = runs.start(gate, model="m", servers=None)
        assert handle.state == "running"
        still = await runs.wait(handle.id, 0)
        assert still.state == "running" and still.result is None
        gate.release.set()
        done = await runs.wait(handle.id, 5)
        assert (done.state, done.result.answer) == ("finished", "done")  # type: ignore[union-attr]
        status = done.status(runs.now())
        assert status["last_progress"] == "round 1: waiting for the model"
        assert (status["stop_reason"], status["error"]) == ("completed", None)


async def test_more_running_runs_than_the_bound_are_refused_naming_them() -> None:
    async with BackgroundRuns(max_running=1, keep_s=60) as runs:
        first = runs.start(Gate(), model=None, servers=None)
        with pytest.raises(TooManyRunsError) as caught:
            runs.start(Gate(), model=None, servers=None)
    assert caught.value.running == [first.id]
    assert "AUTONOMOUS_MAX_BACKGROUND_RUNS=1" in str(caught.value) and "autonomous_cancel" in str(caught.value)


async def test_a_finished_run_is_kept_for_the_ttl_then_forgotten_with_a_message_that_says_so() -> None:
    clock = Clock()
    async with BackgroundRuns(max_running=2, keep_s=60, clock=clock) as runs:
        gate = Gate()
        gate.release.set()
        handle = await runs.wait(runs.start(gate, model=None, servers=None).id, 5)
        clock.now += 59
        assert runs.get(handle.id) is handle
        clock.now += 2
        with pytest.raises(RunNotFoundError) as caught:
            runs.get(handle.id)
    assert "kept 60 s (AUTONOMOUS_RESULT_TTL_S)" in str(caught.value)


async def test_cancel_stops_a_running_run_and_leaves_an_ended_one_as_it_was() -> None:
    async with BackgroundRuns(max_running=2, keep_s=60) as runs:
        running = runs.start(Gate(), model=None, servers=None)
        ended_gate = Gate()
        ended_gate.release.set()
        ended = await runs.wait(runs.start(ended_gate, model=None, servers=None).id, 5)
        assert (await runs.cancel(running.id)).state == "cancelled"
        assert (await runs.cancel(ended.id)).state == "finished"


async def test_a_run_that_cannot_start_is_failed_with_its_message() -> None:
    async with BackgroundRuns(max_running=2, keep_s=60) as runs:
        gate = Gate(error=ModelNotFoundError("nope", ["a", "b"]))
        gate.release.set()
        handle = await runs.wait(runs.start(gate, model="nope", servers=None).id, 5)
    status = handle.status(runs.now())
    assert status["state"] == "failed" and str(status["error"]).startswith("Model 'nope' not found")


async def test_leaving_the_registry_cancels_every_run_still_going() -> None:
    async with BackgroundRuns(max_running=3, keep_s=60) as runs:
        handles = [runs.start(Gate(), model=None, servers=None) for _ in range(3)]
    assert [h.state for h in handles] == ["cancelled"] * 3


# --- end to end: the bridge as a subprocess -------------------------------------------------------


def bridge(fake: FakeLMStudio, mcp_json: Path, **extra: str) -> Client:
    return Client(subprocess_params(bridge_env(fake.url, mcp_json, **extra)), read_timeout_seconds=60)


@pytest.mark.slow
@pytest.mark.parametrize("api", ["responses", "chat"])
async def test_a_background_run_over_every_enabled_server_is_collected_by_a_later_call(
    api: str, tmp_path: Path
) -> None:
    mcp_json = write_mcp_json(tmp_path / ".mcp.json", {"time": TIME_SERVER})
    script = [Turn(tool_calls=[call("get_current_time", timezone="UTC")]), Turn(text="It is noon.")]
    with FakeLMStudio(script, responses_api=api == "responses") as fake:
        with anyio.fail_after(60):
            async with bridge(fake, mcp_json) as client:
                started = await client.call_tool("autonomous_start", {"task": "What time is it?"})
                run_id = started.structured_content["run_id"]
                collected = await client.call_tool("autonomous_result", {"run_id": run_id, "wait_s": 30})
                status = await client.call_tool("autonomous_status", {"run_id": run_id})
    assert not started.is_error and started.structured_content["state"] == "running"
    assert f"autonomous_result(run_id='{run_id}'" in text_of(started)
    assert not collected.is_error, text_of(collected)
    data = collected.structured_content
    assert (data["run_id"], data["state"], data["stop_reason"], data["api"]) == (run_id, "finished", "completed", api)
    assert data["servers"] == ["time"] and text_of(collected) == "It is noon."
    assert [c["name"] for c in data["tool_calls"]] == ["get_current_time"]
    assert status.structured_content["rounds"] == 2 and status.structured_content["tool_calls"] == 1
    assert status.structured_content["last_progress"].startswith("finished: completed")


@pytest.mark.slow
async def test_a_run_still_going_is_said_to_be_running_within_wait_s_and_cancel_stops_it(tmp_path: Path) -> None:
    mcp_json = write_mcp_json(tmp_path / ".mcp.json", {"toy": toy_server()})
    script = [Turn(tool_calls=[call("echo", text="one")]), Turn(hang=True)]
    with FakeLMStudio(script) as fake:
        with anyio.fail_after(60):
            async with bridge(fake, mcp_json) as client:
                run_id = (await client.call_tool("autonomous_start", {"task": "go", "mcp_names": ["toy"]})
                          ).structured_content["run_id"]
                # The second model request hangs: once it has arrived, the run is certainly still going.
                while len(model_requests(fake)) < 2:
                    await anyio.sleep(0.05)
                waiting = await client.call_tool("autonomous_result", {"run_id": run_id, "wait_s": 0.2})
                cancelled = await client.call_tool("autonomous_cancel", {"run_id": run_id})
                again = await client.call_tool("autonomous_cancel", {"run_id": run_id})
                fake.set_script([Turn(text="fine")])
                after = await client.call_tool("autonomous_with_mcp", {"mcp_name": "toy", "task": "again"})
                unknown = await client.call_tool("autonomous_status", {"run_id": "run_nope"})
    assert not waiting.is_error
    assert waiting.structured_content["state"] == "running"
    # The first round's call ran; the run waits for the model's second turn.
    assert (waiting.structured_content["rounds"], waiting.structured_content["tool_calls"]) == (2, 1)
    assert "Still running: call autonomous_result again" in text_of(waiting)
    assert waiting.structured_content["last_progress"].startswith("round 2: ")
    assert cancelled.structured_content["state"] == "cancelled" and text_of(cancelled).endswith("Cancelled.")
    assert "already ended" in text_of(again)
    assert text_of(after) == "fine"
    assert unknown.is_error and text_of(unknown).startswith("Error: No background run 'run_nope'. Known runs: run_")


@pytest.mark.slow
async def test_closing_the_client_cancels_background_runs_and_leaves_no_process_behind(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    marker.mkdir()
    mcp_json = write_mcp_json(tmp_path / ".mcp.json", {"toy": toy_server(MARKER=str(marker))})
    with FakeLMStudio([Turn(tool_calls=[call("sleep", seconds=600)])]) as fake:
        with anyio.fail_after(60):
            async with bridge(fake, mcp_json, MARKER=str(marker)) as client:
                await client.call_tool("autonomous_start", {"task": "sleep", "mcp_names": ["toy"]})
                while len(processes_mentioning(str(marker))) < 2:  # the bridge, and the toy server sleeping
                    await anyio.sleep(0.05)
        with anyio.fail_after(20):
            while processes_mentioning(str(marker)):
                await anyio.sleep(0.1)


# --- progress while servers start and tool calls run ---------------------------------------------


class RecordingContext:
    def __init__(self) -> None:
        self.messages: list[str] = []

    async def report_progress(self, progress: float, total: float | None = None, message: str | None = None) -> None:
        self.messages.append(message or "")


@pytest.mark.slow
async def test_progress_is_reported_while_a_server_starts_and_while_a_long_tool_call_runs(tmp_path: Path) -> None:
    mcp_json = write_mcp_json(tmp_path / ".mcp.json", {"toy": toy_server(TOY_START_DELAY_S="1")})
    ctx = RecordingContext()
    with FakeLMStudio([Turn(tool_calls=[call("sleep", seconds=1)]), Turn(text="slept")]) as fake:
        async with bridge_state(bridge_settings(fake.url, mcp_json)) as state:
            state.agent.heartbeat_s = 0.05
            with anyio.fail_after(60):
                run = await state.agent.run(["toy"], "sleep", progress=ProgressReporter(ctx))  # type: ignore[arg-type]
    assert run.stop_reason == "completed"
    assert "connecting to MCP servers: toy" in ctx.messages
    assert any(m.startswith("starting MCP servers: toy (") for m in ctx.messages), ctx.messages
    assert any(m.startswith("round 1: waiting for sleep (") for m in ctx.messages), ctx.messages


@pytest.mark.slow
async def test_a_background_run_waiting_on_its_servers_says_so_in_its_status(tmp_path: Path) -> None:
    """No client hears a background run's heartbeats: they still keep `last_progress` current."""
    mcp_json = write_mcp_json(tmp_path / ".mcp.json", {"toy": toy_server(TOY_START_DELAY_S="2")})
    with FakeLMStudio([Turn(text="done")]) as fake:
        async with bridge_state(bridge_settings(fake.url, mcp_json)) as state:
            state.agent.heartbeat_s = 0.05
            progress = ProgressReporter(None)
            with anyio.fail_after(60):
                running = asyncio.create_task(state.agent.run(["toy"], "go", progress=progress))
                while not (progress.last_message or "").startswith("starting MCP servers: toy ("):
                    await anyio.sleep(0.02)
                assert (await running).stop_reason == "completed"
