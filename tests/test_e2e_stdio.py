"""End to end: the bridge as a subprocess driven by the SDK's stdio client, real MCP servers,
and the scripted LM Studio stand-in on 127.0.0.1 fixing the model's choices."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest
from mcp import Client

from tests.support.bridge import (
    ROOT,
    bridge_env,
    model_requests,
    processes_mentioning,
    subprocess_params,
    text_of,
    tool_outputs,
    write_mcp_json,
)
from tests.support.fake_lmstudio import FakeLMStudio, RecordedRequest, Turn, call
from tests.support.mcp_servers import entry_config
from tools.downstream.entries import ServerEntry

pytestmark = pytest.mark.slow

TOY_SERVER = {"command": sys.executable, "args": ["-m", "tests.support.toy_server"], "cwd": str(ROOT),
              "env": {"PYTHONPATH": str(ROOT)}}


def last_tool_output(request: RecordedRequest) -> str:
    return tool_outputs(request)[-1]


@pytest.fixture(params=["responses", "chat"])
def fake(request: pytest.FixtureRequest) -> Iterator[FakeLMStudio]:
    with FakeLMStudio(responses_api=request.param == "responses") as server:
        yield server


@pytest.fixture
def mcp_json(
    tmp_path: Path,
    workspace: Path,
    filesystem_entry: Callable[..., ServerEntry],
    memory_entry: Callable[..., ServerEntry],
    time_entry: ServerEntry,
) -> Path:
    return write_mcp_json(
        tmp_path / ".mcp.json",
        {
            "filesystem": entry_config(filesystem_entry(workspace)),
            "memory": entry_config(memory_entry(tmp_path / "memory.jsonl")),
            "time": entry_config(time_entry),
            "toy": TOY_SERVER,
        },
    )


def bridge(fake_url: str, mcp_json: Path | None = None, **extra: str) -> Client:
    return Client(subprocess_params(bridge_env(fake_url, mcp_json, **extra)), read_timeout_seconds=60)


async def test_the_bridge_lists_its_tools_and_reports_an_unreachable_lm_studio_clearly() -> None:
    with anyio.fail_after(30):
        async with bridge("http://127.0.0.1:9", LMSTUDIO_RETRY_ATTEMPTS="2") as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert {"health_check", "autonomous_with_mcp", "list_available_mcps"} <= names
            result = await client.call_tool("health_check", {})
    assert result.is_error
    assert "Could not connect to LM Studio at http://127.0.0.1:9" in text_of(result)


async def test_a_multi_round_task_reads_a_real_file_and_answers_with_its_content(
    fake: FakeLMStudio, mcp_json: Path, workspace: Path
) -> None:
    def script(request: RecordedRequest) -> Turn:
        if request.path == "/v1/responses" and request.body and request.body.get("previous_response_id") is None:
            return Turn(tool_calls=[call("list_directory", path=str(workspace))])
        if request.path == "/v1/chat/completions" and len(request.body["messages"]) == 2:
            return Turn(tool_calls=[call("list_directory", path=str(workspace))])
        output = last_tool_output(request)
        if "notes.txt" in output and "PELICAN" not in output:
            return Turn(reasoning="the file is there", tool_calls=[call("read_text_file", path=str(workspace / "notes.txt"))])
        return Turn(text=f"The notes say: {output.strip()}")

    fake.set_script(script)
    progress: list[str] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(message or "")

    with anyio.fail_after(60):
        async with bridge(fake.url, mcp_json) as client:
            result = await client.call_tool(
                "autonomous_with_mcp",
                {"mcp_name": "filesystem", "task": "What is the launch code in notes.txt?"},
                progress_callback=on_progress,
            )
    assert not result.is_error, text_of(result)
    assert text_of(result) == "The notes say: The launch code is PELICAN-42."
    data = result.structured_content
    assert data["stop_reason"] == "completed"
    assert data["rounds"] == 3
    assert [c["name"] for c in data["tool_calls"]] == ["list_directory", "read_text_file"]
    assert all(c["ok"] for c in data["tool_calls"])
    assert data["model"] == "qwen/qwen3-coder-30b"
    assert data["api"] == ("responses" if fake.responses_api else "chat")
    assert any("calling read_text_file" in m for m in progress), progress
    assert progress[-1].startswith("finished: completed")


async def test_a_memory_graph_task_uses_two_servers_with_namespaced_tools(fake: FakeLMStudio, mcp_json: Path) -> None:
    fake.set_script(
        [
            Turn(tool_calls=[call("memory__create_entities", entities=[
                {"name": "Ada", "entityType": "person", "observations": ["wrote the first program"]}])]),
            Turn(tool_calls=[call("memory__read_graph")]),
            Turn(text="Stored Ada."),
        ]
    )
    with anyio.fail_after(60):
        async with bridge(fake.url, mcp_json) as client:
            result = await client.call_tool(
                "autonomous_with_multiple_mcps",
                {"mcp_names": ["filesystem", "memory"], "task": "Remember Ada.", "model": "mistralai/magistral-small-2509"},
            )
    assert not result.is_error, text_of(result)
    assert result.structured_content["servers"] == ["filesystem", "memory"]
    graph = last_tool_output(model_requests(fake)[-1])
    assert "wrote the first program" in graph
    assert all(r.body["model"] == "mistralai/magistral-small-2509" for r in fake.generation_requests())


async def test_discover_and_execute_offers_every_enabled_server(fake: FakeLMStudio, mcp_json: Path) -> None:
    fake.set_script([Turn(tool_calls=[call("time__get_current_time", timezone="Asia/Tokyo")]), Turn(text="Noon.")])
    with anyio.fail_after(60):
        async with bridge(fake.url, mcp_json) as client:
            result = await client.call_tool("autonomous_discover_and_execute", {"task": "Time in Tokyo?"})
    assert not result.is_error, text_of(result)
    assert set(result.structured_content["servers"]) == {"filesystem", "memory", "time", "toy"}
    assert "Asia/Tokyo" in last_tool_output(model_requests(fake)[-1])


async def test_malformed_arguments_and_an_unknown_tool_are_recovered(fake: FakeLMStudio, mcp_json: Path) -> None:
    fake.set_script(
        [
            Turn(tool_calls=[("echo", '{"text": ')]),
            Turn(tool_calls=[call("shout", text="hi")]),
            Turn(tool_calls=[call("echo", text="hi")]),
            Turn(text="Echoed."),
        ]
    )
    with anyio.fail_after(60):
        async with bridge(fake.url, mcp_json) as client:
            result = await client.call_tool("autonomous_with_mcp", {"mcp_name": "toy", "task": "echo hi"})
    calls = result.structured_content["tool_calls"]
    assert [(c["name"], c["ok"]) for c in calls] == [("echo", False), ("shout", False), ("echo", True)]
    outputs = [last_tool_output(r) for r in model_requests(fake)[-3:]]
    assert "not valid JSON" in outputs[0]
    assert "no tool named 'shout'" in outputs[1]
    assert outputs[2] == "hi"


async def test_loop_detected_and_max_rounds_end_runs_as_results(fake: FakeLMStudio, mcp_json: Path) -> None:
    with anyio.fail_after(60):
        async with bridge(fake.url, mcp_json) as client:
            fake.set_script([Turn(text="again", tool_calls=[call("echo", text="same")])] * 5)
            looped = await client.call_tool("autonomous_with_mcp", {"mcp_name": "toy", "task": "loop"})
            fake.set_script([Turn(text=f"step {i}", tool_calls=[call("echo", text=str(i))]) for i in range(5)])
            capped = await client.call_tool("autonomous_with_mcp", {"mcp_name": "toy", "task": "go", "max_rounds": 2})
    assert not looped.is_error and looped.structured_content["stop_reason"] == "loop_detected"
    assert not capped.is_error and capped.structured_content["stop_reason"] == "max_rounds"
    assert capped.structured_content["answer"] == "step 1"


async def test_the_overall_timeout_ends_a_run_with_what_was_said(fake: FakeLMStudio, mcp_json: Path) -> None:
    fake.set_script([Turn(text="starting", tool_calls=[call("sleep", seconds=30)]), Turn(text="never")])
    with anyio.fail_after(60):
        async with bridge(fake.url, mcp_json, AUTONOMOUS_TIMEOUT_S="3") as client:
            result = await client.call_tool("autonomous_with_mcp", {"mcp_name": "toy", "task": "wait"})
    assert not result.is_error
    assert result.structured_content["stop_reason"] == "timeout"
    assert result.structured_content["answer"] == "starting"


async def test_cancelling_a_run_abandons_it_and_the_next_call_works(
    fake: FakeLMStudio, mcp_json: Path, tmp_path: Path
) -> None:
    fake.set_script([Turn(tool_calls=[call("echo", text="one")]), Turn(hang=True)])
    with anyio.fail_after(60):
        async with bridge(fake.url, mcp_json) as client:
            with anyio.move_on_after(3):
                await client.call_tool("autonomous_with_mcp", {"mcp_name": "toy", "task": "hang"})
                pytest.fail("the hanging run should not have returned")
            fake.set_script([Turn(tool_calls=[call("echo", text="two")]), Turn(text="fine")])
            result = await client.call_tool("autonomous_with_mcp", {"mcp_name": "toy", "task": "again"})
            stats = await client.call_tool("bridge_stats", {})
    assert not result.is_error and text_of(result) == "fine"
    assert stats.structured_content["counters"]["autonomous_runs{stop_reason=cancelled}"] == 1


async def test_a_server_crash_mid_run_goes_back_to_the_model_and_the_server_restarts(
    fake: FakeLMStudio, mcp_json: Path
) -> None:
    fake.set_script([Turn(tool_calls=[call("crash")]), Turn(text="it crashed"),
                     Turn(tool_calls=[call("echo", text="back")]), Turn(text="recovered")])
    with anyio.fail_after(60):
        async with bridge(fake.url, mcp_json) as client:
            crashed = await client.call_tool("autonomous_with_mcp", {"mcp_name": "toy", "task": "crash"})
            again = await client.call_tool("autonomous_with_mcp", {"mcp_name": "toy", "task": "echo"})
    assert crashed.structured_content["tool_calls"][0]["ok"] is False
    assert "toy" in last_tool_output(model_requests(fake)[1])
    assert text_of(again) == "recovered"
    assert again.structured_content["tool_calls"][0]["ok"] is True


async def test_images_become_placeholders_and_big_outputs_are_truncated(fake: FakeLMStudio, mcp_json: Path) -> None:
    fake.set_script([Turn(tool_calls=[call("image"), call("big", size_mb=5)]), Turn(text="seen")])
    with anyio.fail_after(60):
        async with bridge(fake.url, mcp_json, TOOL_OUTPUT_MAX_CHARS="1000") as client:
            await client.call_tool("autonomous_with_mcp", {"mcp_name": "toy", "task": "look"})
    request = model_requests(fake)[-1]
    body = json.dumps(request.body)
    assert "[image image/png" in body
    assert "truncated: 5241880 of 5242880 characters cut" in body
    assert request.size_bytes < 20_000


async def test_unknown_model_and_unknown_server_are_errors_that_say_what_to_do(fake: FakeLMStudio, mcp_json: Path) -> None:
    with anyio.fail_after(60):
        async with bridge(fake.url, mcp_json) as client:
            model = await client.call_tool(
                "autonomous_with_mcp", {"mcp_name": "toy", "task": "x", "model": "qwen/qwen3-coder"}
            )
            server = await client.call_tool("autonomous_with_mcp", {"mcp_name": "githubb", "task": "x"})
            listed = await client.call_tool("list_available_mcps", {})
    assert model.is_error and text_of(model).startswith("Error: Model 'qwen/qwen3-coder' not found. Available:")
    assert "Did you mean qwen/qwen3-coder-30b" in text_of(model)
    assert server.is_error and text_of(server).startswith("Error:") and "githubb" in text_of(server)
    assert "filesystem" in text_of(server)
    assert fake.generation_requests() == []
    # The unknown model was refused before any server was started.
    assert not any(row["started"] for row in listed.structured_content["servers"])


async def test_closing_the_client_leaves_no_child_process(fake: FakeLMStudio, mcp_json: Path, workspace: Path) -> None:
    fake.set_script([Turn(tool_calls=[call("filesystem__list_directory", path=str(workspace))]), Turn(text="ok")])
    with anyio.fail_after(60):
        async with bridge(fake.url, mcp_json) as client:
            await client.call_tool(
                "autonomous_with_multiple_mcps", {"mcp_names": ["filesystem", "toy"], "task": "list"}
            )
            assert processes_mentioning(str(workspace)), "the filesystem server should be running"
    with anyio.fail_after(15):
        while processes_mentioning(str(workspace)):
            await anyio.sleep(0.1)


CLIENT_SCRIPT = """
import asyncio, json, sys
from mcp import Client, StdioServerParameters

