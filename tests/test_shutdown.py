"""Clean shutdown, nothing left behind: the bridge as Claude runs it (a subprocess on stdin/stdout),
stopped every way a client or a user stops it, with downstream servers that misbehave on the way out.

Every process started here carries the test's tmp dir on its command line; none may be left.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from tests.support.bridge import ROOT, bridge_env, isolated_home, processes_mentioning, write_mcp_json
from tests.support.fake_lmstudio import FakeLMStudio, Turn, call
from tools.stdio import StdinLines

pytestmark = pytest.mark.slow

CLIENT_TERM_AFTER_S = 2.0
"""Claude closes the bridge's stdin, sends SIGTERM about 2 s later, and SIGKILL 2 s after that."""
CLIENT_KILL_AFTER_S = 2.0
GONE_WITHIN_S = 10.0


@pytest.fixture
def fake() -> Iterator[FakeLMStudio]:
    with FakeLMStudio() as server:
        yield server


def toy(marker: str, **env: str) -> dict[str, object]:
    return {
        "command": sys.executable,
        "args": ["-m", "tests.support.toy_server", marker],
        "cwd": str(ROOT),
        "env": {"PYTHONPATH": str(ROOT), **env},
    }


class Bridge:
    """The bridge as a subprocess, spoken to in raw JSON-RPC lines (stdin stays open until closed)."""

    def __init__(self, process: Process) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.process = process
        self._stdout = BufferedByteReceiveStream(process.stdout)
        self._next_id = 0

    async def send(self, message: dict[str, object]) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(json.dumps({"jsonrpc": "2.0", **message}).encode() + b"\n")

    async def request(self, method: str, params: dict[str, object]) -> dict[str, object]:
        self._next_id += 1
        await self.send({"id": self._next_id, "method": method, "params": params})
        while True:
            message = json.loads(await self._stdout.receive_until(b"\n", 16 * 1024 * 1024))
            if message.get("id") == self._next_id and "method" not in message:
                return message

    async def start_the_toy_server(self) -> None:
        """Initialize, then run a task that calls the toy server once (so it is running)."""
        await self.request(
            "initialize",
            {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}},
        )
        await self.send({"method": "notifications/initialized"})
        response = await self.request(
            "tools/call", {"name": "autonomous_with_mcp", "arguments": {"mcp_name": "toy", "task": "echo"}}
        )
        assert "result" in response and not response["result"].get("isError"), response

    async def exited_within(self, seconds: float) -> bool:
        with anyio.move_on_after(seconds):
            await self.process.wait()
        return self.process.returncode is not None


@asynccontextmanager
async def bridge(fake: FakeLMStudio, tmp_path: Path, **toy_env: str) -> AsyncIterator[Bridge]:
    marker = str(tmp_path)
    fake.set_script([Turn(tool_calls=[call("echo", text="hi")]), Turn(text="echoed")])
    mcp_json = write_mcp_json(tmp_path / ".mcp.json", {"toy": toy(marker, **toy_env)})
    env = {**bridge_env(fake.url, mcp_json), "HOME": str(isolated_home()), "PYTHONPATH": str(ROOT),
           "PATH": "/usr/bin:/bin"}
    # The bridge carries the marker in its environment (MCP_JSON_PATH), the toy server on its command line.
    log = (tmp_path / "bridge.log").open("w")  # a file of its own: what the bridge holds open is its own
    process = await anyio.open_process([sys.executable, str(ROOT / "main.py")], env=env, cwd=str(ROOT), stderr=log)
    try:
        running = Bridge(process)
        with anyio.fail_after(60):
            await running.start_the_toy_server()
        assert len(processes_mentioning(marker)) >= 2, "the bridge and its toy server should be running"
        yield running
    finally:
        if process.returncode is None:
            process.kill()
        await process.aclose()
        log.close()


async def no_process_left(marker: str) -> None:
    with anyio.fail_after(GONE_WITHIN_S):
        while left := processes_mentioning(marker):
            await anyio.sleep(0.05)
    assert not left


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_stops_the_bridge_while_stdin_stays_open_and_no_server_is_left(
    fake: FakeLMStudio, tmp_path: Path, signum: signal.Signals
) -> None:
    async with bridge(fake, tmp_path) as running:
        running.process.send_signal(signum)
        assert await running.exited_within(GONE_WITHIN_S), f"{signum.name} did not stop the bridge"
        assert running.process.returncode == 0
    await no_process_left(str(tmp_path))


