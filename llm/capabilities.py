"""What the bridge has learned about one model server's API, from evidence that really means it.

Two questions decide how an autonomous run talks to a server:

- Has it LM Studio's stateful `/v1/responses`? Unknown until the first run asks; an
  `EndpointNotSupportedError` (404/405/501, "Unexpected endpoint") on that route means no, and
  runs use chat completions from then on. LMSTUDIO_API_MODE=responses or chat fixes the answer.
- Does it stream tool calls? llama.cpp's server answers a streamed request whose answer is a tool
  call with an empty 200 ("Automatic streaming tool choice is not supported"). Only that proof
  counts: an empty stream that, asked again unstreamed, comes back *with tool calls*. An empty
  stream is also how LM Studio reports a full context; that is not evidence against streaming.

- Which structured-output field does it take (`llm.structured`)? Learned per API from the first typed
  answer: the first form it does not refuse with 400/422 (chat: `response_format` json_schema, then
  json_object with a schema as llama-cpp-python takes it, then none: the schema only in the prompt).

One `ServerCapabilities` per server lives in the app state; `doctor` and `bridge_stats` show it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

logger = logging.getLogger(__name__)

ApiKind = Literal["responses", "chat"]
ApiMode = Literal["auto", "responses", "chat"]


@dataclass
class ServerCapabilities:
    """The learned facts about one server; None means "not known yet"."""

    base_url: str
    api_mode: ApiMode = "auto"
    responses_api: bool | None = None
    streams_tool_calls: bool | None = None
    output_modes: dict[str, str] = field(default_factory=dict)
    """API -> the structured-output form it takes (`llm.structured.OutputMode`), once learned."""

    def __post_init__(self) -> None:
        if self.api_mode != "auto":
            self.responses_api = self.api_mode == "responses"

    @property
    def conversation_api(self) -> ApiKind:
        """The API a new run starts on: responses unless the server is known to lack it."""
        return "chat" if self.responses_api is False else "responses"

    @property
    def stream(self) -> bool:
        """Whether to stream generation requests that offer tools."""
        return self.streams_tool_calls is not False

    def responses_api_works(self) -> None:
        """A /v1/responses request succeeded."""
        if self.responses_api is None:
            self.responses_api = True

    def responses_api_missing(self) -> bool:
        """The server refused the route; True when runs should fall back to chat completions."""
        if self.api_mode == "responses":
            return False
        if self.responses_api is not False:
            logger.info("%s has no /v1/responses: using chat completions from now on", self.base_url)
        self.responses_api = False
        return True

    def streamed_tool_calls_come_back_empty(self) -> None:
        """An empty stream was answered, unstreamed, with tool calls: stop streaming tool requests."""
        if self.streams_tool_calls is not False:
            logger.info("%s does not stream tool calls: asking unstreamed from now on", self.base_url)
        self.streams_tool_calls = False

    def summary(self) -> str:
        """Which API autonomous runs use, and how that is decided, in one line for a human (`doctor`)."""
        if self.api_mode != "auto":
            return f"{self._route(self.conversation_api)} (LMSTUDIO_API_MODE={self.api_mode})"
        if self.responses_api is None:
            return (
                "/v1/responses if the server has it (LM Studio 0.3.29+), else /v1/chat/completions: "
                "found out on the first autonomous run (bridge_stats then shows it)"
            )
        if self.responses_api:
            return "/v1/responses (the server has it)"
        return "/v1/chat/completions (the server has no /v1/responses)"

    @staticmethod
    def _route(api: ApiKind) -> str:
        return "/v1/responses" if api == "responses" else "/v1/chat/completions"

    def describe(self) -> dict[str, object]:
        """What is known, for `doctor` and `bridge_stats`."""
        return {
            "base_url": self.base_url,
            "api_mode": self.api_mode,
            "responses_api": self.responses_api,
            "streams_tool_calls": self.streams_tool_calls,
            "structured_output": dict(self.output_modes),
            "autonomous_runs_use": self._route(self.conversation_api),
        }
