"""Which tools are offered: all of a small set; of a big one, the most relevant and search_tools."""

from __future__ import annotations

from mcp.types import Tool

from tools.agent.tool_selection import SEARCH_TOOL, ToolOffer
from tools.downstream.toolset import build_toolset

NAMES = {
    "get_weather": "Current weather for a city",
    "convert_currency": "Convert an amount between currencies",
    "get_stock_quote": "Latest share price quote for a stock ticker",
    "translate_text": "Translate text between languages",
    "send_email": "Send an email message",
    "list_calendar_events": "Events in a calendar",
}
TOOLS = [Tool(name=n, description=d, input_schema={"type": "object", "properties": {"q": {"type": "string"}}})
         for n, d in NAMES.items()]


def toolset():  # type: ignore[no-untyped-def]
    return build_toolset({"box": TOOLS}, namespaced=False)[0]


def test_a_small_tool_set_is_offered_whole_without_search() -> None:
    offer = ToolOffer(toolset(), "anything", max_tools=16, max_chars=100_000)
    assert not offer.narrowed and offer.names() == list(NAMES)


def test_a_big_tool_set_offers_the_most_relevant_first_and_search_tools() -> None:
    offer = ToolOffer(toolset(), "What is ACME's share price right now?", max_tools=3, max_chars=100_000)
    assert offer.narrowed
    assert offer.names()[0] == "get_stock_quote" and offer.names()[-1] == SEARCH_TOOL
    assert len(offer.names()) == 3


def test_search_adds_the_tools_it_finds_to_the_offer() -> None:
    offer = ToolOffer(toolset(), "What is ACME's share price right now?", max_tools=3, max_chars=100_000)
    text = offer.search({"query": "translate a text to French"})
    assert "translate_text" in text and "translate_text" in offer.names()
    assert offer.search({}).startswith("Error: give search_tools a `query`")


def test_runs_on_the_same_tools_share_one_index_and_a_changed_description_gets_its_own() -> None:
    from tools.agent import tool_selection

    tool_selection._ranking_of.cache_clear()
    for _ in range(3):
        ToolOffer(toolset(), "share price", max_tools=3, max_chars=100_000)
    assert tool_selection._ranking_of.cache_info().misses == 1

    changed = [t.model_copy(update={"description": "Share price of a company"}) if t.name == "send_email" else t
               for t in TOOLS]
    offer = ToolOffer(build_toolset({"box": changed}, namespaced=False)[0], "share price of a company",
                      max_tools=3, max_chars=100_000)
    assert tool_selection._ranking_of.cache_info().misses == 2
    assert "send_email" in offer.names()  # ranked on the new description, not the cached one


def test_schemas_too_big_for_the_context_narrow_the_offer_too() -> None:
    offer = ToolOffer(toolset(), "send an email", max_tools=16, max_chars=600)
    assert offer.narrowed and offer.names()[0] == "send_email"


def test_prompted_instructions_describe_the_tools_and_the_call_format() -> None:
    offer = ToolOffer(toolset(), "x", max_tools=16, max_chars=100_000)
    text = offer.instructions("Base.", prompted=True)
    assert text.startswith("Base.") and "<tool_call>" in text and "- get_weather: Current weather" in text
    assert offer.instructions("Base.", prompted=False) == "Base."
