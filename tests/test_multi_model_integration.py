"""The plan's multi-model scenarios, through the agent's three methods (answer text or "Error: ...").

The stand-in offers two LLMs ("qwen/qwen3-coder-30b", loaded, and "mistralai/magistral-small-2509")
and records which model each request named; the real `mcp-server-time` and npm filesystem and
memory servers provide the tools.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.support.bridge import bridge_settings, model_requests, write_mcp_json
from tests.support.fake_lmstudio import FakeLMStudio, Turn, call
from tests.support.mcp_servers import entry_config
from tools.agent import DynamicAutonomousAgent
from tools.app import bridge_state
from tools.downstream.entries import ServerEntry

pytestmark = pytest.mark.slow

DEFAULT = "qwen/qwen3-coder-30b"
OTHER = "mistralai/magistral-small-2509"
TIME = {"command": sys.executable, "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]}


@pytest.fixture
def fake() -> Iterator[FakeLMStudio]:
    with FakeLMStudio() as server:
        yield server


@pytest.fixture
def mcp_json(
    tmp_path: Path, filesystem_entry: Callable[..., ServerEntry], memory_entry: Callable[..., ServerEntry]
) -> Path:
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "a.txt").write_text("alpha")
    return write_mcp_json(
        tmp_path / ".mcp.json",
        {
            "filesystem": entry_config(filesystem_entry(tmp_path / "project")),
            "memory": entry_config(memory_entry(tmp_path / "memory.jsonl")),
            "time": TIME,
        },
    )


@asynccontextmanager
async def agent_for(fake: FakeLMStudio, mcp_json: Path) -> AsyncIterator[DynamicAutonomousAgent]:
    async with bridge_state(bridge_settings(fake.url, mcp_json)) as state:
        yield state.agent


def models_used(fake: FakeLMStudio) -> set[str]:
    return {r.body["model"] for r in model_requests(fake)}


async def test_autonomous_with_specific_model(fake: FakeLMStudio, mcp_json: Path) -> None:
    fake.set_script([Turn(tool_calls=[call("list_directory", path=str(mcp_json.parent / "project"))]), Turn(text="1 file")])
    async with agent_for(fake, mcp_json) as agent:
        models = await agent.model_validator.get_available_models()
        result = await agent.autonomous_with_mcp(
            mcp_name="filesystem", task="List files in the project directory and count them", max_rounds=20, model=OTHER
        )
    assert OTHER in models
    assert result == "1 file"
    assert models_used(fake) == {OTHER}


async def test_autonomous_with_invalid_model(fake: FakeLMStudio, mcp_json: Path) -> None:
    async with agent_for(fake, mcp_json) as agent:
        result = await agent.autonomous_with_mcp(mcp_name="filesystem", task="Test task", model="nonexistent-model-xyz")
        assert agent.pool.status("filesystem").started is False
    assert "Error" in result
    assert "not found" in result.lower()
    assert "Available" in result and DEFAULT in result
    assert fake.generation_requests() == []


async def test_autonomous_without_model_uses_default(fake: FakeLMStudio, mcp_json: Path) -> None:
    fake.set_script([Turn(text="/project")])
    async with agent_for(fake, mcp_json) as agent:
        result = await agent.autonomous_with_mcp(mcp_name="filesystem", task="What is the current directory?", max_rounds=10)
    assert result == "/project"
    assert models_used(fake) == {DEFAULT}


async def test_multiple_mcps_with_model(fake: FakeLMStudio, mcp_json: Path) -> None:
    fake.set_script(
        [
            Turn(tool_calls=[call("filesystem__read_text_file", path=str(mcp_json.parent / "project" / "a.txt"))]),
            Turn(tool_calls=[call("memory__create_entities", entities=[{"name": "a.txt", "entityType": "file", "observations": ["alpha"]}])]),
            Turn(text="Graph updated."),
        ]
    )
    async with agent_for(fake, mcp_json) as agent:
        result = await agent.autonomous_with_multiple_mcps(
            mcp_names=["filesystem", "memory"],
            task="Read the project files and create a knowledge graph entity about each",
            max_rounds=30,
            model=OTHER,
        )
    assert result == "Graph updated."
    assert models_used(fake) == {OTHER}


async def test_discover_and_execute_with_model(fake: FakeLMStudio, mcp_json: Path) -> None:
    fake.set_script([Turn(tool_calls=[call("time__get_current_time", timezone="UTC")]), Turn(text="It is now.")])
    async with agent_for(fake, mcp_json) as agent:
        result = await agent.autonomous_discover_and_execute(task="What time is it in UTC?", model=OTHER)
    assert result == "It is now."
    assert models_used(fake) == {OTHER}


THREE_TOOLS = {
    "autonomous_with_mcp": lambda agent, **kw: agent.autonomous_with_mcp("time", "time?", **kw),
    "autonomous_with_multiple_mcps": lambda agent, **kw: agent.autonomous_with_multiple_mcps(["time", "memory"], "time?", **kw),
    "autonomous_discover_and_execute": lambda agent, **kw: agent.autonomous_discover_and_execute("time?", **kw),
}


@pytest.mark.parametrize("tool", list(THREE_TOOLS))
@pytest.mark.parametrize(
    ("model_kwargs", "expected"),
    [({}, DEFAULT), ({"model": None}, DEFAULT), ({"model": OTHER}, OTHER)],
    ids=["no model parameter", "model=None", "specific model"],
)
async def test_backward_compatibility(
    fake: FakeLMStudio, mcp_json: Path, tool: str, model_kwargs: dict[str, str | None], expected: str
) -> None:
    fake.set_script([Turn(text="fine")])
    async with agent_for(fake, mcp_json) as agent:
        result = await THREE_TOOLS[tool](agent, **model_kwargs)
    assert result == "fine"
    assert models_used(fake) == {expected}
