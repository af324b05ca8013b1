"""Several model servers behind one bridge, end to end: two stand-ins with different and overlapping
models; routing, pinning with `model@server`, failover when one goes down, a breaker per server,
per-server health and counters."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.bridge import bridge_settings, in_process_bridge, text_of, write_mcp_json
from tests.support.fake_lmstudio import FakeLMStudio, FakeModel, Turn, call

pytestmark = pytest.mark.slow

SHARED = "qwen/qwen3-4b"
LAPTOP_MODELS = (FakeModel(SHARED, loaded=True), FakeModel("google/gemma-3-4b", loaded=True))
GPU_MODELS = (FakeModel(SHARED, loaded=True), FakeModel("qwen/qwen3-coder-30b", loaded=True))


@pytest.fixture
def laptop() -> Iterator[FakeLMStudio]:
    with FakeLMStudio(models=LAPTOP_MODELS) as server:
        yield server


@pytest.fixture
def gpu() -> Iterator[FakeLMStudio]:
    with FakeLMStudio(models=GPU_MODELS) as server:
        yield server


def settings(laptop: FakeLMStudio, gpu: FakeLMStudio, mcp_json: Path | None = None, **extra: str):  # type: ignore[no-untyped-def]
    backends = [{"name": "laptop", "url": laptop.url}, {"name": "gpu", "url": gpu.url}]
    # LMSTUDIO_BASE_URL points nowhere: with LMSTUDIO_BACKENDS set, only the listed servers are used.
    return bridge_settings("http://127.0.0.1:9", mcp_json, LMSTUDIO_BACKENDS=json.dumps(backends), **extra)


def generations(fake: FakeLMStudio) -> list[str]:
    return [str((r.body or {}).get("model")) for r in fake.generation_requests()]


async def test_each_model_goes_to_the_server_that_serves_it(laptop: FakeLMStudio, gpu: FakeLMStudio) -> None:
    laptop.set_script([Turn(text="from the laptop")])
    gpu.set_script([Turn(text="from the gpu")])
    async with in_process_bridge(settings(laptop, gpu)) as client:
        coder = await client.call_tool("chat_completion", {"prompt": "hi", "model": "qwen/qwen3-coder-30b"})
        gemma = await client.call_tool("chat_completion", {"prompt": "hi", "model": "google/gemma-3-4b"})
    assert (text_of(coder), text_of(gemma)) == ("from the gpu", "from the laptop")
    assert generations(gpu) == ["qwen/qwen3-coder-30b"] and generations(laptop) == ["google/gemma-3-4b"]


async def test_model_at_server_pins_the_call(laptop: FakeLMStudio, gpu: FakeLMStudio) -> None:
    gpu.set_script([Turn(text="pinned")])
    async with in_process_bridge(settings(laptop, gpu)) as client:
        result = await client.call_tool("chat_completion", {"prompt": "hi", "model": f"{SHARED}@gpu"})
        wrong = await client.call_tool("chat_completion", {"prompt": "hi", "model": "google/gemma-3-4b@gpu"})
    assert text_of(result) == "pinned" and generations(laptop) == []
    assert wrong.is_error and "Model 'google/gemma-3-4b@gpu' not found" in text_of(wrong)
    assert "qwen/qwen3-coder-30b@gpu" in text_of(wrong)


async def test_a_model_on_two_servers_fails_over_when_one_is_down(laptop: FakeLMStudio, gpu: FakeLMStudio) -> None:
    gpu.set_script([Turn(text="the gpu answered")])
    async with in_process_bridge(settings(laptop, gpu, LMSTUDIO_RETRY_ATTEMPTS="1")) as client:
        await client.call_tool("list_models", {})  # both lists cached: the laptop is first for the shared model
        laptop.stop()
        result = await client.call_tool("chat_completion", {"prompt": "hi", "model": SHARED})
        pinned = await client.call_tool("chat_completion", {"prompt": "hi", "model": f"{SHARED}@laptop"})
    assert not result.is_error and text_of(result) == "the gpu answered"
    assert pinned.is_error and "Could not connect" in text_of(pinned)  # pinned: no failover


async def test_a_dead_server_does_not_slow_calls_to_the_other(laptop: FakeLMStudio, gpu: FakeLMStudio) -> None:
    gpu.set_script([Turn(text=f"answer {i}") for i in range(4)])
    env = {"LMSTUDIO_RETRY_ATTEMPTS": "1", "LMSTUDIO_CIRCUIT_FAILURES": "1", "LMSTUDIO_CIRCUIT_RESET_S": "600"}
    async with in_process_bridge(settings(laptop, gpu, **env)) as client:
        await client.call_tool("list_models", {})
        laptop.stop()
        gemma = await client.call_tool("chat_completion", {"prompt": "hi", "model": "google/gemma-3-4b"})
        again = await client.call_tool("chat_completion", {"prompt": "hi", "model": "google/gemma-3-4b"})
        coder = await client.call_tool("chat_completion", {"prompt": "hi", "model": "qwen/qwen3-coder-30b"})
        stats = (await client.call_tool("bridge_stats", {})).structured_content
    assert gemma.is_error and "Could not connect to LM Studio at " + laptop.url in text_of(gemma)
    # The laptop's breaker is open: failing fast, and saying which server is down.
    assert again.is_error and "not on any model server that answered; laptop" in text_of(again)
    assert "is unreachable" in text_of(again)
    assert text_of(coder) == "answer 0"  # the gpu's own breaker is closed
    breakers = {s["name"]: s["breaker"] for s in stats["model_servers"]}
    assert breakers == {"laptop": "open", "gpu": "closed"}
    assert stats["counters"]["llm_requests{endpoint=/v1/chat/completions,server=gpu}"] == 1


async def test_list_models_and_health_check_show_each_model_and_servers_health(
    laptop: FakeLMStudio, gpu: FakeLMStudio
) -> None:
    async with in_process_bridge(settings(laptop, gpu)) as client:
        listed = (await client.call_tool("list_models", {})).structured_content
        gpu.stop()
        health = await client.call_tool("health_check", {})
    assert [(m["id"], m["server"]) for m in listed["models"]] == [
        (SHARED, "laptop"), ("google/gemma-3-4b", "laptop"), (SHARED, "gpu"), ("qwen/qwen3-coder-30b", "gpu"),
    ]
    servers = {s["name"]: s for s in health.structured_content["servers"]}
    assert servers["laptop"]["ok"] and servers["laptop"]["models"] == 2
    assert not servers["gpu"]["ok"] and gpu.url in servers["gpu"]["error"]
    assert "1 of 2 model servers reachable" in text_of(health) and "gpu (" in text_of(health)


async def test_an_autonomous_run_uses_its_models_server_from_start_to_end(
    laptop: FakeLMStudio, gpu: FakeLMStudio, tmp_path: Path
) -> None:
    time_server = {"command": sys.executable, "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]}
    mcp_json = write_mcp_json(tmp_path / ".mcp.json", {"time": time_server})
    gpu.set_script([Turn(tool_calls=[call("get_current_time", timezone="UTC")]), Turn(text="noon")])
    async with in_process_bridge(settings(laptop, gpu, mcp_json)) as client:
        result = await client.call_tool(
            "autonomous_with_mcp", {"mcp_name": "time", "task": "time?", "model": "qwen/qwen3-coder-30b"}
        )
    assert result.structured_content["stop_reason"] == "completed"
    assert generations(gpu) == ["qwen/qwen3-coder-30b", "qwen/qwen3-coder-30b"] and generations(laptop) == []


async def test_a_continued_response_goes_back_to_the_server_that_stored_it(
    laptop: FakeLMStudio, gpu: FakeLMStudio
) -> None:
    gpu.set_script([Turn(text="first"), Turn(text="second")])
    async with in_process_bridge(settings(laptop, gpu)) as client:
        first = await client.call_tool("create_response", {"input": "hi", "model": f"{SHARED}@gpu"})
        second = await client.call_tool(
            "create_response", {"input": "again", "previous_response_id": first.structured_content["response_id"]}
        )
    assert not second.is_error, text_of(second)
    assert second.structured_content["text"] == "second" and generations(laptop) == []


async def test_a_model_that_is_not_loaded_is_loaded_on_the_server_that_lists_it_and_nowhere_else() -> None:
    """Loading (LM Studio 0.4's load API) goes to the server the model is routed to, with its own queue and client."""
    thinker = "qwen/qwen3-4b-thinking-2507"
    laptop_models = (FakeModel(SHARED, loaded=True),)
    gpu_models = (FakeModel(SHARED, loaded=True), FakeModel(thinker, loaded=False, loaded_context_length=8192))
    with FakeLMStudio([Turn(text="laptop")], models=laptop_models, lmstudio_version="0.4", substitutes=True) as lap, \
            FakeLMStudio([Turn(text="thought")], models=gpu_models, lmstudio_version="0.4", substitutes=True) as box:
        async with in_process_bridge(settings(lap, box)) as client:
            result = await client.call_tool("chat_completion", {"prompt": "hi", "model": thinker})
            listed = await client.call_tool("list_models", {})
    assert not result.is_error, text_of(result)
    assert text_of(result) == "thought" and result.structured_content["model"] == thinker
    assert [load["model"] for load in box.state.loads] == [thinker] and lap.state.loads == []
    row = next(r for r in listed.structured_content["models"] if r["id"] == thinker)
    assert (row["server"], row["state"]) == ("gpu", "loaded")
