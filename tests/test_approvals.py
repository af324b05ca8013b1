"""Approvals for changes: the policy, the gate, and end to end through the bridge as a subprocess with the SDK
client's elicitation callback answering yes, no and cancel, a client without elicitation, and one on the
2026-07-28 protocol (which cannot carry a question from inside a call)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp import types as mcp_types
from mcp.shared.exceptions import NoBackChannelError

from config import load_config
from llm.models import ResolvedModel
from tests.support.bridge import bridge_env, model_requests, subprocess_params, text_of, tool_outputs, write_mcp_json
from tests.support.fake_lmstudio import FakeLMStudio, RecordedRequest, Turn, call
from tests.support.mcp_servers import entry_config
from tools.agent.approval import (
    ApprovalGate,
    ApprovalPolicy,
    ApprovalRequest,
    ElicitationApprover,
    Outcome,
)
from tools.agent.events import RunContext
from tools.downstream.entries import ServerEntry
from tools.downstream.toolset import BridgedTool


def tool(name: str, *, read_only: bool, server: str = "filesystem") -> BridgedTool:
    return BridgedTool(name, server, name, "", {"type": "object", "properties": {}}, read_only=read_only)


WRITE = tool("write_file", read_only=False)
READ = tool("read_text_file", read_only=True)


def run_context() -> RunContext:
    return RunContext("task", ResolvedModel("qwen/qwen3-coder-30b", "requested", None, asyncio.Semaphore(1)), [], {})


# --- the policy and the gate ----------------------------------------------------------------------


def test_with_writes_approved_every_tool_without_read_only_hint_needs_approval_and_patterns_add_more() -> None:
    writes = ApprovalPolicy.from_settings(load_config({"MCP_APPROVE_WRITES": "1"}))
    assert writes.active and writes.needs_approval(WRITE) and not writes.needs_approval(READ)
    named = ApprovalPolicy.from_settings(load_config({"MCP_APPROVE_TOOLS": '{"*": ["read_*"]}'}))
    assert named.active and named.needs_approval(READ) and not named.needs_approval(WRITE)
    per_server = ApprovalPolicy(patterns={"memory": ["*"]})
    assert not per_server.needs_approval(WRITE)
    assert per_server.needs_approval(tool("x", read_only=True, server="memory"))
    assert not ApprovalPolicy.from_settings(load_config({})).active


class Answering:
    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.asked: list[ApprovalRequest] = []

    async def ask(self, request: ApprovalRequest) -> Outcome:
        self.asked.append(request)
        return self.outcome


async def test_the_gate_lets_an_approved_call_run_and_tells_the_model_why_another_did_not() -> None:
    run = run_context()
    approving = Answering("approved")
    gate = ApprovalGate(ApprovalPolicy(writes=True), approving, timeout_s=300)
    assert await gate.check(run, READ, {"path": "a"}) is None and approving.asked == []
    assert await gate.check(run, WRITE, {"path": "a", "content": "x"}) is None
    assert approving.asked[0].message().startswith(
        "The local model qwen/qwen3-coder-30b wants to run the tool 'write_file' of the MCP server 'filesystem'"
    )
    declined = await ApprovalGate(ApprovalPolicy(writes=True), Answering("declined"), timeout_s=300).check(
        run, WRITE, {"path": "b"}
    )
    assert declined is not None and declined.startswith("Error: the user declined this call to write_file")
    not_asked = await ApprovalGate(ApprovalPolicy(writes=True), None, timeout_s=300).check(run, WRITE, {"path": "c"})
    assert not_asked is not None and "cannot be asked here" in not_asked
    assert [(a["arguments"], a["outcome"]) for a in run.approvals or []] == [
        ({"path": "a", "content": "x"}, "approved"), ({"path": "b"}, "declined"), ({"path": "c"}, "not_asked")
    ]


class NoBackChannelContext:
    """A tool context whose client declares elicitation on a connection that cannot carry it."""

    def __init__(self, can_send: bool) -> None:
        self.client_capabilities = mcp_types.ClientCapabilities(elicitation=mcp_types.ElicitationCapability())
        self.session = type("Session", (), {"can_send_request": can_send})()
        self.asked = 0

    async def elicit(self, message: str, schema: type) -> object:
        self.asked += 1
        raise NoBackChannelError("elicitation/create")


async def test_a_connection_that_cannot_carry_the_question_is_treated_as_a_client_without_elicitation() -> None:
    assert ElicitationApprover.from_context(NoBackChannelContext(can_send=False), timeout_s=1) is None  # type: ignore[arg-type]
    ctx = NoBackChannelContext(can_send=True)
    approver = ElicitationApprover.from_context(ctx, timeout_s=1)  # type: ignore[arg-type]
    assert approver is not None
    request = ApprovalRequest("m", "filesystem", "write_file", {})
    assert [await approver.ask(request), await approver.ask(request)] == ["not_asked", "not_asked"]
    assert ctx.asked == 1  # not tried again in the same run


# --- end to end -----------------------------------------------------------------------------------

Answer = Callable[[mcp_types.ElicitRequestParams], mcp_types.ElicitResult]


@pytest.fixture
def mcp_json(tmp_path: Path, workspace: Path, filesystem_entry: Callable[..., ServerEntry]) -> Path:
    return write_mcp_json(tmp_path / ".mcp.json", {"filesystem": entry_config(filesystem_entry(workspace))})


def write_then_answer(workspace: Path) -> Callable[[RecordedRequest], Turn]:
    """Lists the directory (read-only: never asked about), writes a file, then says what the write gave."""

    def script(request: RecordedRequest) -> Turn:
        outputs = tool_outputs(request)
        if not outputs:
            return Turn(tool_calls=[call("list_directory", path=str(workspace))])
        if "notes.txt" in outputs[-1] and "[FILE]" in outputs[-1]:
            return Turn(tool_calls=[call("write_file", path=str(workspace / "out.txt"), content="hello")])
        return Turn(text=f"Write: {outputs[-1][:100]}")

    return script


async def run_with(
    fake: FakeLMStudio, mcp_json: Path, *, answer: Answer | None, mode: str = "legacy"
) -> tuple[mcp_types.CallToolResult, list[mcp_types.ElicitRequestParams]]:
    asked: list[mcp_types.ElicitRequestParams] = []

    async def on_elicit(context: object, params: mcp_types.ElicitRequestParams) -> mcp_types.ElicitResult:
        asked.append(params)
        assert answer is not None
        return answer(params)

    params = subprocess_params(bridge_env(fake.url, mcp_json, MCP_APPROVE_WRITES="1"))
    client = Client(params, read_timeout_seconds=60, mode=mode,  # type: ignore[arg-type]
                    elicitation_callback=on_elicit if answer is not None else None)
    with anyio.fail_after(60):
        async with client:
            result = await client.call_tool("autonomous_with_mcp", {"mcp_name": "filesystem", "task": "write it"})
    return result, asked


@pytest.mark.slow
@pytest.mark.parametrize("api", ["responses", "chat"])
async def test_a_call_the_user_approves_runs_and_read_only_calls_are_never_asked_about(
    api: str, mcp_json: Path, workspace: Path
) -> None:
    with FakeLMStudio(write_then_answer(workspace), responses_api=api == "responses") as fake:
        result, asked = await run_with(
            fake, mcp_json, answer=lambda p: mcp_types.ElicitResult(action="accept", content={"approve": True})
        )
    assert not result.is_error, text_of(result)
    assert (workspace / "out.txt").read_text() == "hello"
    (question,) = asked
    assert "the tool 'write_file' of the MCP server 'filesystem'" in question.message
    assert '"content": "hello"' in question.message and str(workspace / "out.txt") in question.message
    assert result.structured_content["approvals"] == [
        {"name": "write_file", "server": "filesystem",
         "arguments": {"path": str(workspace / "out.txt"), "content": "hello"}, "outcome": "approved"}
    ]
    assert text_of(result).startswith("Write: Successfully wrote")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("answer", "outcome", "told"),
    [
        (mcp_types.ElicitResult(action="decline"), "declined", "Error: the user declined this call to write_file"),
        (mcp_types.ElicitResult(action="accept", content={"approve": False}), "declined", "the user declined"),
        (mcp_types.ElicitResult(action="cancel"), "cancelled", "the user dismissed the approval request"),
    ],
    ids=["decline", "accept-but-unchecked", "cancel"],
)
async def test_a_call_the_user_refuses_is_not_run_and_the_model_is_told(
    answer: mcp_types.ElicitResult, outcome: str, told: str, mcp_json: Path, workspace: Path
) -> None:
    with FakeLMStudio(write_then_answer(workspace)) as fake:
        result, asked = await run_with(fake, mcp_json, answer=lambda p: answer)
    assert len(asked) == 1 and not (workspace / "out.txt").exists()
    assert told in tool_outputs(model_requests(fake)[-1])[-1]
    assert [a["outcome"] for a in result.structured_content["approvals"]] == [outcome]
    assert "1 call(s) needed the user's approval and were not run: write_file" in text_of(result)


@pytest.mark.slow
@pytest.mark.parametrize("api", ["responses", "chat"])
@pytest.mark.parametrize("client", ["without-elicitation", "2026-07-28"])
async def test_a_client_that_cannot_be_asked_gets_the_call_listed_and_not_run(
    api: str, client: str, mcp_json: Path, workspace: Path
) -> None:
    with FakeLMStudio(write_then_answer(workspace), responses_api=api == "responses") as fake:
        if client == "without-elicitation":
            result, asked = await run_with(fake, mcp_json, answer=None)
        else:  # the SDK client's default: it negotiates 2026-07-28, where a call cannot ask mid-way
            result, asked = await run_with(
                fake, mcp_json, mode="auto",
                answer=lambda p: mcp_types.ElicitResult(action="accept", content={"approve": True}),
            )
    assert asked == [] and not (workspace / "out.txt").exists()
    assert "cannot be asked here" in tool_outputs(model_requests(fake)[-1])[-1]
    assert [a["outcome"] for a in result.structured_content["approvals"]] == ["not_asked"]
    assert "This client cannot ask for approval" in text_of(result)
