"""The SDK workarounds in tools/downstream/transports.py still hold: each test here fails loudly when an
`mcp` upgrade breaks one, naming what to change."""

from __future__ import annotations

import sys

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