async def test_a_signal_stops_a_task_in_flight_too(fake: FakeLMStudio, tmp_path: Path) -> None:
    async with bridge(fake, tmp_path) as running:
        fake.set_script([Turn(hang=True)])
        await running.send(
            {"id": 99, "method": "tools/call", "params": {"name": "chat_completion", "arguments": {"prompt": "hi"}}}
        )
        with anyio.fail_after(10):
            while not fake.generation_requests() or fake.generation_requests()[-1].path != "/v1/chat/completions":
                await anyio.sleep(0.02)
        running.process.send_signal(signal.SIGTERM)
        assert await running.exited_within(GONE_WITHIN_S), "a call in flight held the bridge after SIGTERM"
    await no_process_left(str(tmp_path))


async def test_on_disconnect_a_server_that_ignores_stdin_eof_and_sigterm_is_stopped_before_the_client_kills(
    fake: FakeLMStudio, tmp_path: Path
) -> None:
    """Claude's way out: stdin closed, SIGTERM 2 s later, SIGKILL 2 s after. The bridge must be done by itself."""
    async with bridge(fake, tmp_path, TOY_IGNORE_EOF="1", TOY_IGNORE_TERM="1") as running:
        assert running.process.stdin is not None
        await running.process.stdin.aclose()
        if not await running.exited_within(CLIENT_TERM_AFTER_S):
            running.process.send_signal(signal.SIGTERM)
            if not await running.exited_within(CLIENT_KILL_AFTER_S):
                running.process.kill()
        await running.process.wait()
        assert running.process.returncode == 0, "the client had to kill the bridge: its shutdown was too slow"
    await no_process_left(str(tmp_path))


@pytest.mark.skipif(sys.platform != "linux", reason="children follow a killed bridge through PR_SET_PDEATHSIG")
async def test_a_killed_bridge_takes_its_servers_with_it(fake: FakeLMStudio, tmp_path: Path) -> None:
    """SIGKILL leaves the bridge no time to clean up; its children still die with it."""
    async with bridge(fake, tmp_path, TOY_IGNORE_EOF="1", TOY_IGNORE_TERM="1") as running:
        running.process.kill()
        await running.process.wait()
    await no_process_left(str(tmp_path))


async def test_a_loud_servers_stderr_is_not_kept_beyond_its_tail(fake: FakeLMStudio, tmp_path: Path) -> None:
    """Three 20 MB bursts on stderr: the bridge keeps a few KB (it kept 63 MB in an unlinked file)."""
    async with bridge(fake, tmp_path) as running:
        fake.set_script([Turn(tool_calls=[call("stderr_burst", mb=20)]), Turn(text="loud")] * 3)
        for _ in range(3):
            response = await running.request(
                "tools/call", {"name": "autonomous_with_mcp", "arguments": {"mcp_name": "toy", "task": "be loud"}}
            )
            assert "result" in response, response
        held = deleted_files_held(running.process.pid)
        rss_mb = resident_mb(running.process.pid)
        running.process.send_signal(signal.SIGTERM)
        assert await running.exited_within(GONE_WITHIN_S)
    assert held == [], f"the bridge holds unlinked files: {held}"
    assert rss_mb < 200, f"the bridge's memory grew to {rss_mb:.0f} MB"
    await no_process_left(str(tmp_path))


def deleted_files_held(pid: int) -> list[str]:
    """Unlinked files `pid` still holds open, with their sizes (Linux)."""
    held = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink()
            size = fd.stat().st_size
        except OSError:
            continue
        if str(target).endswith("(deleted)"):
            held.append(f"{target} ({size} bytes)")
    return held


def resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def test_stdin_lines_join_pieces_into_lines_and_end_on_close_while_the_pipe_stays_open() -> None:
    read_fd, write_fd = os.pipe()
    try:
        lines = StdinLines(read_fd)
        os.write(write_fd, b'{"a": 1}\n{"b":')
        os.write(write_fd, b' "\xc3\xa9"}\n')
        with anyio.fail_after(5):
            received = [await lines.__anext__(), await lines.__anext__()]
            lines.close()  # what a signal does: the writer (the client) still holds the pipe open
            with pytest.raises(StopAsyncIteration):
                await lines.__anext__()
        assert received == ['{"a": 1}\n', '{"b": "é"}\n']
    finally:
        os.close(write_fd)  # ends the daemon thread's read; then the read end can go
        with anyio.fail_after(5):
            while lines._thread.is_alive():
                await anyio.sleep(0.01)
        os.close(read_fd)
