"""A small MCP server whose tools misbehave on demand, for fault tests (run: python -m tests.support.toy_server).

Tools: echo, crash (the process exits mid-call), sleep (a call that hangs), big (a large
result), image (an image result), garbage (writes a non-JSON line to stdout, then answers),
fail (an isError result), rpc_error (answers with a JSON-RPC error of the given code), pid (the
process id, to tell whether the same process still serves), remember / recall (a value kept in
this process's memory only, like a browser's or a shell's state), stderr_burst (writes `mb` megabytes to its stderr, then answers).

Misbehaving on shutdown, for the shutdown tests: with TOY_IGNORE_EOF=1 it stays alive after its
stdin closes (as some servers do), with TOY_IGNORE_TERM=1 it ignores SIGTERM too.
With TOY_START_DELAY_S set it waits that long before it answers at all (a server slow to start).
"""

from __future__ import annotations

import base64
import os
import socket
import signal
import sys
import time

import anyio
from mcp.server.mcpserver import Image, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError

server = MCPServer("toy")

# A 1x1 transparent PNG.
_PIXEL = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)


@server.tool()
def echo(text: str) -> str:
    """Return `text` unchanged."""
    return text


@server.tool()
def crash() -> str:
    """Exit the server process in the middle of the call."""
    os._exit(3)


@server.tool()
async def sleep(seconds: float, notify_port: int = 0) -> str:
    """Wait `seconds`, then answer; with `notify_port`, first connect to it to say the call has begun."""
    if notify_port:
        with socket.create_connection(("127.0.0.1", notify_port)) as conn:
            conn.sendall(b"started")
    await anyio.sleep(seconds)
    return f"slept {seconds}"


@server.tool()
def big(size_mb: float) -> str:
    """A text result of `size_mb` megabytes."""
    return "x" * int(size_mb * 1024 * 1024)


@server.tool()
def image() -> Image:
    """An image result."""
    return Image(data=_PIXEL, format="png")


@server.tool()
def garbage() -> str:
    """Write a line that is not JSON-RPC to stdout, then answer normally."""
    os.write(1, b"this is not json\n")
    return "wrote garbage"


@server.tool()
def fail() -> str:
    """Always report a tool error."""
    raise ToolError("the toy tool failed on purpose")


@server.tool()
def rpc_error(code: int, message: str) -> str:
    """Answer with a JSON-RPC error of `code` (e.g. -32000, which the SDK also uses for a closed connection)."""
    raise MCPError(code, message)


@server.tool()
def pid() -> str:
    """The id of the process serving this call."""
    return str(os.getpid())


_memory: dict[str, str] = {}


@server.tool()
def remember(key: str, value: str) -> str:
    """Keep `value` under `key`, in this process's memory only."""
    _memory[key] = value
    return f"remembered {key}"


@server.tool()
def recall(key: str) -> str:
    """The value kept under `key` by this process, or 'value=None'."""
    return f"value={_memory.get(key)}"


def stderr_burst(mb: float) -> str:
    """Write `mb` megabytes of text to stderr, then answer."""
    line = "noise " * 170 + "\n"  # about 1 KiB
    for _ in range(int(mb * 1024)):
        sys.stderr.write(line)
    sys.stderr.flush()
    return f"wrote {mb} MB to stderr"


if __name__ == "__main__":
    if os.environ.get("TOY_IGNORE_TERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(float(os.environ.get("TOY_START_DELAY_S", "0")))
    server.run()
    if os.environ.get("TOY_IGNORE_EOF") == "1":
        while True:
            time.sleep(3600)
