"""Which tools the model is offered: all of them, or the most relevant ones and a tool to find the rest.

Long tool lists confuse small models (agent benchmarks show success halving when irrelevant servers
are added) and eat their context. When a run's tools exceed TOOL_OFFER_MAX, or their schemas exceed a
share of the context (`budget.TOOLS_SHARE`), the model is offered the tools that rank highest for
the task, plus `search_tools`: a bridge tool that ranks all the run's tools against a query and
offers what it finds from the next round on. Ranking is BM25 over each tool's name (split into
words) and description, with `bm25s` (a maintained, MIT-licensed implementation; imported only when
a run needs ranking).

In prompted mode (a model or server that cannot take the `tools` field) the offered tools are
described in the instructions instead, with the one call format the model should write.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Collection, Mapping, Sequence

from llm.conversation import FunctionSpec
from tools.downstream.toolset import BridgedTool

SEARCH_TOOL = "search_tools"
SEARCH_RESULTS = 5
_SEARCH_SPEC = FunctionSpec(
    SEARCH_TOOL,
    "Find more tools: describe what you need to do, e.g. 'convert currency'. The tools found are offered "
    "to you from your next step on, and their names and descriptions come back as this tool's result.",
    {"type": "object", "properties": {"query": {"type": "string", "description": "what you need to do"}},
     "required": ["query"]},
)

PROMPTED_CALLS = """\

You can use the tools listed below. To call one, answer with only this, and nothing else:
<tool_call>{"name": "TOOL_NAME", "arguments": {...}}</tool_call>
The tool's result comes back in the next message. When you have the final answer, write it without any \
tool call.

Tools:
"""


class ToolOffer:
    """The tools offered to the model during one run (a subset of `toolset` when it is too big)."""

    def __init__(self, toolset: Mapping[str, BridgedTool], task: str, *, max_tools: int, max_chars: int) -> None:
        self._toolset = toolset
        self._ranking: _Ranking | None = None
        self.narrowed = len(toolset) > max_tools or _chars(toolset.values()) > max_chars
        if not self.narrowed:
            self.offered = list(toolset)
            return
        self.offered = []
        room = max_chars - len(json.dumps(_SEARCH_SPEC.for_chat()))
        for name in self._rank(task):
            size = _chars([toolset[name]])
            if len(self.offered) >= max_tools - 1 or size > room:
                break
            self.offered.append(name)
            room -= size

    def specs(self) -> list[FunctionSpec]:
        """The specs to send: the offered tools, and `search_tools` when the set is narrowed."""
        specs = [self._toolset[name].spec() for name in self.offered if name in self._toolset]
        return [*specs, _SEARCH_SPEC] if self.narrowed else specs

    def forget(self, names: Collection[str]) -> None:
        """Stop offering `names` (tools the model server refused)."""
        self.offered = [name for name in self.offered if name not in names]

    def names(self) -> list[str]:
        return [spec.name for spec in self.specs()]

    def search(self, arguments: Mapping[str, object]) -> str:
        """Run `search_tools`: offer the best matches not offered yet, and describe them."""
        query = str(arguments.get("query") or "").strip()
        if not query:
            return "Error: give search_tools a `query`, e.g. {\"query\": \"convert currency\"}."
        found = [name for name in self._rank(query) if name not in self.offered][:SEARCH_RESULTS]
        if not found:
            return f"No other tools match {query!r}. The tools you have are: {', '.join(self.offered)}."
        self.offered.extend(found)
        lines = [f"- {name}: {self._toolset[name].description.splitlines()[0][:200]}" for name in found]
        return "These tools are now available to you:\n" + "\n".join(lines)

    def instructions(self, base: str, *, prompted: bool) -> str:
        """The instructions for the model: `base`, plus the tools and the call format when prompted."""
        if not prompted:
            return base
        described = "\n".join(
            f"- {spec.name}: {spec.description.splitlines()[0][:300] if spec.description else ''}\n"
            f"  arguments: {json.dumps(spec.parameters, separators=(',', ':'))[:1500]}"
            for spec in self.specs()
        )
        return base + "\n" + PROMPTED_CALLS + described

    def _rank(self, query: str) -> list[str]:
        if self._ranking is None:
            tools = tuple((name, tool.tool_name, tool.description) for name, tool in self._toolset.items())
            self._ranking = _ranking_of(tools)
        return self._ranking.rank(query)


def _chars(tools: Sequence[BridgedTool] | object) -> int:
    return sum(len(json.dumps(tool.spec().for_chat())) for tool in tools)  # type: ignore[attr-defined]


def _words(text: str) -> str:
    """Names split into words (`get_stockQuote` -> `get stock quote`) for the ranking's tokenizer."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])|[_\-.]", " ", text)


@functools.lru_cache(maxsize=32)
def _ranking_of(tools: tuple[tuple[str, str, str], ...]) -> _Ranking:
    """The index of `tools` ((name offered, server's name, description) each), built once per tool set:
    the runs on the same servers share it (building it is most of a narrowed run's set-up)."""
    return _Ranking(tools)


class _Ranking:
    """BM25 over the tools' names and descriptions; ties keep the server's order."""

    def __init__(self, tools: Sequence[tuple[str, str, str]]) -> None:
        import bm25s

        # bm25s sets its own logger to DEBUG when imported; its index-building chatter is not ours to log.
        logging.getLogger("bm25s").setLevel(max(logging.WARNING, logging.getLogger().level))
        self._bm25s = bm25s
        self._names = [name for name, _, _ in tools]
        corpus = [f"{_words(tool_name)} {_words(tool_name)} {description}" for _, tool_name, description in tools]
        self._index = bm25s.BM25()
        self._index.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False)

    def rank(self, query: str) -> list[str]:
        tokens = self._bm25s.tokenize([_words(query)], stopwords="en", show_progress=False)
        if not tokens.vocab:
            return list(self._names)
        scores = self._index.get_scores(list(tokens.vocab))
        order = sorted(range(len(self._names)), key=lambda i: (-float(scores[i]), i))
        return [self._names[i] for i in order]
