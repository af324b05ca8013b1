"""What an autonomous run returns: the answer, why it stopped, and what it did on the way."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

StopReason = Literal["completed", "max_rounds", "timeout", "loop_detected", "cancelled", "error"]


@dataclass
class ToolCallRecord:
    """One tool call of a run, for the structured result."""

    name: str
    server: str | None
    ok: bool
    ms: float
    error: str | None = None


@dataclass
class RunResult:
    """The outcome of an autonomous run."""

    answer: str
    model: str
    stop_reason: StopReason
    rounds: int
    tool_calls: list[ToolCallRecord]
    duration_s: float
    api: str
    servers: list[str]
    usage: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    assists: dict[str, int] = field(default_factory=dict)
    tools_offered: list[str] = field(default_factory=list)
    context: dict[str, object] = field(default_factory=dict)
    typed: bool = False  # the call gave an output_schema: `result` is part of the structured content
    result: object = None  # the final answer parsed and validated against it (None unless the run completed)
    approvals: list[dict[str, object]] | None = None  # calls that needed approval; None: the policy is off

    @property
    def text(self) -> str:
        """The answer for Claude, with a line when calls were not run for want of approval, and one when
        the run did not simply complete."""
        return self._stop_text() + self._approvals_text()

    def _approvals_text(self) -> str:
        held = [a for a in self.approvals or () if a["outcome"] != "approved"]
        if not held:
            return ""
        calls = ", ".join(f"{a['name']} ({a['outcome'].replace('_', ' ')})" for a in held)  # type: ignore[attr-defined]
        hint = ""
        if any(a["outcome"] == "not_asked" for a in held):
            hint = (" This client cannot ask for approval (no MCP elicitation, or a background run): run them "
                    "yourself if they are wanted (see `approvals` for the arguments), or use a client with "
                    "elicitation, such as Claude Code.")
        return f"\n\n[{len(held)} call(s) needed the user's approval and were not run: {calls}.{hint}]"

    def _stop_text(self) -> str:
        if self.stop_reason == "completed":
            return self.answer or "(the model gave no answer)"
        why = {
            "max_rounds": f"it reached max_rounds ({self.rounds} rounds)",
            "timeout": f"it ran out of time after {self.duration_s:.0f} s (AUTONOMOUS_TIMEOUT_S)",
            "loop_detected": "the model repeated the same tool call and got the same result",
            "cancelled": "it was cancelled",
            "error": f"of an error: {(self.error or '').rstrip('.')}",
        }[self.stop_reason]
        if not self.answer:
            return f"[Run stopped early because {why}. The model had given no answer yet.]"
        return f"{self.answer}\n\n[Run stopped early because {why}.]"

    def structured(self) -> dict[str, object]:
        typed = {"result": self.result} if self.typed else {}
        if self.approvals is not None:
            typed["approvals"] = self.approvals
        return {
            "answer": self.answer,
            "model": self.model,
            "stop_reason": self.stop_reason,
            "rounds": self.rounds,
            "tool_calls": [
                {"name": c.name, "server": c.server, "ok": c.ok, "ms": round(c.ms, 1), "error": c.error}
                for c in self.tool_calls
            ],
            "duration_s": round(self.duration_s, 3),
            "api": self.api,
            "servers": self.servers,
            "usage": self.usage or None,
            "notes": self.notes,
            "error": self.error,
            "assists": self.assists,
            "tools_offered": self.tools_offered,
            "context": self.context or None,
            **typed,
        }
