"""Approvals: a local model does not change things the user did not approve.

Which calls need approval (`ApprovalPolicy`): with MCP_APPROVE_WRITES=1, every call of a tool that does
not declare `readOnlyHint`; and, whatever that setting, every tool a glob of MCP_APPROVE_TOOLS names
(`{"*": ["delete_*"], "git": ["git_commit"]}`). The executor asks the gate (`ApprovalGate.check`) after
the arguments are repaired, so the user approves exactly what would run.

How the user is asked (`ElicitationApprover`): through MCP elicitation, from inside the running tool
call, showing the server, the tool and the arguments. Accepted (with `approve` left on) runs the call;
declined, or `approve` turned off, tells the model "the user declined"; cancelled (dismissed) tells it
the request was dismissed; no answer within MCP_APPROVAL_TIMEOUT_S counts as no.

A client that cannot be asked gets no question, the call is not run, the model is told why, and the
result lists the call (`approvals`, outcome `not_asked`). That is:
- a client that does not declare the elicitation capability (Claude Desktop);
- a connection on the 2026-07-28 protocol, which has no server-to-client requests: there the SDK's
  `ctx.elicit` raises `NoBackChannelError` (`can_send_request` is false). Claude Code connects with the
  initialize handshake (2025-11-25), where elicitation from inside a call works. The SDK's retry-shaped
  alternative (`Resolve(Elicit(...))`) asks before a tool starts, not in the middle of a run, so it
  cannot carry a question that only arises at round N;
- a background run (`autonomous_start`): the call that could have asked is over.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Literal, Protocol

import anyio
from mcp.server.mcpserver import AcceptedElicitation, Context, DeclinedElicitation
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel, Field

from config import Settings
from tools.agent.events import RunContext
from tools.downstream.toolset import BridgedTool

logger = logging.getLogger(__name__)

Outcome = Literal["approved", "declined", "cancelled", "timed_out", "not_asked"]

_TOLD: dict[Outcome, str] = {
    "declined": "Error: the user declined this call to {name}; it was not run. Do not try it again: go on "
    "without it, or answer with what you have.",
    "cancelled": "Error: the user dismissed the approval request for this call to {name}; it was not run. Do "
    "not try it again: go on without it, or answer with what you have.",
    "timed_out": "Error: the user did not answer the approval request for this call to {name} within {timeout:g} "
    "s; it was not run. Go on without it, or answer with what you have.",
    "not_asked": "Error: this call to {name} needs the user's approval (MCP_APPROVE_WRITES / MCP_APPROVE_TOOLS), "
    "and the user cannot be asked here (no MCP elicitation in this client, or a background run); it was "
    "not run. Finish without it, and say in your answer which change you would have made.",
}


@dataclass(frozen=True)
class ApprovalPolicy:
    """Which tool calls need the user's approval (MCP_APPROVE_WRITES, MCP_APPROVE_TOOLS)."""

    writes: bool = False
    patterns: Mapping[str, Sequence[str]] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> ApprovalPolicy:
        return cls(settings.mcp_approve_writes, dict(settings.mcp_approve_tools))

    @property
    def active(self) -> bool:
        return self.writes or any(self.patterns.values())

    def needs_approval(self, tool: BridgedTool) -> bool:
        named = [*self.patterns.get("*", ()), *self.patterns.get(tool.server, ())]
        if any(fnmatchcase(tool.tool_name, p) for p in named):
            return True
        return self.writes and not tool.read_only


@dataclass(frozen=True)
class ApprovalRequest:
    """One call to approve: who asks, on which server, which tool, with what."""

    model: str
    server: str
    tool: str
    arguments: Mapping[str, object]

    def message(self) -> str:
        shown = json.dumps(self.arguments, indent=2, ensure_ascii=False)
        if len(shown) > 4000:
            shown = shown[:4000] + f"\n... ({len(shown)} characters)"
        return (
            f"The local model {self.model} wants to run the tool '{self.tool}' of the MCP server '{self.server}' "
            f"with these arguments:\n{shown}\nAllow this call?"
        )


class Approver(Protocol):
    """Asks the user about one call."""

    async def ask(self, request: ApprovalRequest) -> Outcome: ...


class ApprovalForm(BaseModel):
    """What the user answers (Claude Code shows it as a form with accept, decline and cancel)."""

    approve: bool = Field(True, description="Run this call (turn off to refuse it)")


class ElicitationApprover:
    """Asks through MCP elicitation in the tool call that runs the task; `from_context` says whether it can."""

    def __init__(self, ctx: Context, *, timeout_s: float) -> None:
        self._ctx = ctx
        self._timeout_s = timeout_s
        self._usable = True

    @classmethod
    def from_context(cls, ctx: Context, *, timeout_s: float) -> ElicitationApprover | None:
        """An approver for this call, or None when the client cannot be asked (see the module docstring)."""
        capabilities = ctx.client_capabilities
        if capabilities is None or capabilities.elicitation is None:
            return None
        if not ctx.session.can_send_request:
            logger.info("the client declares elicitation, but this connection cannot carry it (2026-07-28)")
            return None
        return cls(ctx, timeout_s=timeout_s)

    async def ask(self, request: ApprovalRequest) -> Outcome:
        if not self._usable:
            return "not_asked"
        try:
            with anyio.fail_after(self._timeout_s):
                answer = await self._ctx.elicit(request.message(), ApprovalForm)
        except TimeoutError:
            return "timed_out"
        except MCPError as exc:
            # NoBackChannelError (no channel for the question) or the client's "not supported":
            # it cannot be asked, now or later in this run.
            logger.info("approval could not be asked (%s): calls that need it are not run", exc)
            self._usable = False
            return "not_asked"
        except ValueError as exc:  # accepted with content that does not fit the form
            logger.info("approval answer unusable (%s): taken as no", exc)
            return "declined"
        if isinstance(answer, AcceptedElicitation):
            return "approved" if answer.data.approve else "declined"
        return "declined" if isinstance(answer, DeclinedElicitation) else "cancelled"


class ApprovalGate:
    """The executor's check before a call runs: ask when the policy says so, record every asked call."""

    def __init__(self, policy: ApprovalPolicy, approver: Approver | None, *, timeout_s: float) -> None:
        self.policy = policy
        self._approver = approver
        self._timeout_s = timeout_s

    async def check(self, run: RunContext, tool: BridgedTool, arguments: Mapping[str, object]) -> str | None:
        """None when the call may run; else what the model is told instead of its output."""
        if not self.policy.needs_approval(tool):
            return None
        request = ApprovalRequest(run.model.id, tool.server, tool.tool_name, arguments)
        outcome: Outcome = "not_asked" if self._approver is None else await self._approver.ask(request)
        logger.info("approval of %s on %s: %s", tool.tool_name, tool.server, outcome)
        if run.approvals is None:
            run.approvals = []
        run.approvals.append(
            {"name": tool.llm_name, "server": tool.server, "arguments": dict(arguments), "outcome": outcome}
        )
        if outcome == "approved":
            return None
        return _TOLD[outcome].format(name=tool.llm_name, timeout=self._timeout_s)
