"""The scripted weak models: how they read a request, decide, and write their calls with their habits."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.support.conversation_view import OfferedTool, View, read_request
from tests.support.fake_lmstudio import FakeLMStudio, RecordedRequest, Turn
from tests.support.weak_model_suite import SuiteReport, Task, TaskOutcome, run_task, select
from tests.support.weak_models import (
    Call,
    Habits,
    Step,
    WeakModel,
    fill_from_schema,
    looks_like_error,
    plan,
    relevance_choice,
)

READ = OfferedTool("read_text_file", "Read a file", {"type": "object", "properties": {"path": {"type": "string"}}})
ARGS = {"path": "/w/notes.txt", "head": 3}


def _view(*observations: str, tools: tuple[OfferedTool, ...] = (READ,), prompt: str = "Read /w/notes.txt") -> View:
    return View(tools=tools, prompt=prompt, observations=observations)


def _reader(habits: Habits = Habits()) -> WeakModel:
    steps = [Step("read_text_file", ARGS, done=lambda o: "code is" in o)]
    return WeakModel(plan(steps, lambda outs: f"Found: {outs[-1].split('code is ')[1]}", "none"), habits)


@pytest.mark.parametrize(
    ("call_format", "text"),
    [
        ("hermes",
         '<tool_call>\n{"name": "read_text_file", "arguments": {"path": "/w/notes.txt", "head": 3}}\n</tool_call>'),
        ("qwen3_coder", "<tool_call>\n<function=read_text_file>\n<parameter=path>\n/w/notes.txt\n</parameter>\n"
                        "<parameter=head>\n3\n</parameter>\n</function>\n</tool_call>"),
        ("llama", '<function=read_text_file>{"path": "/w/notes.txt", "head": 3}</function>'),
        ("mistral", '[TOOL_CALLS][{"name": "read_text_file", "arguments": {"path": "/w/notes.txt", "head": 3}}]'),
        ("bare_json", '{"name": "read_text_file", "arguments": {"path": "/w/notes.txt", "head": 3}}'),
        ("fenced_json", "I'll use the read_text_file tool.\n```json\n"
                        '{"name": "read_text_file", "arguments": {"path": "/w/notes.txt", "head": 3}}\n```'),
    ],
)
def test_a_text_calling_model_writes_its_call_into_the_message_in_its_familys_format(
    call_format: str, text: str
) -> None:
    turn = _reader(Habits(call_format=call_format)).respond(_view())  # type: ignore[arg-type]
    assert turn.tool_calls == [] and turn.text == text


def test_a_native_model_puts_its_call_in_tool_calls() -> None:
    turn = _reader().respond(_view())
    assert turn.text == "" and turn.tool_calls == [("read_text_file", json.dumps(ARGS))]


def test_stringified_arguments_turn_numbers_booleans_and_one_item_lists_into_strings() -> None:
    arguments = {"head": 3, "ratio": 0.5, "dryRun": True, "names": ["Heron"], "edits": [{"n": 1}], "path": "/a"}
    model = WeakModel(lambda view: Call("read_text_file", arguments), Habits(arguments="stringified"))
    ((_, written),) = model.respond(_view()).tool_calls
    assert json.loads(str(written)) == {"head": "3", "ratio": "0.5", "dryRun": "true", "names": "Heron",
                                        "edits": [{"n": "1"}], "path": "/a"}


@pytest.mark.parametrize(
    ("habit", "written"),
    [
        ("trailing_comma", '{"path": "/w/notes.txt", "head": 3,}'),
        ("single_quotes", "{'path': '/w/notes.txt', 'head': 3}"),
        ("unclosed_brace", '{"path": "/w/notes.txt", "head": 3'),
    ],
)
def test_malformed_argument_habits_write_json_that_does_not_parse(habit: str, written: str) -> None:
    ((_, text),) = _reader(Habits(arguments=habit)).respond(_view()).tool_calls  # type: ignore[arg-type]
    assert text == written
    with pytest.raises(json.JSONDecodeError):
        json.loads(str(text))


@pytest.mark.parametrize(
    ("habits", "offered", "written"),
    [
        (Habits(names="wrong_case"), "read_text_file", "Read_Text_File"),
        (Habits(names="dashes"), "read_text_file", "read-text-file"),
        (Habits(names="drop_prefix"), "filesystem__read_text_file", "read_text_file"),
        (Habits(names="add_prefix", prefix="filesystem"), "read_text_file", "filesystem__read_text_file"),
        (Habits(names="add_prefix", prefix="filesystem"), "filesystem__read_text_file", "filesystem__read_text_file"),
        (Habits(), "filesystem__read_text_file", "filesystem__read_text_file"),
    ],
)
def test_name_habits_start_from_the_offered_name_and_misspell_it(habits: Habits, offered: str, written: str) -> None:
    view = _view(tools=(OfferedTool(offered, "", {}),))
    ((name, _),) = _reader(habits).respond(view).tool_calls
    assert name == written


def test_a_model_answers_only_from_what_came_back_and_retries_then_gives_up() -> None:
    model = _reader()
    assert model.respond(_view("Team notes\nThe code is ZEBRA-9")).text == "Found: ZEBRA-9"
    # A failed call is retried the same way; after three failures the model says it could not do it.
    assert model.respond(_view("Error: no such tool")).tool_calls
    assert model.respond(_view("Error: no such tool", "Error: no such tool")).tool_calls
    gave_up = model.respond(_view("Error: a", "Error: b", "Error: no such tool"))
    assert gave_up.text == "I could not complete the task. The last tool result was: Error: no such tool"


def test_a_model_whose_tool_is_not_offered_says_so_instead_of_inventing_an_answer() -> None:
    turn = _reader().respond(_view(tools=(OfferedTool("write_file", "", {}),)))
    assert turn.tool_calls == [] and "read_text_file is not among my tools" in turn.text


def test_a_model_without_tool_training_calls_only_tools_the_prompt_names() -> None:
    habits = Habits(call_format="hermes", tools_from="prompt")
    unaware = _reader(habits).respond(_view(tools=(), prompt="You are an agent. Read /w/notes.txt"))
    described = _reader(habits).respond(_view(tools=(), prompt="Tools: read_text_file(path): read a file. Read it."))
    assert "not among my tools" in unaware.text
    assert described.text.startswith('<tool_call>\n{"name": "read_text_file"')


def test_relevance_choice_with_a_short_attention_span_misses_the_right_tool_listed_late() -> None:
    tools = tuple(OfferedTool(f"tool_{i}", "unrelated work", {}) for i in range(20)) + (
        OfferedTool("compare_prices", "Compare a product's price across stores", {}),
        OfferedTool("get_stock_quote", "Latest price of a stock or share, with its quote id", {}),
    )
    query = "ACME share price and quote id"
    assert relevance_choice(query)(_view(tools=tools)) == "get_stock_quote"
    assert relevance_choice(query, attention_span=16)(_view(tools=tools)) is None
    assert relevance_choice(query, attention_span=16)(_view(tools=tools[-2:])) == "get_stock_quote"
    distractor_first = tools[20:21] + tools[:20] + tools[21:]
    assert relevance_choice(query, attention_span=16)(_view(tools=distractor_first)) == "compare_prices"


def test_arguments_from_a_schema_alone_fill_what_is_required() -> None:
    tool = OfferedTool("get_weather_forecast", "", {"properties": {"city": {"type": "string"},
                                                                   "days": {"type": "integer"}},
                                                    "required": ["city", "days"]})
    assert fill_from_schema("ACME")(_view(tools=(tool,)), tool.name, []) == {"city": "ACME", "days": 1}


def test_error_like_results_are_recognised_whatever_the_bridge_prefix() -> None:
    assert all(looks_like_error(t) for t in ("Error: x", "error (reported by the tool): y", "Tool error: z"))
    assert not looks_like_error("The error code is E-1")


def test_the_view_of_a_chat_request_splits_prompt_tools_and_results() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "You are an agent."},
            {"role": "user", "content": "Read notes"},
            {"role": "assistant", "content": "", "tool_calls": [{"id": "c1"}]},
            {"role": "tool", "tool_call_id": "c1", "content": "file text"},
            {"role": "user", "content": "Result of read_text_file: more text"},
        ],
        "tools": [{"type": "function", "function": {"name": "read_text_file", "description": "Read"}}],
    }
    view = read_request(RecordedRequest("POST", "/v1/chat/completions", body, 0, {}))
    assert view.prompt == "You are an agent.\nRead notes"
    assert view.observations == ("file text", "Result of read_text_file: more text")
    assert [t.name for t in view.tools] == ["read_text_file"]


def test_the_view_of_a_responses_request_includes_the_conversation_the_server_stored() -> None:
    views: list[View] = []
    with FakeLMStudio() as fake:

        def script(request: RecordedRequest) -> Turn:
            views.append(read_request(request, fake.conversation))
            return Turn(text='<tool_call>{"name": "read_text_file"}</tool_call>')

        fake.set_script(script)
        tool = {"type": "function", "name": "read_text_file", "description": "Read", "parameters": {}}
        first = httpx.post(f"{fake.url}/v1/responses", json={"input": "Read notes", "instructions": "Be brief.",
                                                              "tools": [tool]}).json()
        followup = [{"type": "function_call_output", "call_id": "x", "output": "file text"},
                    {"role": "user", "content": [{"type": "input_text", "text": "and a note"}]}]
        httpx.post(f"{fake.url}/v1/responses", json={"input": followup, "previous_response_id": first["id"],
                                                      "instructions": "Be brief."})
    assert views[0] == View(tools=(OfferedTool("read_text_file", "Read", {}),), prompt="Be brief.\nRead notes",
                            observations=())
    assert views[1].prompt == "Be brief.\nRead notes"
    assert views[1].observations == ("file text", "and a note")


def test_the_report_counts_completions_per_mode_and_api_and_says_why_runs_failed() -> None:
    def outcome(task: str, mode: str, api: str, ok: bool) -> TaskOutcome:
        return TaskOutcome(task, mode, api, ok, [] if ok else ["stop_reason loop_detected"], "completed", 2, [],
                           "", 0.1, ["calls read_text_file"])

    report = SuiteReport([outcome("control_read_file", "control", "responses", True),
                          outcome("control_read_file", "control", "chat", True),
                          outcome("b_args_x", "b_args", "responses", False),
                          outcome("b_args_x", "b_args", "chat", True)])
    assert report.rates("mode") == {"control": (2, 2), "b_args": (1, 2)}
    assert report.rates("api") == {"responses": (1, 2), "chat": (2, 2)}
    data = report.to_json()
    assert data["completed"] == 3 and data["runs"] == 4
    assert data["outcomes"][2]["why"] == "stop_reason loop_detected (model's last turn: calls read_text_file)"
    table = report.table()
    assert "| b_args | argument repair | 0/1 | 1/1 | 1/2 |" in table
    assert "| **all** | | 1/2 | 2/2 | 3/4 |" in table


def test_unknown_task_ids_are_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="no_such_task"):
        select(["control_read_file", "no_such_task"])
    assert [t.id for t in select(["control_read_file"])] == ["control_read_file"]


async def test_a_broken_task_is_reported_as_a_harness_error_not_as_a_bridge_failure(tmp_path: Path) -> None:
    def broken(workspace: object) -> object:
        raise OSError("disk full")

    task = Task("broken", "control", "", "", (), broken, broken)  # type: ignore[arg-type]
    outcome = await run_task(task, "chat", tmp_path, tmp_path)
    assert not outcome.success
    assert outcome.harness_error == "OSError: disk full"
    assert outcome.why == "harness error: OSError: disk full"
