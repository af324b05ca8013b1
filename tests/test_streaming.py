"""The SSE parser and the stream accumulators, fed the shapes LM Studio really sends."""

from __future__ import annotations

import json

import pytest

from llm.sse import SSEEvent, SSEParser, aiter_sse
from llm.streaming import (
    ChatStreamAccumulator,
    ResponsesStreamAccumulator,
    StreamEvent,
    ToolCall,
    Usage,
    chat_result_from_body,
    completion_result_from_body,
    response_result_from_body,
)


def feed_all(parser: SSEParser, *chunks: bytes | str) -> list[SSEEvent]:
    events = [e for chunk in chunks for e in parser.feed(chunk)]
    return events + parser.close()


# --- parser ----------------------------------------------------------------------------------


def test_parser_yields_one_event_per_blank_line_separated_block() -> None:
    events = feed_all(SSEParser(), b'data: {"a": 1}\n\ndata: {"a": 2}\n\n')
    assert [e.json() for e in events] == [{"a": 1}, {"a": 2}]


def test_parser_joins_an_event_split_mid_line_across_chunks() -> None:
    raw = b'data: {"content": "hello world"}\n\n'
    chunks = [raw[i : i + 3] for i in range(0, len(raw), 3)]
    assert [e.json() for e in feed_all(SSEParser(), *chunks)] == [{"content": "hello world"}]


def test_parser_decodes_a_multibyte_character_split_between_chunks() -> None:
    raw = 'data: "héllo ✓"\n\n'.encode()
    cut = raw.index("✓".encode()) + 1
    assert [e.json() for e in feed_all(SSEParser(), raw[:cut], raw[cut:])] == ["héllo ✓"]


def test_parser_accepts_crlf_line_ends_even_when_split_between_cr_and_lf() -> None:
    events = feed_all(SSEParser(), b"data: one\r", b"\n\r", b"\ndata: two\r\n\r\n")
    assert [e.data for e in events] == ["one", "two"]


def test_parser_joins_multi_line_data_with_newlines() -> None:
    events = feed_all(SSEParser(), "data: first\ndata:second\ndata:  third\n\n")
    assert [e.data for e in events] == ["first\nsecond\n third"]


def test_parser_skips_comments_and_keeps_event_names_and_ids() -> None:
    events = feed_all(SSEParser(), ": keep-alive\n\nevent: response.created\nid: 7\ndata: {}\n\ndata: x\n\n")
    assert events == [SSEEvent(data="{}", event="response.created", id="7"), SSEEvent(data="x", id="7")]


def test_parser_flushes_a_last_event_without_trailing_blank_line_on_close() -> None:
    parser = SSEParser()
    assert parser.feed("data: tail") == []
    assert parser.close() == [SSEEvent(data="tail")]


async def test_aiter_sse_stops_at_done_marker() -> None:
    async def chunks():
        for chunk in (b"data: a\n\n", b"data: [DONE]\n\n", b"data: after\n\n"):
            yield chunk

    assert [e.data async for e in aiter_sse(chunks())] == ["a"]


# --- chat ------------------------------------------------------------------------------------


