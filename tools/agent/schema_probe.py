"""Finding the tool schemas a model server refuses, so one bad schema does not fail every run.

llama.cpp-based servers turn each tool's schema into a grammar and refuse the whole request when
one cannot be converted. When the first request of a run is refused with a 400 whose message
points at tools, schemas or grammars, each tool is offered alone in a one-token request and the
ones refused are left out of the run with a note.

Only that evidence starts a probe: a 401/403 (credentials), 404, 429 or 5xx says nothing about a
schema, and probing then would send one request per tool for nothing. The probes are capped, and
any answer to a probe other than success or a 400 about tools ends the probing: the original
error stands.
"""

from __future__ import annotations

import logging
import re

from llm.capabilities import ServerCapabilities
from llm.exceptions import LLMError, LLMStatusError
from llm.llm_client import LLMClient
from llm.models import ResolvedModel
from tools.downstream.toolset import BridgedTool

logger = logging.getLogger(__name__)

MAX_PROBES = 64
"""Most tools probed one by one; a bigger tool set is not probed (the run fails with the server's error)."""

_ABOUT_TOOLS = re.compile(r"tool|schema|grammar|function|parameter", re.IGNORECASE)


def refusal_about_tools(error: LLMError) -> bool:
    """True when `error` is a plain 400 whose message points at the tools offered."""
    return (
        type(error) is LLMStatusError
        and error.status_code == 400
        and bool(_ABOUT_TOOLS.search(error.message))
    )


async def refused_tools(
    llm: LLMClient, model: ResolvedModel, capabilities: ServerCapabilities, tools: list[BridgedTool]
) -> dict[str, str]:
    """The tools the server refuses when offered alone, with its reason; {} when probing cannot tell."""
    if len(tools) > MAX_PROBES:
        logger.warning("not probing %d tool schemas one by one (more than %d)", len(tools), MAX_PROBES)
        return {}
    refused: dict[str, str] = {}
    for tool in tools:
        spec = tool.spec()
        try:
            # The same API the refused request used: its schema handling is what matters.
            if capabilities.conversation_api == "responses":
                await llm.create_response("ping", model=model, max_output_tokens=1, tools=[spec.for_responses()])
            else:
                await llm.chat_completion(
                    [{"role": "user", "content": "ping"}], model=model, max_tokens=1, tools=[spec.for_chat()]
                )
        except LLMError as exc:
            if not refusal_about_tools(exc):
                logger.info("schema probing stopped: %s", exc)
                return {}
            refused[tool.llm_name] = str(exc)
    return refused
