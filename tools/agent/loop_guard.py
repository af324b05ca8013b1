"""Telling a model that is stuck from one that is working: the loop detector of a run.

A loop is the same call (name and arguments, compared as canonical JSON) getting the same result:
re-reading a file that changes, or polling a job until it is done, is work, not a loop. With
AUTONOMOUS_REPEAT_LIMIT = n, a call whose last n-1 results were all identical is held back (not run)
and the run stops as `loop_detected`, naming that call. A call that fails the same way twice gets one
corrective hint appended to its output first. However its results change, a call repeated
`repeat_limit * ANY_RESULT_FACTOR` times also ends the run (a model that polls forever).
"""

from __future__ import annotations

import hashlib
import json

from llm.results import ToolCall

ANY_RESULT_FACTOR = 4
HINT = (
    "\n[The bridge: this exact call failed the same way twice. Change its arguments or try another tool; "
    "the task stops if the same call is made again unchanged.]"
)


class LoopGuard:
    """Counts each distinct call and remembers the results it got (see the module docstring)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._results: dict[tuple[str, str], list[str]] = {}

    def held_back(self, call: ToolCall) -> bool:
        """True when running `call` again would be a loop; it is then not run."""
        results = self._results.get(_signature(call), [])
        if len(results) >= self._limit * ANY_RESULT_FACTOR:
            return True
        recent = results[-(self._limit - 1) :]
        return len(recent) == self._limit - 1 and len(set(recent)) == 1

    def record(self, call: ToolCall, result: str, *, ok: bool) -> str:
        """Remember what `call` got; returns a hint to append to its output ("" when none is due)."""
        results = self._results.setdefault(_signature(call), [])
        digest = hashlib.sha256(result.encode("utf-8", "replace")).hexdigest()
        repeated_failure = not ok and bool(results) and results[-1] == digest
        results.append(digest)
        return HINT if repeated_failure and self._limit > 2 else ""


def _signature(call: ToolCall) -> tuple[str, str]:
    return (call.name, canonical_arguments(call.arguments))


def canonical_arguments(arguments: str) -> str:
    """Arguments in a form where the same call always compares equal (key order, spacing)."""
    try:
        return json.dumps(json.loads(arguments or "{}"), sort_keys=True, separators=(",", ":"))
    except json.JSONDecodeError:
        return arguments.strip()
