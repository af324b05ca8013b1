"""Telling a model that is stuck from one that is working: the loop detector of a run."""

from __future__ import annotations

import json
from collections import Counter

from llm.results import ToolCall


class LoopGuard:
    """Counts each distinct call (name and arguments, compared as canonical JSON).

    `repeated(call)` is True once the same call comes `limit` times (AUTONOMOUS_REPEAT_LIMIT):
    the run is stopped before that call runs.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: Counter[tuple[str, str]] = Counter()

    def repeated(self, call: ToolCall) -> bool:
        signature = (call.name, canonical_arguments(call.arguments))
        self._seen[signature] += 1
        return self._seen[signature] >= self._limit


def canonical_arguments(arguments: str) -> str:
    """Arguments in a form where the same call always compares equal (key order, spacing)."""
    try:
        return json.dumps(json.loads(arguments or "{}"), sort_keys=True, separators=(",", ":"))
    except json.JSONDecodeError:
        return arguments.strip()
