"""The context budget: where the context length comes from, what a round may produce, how outputs are cut."""

from __future__ import annotations

import asyncio

from llm.listing import ModelInfo
from llm.models import ResolvedModel
from tools.agent.budget import DEFAULT_CONTEXT_TOKENS, ContextBudget, default_round_tokens, shape


def model(**info: object) -> ResolvedModel:
    return ResolvedModel("m", "requested", ModelInfo("m", **info), asyncio.Semaphore(1))  # type: ignore[arg-type]


def test_the_loaded_context_is_the_budget_not_the_models_maximum() -> None:
    budget = ContextBudget.for_model(model(max_context_length=262144, loaded_context_length=8192), configured=None,
                                     max_tokens=None)
    assert (budget.context_tokens, budget.source, budget.output_tokens) == (8192, "loaded", 2048)


def test_without_a_reported_context_the_setting_then_a_small_default_apply() -> None:
    assert ContextBudget.for_model(model(), configured=16384, max_tokens=None).context_tokens == 16384
    unknown = ContextBudget.for_model(model(max_context_length=131072), configured=None, max_tokens=None)
    assert (unknown.context_tokens, unknown.source) == (DEFAULT_CONTEXT_TOKENS, "default")


def test_a_rounds_output_is_bounded_by_default_and_an_explicit_max_tokens_is_kept() -> None:
    assert [default_round_tokens(n) for n in (512, 4096, 32768, 262144)] == [256, 1024, 2048, 2048]
    assert ContextBudget.for_model(model(loaded_context_length=4096), configured=None, max_tokens=300).output_tokens == 300


def test_calibration_follows_what_the_server_counted_leaning_to_more_tokens() -> None:
    budget = ContextBudget(4096, "loaded", 1024)
    budget.calibrate(8000, 4000)  # 2 characters a token: CJK, code, JSON
    assert budget.chars_per_token == 2.0
    budget.calibrate(10000, 2000)  # 5 a token: plain English; the estimate moves up only halfway
    assert budget.chars_per_token == 3.5


def test_a_long_output_keeps_its_head_and_tail_and_says_how_to_ask_for_the_rest() -> None:
    text = "\n".join(f"line {i}" for i in range(5000)) + "\nFATAL: the last line"
    shaped, cut = shape(text, 2000, tool="read_text_file",
                        parameters={"properties": {"path": {}, "head": {}, "tail": {}}})
    assert cut and len(shaped) <= 2000
    assert shaped.startswith("line 0\n") and shaped.endswith("FATAL: the last line")
    assert "characters cut from the middle" in shaped and "call read_text_file again with `head`, `tail`" in shaped


def test_an_output_that_fits_is_left_alone() -> None:
    assert shape("short", 2000, tool="t", parameters={}) == ("short", False)
