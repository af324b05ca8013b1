"""The loop guard: a loop is the same call with the same result; a repeated failure gets one hint first."""

from __future__ import annotations

from llm.results import ToolCall
from tools.agent.loop_guard import ANY_RESULT_FACTOR, HINT, LoopGuard

READ = ToolCall("c", "read_file", '{"path": "a"}')


def test_the_same_call_with_the_same_result_is_held_back_at_the_limit() -> None:
    guard = LoopGuard(3)
    for _ in range(2):
        assert not guard.held_back(READ)
        guard.record(READ, "same text", ok=True)
    assert guard.held_back(ToolCall("d", "read_file", '{ "path" : "a" }'))  # spacing does not matter


def test_the_same_call_whose_result_changes_is_work_not_a_loop() -> None:
    guard = LoopGuard(3)
    for tick in range(8):
        assert not guard.held_back(READ)
        guard.record(READ, f"build log, step {tick}", ok=True)


def test_a_call_repeated_without_end_stops_whatever_its_results() -> None:
    guard = LoopGuard(3)
    for tick in range(3 * ANY_RESULT_FACTOR):
        assert not guard.held_back(READ)
        guard.record(READ, f"tick {tick}", ok=True)
    assert guard.held_back(READ)


def test_a_call_that_fails_the_same_way_twice_gets_one_hint_then_is_held_back() -> None:
    guard = LoopGuard(3)
    assert guard.record(READ, "Error: no such file", ok=False) == ""
    assert guard.record(READ, "Error: no such file", ok=False) == HINT
    assert guard.held_back(READ)
