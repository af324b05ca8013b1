"""How every tool answers Claude: text for the reader, structured content for programs, and
failures as `isError: true` with an actionable message, never a traceback.

`reports_errors` wraps each tool function: the bridge's own errors (LM Studio, MCP servers,
configuration) become `Error: <what failed and what to do>`; anything unexpected is logged
with its traceback on stderr and reported briefly. Cancellation always propagates.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import ParamSpec

from mcp.types import CallToolResult, TextContent

from config import ConfigError
from llm.exceptions import LLMError
from tools.background import BackgroundRunError
from tools.downstream.errors import MCPBridgeError
from utils.logging import redact

logger = logging.getLogger(__name__)

P = ParamSpec("P")

EXPECTED_ERRORS: tuple[type[Exception], ...] = (LLMError, MCPBridgeError, ConfigError, BackgroundRunError)


def _scrubbed(data: Mapping[str, object] | None) -> dict[str, object] | None:
    if data is None:
        return None
    # Through JSON is the simplest way to reach every nested string; parse back only if something changed.
    text = json.dumps(data, default=str)
    scrubbed = redact(text)
    return dict(data) if scrubbed == text else json.loads(scrubbed)


def success(text: str, data: Mapping[str, object] | None = None) -> CallToolResult:
    """A successful result: `text` for Claude to read, `data` as structured content (secrets masked)."""
    return CallToolResult(content=[TextContent(type="text", text=redact(text))], structured_content=_scrubbed(data))


def failure(message: str, data: Mapping[str, object] | None = None) -> CallToolResult:
    """A failed result (`isError: true`); the text always starts with `Error:` (secrets masked)."""
    text = message if message.startswith("Error:") else f"Error: {message}"
    return CallToolResult(
        content=[TextContent(type="text", text=redact(text))], structured_content=_scrubbed(data), is_error=True
    )


def as_json(data: object) -> str:
    """Compact, readable JSON for a text block."""
    return json.dumps(data, indent=2, ensure_ascii=False, default=str)


def reports_errors(
    func: Callable[P, Awaitable[CallToolResult]],
) -> Callable[P, Awaitable[CallToolResult]]:
    """Turn the exceptions of a tool function into `isError` results (see module docstring)."""

    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> CallToolResult:
        try:
            return await func(*args, **kwargs)
        except EXPECTED_ERRORS as exc:
            logger.info("%s failed: %s", func.__name__, exc)
            return failure(str(exc), {"error": type(exc).__name__, "message": str(exc)})
        except Exception as exc:
            logger.exception("%s failed unexpectedly", func.__name__)
            return failure(
                f"{func.__name__} failed unexpectedly ({type(exc).__name__}: {exc}). "
                "The bridge's log on stderr has the details; please report it.",
                {"error": type(exc).__name__, "message": str(exc)},
            )

    return wrapper
