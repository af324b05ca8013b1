"""A small MCP server whose tools misbehave on demand, for fault tests (run: python -m tests.support.toy_server).

Tools: echo, crash (the process exits mid-call), sleep (a call that hangs), big (a large
result), image (an image result), garbage (writes a non-JSON line to stdout, then answers),
fail (an isError result). With TOY_START_DELAY_S set it waits that long before it answers at all
(a server slow to start).
"""

from __future__ import annotations

import base64
import os
import time

import anyio
from mcp.server.mcpserver import Image, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

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
async def sleep(seconds: float) -> str:
    """Wait `seconds`, then answer."""
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


if __name__ == "__main__":
    time.sleep(float(os.environ.get("TOY_START_DELAY_S", "0")))
    server.run()
