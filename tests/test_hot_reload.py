"""Editing .mcp.json while the bridge runs: added servers work, changed ones restart, removed ones close."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.support.bridge import ROOT, bridge_settings, write_mcp_json
from tests.support.fake_lmstudio import FakeLMStudio, Turn, call
from tools.app import bridge_state
from tools.downstream.errors import MCPServerNotFoundError

pytestmark = pytest.mark.slow

TIME = {"command": sys.executable, "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]}
TOY = {"command": sys.executable, "args": ["-m", "tests.support.toy_server"], "cwd": str(ROOT), "env": {"PYTHONPATH": str(ROOT)}}


async def test_servers_added_changed_and_removed_take_effect_on_the_next_call(tmp_path: Path) -> None:
    mcp_json = write_mcp_json(tmp_path / ".mcp.json", {"time": TIME})
    with FakeLMStudio() as fake:
        async with bridge_state(bridge_settings(fake.url, mcp_json)) as state:
            fake.set_script([Turn(tool_calls=[call("get_current_time", timezone="UTC")]), Turn(text="t1")])
            assert (await state.agent.run(["time"], "time")).answer == "t1"
            first_pid = state.pool.status("time").pid

            # Added: usable at once, no restart of anything.
            write_mcp_json(mcp_json, {"time": TIME, "toy": TOY})
            fake.set_script([Turn(tool_calls=[call("echo", text="hi")]), Turn(text="toy works")])
            added = await state.agent.run(["toy"], "echo")
            assert added.answer == "toy works" and added.tool_calls[0].ok
            assert state.pool.status("time").pid == first_pid

            # Changed: the old session is closed and the new entry starts on next use.
            changed_time = {**TIME, "args": ["-m", "mcp_server_time", "--local-timezone", "Europe/Paris"]}
            write_mcp_json(mcp_json, {"time": changed_time, "toy": TOY})
            fake.set_script([Turn(tool_calls=[call("get_current_time", timezone="UTC")]), Turn(text="t2")])
            assert (await state.agent.run(["time"], "time")).answer == "t2"
            assert state.pool.status("time").pid not in (None, first_pid)

            # Removed: its session is closed and its name is unknown.
            write_mcp_json(mcp_json, {"time": changed_time})
            with pytest.raises(MCPServerNotFoundError):
                await state.agent.run(["toy"], "echo")
            assert state.pool.status("toy").started is False

            # Malformed: the last good config stays in use and the run says why.
            mcp_json.write_text('{"mcpServers": {"time": ')
            fake.set_script([Turn(text="still fine")])
            kept = await state.agent.run(["time"], "anything")
            assert kept.answer == "still fine"
            assert any("invalid JSON at line 1" in note for note in kept.notes)
