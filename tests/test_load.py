"""Load: many concurrent autonomous tasks share sessions and lose nothing; LM Studio is queued, not flooded."""

from __future__ import annotations

import asyncio
import json
import re
import resource
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import respx

from config import load_config
from tests.support.bridge import bridge_settings, tool_outputs, write_mcp_json
from tests.support.fake_lmstudio import FakeLMStudio, RecordedRequest, Turn, call
from tools.app import AppState, bridge_state

TIME_SERVER = {"command": sys.executable, "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]}
TASKS = 100


def answer_with_the_task_id(fake: FakeLMStudio) -> Callable[[RecordedRequest], Turn]:
    """Round 1: ask for the time; round 2: answer with the task id found in this conversation only."""

    def script(request: RecordedRequest) -> Turn:
        body = request.body or {}
        if not tool_outputs(request):
            return Turn(tool_calls=[call("get_current_time", timezone="UTC")])
        # The responses path sends only new items: the task text lives in the stored conversation.
        history = json.dumps(fake.conversation(body["previous_response_id"])) if body.get("previous_response_id") else ""
        match = re.search(r"task (\d+):", history or json.dumps(body))
        return Turn(text=f"done: task {match.group(1) if match else '?'}")

    return script


@pytest.mark.slow
async def test_a_hundred_concurrent_tasks_share_one_session_and_all_complete(tmp_path: Path) -> None:
    mcp_json = write_mcp_json(tmp_path / ".mcp.json", {"time": TIME_SERVER})
    with FakeLMStudio(latency_s=0.05) as fake:
        fake.set_script(answer_with_the_task_id(fake))
        settings = bridge_settings(fake.url, mcp_json, LMSTUDIO_MAX_CONCURRENCY="16")
        async with bridge_state(settings) as state:
            results = await asyncio.wait_for(
                asyncio.gather(
                    *(state.agent.run(["time"], f"task {i}: what time is it?") for i in range(TASKS)),
                    return_exceptions=True,
                ),
                timeout=120,
            )
            status = state.pool.status("time")
            stats = state.metrics.snapshot()["counters"]
        requests = fake.generation_requests()
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    assert [r.stop_reason for r in results] == ["completed"] * TASKS
    # Every task got the answer of its own conversation: nothing crossed between runs.
    assert [r.answer for r in results] == [f"done: task {i}" for i in range(TASKS)]
    # No request lost: exactly two model requests and one tool call per task.
    assert len(requests) == 2 * TASKS
    assert stats["tool_calls{ok=true,server=time}"] == TASKS
    # The server was started once and shared.
    assert status.started and status.pid is not None
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n{TASKS} concurrent tasks: peak RSS of the test process {peak_rss_mb:.0f} MB")
    assert peak_rss_mb < 1024


class HeldAnswers:
    """A chat-completions endpoint that holds every request until released, counting how many wait at once."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.peak = 0
        self.release = asyncio.Event()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        await self.release.wait()
        self.in_flight -= 1
        return httpx.Response(200, json={"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}]})


async def peak_in_flight(state: AppState, held: HeldAnswers, model: str, requests: int) -> int:
    """Send `requests` at once, let the loop settle, read how many reached the server, then release them."""
    resolved = await state.catalog.resolve(model)
    calls = [
        asyncio.create_task(state.backends[0].client.chat_completion([{"role": "user", "content": "hi"}], model=resolved))
        for _ in range(requests)
    ]
    for _ in range(50):
        await asyncio.sleep(0)
    peak = held.peak
    held.release.set()
    await asyncio.wait_for(asyncio.gather(*calls), timeout=10)
    return peak


async def test_requests_beyond_the_per_model_limit_wait_in_line() -> None:
    settings = load_config({"LMSTUDIO_BASE_URL": "http://lm.test", "LMSTUDIO_MAX_CONCURRENCY": "3"})
    held = HeldAnswers()
    with respx.mock(base_url="http://lm.test") as mock:
        mock.get("/api/v1/models").respond(json={"models": [{"key": "m", "type": "llm", "loaded_instances": []}]})
        mock.post("/v1/chat/completions").mock(side_effect=held)
        async with bridge_state(settings) as state:
            assert await peak_in_flight(state, held, "m", 10) == 3


async def test_without_a_limit_set_the_queue_follows_lm_studios_parallel_slots() -> None:
    settings = load_config({"LMSTUDIO_BASE_URL": "http://lm.test"})
    listing = {
        "models": [
            {"key": "qwen/qwen3-4b", "type": "llm", "loaded_instances": [{"id": "qwen/qwen3-4b", "config": {"parallel": 2}}]}
        ]
    }
    held = HeldAnswers()
    with respx.mock(base_url="http://lm.test") as mock:
        mock.get("/api/v1/models").respond(json=listing)
        mock.post("/v1/chat/completions").mock(side_effect=held)
        async with bridge_state(settings) as state:
            # The very first call: no earlier listing decides the size, the resolution reads it.
            assert await peak_in_flight(state, held, "qwen/qwen3-4b", 6) == 2
