"""The SDK workarounds in tools/downstream/transports.py still hold: each test here fails loudly when an
`mcp` upgrade breaks one, naming what to change."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import anyio.abc
import mcp
from mcp import StdioServerParameters
from mcp.client.stdio import stdio_client

from tools.downstream.entries import StdioEntry
from tools.downstream.transports import open_transport, spawned_process


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
    with open("/dev/null", "w") as errlog:
        async with open_transport(entry, errlog, seen.append, timeout_s=5):
            assert len(seen) == 1 and seen[0] is not None and seen[0].pid > 0


def test_the_private_http_client_factory_is_still_there() -> None:
    from mcp.shared._httpx_utils import create_mcp_http_client

    assert callable(create_mcp_http_client)


def test_stdio_parameters_still_take_a_decoding_error_handler() -> None:
    params = StdioServerParameters(command="x", encoding_error_handler="replace")
    assert params.encoding_error_handler == "replace"


async def test_every_stdio_child_gets_the_bridge_marker_in_its_environment(tmp_path: Path) -> None:
    """The SDK merges an entry's env into the child's: the self-launch guard depends on it."""
    code = "import os, sys; sys.stderr.write(os.environ.get('LMSTUDIO_BRIDGE_PARENT', 'missing')); sys.stderr.flush(); sys.stdin.read()"
    entry = StdioEntry(name="env", command=sys.executable, args=["-c", code], env={"OTHER": "1"})
    errlog_path = tmp_path / "stderr"
    with errlog_path.open("w") as errlog:
        async with open_transport(entry, errlog, lambda process: None, timeout_s=5):
            with anyio.fail_after(10):
                while not errlog_path.read_text():
                    await anyio.sleep(0.01)
    assert errlog_path.read_text() == str(os.getpid())
