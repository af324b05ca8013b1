"""How every tool answers Claude: text for the reader, structured content for programs, and
failures as `isError: true` with an actionable message, never a traceback.

`reports_errors` wraps each tool function: the bridge's own errors (LM Studio, MCP servers,
configuration) become `Error: <what failed and what to do>`; anything unexpected is logged
with its traceback on stderr and reported briefly. Cancellation always propagates.

`bounded` is applied to every result on its way out (`tools.server.BridgeServer`): each text and
each string of the structured content is cut to RESULT_MAX_CHARS (its head and its tail kept,
with a marker saying what was cut), and a long text is never sent twice. Claude Code shows the
model only the structured content when there is one, Claude Desktop only the text: a long answer
in both would be sent twice for nothing. So when a text of `ONE_COPY_MIN_CHARS` or more repeats a
string of the structured content, the result carries it once, as text, without structured content,
which both read; the other structured fields go to `_meta[RESULT_META_KEY]` (the repeated field null).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import ParamSpec

from mcp.types import CallToolResult, ContentBlock, TextContent

from config import ConfigError
from llm.exceptions import LLMError
from tools.agent.agent import RunRequestError
from tools.background import BackgroundRunError
from tools.downstream.errors import MCPBridgeError
from utils.logging import redact, redact_data

logger = logging.getLogger(__name__)

P = ParamSpec("P")

EXPECTED_ERRORS: tuple[type[Exception], ...] = (LLMError, MCPBridgeError, ConfigError, RunRequestError, BackgroundRunError)


def _scrubbed(data: Mapping[str, object] | None) -> dict[str, object] | None:
    if data is None:
        return None
    scrubbed = redact_data(dict(data))
    assert isinstance(scrubbed, dict)
    return scrubbed


def success(text: str, data: Mapping[str, object] | None = None) -> CallToolResult:
    """A successful result: `text` for Claude to read, `data` as structured content (secrets masked)."""
    return CallToolResult(content=[TextContent(type="text", text=redact(text))], structured_content=_scrubbed(data))


def failure(message: str, data: Mapping[str, object] | None = None) -> CallToolResult:
    """A failed result (`isError: true`); the text always starts with `Error:` (secrets masked)."""
    text = message if message.startswith("Error:") else f"Error: {message}"
    return CallToolResult(
        content=[TextContent(type="text", text=redact(text))], structured_content=_scrubbed(data), is_error=True
    )


ONE_COPY_MIN_CHARS = 2000
"""A text this long that the structured content repeats is sent once (see the module docstring)."""
RESULT_META_KEY = "lmstudio-bridge/result"
_TAIL_CHARS = 2000


def bounded(result: CallToolResult, max_chars: int) -> CallToolResult:
    """`result` with each text cut to `max_chars`, and a long text not repeated in the structured content."""
    texts = [block.text for block in result.content if isinstance(block, TextContent)]
    structured, meta = result.structured_content, result.meta
    if structured is not None:
        repeated = [
            key
            for key, value in structured.items()
            if isinstance(value, str) and len(value) >= ONE_COPY_MIN_CHARS and any(value in text for text in texts)
        ]
        if repeated:
            meta = {**(meta or {}), RESULT_META_KEY: _cut_strings({**structured, **dict.fromkeys(repeated)}, max_chars)}
            structured = None
    content: list[ContentBlock] = [
        block.model_copy(update={"text": cut(block.text, max_chars)}) if isinstance(block, TextContent) else block
        for block in result.content
    ]
    if structured is not None:
        structured = _cut_strings(structured, max_chars)
    return result.model_copy(update={"content": content, "structured_content": structured, "meta": meta})


def cut(text: str, max_chars: int) -> str:
    """`text` within about `max_chars`: its head and its tail, with a marker in place of the middle."""
    if len(text) <= max_chars:
        return text
    tail = min(_TAIL_CHARS, max_chars // 4)
    head = max_chars - tail
    marker = (
        f"\n\n[... {len(text) - head - tail} of {len(text)} characters cut here by the bridge "
        f"(RESULT_MAX_CHARS = {max_chars}) ...]\n\n"
    )
    return text[:head] + marker + text[len(text) - tail :]


def _cut_strings(data: dict[str, object], max_chars: int) -> dict[str, object]:
    def walk(value: object) -> object:
        if isinstance(value, str):
            return cut(value, max_chars)
        if isinstance(value, dict):
            return {key: walk(item) for key, item in value.items()}
        if isinstance(value, list):
            return [walk(item) for item in value]
        return value

    return {key: walk(value) for key, value in data.items()}


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
