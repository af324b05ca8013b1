"""Stdout belongs to the protocol: the bridge, started as Claude starts it, writes nothing but
JSON-RPC messages on stdout, whatever its tools and its downstream servers do, logs on stderr,
and exits by itself when its stdin closes, leaving no child behind.

Driven with raw JSON-RPC lines (no SDK client in between) so that any stray byte is seen.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import pytest
from anyio.abc import ByteReceiveStream, Process
from anyio.streams.buffered import BufferedByteReceiveStream

from tests.support.bridge import ROOT, bridge_env, processes_mentioning, write_mcp_json
from tests.support.fake_lmstudio import FakeLMStudio, Turn, call

pytestmark = pytest.mark.slow

PROTOCOL_VERSION = "2025-11-25"
MAX_LINE_BYTES = 16 * 1024 * 1024
EXIT_TIMEOUT_S = 20.0


class RawSession:
    """Writes JSON-RPC lines to the bridge's stdin; reads its stdout line by line, keeping every line."""

    def __init__(self, process: Process) -> None:
        assert process.stdin is not None and process.stdout is not None
        self._process = process
        self._stdout = BufferedByteReceiveStream(process.stdout)
        self._next_id = 0
        self.lines: list[bytes] = []

    async def send(self, message: dict[str, object]) -> None:
        assert self._process.stdin is not None
        await self._process.stdin.send(json.dumps({"jsonrpc": "2.0", **message}).encode() + b"\n")

    async def request(self, method: str, params: dict[str, object] | None = None) -> dict[str, object]:
        """Send a request and read lines until its response; returns the response."""
        self._next_id += 1
        request_id = self._next_id
        await self.send({"id": request_id, "method": method, "params": params or {}})
        while True:
            line = await self._stdout.receive_until(b"\n", MAX_LINE_BYTES)
            self.lines.append(line)
            message = json.loads(line)  # a line that is not JSON fails the test here
            if message.get("id") == request_id and "method" not in message:
                return message

    async def call_tool(self, name: str, arguments: dict[str, object]) -> dict[str, object]:
        response = await self.request("tools/call", {"name": name, "arguments": arguments})
        assert "result" in response, response
        return response["result"]  # type: ignore[return-value]

    async def rest(self) -> None:
        """Read stdout to its end (after stdin closed), keeping the lines."""
        while True:
            try:
                line = await self._stdout.receive_until(b"\n", MAX_LINE_BYTES)
            except (anyio.EndOfStream, anyio.IncompleteRead):
                return
            self.lines.append(line)


async def drain(stream: ByteReceiveStream, into: bytearray) -> None:
    async for data in stream:
        into.extend(data)


async def test_stdout_carries_only_json_rpc_logs_go_to_stderr_and_closing_stdin_ends_the_bridge(
    tmp_path: Path,
) -> None:
    marker = str(tmp_path)
    toy = {"command": sys.executable, "args": ["-m", "tests.support.toy_server", marker], "cwd": str(ROOT),
           "env": {"PYTHONPATH": str(ROOT)}}
    mcp_json = write_mcp_json(
        tmp_path / ".mcp.json", {"toy": toy, "ghost": {"command": "/nonexistent/ghost-server", "args": [marker]}}
    )
    script = [
        Turn(text="Hello from the model."),  # chat_completion
        Turn(tool_calls=[call("garbage")]),
        Turn(tool_calls=[call("fail")]),
        Turn(tool_calls=[call("echo", text="after the garbage")]),
        Turn(text="Done."),
    ]
    stderr = bytearray()
    env = {**bridge_env("", mcp_json), "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "PATH": "/usr/bin:/bin"}
    with FakeLMStudio(script, responses_api=False) as fake, anyio.fail_after(90):
        env["LMSTUDIO_BASE_URL"] = fake.url
        async with await anyio.open_process([sys.executable, "main.py"], cwd=ROOT, env=env) as process:
            session = RawSession(process)
            async with anyio.create_task_group() as tg:
                assert process.stderr is not None
                tg.start_soon(drain, process.stderr, stderr)

                init = await session.request(
                    "initialize",
                    {"protocolVersion": PROTOCOL_VERSION, "capabilities": {},
                     "clientInfo": {"name": "raw-test", "version": "0"}},
                )
                assert init["result"]["serverInfo"]["name"] == "lmstudio-bridge-enhanced"
                await session.send({"method": "notifications/initialized"})
                tools = await session.request("tools/list")
                assert "autonomous_with_mcp" in {t["name"] for t in tools["result"]["tools"]}

                assert not (await session.call_tool("health_check", {})).get("isError")
                assert not (await session.call_tool("list_models", {})).get("isError")
                chat = await session.call_tool("chat_completion", {"prompt": "hi"})
                assert chat["content"][0]["text"] == "Hello from the model."
                # Failing calls: unknown model, unknown server, a server that cannot start, bad arguments.
                for name, arguments in [
                    ("chat_completion", {"prompt": "hi", "model": "qwen/qwen3-coder"}),
                    ("autonomous_with_mcp", {"mcp_name": "nope", "task": "x"}),
                    ("autonomous_with_mcp", {"mcp_name": "ghost", "task": "x"}),
                    ("autonomous_with_mcp", {"mcp_name": "toy", "task": ""}),
                ]:
                    failed = await session.call_tool(name, arguments)
                    assert failed.get("isError"), (name, arguments, failed)
                run = await session.call_tool("autonomous_with_mcp", {"mcp_name": "toy", "task": "make a mess"})
                assert run["content"][0]["text"] == "Done.", run
                assert [c["ok"] for c in run["structuredContent"]["tool_calls"]] == [True, False, True]
                assert processes_mentioning(marker), "the toy server should be running"

                await process.stdin.aclose()  # type: ignore[union-attr]
                await session.rest()
                with anyio.fail_after(EXIT_TIMEOUT_S):
                    returncode = await process.wait()

    for line in session.lines:
        message = json.loads(line)
        assert isinstance(message, dict) and message.get("jsonrpc") == "2.0", line[:200]
        assert "id" in message or "method" in message, line[:200]
    logs = stderr.decode(errors="replace")
    assert "this is not json" not in b"".join(session.lines).decode(errors="replace")
    assert "ready; LM Studio at" in logs, logs[-2000:]
    assert "MCP server 'toy' started" in logs
    assert returncode == 0, logs[-2000:]
    deadline = time.monotonic() + EXIT_TIMEOUT_S
    while (left := processes_mentioning(marker)) and time.monotonic() < deadline:
        await anyio.sleep(0.05)
    assert not left, f"processes left behind after the bridge exited: {left}"




def _read_message(process: subprocess.Popen[bytes], timeout_s: float) -> dict[str, object]:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout_s)
    assert ready, f"no answer from the bridge within {timeout_s} s"
    return json.loads(process.stdout.readline())


