"""The two conversations against the stand-in: tool sets changed between rounds, prompted mode, results of
calls written as text, and compaction to a budget (chat drops old outputs; responses starts a new chain)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from llm.capabilities import ServerCapabilities
from llm.conversation import (
    DROPPED,
    ChatConversation,
    Conversation,
    FunctionSpec,
    GenerationOptions,
    ResponsesConversation,
    ToolOutput,
)
from llm.llm_client import ClientOptions, LLMClient
from llm.models import ResolvedModel
from tests.support.fake_lmstudio import FakeLMStudio, Turn, call

READ = FunctionSpec("read_file", "Read a file", {"type": "object", "properties": {"path": {"type": "string"}}})
LIST = FunctionSpec("list_dir", "List a folder", {"type": "object", "properties": {}})


@pytest.fixture
def fake() -> Iterator[FakeLMStudio]:
    with FakeLMStudio() as server:
        yield server


@pytest.fixture
async def llm(fake: FakeLMStudio) -> AsyncIterator[LLMClient]:
    async with LLMClient(ClientOptions(fake.url, retry_attempts=1, model_ttl_s=0)) as client:
        yield client


def options(fake: FakeLMStudio, *, prompted: bool = False) -> GenerationOptions:
    model = ResolvedModel("qwen/qwen3-coder-30b", "requested", None, asyncio.Semaphore(4))
    return GenerationOptions(model, "Be brief.", ServerCapabilities(fake.url), prompted=prompted)


def conversations(llm: LLMClient, fake: FakeLMStudio, **kw: bool) -> list[Conversation]:
    return [ResponsesConversation(llm, [READ], options(fake, **kw)), ChatConversation(llm, [READ], options(fake, **kw))]


def sent_tools(body: dict[str, object]) -> list[str]:
    return [t.get("name") or t["function"]["name"] for t in body.get("tools") or []]  # type: ignore[union-attr, index]


async def test_a_new_tool_set_is_offered_from_the_next_round(llm: LLMClient, fake: FakeLMStudio) -> None:
    for conversation in conversations(llm, fake):
        fake.clear()
        fake.set_script([Turn(tool_calls=[call("read_file", path="a")]), Turn(text="ok")])
        turn = await conversation.start("task")
        conversation.set_tools([READ, LIST], "Be brief. Now with list_dir.")
        await conversation.send_tool_outputs([ToolOutput(turn.tool_calls[0].id, "read_file", "hello")])
        first, second = (r.body or {} for r in fake.generation_requests())
        assert sent_tools(first) == ["read_file"] and sent_tools(second) == ["read_file", "list_dir"]


async def test_prompted_conversations_send_no_tools_field(llm: LLMClient, fake: FakeLMStudio) -> None:
    for conversation in conversations(llm, fake, prompted=True):
        fake.clear()
        fake.set_script([Turn(text="done")])
        await conversation.start("task")
        [request] = fake.generation_requests()
        assert "tools" not in (request.body or {})


async def test_the_result_of_a_call_written_as_text_goes_back_as_a_user_message(
    llm: LLMClient, fake: FakeLMStudio
) -> None:
    for conversation in conversations(llm, fake):
        fake.clear()
        fake.set_script([Turn(text='<tool_call>{"name": "read_file"}</tool_call>'), Turn(text="ok")])
        await conversation.start("task")
        await conversation.send_tool_outputs([ToolOutput("text_call_1_0", "read_file", "hello", as_text=True)])
        body = fake.generation_requests()[-1].body or {}
        items = body.get("input") if "input" in body else body["messages"]
        assert items[-1] == {"role": "user", "content": "Result of read_file:\nhello"}  # type: ignore[index]


async def test_chat_compaction_drops_the_oldest_outputs_and_keeps_the_newest(llm: LLMClient, fake: FakeLMStudio) -> None:
    conversation = ChatConversation(llm, [READ], options(fake))
    fake.set_script([Turn(tool_calls=[call("read_file", path="a")]), Turn(tool_calls=[call("read_file", path="b")]),
                     Turn(text="ok")])
    turn = await conversation.start("task")
    turn = await conversation.send_tool_outputs([ToolOutput(turn.tool_calls[0].id, "read_file", "A" * 5000)])
    await conversation.send_tool_outputs([ToolOutput(turn.tool_calls[0].id, "read_file", "B" * 5000)])
    assert conversation.compact(6000, keep_last=1) == 1
    contents = [m["content"] for m in conversation.messages if m["role"] == "tool"]
    assert contents == [DROPPED.format(5000), "B" * 5000]
    assert conversation.size_chars() < 6000


async def test_responses_compaction_starts_a_new_chain_from_the_transcript(llm: LLMClient, fake: FakeLMStudio) -> None:
    conversation = ResponsesConversation(llm, [READ], options(fake))
    fake.set_script([Turn(tool_calls=[call("read_file", path="a")]), Turn(tool_calls=[call("read_file", path="b")]),
                     Turn(text="ok")])
    turn = await conversation.start("the task")
    turn = await conversation.send_tool_outputs([ToolOutput(turn.tool_calls[0].id, "read_file", "A" * 5000)])
    conversation.compact(3000)
    await conversation.send_tool_outputs([ToolOutput(turn.tool_calls[0].id, "read_file", "the newest")])
    last = fake.generation_requests()[-1].body or {}
    assert last.get("previous_response_id") is None
    replay = last["input"]
    assert replay[0] == {"role": "user", "content": "the task"}  # type: ignore[index]
    assert replay[-1] == {"role": "user", "content": "Result of read_file:\nthe newest"}  # type: ignore[index]
    assert all("A" * 100 not in str(item) for item in replay)  # type: ignore[union-attr]


async def test_streamed_answers_one_after_another_share_one_connection(llm: LLMClient, fake: FakeLMStudio) -> None:
    # A stream ends with `data: [DONE]` before the body does: read to its end, the connection goes
    # back to the pool; closed early, every round of a run would open a new one.
    model = options(fake).model
    fake.set_script([Turn(text="one"), Turn(text="two"), Turn(text="three")])
    for _ in range(3):
        result = await llm.chat_completion([{"role": "user", "content": "hi"}], model=model, stream=True)
        assert result.content
    ports = [r.client_port for r in fake.generation_requests()]
    assert len(ports) == 3 and None not in ports
    assert len(set(ports)) == 1, ports


async def test_a_stream_held_open_after_done_costs_at_most_the_drain_bound() -> None:
    # A server (or proxy) that sends [DONE] and then never ends the body: the answer is whole, so the
    # bridge gives up on reusing the connection after a moment instead of waiting on it.
    import time

    from llm import transport

    async def held_open() -> AsyncIterator[bytes]:
        yield b"\r\n"
        await asyncio.sleep(3600)

    start = time.perf_counter()
    await transport._drain(held_open())
    assert time.perf_counter() - start < transport._DRAIN_S + 1.0
