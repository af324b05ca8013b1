"""Reasoning never leaks into an answer."""

from llm.reasoning import split_reasoning


def test_a_think_block_is_moved_out_of_the_answer() -> None:
    assert split_reasoning("<think>plan it</think>The answer is 4.") == ("The answer is 4.", "plan it")


def test_several_think_blocks_are_all_removed() -> None:
    answer, reasoning = split_reasoning("<think>a</think>One.<THINK>b</THINK> Two.")
    assert answer == "One. Two."
    assert reasoning == "a\n\nb"


def test_an_unterminated_think_is_all_reasoning() -> None:
    assert split_reasoning("Partial.<think>still thinking when cut") == ("Partial.", "still thinking when cut")


def test_a_closing_tag_without_an_opening_one_ends_prefilled_reasoning() -> None:
    assert split_reasoning("prefilled thoughts</think>Done.") == ("Done.", "prefilled thoughts")


def test_text_without_tags_is_unchanged() -> None:
    assert split_reasoning("  plain  ") == ("plain", "")
