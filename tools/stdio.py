"""Serving MCP on the process's stdin and stdout until the client goes away or a signal says stop.

    serve_until_stopped(mcp)    serve; a closed stdin, SIGTERM or SIGINT ends it the same clean way

The SDK's `stdio_server()` reads stdin in an AnyIO worker thread, which no cancellation can
interrupt and which is not a daemon: while the client keeps stdin open, a SIGTERM or a Ctrl-C could
neither end the server nor let the process exit. So the bridge reads stdin itself, in a daemon
thread (`StdinLines`), and gives the SDK the lines through `stdio_server(stdin=...)`, a public
parameter. A signal ends those lines: the server sees what it sees when the client closes stdin, and
shuts down the same way (the lifespan closes every downstream server) at once. A second signal
during that shutdown exits at once (the children die with the bridge, see
`tools.downstream.transports`).

SDK internals used, guarded by tests/test_transports.py: `MCPServer._lowlevel_server` (what
`run_stdio_async` runs, given our streams), and that `stdio_server` only iterates `stdin` for lines.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.stdio import stdio_server

logger = logging.getLogger(__name__)

_AHEAD_LINES = 16  # lines read before the server asks for them (bounded: stdin pushes back beyond)
_READ_BYTES = 65536
_END = None


class StdinLines:
    """The lines arriving on a file descriptor, read in a daemon thread; `close()` ends them early.

    Iterate it from one event loop (the one it was created in). Decoded as UTF-8 with replacement,
    as the SDK's own reader does. The thread reads the descriptor itself (`os.read`), not through
    `sys.stdin`: a daemon thread blocked inside a buffered reader holds its lock, and the
    interpreter's shutdown then aborts on that lock.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[str | None] = asyncio.Queue(_AHEAD_LINES)
        self._closed = False
        self._thread = threading.Thread(target=self._read, name="mcp-stdin", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        pending = bytearray()
        try:
            while chunk := os.read(self._fd, _READ_BYTES):
                searched = len(pending)  # a long line arriving in pieces is scanned once, not again each time
                pending += chunk
                while (end := pending.find(b"\n", searched)) >= 0:
                    self._hand_over(pending[: end + 1].decode("utf-8", errors="replace"))
                    del pending[: end + 1]
                    searched = 0
            if pending:
                self._hand_over(pending.decode("utf-8", errors="replace"))
            self._hand_over(_END)
        except (OSError, RuntimeError):  # stdin or the loop is gone: nothing left to read for
            return

    def _hand_over(self, line: str | None) -> None:
        # Waits while the queue is full: the client is held back, as with a plain reader.
        asyncio.run_coroutine_threadsafe(self._queue.put(line), self._loop).result()

    @property
    def closed(self) -> bool:
        """True once `close()` was called."""
        return self._closed

    def close(self) -> None:
        """End the lines now (from the loop's thread); what was not read yet is dropped."""
        if self._closed:
            return
        self._closed = True
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(_END)

    def __aiter__(self) -> StdinLines:
        return self

    async def __anext__(self) -> str:
        line = await self._queue.get()
        if line is _END or self._closed:
            raise StopAsyncIteration
        return line


async def serve_until_stopped(mcp: MCPServer[Any]) -> None:
    """Serve `mcp` on stdin/stdout until stdin closes or SIGTERM/SIGINT arrives, then shut down cleanly."""
    lines = StdinLines(sys.stdin.fileno())
    lowlevel = mcp._lowlevel_server  # what run_stdio_async runs (guarded by tests/test_transports.py)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_stop_on_signals, lines)
        async with stdio_server(stdin=lines) as (read_stream, write_stream):  # type: ignore[arg-type]
            await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())
        tg.cancel_scope.cancel()


async def _stop_on_signals(lines: StdinLines) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for received in signals:
            name = signal.Signals(received).name
            if lines.closed:
                logger.warning("received %s again while shutting down: exiting now", name)
                os._exit(128 + received)
            logger.info("received %s: shutting down (closing MCP servers)", name)
            lines.close()
