"""The SDK workarounds in tools/downstream/transports.py still hold: each test here fails loudly when an
`mcp` upgrade breaks one, naming what to change."""

from __future__ import annotations

import sys

import anyio.abc
import mcp
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPError

from tests.support.bridge import ROOT
from tools.downstream.entries import StdioEntry
from tools.downstream.transports import connection_ended, open_transport, spawned_process


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
