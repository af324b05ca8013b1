"""The SDK workarounds in tools/downstream/transports.py still hold: each test here fails loudly when an
`mcp` upgrade breaks one, naming what to change."""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import sys
from pathlib import Path

import anyio
import anyio.abc
import mcp
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPError

from tests.support.bridge import ROOT
from tools.downstream.entries import StdioEntry
from tools.downstream.transports import StderrTail, connection_ended, open_transport, spawned_process


async def test_the_spawned_process_is_found_in_the_stdio_clients_frame(tmp_path: object) -> None:
    spawn = stdio_client(StdioServerParameters(command=sys.executable, args=["-c", "import sys; sys.stdin.read()"]))
    async with spawn:
        process = spawned_process(spawn)
        assert isinstance(process, anyio.abc.Process), (
            f"mcp {mcp.__version__ if hasattr(mcp, '__version__') else '?'}: stdio_client no longer holds its "
            "child as the local `process`; update transports.spawned_process"
        )
        assert process.returncode is None


async def test_open_transport_reports_the_child_process_of_a_stdio_entry() -> None:
    seen: list[anyio.abc.Process | None] = []
    entry = StdioEntry(name="cat", command=sys.executable, args=["-c", "import sys; sys.stdin.read()"])
    stderr = StderrTail()
    try:
        async with open_transport(entry, stderr, seen.append, timeout_s=5):
            assert len(seen) == 1 and seen[0] is not None and seen[0].pid > 0
    finally:
        stderr.close()


def test_the_private_http_client_factory_is_still_there() -> None:
    from mcp.shared._httpx_utils import create_mcp_http_client

    assert callable(create_mcp_http_client)


def test_stdio_parameters_still_take_a_decoding_error_handler() -> None:
    params = StdioServerParameters(command="x", encoding_error_handler="replace")
    assert params.encoding_error_handler == "replace"


async def test_a_servers_own_minus_32000_and_the_sdks_connection_closed_are_told_apart() -> None:
    toy = StdioServerParameters(
        command=sys.executable, args=["-m", "tests.support.toy_server"], cwd=str(ROOT), env={"PYTHONPATH": str(ROOT)}
    )
    with anyio.fail_after(30):
        async with Client(toy, mode="legacy") as client:
            closed = getattr(getattr(client.session, "_dispatcher", None), "_closed", None)
            assert isinstance(closed, bool), (
                "the SDK's dispatcher no longer has a `_closed` flag at client.session._dispatcher; update "
                "transports.connection_ended"
            )
            with pytest.raises(MCPError) as sent:
                await client.call_tool("rpc_error", {"code": -32000, "message": "database is locked"})
            assert connection_ended(client, sent.value) is False
            with pytest.raises(MCPError) as raised:
                await client.call_tool("crash", {})
            assert connection_ended(client, raised.value) is True
            assert sent.value.code == raised.value.code == -32000


async def stderr_of(entry: StdioEntry, *, until: str) -> tuple[str, int]:
    """What `entry`'s child writes to stderr up to `until`, and its pid as the transport reports it."""
    seen: list[anyio.abc.Process | None] = []
    stderr = StderrTail()
    try:
        async with open_transport(entry, stderr, seen.append, timeout_s=5):
            with anyio.fail_after(10):
                while until not in stderr.tail():
                    await anyio.sleep(0.01)
            text = stderr.tail()
    finally:
        stderr.close()
    assert seen and seen[0] is not None
    return text, seen[0].pid


async def test_every_stdio_child_gets_the_bridge_marker_in_its_environment() -> None:
    """The SDK merges an entry's env into the child's: the self-launch guard depends on it."""
    code = (
        "import os, sys; sys.stderr.write(os.environ.get('LMSTUDIO_BRIDGE_PARENT', 'missing') + '.'); "
        "sys.stderr.flush(); sys.stdin.read()"
    )
    text, _ = await stderr_of(StdioEntry(name="env", command=sys.executable, args=["-c", code], env={"A": "1"}), until=".")
    assert text == f"{os.getpid()}."


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux only")
async def test_a_stdio_child_asks_to_be_killed_with_the_bridge_under_its_own_pid() -> None:
    """anyio.open_process takes no preexec_fn: the exec wrapper must still set the death signal and keep the pid."""
    code = (
        "import ctypes, os, sys; v = ctypes.c_int(); ctypes.CDLL(None).prctl(2, ctypes.byref(v), 0, 0, 0); "
        "sys.stderr.write(f'{os.getpid()} {v.value} {sys.argv[1]}.'); sys.stderr.flush(); sys.stdin.read()"
    )
    text, pid = await stderr_of(StdioEntry(name="pd", command="python3", args=["-c", code, "arg"]), until=".")
    assert text == f"{pid} {int(signal.SIGKILL)} arg."


async def test_a_missing_command_is_still_reported_as_not_found_naming_it(tmp_path: Path) -> None:
    entry = StdioEntry(name="ghost", command="mcp-ghost-server-that-is-not-installed")
    stderr = StderrTail()
    try:
        with pytest.raises(FileNotFoundError) as caught:
            async with open_transport(entry, stderr, lambda process: None, timeout_s=5):
                pass
    finally:
        stderr.close()
    assert caught.value.filename == "mcp-ghost-server-that-is-not-installed"


async def test_stderr_keeps_only_its_last_bytes_and_no_file() -> None:
    code = (
        "import sys; [sys.stderr.write(f'line {i}\\n') for i in range(200000)]; sys.stderr.write('end.'); "
        "sys.stderr.flush(); sys.stdin.read()"
    )
    files_before = [target for target in open_files() if "(deleted)" in target]
    stderr = StderrTail(keep_bytes=4096)
    try:
        async with open_transport(StdioEntry(name="loud", command=sys.executable, args=["-c", code]), stderr,
                                  lambda process: None, timeout_s=5):
            with anyio.fail_after(20):
                while not stderr.tail().endswith("end."):
                    await anyio.sleep(0.01)
            assert stderr.kept_bytes <= 4096
            assert stderr.tail().splitlines()[-2:] == ["line 199999", "end."]
            assert [target for target in open_files() if "(deleted)" in target] == files_before
    finally:
        stderr.close()


def open_files() -> list[str]:
    """What this process's file descriptors point at (Linux)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            found.append(os.readlink(f"/proc/self/fd/{fd}"))
    return found


def test_the_mcp_server_still_serves_given_streams_through_its_lowlevel_server() -> None:
    """tools/stdio.py hands the SDK its own stdin lines; it depends on these two SDK details."""
    from mcp.server.mcpserver import MCPServer
    from mcp.server.stdio import stdio_server

    lowlevel = MCPServer("probe")._lowlevel_server
    assert callable(lowlevel.run) and callable(lowlevel.create_initialization_options)
    assert "stdin" in inspect.signature(stdio_server).parameters