def chunk(delta: dict | None = None, finish: str | None = None, **extra: object) -> dict:
    return {"model": "qwen/qwen3-4b", "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}], **extra}


def test_chat_accumulator_joins_content_and_reasoning_from_both_field_names() -> None:
    acc = ChatStreamAccumulator()
    events = []
    for c in (
        chunk({"role": "assistant", "reasoning_content": "Let me "}),
        chunk({"reasoning": "think."}),
        chunk({"content": "Hi"}),
        chunk({"content": " there"}, finish="stop"),
    ):
        events += acc.add(c)
    result = acc.result()
    assert (result.content, result.reasoning, result.finish_reason, result.model) == (
        "Hi there",
        "Let me think.",
        "stop",
        "qwen/qwen3-4b",
    )
    assert events[-1] == StreamEvent(kind="text", delta=" there", chars_so_far=len("Let me think.Hi there"))
    assert [e.kind for e in events] == ["reasoning", "reasoning", "text", "text"]


def test_chat_accumulator_joins_tool_call_fragments_by_index() -> None:
    acc = ChatStreamAccumulator()
    fragments = [
        {"index": 0, "id": "call_a", "type": "function", "function": {"name": "read_file", "arguments": ""}},
        {"index": 1, "id": "call_b", "type": "function", "function": {"name": "list_dir", "arguments": '{"p'}},
        {"index": 0, "function": {"arguments": '{"path": '}},
        {"index": 1, "function": {"arguments": '": "."}'}},
        {"index": 0, "function": {"arguments": '"a.txt"}'}},
    ]
    for fragment in fragments:
        acc.add(chunk({"tool_calls": [fragment]}))
    acc.add(chunk({}, finish="tool_calls"))
    assert acc.result().tool_calls == [
        ToolCall(id="call_a", name="read_file", arguments='{"path": "a.txt"}'),
        ToolCall(id="call_b", name="list_dir", arguments='{"p": "."}'),
    ]
    assert acc.result().finish_reason == "tool_calls"


def test_chat_accumulator_synthesises_a_stable_id_when_the_tool_call_id_is_empty() -> None:
    acc = ChatStreamAccumulator()
    acc.add(chunk({"tool_calls": [{"index": 2, "id": "", "function": {"name": "f", "arguments": "{}"}}]}))
    assert acc.result().tool_calls == [ToolCall(id="call_2", name="f", arguments="{}")]
    assert acc.result().tool_calls == acc.result().tool_calls


def test_chat_accumulator_treats_empty_tool_calls_list_as_no_calls() -> None:
    acc = ChatStreamAccumulator()
    acc.add(chunk({"content": "done", "tool_calls": []}, finish="stop"))
    assert acc.result().tool_calls == []
    assert acc.result().content == "done"


def test_chat_accumulator_keeps_usage_sent_in_the_last_chunk() -> None:
    acc = ChatStreamAccumulator()
    acc.add(chunk({"content": "x"}, finish="stop"))
    acc.add({"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}})
    assert acc.result().usage == Usage(input_tokens=10, output_tokens=2, total_tokens=12)


def test_chat_accumulator_reports_an_empty_stream() -> None:
    acc = ChatStreamAccumulator()
    acc.add(chunk({"role": "assistant"}))
    assert acc.ended_empty
    acc.add(chunk({}, finish="length"))
    assert not acc.ended_empty


def test_chat_accumulator_leaves_think_tags_in_content_for_the_agent_to_strip() -> None:
    acc = ChatStreamAccumulator()
    acc.add(chunk({"content": "<think>hmm</think>Answer"}, finish="stop"))
    assert acc.result().content == "<think>hmm</think>Answer"
    assert acc.result().reasoning == ""


def test_chat_accumulator_reads_text_completion_chunks() -> None:
    acc = ChatStreamAccumulator()
    acc.add({"model": "m", "choices": [{"index": 0, "text": "Once", "finish_reason": None}]})
    acc.add({"model": "m", "choices": [{"index": 0, "text": " upon", "finish_reason": "length"}]})
    result = acc.completion_result()
    assert (result.text, result.finish_reason) == ("Once upon", "length")


def test_chat_result_from_body_reads_message_tool_calls_and_reasoning() -> None:
    body = {
        "model": "m",
        "choices": [
            {
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "reasoning_content": "plan",
                    "tool_calls": [{"id": "", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}],
                },
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    }
    result = chat_result_from_body(body)
    assert result.content == ""
    assert result.reasoning == "plan"
    assert result.tool_calls == [ToolCall(id="call_0", name="f", arguments='{"a": 1}')]
    assert result.usage == Usage(3, 4, 7)


def test_result_from_body_rejects_a_body_without_choices() -> None:
    with pytest.raises(ValueError):
        chat_result_from_body({"object": "chat.completion"})
    with pytest.raises(ValueError):
        completion_result_from_body({"choices": []})


# --- responses -------------------------------------------------------------------------------

RESPONSE_BODY = {
    "id": "resp_1",
    "status": "completed",
    "model": "openai/gpt-oss-20b",
    "output": [
        {"type": "reasoning", "content": [{"type": "reasoning_text", "text": "I should read it."}]},
        {"type": "function_call", "id": "fc_1", "call_id": "call_9", "name": "read_file", "arguments": '{"p": 1}'},
        {"type": "message", "content": [{"type": "output_text", "text": "Reading."}]},
    ],
    "usage": {"input_tokens": 20, "output_tokens": 5, "total_tokens": 25},
}


def test_response_result_from_body_reads_reasoning_message_and_function_call_items() -> None:
    result = response_result_from_body(RESPONSE_BODY)
    assert (result.id, result.text, result.reasoning, result.status) == (
        "resp_1",
        "Reading.",
        "I should read it.",
        "completed",
    )
    assert result.tool_calls == [ToolCall(id="call_9", name="read_file", arguments='{"p": 1}')]
    assert result.usage == Usage(20, 5, 25)


def sse_events(*payloads: dict) -> list[tuple[str, dict]]:
    return [(p["type"], p) for p in payloads]


def test_responses_accumulator_builds_text_reasoning_and_calls_from_deltas() -> None:
    acc = ResponsesStreamAccumulator()
    events: list[StreamEvent] = []
    for name, payload in sse_events(
        {"type": "response.created", "response": {"id": "resp_2", "status": "in_progress", "model": "m"}},
        {"type": "response.reasoning_text.delta", "delta": "hm"},
        {"type": "response.reasoning.delta", "delta": "m"},
        {"type": "response.output_text.delta", "delta": "ok"},
        {
            "type": "response.output_item.added",
            "output_index": 1,
            "item": {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "f", "arguments": ""},
        },
        {"type": "response.function_call_arguments.delta", "item_id": "fc_1", "delta": '{"a"'},
        {"type": "response.function_call_arguments.delta", "item_id": "fc_1", "output_index": 1, "delta": ": 1}"},
    ):
        events += acc.add(name, payload)
    result = acc.result()
    assert (result.id, result.text, result.reasoning, result.model) == ("resp_2", "ok", "hmm", "m")
    assert result.tool_calls == [ToolCall(id="call_1", name="f", arguments='{"a": 1}')]
    assert [e.kind for e in events] == ["reasoning", "reasoning", "text", "tool_call", "tool_call", "tool_call"]


def test_responses_accumulator_prefers_the_completed_response_and_its_usage() -> None:
    acc = ResponsesStreamAccumulator()
    acc.add("response.output_text.delta", {"type": "response.output_text.delta", "delta": "Read"})
    acc.add("response.completed", {"type": "response.completed", "response": RESPONSE_BODY})
    result = acc.result()
    assert (result.id, result.text, result.status) == ("resp_1", "Reading.", "completed")
    assert result.usage == Usage(20, 5, 25)
    assert [c.id for c in result.tool_calls] == ["call_9"]


def test_responses_accumulator_takes_final_arguments_from_the_done_event() -> None:
    acc = ResponsesStreamAccumulator()
    acc.add(None, {"type": "response.output_item.added", "output_index": 0,
                   "item": {"type": "function_call", "id": "fc", "call_id": "", "name": "g"}})
    acc.add(None, {"type": "response.function_call_arguments.delta", "item_id": "fc", "delta": '{"x'})
    acc.add(None, {"type": "response.function_call_arguments.done", "item_id": "fc", "arguments": '{"x": 2}'})
    assert acc.result().tool_calls == [ToolCall(id="call_0", name="g", arguments='{"x": 2}')]


@pytest.mark.parametrize(
    ("name", "payload", "message"),
    [
        ("response.failed", {"response": {"id": "r", "error": {"code": "x", "message": "boom"}}}, "boom"),
        ("error", {"message": "Context length exceeded"}, "Context length exceeded"),
        ("error", {"error": {"message": "bad"}}, "bad"),
    ],
)
def test_responses_accumulator_records_failure_events_as_errors(name: str, payload: dict, message: str) -> None:
    acc = ResponsesStreamAccumulator()
    acc.add(name, payload)
    assert acc.error == message


def test_responses_accumulator_reports_an_empty_stream() -> None:
    acc = ResponsesStreamAccumulator()
    acc.add("response.created", {"type": "response.created", "response": {"id": "r"}})
    assert acc.ended_empty
    acc.add(None, {"type": "response.output_text.delta", "delta": "."})
    assert not acc.ended_empty


def test_sse_event_json_round_trips_a_payload() -> None:
    payload = {"type": "response.output_text.delta", "delta": "é"}
    [event] = feed_all(SSEParser(), f"event: {payload['type']}\ndata: {json.dumps(payload)}\n\n")
    assert (event.event, event.json()) == ("response.output_text.delta", payload)