def test_a_client_that_goes_away_mid_call_ends_the_bridge_quietly_and_takes_its_servers(tmp_path: Path) -> None:
    """Claude Desktop quitting closes both pipes while a call runs: exit 0, no traceback, no child left.

    Plain pipes here (not anyio's process streams, whose aclose() leaves the pipe itself open), so the
    bridge really meets a closed stdout.
    """
    marker = str(tmp_path)
    toy = {"command": sys.executable, "args": ["-m", "tests.support.toy_server", marker], "cwd": str(ROOT),
           "env": {"PYTHONPATH": str(ROOT)}}
    mcp_json = write_mcp_json(tmp_path / ".mcp.json", {"toy": toy})
    script = [Turn(tool_calls=[call("echo", text="up")]), Turn(text="The toy server runs."),
              Turn(text="too late", delay_s=600)]
    env = {**bridge_env("", mcp_json), "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "PATH": "/usr/bin:/bin"}
    with FakeLMStudio(script) as fake, tempfile.TemporaryFile() as stderr:
        env["LMSTUDIO_BASE_URL"] = fake.url
        process = subprocess.Popen([sys.executable, "main.py"], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=stderr)
        try:
            assert process.stdin is not None and process.stdout is not None

            def send(message: dict[str, object]) -> None:
                assert process.stdin is not None
                process.stdin.write(json.dumps({"jsonrpc": "2.0", **message}).encode() + b"\n")
                process.stdin.flush()

            send({"id": 1, "method": "initialize", "params": {"protocolVersion": PROTOCOL_VERSION, "capabilities": {},
                                                               "clientInfo": {"name": "raw-test", "version": "0"}}})
            assert "result" in _read_message(process, EXIT_TIMEOUT_S)
            send({"method": "notifications/initialized"})
            send({"id": 2, "method": "tools/call",
                  "params": {"name": "autonomous_with_mcp", "arguments": {"mcp_name": "toy", "task": "start it"}}})
            assert _read_message(process, 60)["id"] == 2
            assert processes_mentioning(marker), "the toy server should be running"
            send({"id": 3, "method": "tools/call", "params": {"name": "chat_completion", "arguments": {"prompt": "slow"}}})
            deadline = time.monotonic() + EXIT_TIMEOUT_S
            while len(fake.generation_requests()) < 3 and time.monotonic() < deadline:
                time.sleep(0.02)  # until the slow request is with the model (bounded)
            process.stdout.close()
            process.stdin.close()
            returncode = process.wait(EXIT_TIMEOUT_S)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        stderr.seek(0)
        logs = stderr.read().decode(errors="replace")
    assert returncode == 0, logs[-3000:]
    assert "Traceback" not in logs and "BrokenPipeError" not in logs, logs[-3000:]
    assert "the client went away" in logs
    deadline = time.monotonic() + EXIT_TIMEOUT_S
    while (left := processes_mentioning(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"processes left behind after the bridge exited: {left}"
