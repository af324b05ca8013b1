"""How the bridge connects to one downstream server, and every workaround for what the SDK does not expose.

    open_transport(entry, errlog, on_process)  the async context manager `mcp.Client` takes

The SDK workarounds, all here and each guarded by tests/test_transports.py (which fails loudly
when an `mcp` upgrade breaks one):

1. The child's process. `stdio_client` does not expose the process it spawns, and the pool needs
   its pid and exit code (to notice a crash, to report `exit code 1`, to kill what it leaves
   behind). While the transport is open, the suspended generator frame of `stdio_client` holds it
   as the local `process`; `_spawned_process` reads it from there.
2. The HTTP client for streamable-HTTP servers comes from `mcp.shared._httpx_utils`, a private
   module: it is what the SDK's own session group uses (timeouts, redirects), so servers see the
   same client whichever way they are reached.
3. A stdout line that is not valid UTF-8 must not wedge the session: the parameters ask the SDK to
   decode with `errors="replace"`, so the line fails JSON parsing and is reported like any other
   bad line instead of killing the reader.

Every stdio child gets `BRIDGE_MARKER` in its environment (the bridge's pid): a bridge that finds
it at start was launched, however indirectly (a wrapper script, a symlink, `python -c "import
main"`), by another bridge, and refuses to serve (`launched_by_bridge`), so no chain can recurse.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import IO, Any

import anyio.abc
from mcp import StdioServerParameters
from mcp.client.sse import sse_client
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from tools.downstream.entries import ServerEntry, SseEntry, StdioEntry

logger = logging.getLogger(__name__)

BRIDGE_MARKER = "LMSTUDIO_BRIDGE_PARENT"
"""Set to the bridge's pid in the environment of every server it starts."""

# What the SDK's transports yield: (ReadStream[SessionMessage | Exception], WriteStream[SessionMessage]).
TransportContext = contextlib.AbstractAsyncContextManager[tuple[Any, Any]]
OnProcess = Callable[[anyio.abc.Process | None], None]


def open_transport(
    entry: ServerEntry, errlog: IO[str] | None, on_process: OnProcess, *, timeout_s: float
) -> TransportContext:
    """The transport for `entry`; `on_process` is told the child process once a stdio server is spawned."""
    if isinstance(entry, StdioEntry):
        assert errlog is not None, "a stdio server needs a file for its stderr"
        params = StdioServerParameters(
            command=entry.command,
            args=list(entry.args),
            env={**entry.env, BRIDGE_MARKER: str(os.getpid())},
            cwd=entry.cwd,
            encoding_error_handler="replace",
        )
        return _stdio_transport(params, errlog, on_process)
    if isinstance(entry, SseEntry):
        return sse_client(entry.url, headers=dict(entry.headers) or None, timeout=timeout_s)
    return _http_transport(entry.url, dict(entry.headers))


def launched_by_bridge(environ: Mapping[str, str]) -> str | None:
    """Why this process must not serve: another bridge started it (its marker is set), else None."""
    parent = environ.get(BRIDGE_MARKER)
    if parent is None:
        return None
    return (
        f"not starting: this process was started by another lmstudio-bridge (pid {parent}) as one of its MCP "
        f"servers ({BRIDGE_MARKER} is set). A bridge inside a bridge would start itself again without end; "
        "remove the entry that starts it from that bridge's .mcp.json"
    )


@asynccontextmanager
async def _stdio_transport(
    params: StdioServerParameters, errlog: IO[str], on_process: OnProcess
) -> AsyncIterator[tuple[Any, Any]]:
    spawn = stdio_client(params, errlog=errlog)
    process: anyio.abc.Process | None = None
    try:
        async with spawn as streams:
            process = spawned_process(spawn)
            on_process(process)
            yield streams
    finally:
        if process is not None:
            _kill_leftovers(process.pid)


def spawned_process(spawn: object) -> anyio.abc.Process | None:
    """The child that `stdio_client` spawned, read from its suspended generator frame (see above).

    Returns None if a future SDK renames it (pid and exit code are then unknown).
    """
    frame = getattr(getattr(spawn, "gen", None), "ag_frame", None)
    process = frame.f_locals.get("process") if frame is not None else None
    return process if isinstance(process, anyio.abc.Process) else None


def _kill_leftovers(pgid: int) -> None:
    """Kill what is left of the server's process group once the server itself has exited.

    The SDK kills the whole group only when the server does not exit by itself; a server that
    exits when its stdin closes can leave children (a wrapper's node, a helper) running. The
    server was started in a new session, so the group id is its pid, and Linux does not reuse
    an id while a group still has members: whatever is in the group is ours.
    """
    if sys.platform == "win32":
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    logger.info("Killed processes left behind by MCP server process group %d", pgid)


@asynccontextmanager
async def _http_transport(url: str, headers: dict[str, str]) -> AsyncIterator[tuple[Any, Any]]:
    async with create_mcp_http_client(headers=headers or None) as http:
        async with streamable_http_client(url, http_client=http) as streams:
            yield streams
