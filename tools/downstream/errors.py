"""Errors of the MCP side: the user's `.mcp.json`, downstream servers, and their tool calls.

    MCPBridgeError(message)
    ├── MCPConfigError            the config file or one entry is unusable     .path .line .server
    ├── MCPServerNotFoundError    no server of that name in the file           .name .known .config_path
    ├── MCPServerStartError       a server did not start or initialize   .name .reason .stderr_tail .exit_code
    ├── MCPServerCrashedError     a running server died (a call in flight on it fails)   .name
    ├── MCPSessionClosedError     the bridge closed the session under a call   .server .tool .reason
    ├── MCPToolTimeoutError       one tool call ran past its bound             .server .tool .timeout_s
    └── MCPToolCallError          the call failed for another reason           .server .tool .reason
        └── MCPServerReportedError  the server answered with a JSON-RPC error    .code .server_message

`tools.downstream.discovery` raises the first two, `tools.downstream.pool` the others; the pool is the one
place where the SDK's errors (`MCPError`, transport errors) become these. Every message says what
failed and what to do, so tools can show `str(error)` to the user as is.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

_START_HINT = "Check its command, args, env and cwd in the config file (try running the command by hand)."


class MCPBridgeError(Exception):
    """Base of every error about the user's other MCP servers."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MCPConfigError(MCPBridgeError):
    """The config file, or one entry of it, cannot be used as written."""

    def __init__(
        self, message: str, *, path: Path | None = None, line: int | None = None, server: str | None = None
    ) -> None:
        super().__init__(message)
        self.path = path
        self.line = line
        self.server = server


class MCPServerNotFoundError(MCPBridgeError):
    """A task named a server that the config file does not define."""

    def __init__(
        self, name: str, known: Iterable[str], config_path: Path | None = None, *, detail: str | None = None
    ) -> None:
        self.name = name
        self.known = sorted(known)
        self.config_path = config_path
        listed = ", ".join(self.known) if self.known else "none"
        where = str(config_path) if config_path else "your .mcp.json"
        message = (
            f"No MCP server named {name!r}. Known servers: {listed}. "
            f'To use it, add it under "mcpServers" in {where}.'
        )
        if detail:
            message += f" ({detail})"
        super().__init__(message)


class MCPServerStartError(MCPBridgeError):
    """A server's process or connection did not come up, or did not finish initializing in time."""

    def __init__(
        self, name: str, reason: str, stderr_tail: str = "", exit_code: int | None = None, *, hint: str | None = None
    ) -> None:
        self.name = name
        self.reason = reason
        self.stderr_tail = stderr_tail
        self.exit_code = exit_code
        message = f"MCP server {name!r} failed to start: {reason}."
        if exit_code is not None:
            message += f" It exited with code {exit_code}."
        message += " " + (hint or _START_HINT)
        if stderr_tail:
            message += f"\nLast lines of its stderr:\n{stderr_tail}"
        super().__init__(message)


class MCPServerCrashedError(MCPBridgeError):
    """A running server's connection ended under a call; the next use starts it again."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"MCP server {name!r} stopped while a call was running (it crashed or closed its connection). "
            "It will be restarted on the next call; retry the call."
        )


class MCPSessionClosedError(MCPBridgeError):
    """The bridge closed the session while a call was running on it (shutdown, a config change)."""

    def __init__(self, server: str, tool: str, reason: str) -> None:
        self.server = server
        self.tool = tool
        self.reason = reason
        super().__init__(
            f"MCP server {server!r} was closed while tool {tool!r} was running ({reason}), so the call did not "
            "finish. Nothing is wrong with the call itself: retry it, and the server starts again from the "
            "config file as it is now."
        )


class MCPToolTimeoutError(MCPBridgeError):
    """A tool call did not answer within its bound; the server was asked to cancel it."""

    def __init__(self, server: str, tool: str, timeout_s: float) -> None:
        self.server = server
        self.tool = tool
        self.timeout_s = timeout_s
        super().__init__(
            f"Tool {tool!r} of MCP server {server!r} did not answer within {timeout_s:g} s. "
            "Try a smaller request, or raise MCP_TOOL_TIMEOUT_S."
        )


_CHECK_THE_CALL = "Check the tool name and arguments against the server's tool list."
# JSON-RPC errors that are about the call itself (unknown method or tool, invalid params or request).
_CALL_ERRORS = frozenset({-32600, -32601, -32602})


class MCPToolCallError(MCPBridgeError):
    """A tool call failed at the protocol level (unknown tool, bad arguments, an unreadable answer)."""

    def __init__(self, server: str, tool: str, reason: str, *, hint: str = _CHECK_THE_CALL) -> None:
        self.server = server
        self.tool = tool
        self.reason = reason
        super().__init__(f"Calling tool {tool!r} of MCP server {server!r} failed: {reason}. {hint}")


class MCPServerReportedError(MCPToolCallError):
    """The server answered the call with a JSON-RPC error of its own; its session is fine and stays in use.

    The server's message is passed on as is: it is the best account of what went wrong.
    """

    def __init__(self, server: str, tool: str, code: int, server_message: str) -> None:
        self.code = code
        self.server_message = server_message
        hint = _CHECK_THE_CALL if code in _CALL_ERRORS else "The server is still running: retry, or try another way."
        super().__init__(server, tool, f"the server answered with JSON-RPC error {code}: {server_message}", hint=hint)
