"""The autonomous loop, in process, against the scripted stand-in and the real `mcp-server-time`.

Every loop test runs twice: once over LM Studio's stateful `/v1/responses`, once against a
server without it (chat completions with the history kept by the bridge).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from tests.support.bridge import (
    bridge_settings,
    model_requests,
    tool_outputs,
    write_mcp_json,
)
from tests.support.fake_lmstudio import FakeLMStudio, Turn, call
from tools.app import AppState, bridge_state

TIME_SERVER = {"command": sys.executable, "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]}

pytestmark = pytest.mark.slow


@pytest.fixture(params=["responses", "chat"])
def api(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def fake(api: str) -> Iterator[FakeLMStudio]:
    with FakeLMStudio(responses_api=api == "responses") as server:
        yield server


@pytest.fixture
def mcp_json(tmp_path: Path) -> Path:
    return write_mcp_json(tmp_path / ".mcp.json", {"time": TIME_SERVER})


@pytest.fixture
def bridge(fake: FakeLMStudio, mcp_json: Path) -> Callable[[], AbstractAsyncContextManager[AppState]]:
    # Entered by each test itself: anyio task groups must exit in the task that entered them.
    return lambda: bridge_state(bridge_settings(fake.url, mcp_json))


async def test_a_tool_call_runs_on_the_real_server_and_its_output_goes_back(
    bridge: Callable[[], AbstractAsyncContextManager[AppState]], fake: FakeLMStudio, api: str
) -> None:
    async with bridge() as state:
        fake.set_script([Turn(tool_calls=[call("get_current_time", timezone="UTC")]), Turn(text="It is Monday.")])
        result = await state.agent.run(["time"], "What day is it in UTC?")
        assert result.stop_reason == "completed"
        assert result.answer == "It is Monday."
        assert result.rounds == 2
        assert [(c.name, c.server, c.ok) for c in result.tool_calls] == [("get_current_time", "time", True)]
        assert result.api == api
        (output,) = tool_outputs(model_requests(fake)[1])
        assert json.loads(output)["timezone"] == "UTC"


@pytest.mark.parametrize("api", ["responses"])
async def test_the_responses_path_chains_ids_and_sends_only_new_items(
    bridge: Callable[[], AbstractAsyncContextManager[AppState]], fake: FakeLMStudio, api: str
) -> None:
    async with bridge() as state:
        if api != "responses":
            pytest.skip("the chat path resends its history by design")
        zones = ["UTC", "Europe/Paris", "Asia/Tokyo", "America/New_York", "Europe/London"]
        fake.set_script([Turn(tool_calls=[call("get_current_time", timezone=z)]) for z in zones] + [Turn(text="done")])
        result = await state.agent.run(["time"], "Tell me the time in five places.")
        assert result.stop_reason == "completed"
        requests = model_requests(fake)
        assert requests[0].body.get("previous_response_id") is None
        for earlier, later in zip(requests, requests[1:]):
            assert later.body["previous_response_id"] is not None
            assert later.body["previous_response_id"] != earlier.body.get("previous_response_id")
            assert len(tool_outputs(later)) == 1
        # Each round carries one tool output of about the same size: the request does not grow.
        sizes = [r.size_bytes for r in requests[1:]]
        assert max(sizes) - min(sizes) < 200, sizes


@pytest.mark.parametrize("api", ["chat"])
async def test_the_chat_path_keeps_the_history_itself(bridge: Callable[[], AbstractAsyncContextManager[AppState]], fake: FakeLMStudio, api: str) -> None:
    async with bridge() as state:
        if api != "chat":
            pytest.skip("only the chat path keeps history in the bridge")
        fake.set_script([Turn(tool_calls=[call("get_current_time", timezone="UTC")]), Turn(text="ok")])
        await state.agent.run(["time"], "time?")
        second = model_requests(fake)[-1].body
        roles = [m["role"] for m in second["messages"]]
        assert roles == ["system", "user", "assistant", "tool"]
        assert second["messages"][2]["tool_calls"][0]["function"]["name"] == "get_current_time"
        assert second["tools"][0]["function"]["name"] == "get_current_time"


async def test_almost_json_arguments_are_repaired_and_counted(
    bridge: Callable[[], AbstractAsyncContextManager[AppState]], fake: FakeLMStudio
) -> None:
    async with bridge() as state:
        fake.set_script([Turn(tool_calls=[("get_current_time", "{'timezone': 'UTC',")]), Turn(text="done")])
        result = await state.agent.run(["time"], "time?")
    assert [c.ok for c in result.tool_calls] == [True]
    assert json.loads(tool_outputs(model_requests(fake)[1])[0])["timezone"] == "UTC"
    assert result.assists == {"arguments_repaired": 1}


async def test_malformed_arguments_go_back_as_an_error_quoting_the_schema_and_are_never_run(
    bridge: Callable[[], AbstractAsyncContextManager[AppState]], fake: FakeLMStudio
) -> None:
    async with bridge() as state:
        fake.set_script(
            [
                Turn(tool_calls=[("get_current_time", "timezone is UTC")]),
                Turn(tool_calls=[call("get_current_time", timezone="UTC")]),
                Turn(text="fixed it"),
            ]
        )
        result = await state.agent.run(["time"], "time?")
        assert result.stop_reason == "completed"
        (error,) = tool_outputs(model_requests(fake)[1])
        assert error.startswith("Error:") and "not valid JSON" in error
        assert '"required":["timezone"]' in error
        # Recorded as failed, never sent to the server; the corrected call ran.
        assert [c.ok for c in result.tool_calls] == [False, True]
        assert "not valid JSON" in (result.tool_calls[0].error or "")


async def test_arguments_that_do_not_fit_the_schema_are_an_error_output(bridge: Callable[[], AbstractAsyncContextManager[AppState]], fake: FakeLMStudio) -> None:
    async with bridge() as state:
        fake.set_script([Turn(tool_calls=[call("get_current_time", zone="UTC")]), Turn(text="sorry")])
        await state.agent.run(["time"], "time?")
        (error,) = tool_outputs(model_requests(fake)[1])
        assert "'timezone' is a required property" in error


async def test_an_unknown_tool_goes_back_with_the_list_of_tools(bridge: Callable[[], AbstractAsyncContextManager[AppState]], fake: FakeLMStudio) -> None:
    async with bridge() as state:
        fake.set_script([Turn(tool_calls=[call("get_weather", city="Oslo")]), Turn(text="no weather tool")])
        result = await state.agent.run(["time"], "weather?")
        (error,) = tool_outputs(model_requests(fake)[1])
        assert "no tool named 'get_weather'" in error
        assert "get_current_time" in error and "convert_time" in error
        assert result.tool_calls[0].ok is False


async def test_a_tool_error_result_goes_back_as_its_output(bridge: Callable[[], AbstractAsyncContextManager[AppState]], fake: FakeLMStudio) -> None:
    async with bridge() as state:
        fake.set_script([Turn(tool_calls=[call("get_current_time", timezone="Mars/Base")]), Turn(text="no such zone")])
        result = await state.agent.run(["time"], "time on Mars?")
        (output,) = tool_outputs(model_requests(fake)[1])
        assert output.startswith("Error (reported by the tool)")
        assert "Mars/Base" in output
        assert result.tool_calls[0].ok is False
        assert result.stop_reason == "completed"


async def test_several_calls_in_one_round_return_in_call_order(bridge: Callable[[], AbstractAsyncContextManager[AppState]], fake: FakeLMStudio) -> None:
    async with bridge() as state:
        zones = ["Asia/Tokyo", "UTC", "Europe/Paris"]
        fake.set_script([Turn(tool_calls=[call("get_current_time", timezone=z) for z in zones]), Turn(text="three")])
        await state.agent.run(["time"], "three zones")
        outputs = tool_outputs(model_requests(fake)[1])
        assert [json.loads(o)["timezone"] for o in outputs] == zones


async def test_the_same_call_repeated_ends_the_run_as_a_loop(bridge: Callable[[], AbstractAsyncContextManager[AppState]], fake: FakeLMStudio) -> None:
    async with bridge() as state:
        fake.set_script([Turn(text="checking", tool_calls=[call("get_current_time", timezone="UTC")])] * 10)
        result = await state.agent.run(["time"], "time?")
        assert result.stop_reason == "loop_detected"
        assert result.answer == "checking"
        assert "repeated the same tool call" in result.text


async def test_max_rounds_stops_the_run_as_a_result_not_an_error(bridge: Callable[[], AbstractAsyncContextManager[AppState]], fake: FakeLMStudio) -> None:
    async with bridge() as state:
        zones = ["UTC", "Europe/Paris", "Asia/Tokyo", "America/New_York"]
        fake.set_script([Turn(text=f"step {i}", tool_calls=[call("get_current_time", timezone=z)]) for i, z in enumerate(zones)])
        result = await state.agent.run(["time"], "time?", max_rounds=2)
        assert result.stop_reason == "max_rounds"
        assert result.rounds == 2
        assert result.answer == "step 1"
        assert len(model_requests(fake)) == 2
        assert result.notes[-1].startswith("max_rounds reached; not run: get_current_time(")


async def test_an_answer_cut_at_max_tokens_is_flagged_not_passed_off_as_whole(
    bridge: Callable[[], AbstractAsyncContextManager[AppState]], fake: FakeLMStudio
) -> None:
    async with bridge() as state:
        fake.set_script([Turn(tool_calls=[call("get_current_time", timezone="UTC")]),
                         Turn(text="It is Monday, and the full list of", cut=True)])
        result = await state.agent.run(["time"], "What day is it in UTC?", max_tokens=300)
        assert result.stop_reason == "completed" and result.answer == "It is Monday, and the full list of"
        assert any("stopped at max_tokens (300 tokens a round)" in note for note in result.notes), result.notes

        fake.set_script([Turn(text="It is Monday.")])
        whole = await state.agent.run(["time"], "What day is it in UTC?", max_tokens=300)
        assert not any("max_tokens" in note for note in whole.notes), whole.notes


async def test_the_overall_timeout_stops_a_slow_run(fake: FakeLMStudio, mcp_json: Path) -> None:
    fake.set_script([Turn(tool_calls=[call("get_current_time", timezone="UTC")]), Turn(text="late", delay_s=30)])
    async with bridge_state(bridge_settings(fake.url, mcp_json, AUTONOMOUS_TIMEOUT_S="2")) as state:
        result = await state.agent.run(["time"], "time?")
    assert result.stop_reason == "timeout"
    assert result.duration_s < 10
    assert "ran out of time" in result.text


async def test_an_lm_studio_failure_mid_run_ends_it_with_the_error_and_what_was_said(
    bridge: Callable[[], AbstractAsyncContextManager[AppState]], fake: FakeLMStudio
) -> None:
    async with bridge() as state:
        fake.set_script(
            [
                Turn(text="let me look", tool_calls=[call("get_current_time", timezone="UTC")]),
                Turn(error=(400, "Trying to keep the first 8000 tokens when context the overflows")),
            ]
        )
        result = await state.agent.run(["time"], "time?")
        assert result.stop_reason == "error"
        assert result.answer == "let me look"
        assert "context" in (result.error or "").lower()


async def test_reasoning_never_appears_in_the_answer(bridge: Callable[[], AbstractAsyncContextManager[AppState]], fake: FakeLMStudio) -> None:
    async with bridge() as state:
        fake.set_script([Turn(text="<think>secret plan</think>The answer.", reasoning="more thoughts")])
        result = await state.agent.run(["time"], "anything")
        assert result.answer == "The answer."
        assert "secret" not in result.text and "thoughts" not in result.text


async def test_long_tool_outputs_are_truncated_with_a_marker(fake: FakeLMStudio, mcp_json: Path) -> None:
    fake.set_script([Turn(tool_calls=[call("get_current_time", timezone="UTC")]), Turn(text="ok")])
    async with bridge_state(bridge_settings(fake.url, mcp_json, TOOL_OUTPUT_MAX_CHARS="200")) as state:
        await state.agent.run(["time"], "time?")
    (output,) = tool_outputs(model_requests(fake)[1])
    assert len(output) < 300
    assert "truncated" not in output  # the time result is short: nothing cut (tests/test_tool_execution.py cuts)


async def test_an_unknown_server_fails_before_the_model_is_asked(bridge: Callable[[], AbstractAsyncContextManager[AppState]], fake: FakeLMStudio) -> None:
    async with bridge() as state:
        from tools.downstream.errors import MCPServerNotFoundError

        with pytest.raises(MCPServerNotFoundError) as caught:
            await state.agent.run(["nope"], "anything")
        assert "time" in str(caught.value)
        assert fake.generation_requests() == []


async def test_an_unknown_model_fails_before_any_server_starts(bridge: Callable[[], AbstractAsyncContextManager[AppState]], fake: FakeLMStudio) -> None:
    async with bridge() as state:
        from llm.exceptions import ModelNotFoundError

        with pytest.raises(ModelNotFoundError):
            await state.agent.run(["time"], "anything", model="qwen/qwen3-coder-31b")
        assert state.pool.status("time").started is False
        assert fake.generation_requests() == []


async def test_usage_is_summed_over_rounds(bridge: Callable[[], AbstractAsyncContextManager[AppState]], fake: FakeLMStudio) -> None:
    async with bridge() as state:
        fake.set_script(
            [Turn(tool_calls=[call("get_current_time", timezone="UTC")], usage=(100, 10)), Turn(text="ok", usage=(120, 5))]
        )
        result = await state.agent.run(["time"], "time?")
        assert result.usage["input_tokens"] == 220
        assert result.usage["output_tokens"] == 15


async def test_an_empty_stream_answered_unstreamed_with_tool_calls_stops_streaming_for_later_runs(
    bridge: Callable[[], AbstractAsyncContextManager[AppState]], fake: FakeLMStudio
) -> None:
    # llama.cpp's server answers a streamed request whose answer is a tool call by an empty 200.
    async with bridge() as state:
        fake.set_script(
            [
                Turn(empty_stream=True),
                Turn(tool_calls=[call("get_current_time", timezone="UTC")]),
                Turn(text="first run"),
                Turn(text="second run"),
            ]
        )
        first = await state.agent.run(["time"], "anything")
        second = await state.agent.run(["time"], "anything else")
        assert state.backends[0].capabilities.streams_tool_calls is False
    assert (first.answer, second.answer) == ("first run", "second run")
    streamed = [bool(r.body.get("stream")) for r in model_requests(fake)]
    assert streamed == [True, False, False, False]


async def test_an_empty_stream_that_proves_nothing_leaves_streaming_on(
    bridge: Callable[[], AbstractAsyncContextManager[AppState]], fake: FakeLMStudio
) -> None:
    # LM Studio's context-overflow form (an empty 200) is not evidence that streaming is broken.
    async with bridge() as state:
        fake.set_script([Turn(empty_stream=True), Turn(text="unstreamed answer"), Turn(text="second run")])
        first = await state.agent.run(["time"], "anything")
        second = await state.agent.run(["time"], "anything else")
        assert state.backends[0].capabilities.streams_tool_calls is None
    assert first.stop_reason == "completed" and first.answer == "unstreamed answer"
    assert second.answer == "second run"
    streamed = [bool(r.body.get("stream")) for r in model_requests(fake)]
    assert streamed == [True, False, True]


async def test_an_overflow_as_an_empty_stream_gets_the_context_message_and_later_runs_still_stream(
    bridge: Callable[[], AbstractAsyncContextManager[AppState]], fake: FakeLMStudio
) -> None:
    overflow = "Trying to keep the first 5000 tokens when context the overflows. However, the model is loaded with context length of only 4096 tokens"
    async with bridge() as state:
        fake.set_script([Turn(empty_stream=True), Turn(error=(400, overflow)), Turn(text="fine")])
        first = await state.agent.run(["time"], "a long task")
        second = await state.agent.run(["time"], "a short task")
    assert first.stop_reason == "error" and "does not fit the model's context" in (first.error or "")
    assert second.answer == "fine"
    assert [bool(r.body.get("stream")) for r in model_requests(fake)] == [True, False, True]


async def test_a_default_model_alias_is_resolved_and_checked(fake: FakeLMStudio, mcp_json: Path) -> None:
    settings = bridge_settings(
        fake.url, mcp_json, DEFAULT_MODEL="thinker", MODEL_ALIASES='{"thinker": "mistralai/magistral-small-2509"}'
    )
    fake.set_script([Turn(text="ok")])
    async with bridge_state(settings) as state:
        result = await state.agent.run(["time"], "anything")
    assert result.model == "mistralai/magistral-small-2509"
    assert model_requests(fake)[-1].body["model"] == "mistralai/magistral-small-2509"


async def test_a_default_model_that_does_not_exist_fails_clearly(fake: FakeLMStudio, mcp_json: Path) -> None:
    from llm.exceptions import ModelNotFoundError

    async with bridge_state(bridge_settings(fake.url, mcp_json, DEFAULT_MODEL="qwen/qwen3-coder-3b")) as state:
        with pytest.raises(ModelNotFoundError) as caught:
            await state.agent.run(["time"], "anything")
    assert "Did you mean qwen/qwen3-coder-30b" in str(caught.value)


async def test_a_tool_whose_schema_the_server_refuses_is_left_out_with_a_note(
    api: str, mcp_json: Path
) -> None:
    with FakeLMStudio(responses_api=api == "responses", reject_tools={"convert_time"}) as fake:
        fake.set_script([Turn(tool_calls=[call("get_current_time", timezone="UTC")]), Turn(text="still works")])
        async with bridge_state(bridge_settings(fake.url, mcp_json)) as state:
            result = await state.agent.run(["time"], "time?")
        offered = model_requests(fake)[-1].body["tools"]
    assert result.stop_reason == "completed" and result.answer == "still works"
    assert any(note.startswith("convert_time left out: the model server refused its schema") for note in result.notes)
    names = [t.get("name") or t["function"]["name"] for t in offered]
    assert names == ["get_current_time"]


@pytest.mark.parametrize(
    ("failure", "expected_requests"),
    [
        ((500, "llama_decode failed"), 3),  # retried by the client, never probed tool by tool
        ((401, {"error": {"message": "Invalid or missing API key"}}), 1),
        ((429, "slow down"), 3),
        ((400, "messages must alternate"), 1),  # a 400 that says nothing of tools
    ],
)
async def test_only_a_refusal_about_tools_starts_probing_the_schemas(
    bridge: Callable[[], AbstractAsyncContextManager[AppState]],
    fake: FakeLMStudio,
    failure: tuple[int, object],
    expected_requests: int,
) -> None:
    async with bridge() as state:
        fake.fail_next(*failure, count=10)  # type: ignore[arg-type]
        result = await state.agent.run(["time"], "time?")
    assert result.stop_reason == "error"
    assert not any("left out" in note for note in result.notes)
    assert len(model_requests(fake)) == expected_requests


async def test_an_overflow_mid_run_is_survived_once_by_compacting_the_history(
    bridge: Callable[[], AbstractAsyncContextManager[AppState]], fake: FakeLMStudio
) -> None:
    overflow = "Trying to keep the first 5000 tokens when context the overflows. However, the model is loaded with context length of only 4096 tokens"
    async with bridge() as state:
        fake.set_script(
            [
                Turn(tool_calls=[call("get_current_time", timezone="UTC")]),
                Turn(error=(400, overflow)),
                Turn(text="It is noon."),
            ]
        )
        result = await state.agent.run(["time"], "time?")
    assert (result.stop_reason, result.answer) == ("completed", "It is noon.")
    assert result.assists["context_overflow_retries"] == 1


async def test_a_call_written_as_text_is_run_and_its_result_sent_as_a_message(
    bridge: Callable[[], AbstractAsyncContextManager[AppState]], fake: FakeLMStudio
) -> None:
    async with bridge() as state:
        fake.set_script(
            [
                Turn(text='<tool_call>{"name": "get_current_time", "arguments": {"timezone": "UTC"}}</tool_call>'),
                Turn(text="It is noon."),
            ]
        )
        result = await state.agent.run(["time"], "time?")
    assert [(c.name, c.ok) for c in result.tool_calls] == [("get_current_time", True)]
    assert result.assists == {"tool_calls_from_text": 1} and result.answer == "It is noon."
    last = model_requests(fake)[-1].body
    items = last["input"] if "input" in last else last["messages"]
    assert items[-1]["role"] == "user" and items[-1]["content"].startswith("Result of get_current_time:")