async def main():
    params = StdioServerParameters(**json.loads(sys.argv[1]))
    async with Client(params, read_timeout_seconds=60) as client:
        await client.call_tool("autonomous_with_mcp", {"mcp_name": "filesystem", "task": "list"})
        print("ready", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_killing_the_client_leaves_no_bridge_and_no_server_behind(
    fake: FakeLMStudio, mcp_json: Path, workspace: Path, tmp_path: Path
) -> None:
    """Claude itself can die: the bridge sees its stdin close, exits, and takes its servers with it."""
    fake.set_script([Turn(tool_calls=[call("list_directory", path=str(workspace))]), Turn(text="listed")])
    params = subprocess_params(bridge_env(fake.url, mcp_json))
    marker = str(tmp_path)
    async with await anyio.open_process(
        [sys.executable, "-c", CLIENT_SCRIPT, params.model_dump_json()], stderr=None
    ) as client:
        assert client.stdout is not None
        with anyio.fail_after(60):
            line = await client.stdout.receive()
        assert line.startswith(b"ready")
        alive = processes_mentioning(marker)
        assert len(alive) >= 3, "the client, the bridge and its filesystem server should be running"
        client.kill()
    with anyio.fail_after(20):
        while leftover := processes_mentioning(marker):
            await anyio.sleep(0.1)
    assert not leftover
