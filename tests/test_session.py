"""One downstream session's requests: what an error means for the call and for the session."""

from __future__ import annotations

import asyncio
import sys

import pytest

from tests.support.bridge import ROOT
from tools.downstream.entries import StdioEntry
from tools.downstream.errors import MCPSessionClosedError
from tools.downstream.pool import MCPSessionPool

pytestmark = pytest.mark.slow

WAIT_S = 15.0


def toy_entry() -> StdioEntry:
    return StdioEntry(
        name="toy", command=sys.executable, args=["-m", "tests.support.toy_server"], cwd=str(ROOT),
        env={"PYTHONPATH": str(ROOT)},
    )


async def test_a_call_cut_short_by_the_bridge_closing_the_session_says_so() -> None:
    began = asyncio.Event()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        began.set()
        writer.close()

    listener = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    pool = MCPSessionPool(start_timeout_s=WAIT_S, call_timeout_s=WAIT_S, idle_timeout_s=0)
    async with listener:
        lease = pool.lease(toy_entry())
        call = asyncio.create_task(lease.call_tool("sleep", {"seconds": 60, "notify_port": port}))
        await asyncio.wait_for(began.wait(), WAIT_S)
        await asyncio.wait_for(pool.aclose(), WAIT_S)
        with pytest.raises(MCPSessionClosedError) as caught:
            await asyncio.wait_for(call, WAIT_S)
        lease.release()
    assert str(caught.value) == (
        "MCP server 'toy' was closed while tool 'sleep' was running (shutdown), so the call did not finish. "
        "Nothing is wrong with the call itself: retry it, and the server starts again from the config file as "
        "it is now."
    )
