"""An MCP server with 60 plausible tools, of which a task needs one (python -m tests.support.many_tools_server).

For the weak-model suite's "many tools" mode: a small model offered this many tools picks badly. The
tools cover weather, finance, travel, calendar, messaging, text, units, shopping, news and home; each
has a realistic description and JSON schema, and answers with plausible, deterministic data.

One answer is verifiable: ``get_stock_quote`` returns a ``quote_id`` derived from the secret seed in
``MANY_TOOLS_SEED`` (set it per run in the server's ``env``), so only a run that really called it can
quote it; ``quote_id(seed, symbol)`` computes the expected value. Tools are listed in alphabetical
order, as many servers list them.

Written with the SDK's low-level ``Server`` because the tools are data (name, description, schema),
not functions whose signatures would make the schemas.
"""

from __future__ import annotations

import hashlib
import json
import os

import anyio
import mcp.types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

__all__ = ["QUOTE_TOOL", "SEED_VARIABLE", "TOOLS", "quote_id"]

SEED_VARIABLE = "MANY_TOOLS_SEED"
QUOTE_TOOL = "get_stock_quote"

S = {"type": "string"}
I = {"type": "integer"}
N = {"type": "number"}
B = {"type": "boolean"}


def _s(description: str) -> dict[str, object]:
    return {**S, "description": description}


def _enum(*values: str) -> dict[str, object]:
    return {"type": "string", "enum": list(values)}


# name: (description, properties, required, a sample answer)
_TABLE: dict[str, tuple[str, dict[str, dict[str, object]], list[str], str]] = {
    "get_weather": (
        "Current weather conditions for a city: temperature, sky, wind.",
        {"city": _s("City name, e.g. 'Lisbon'"), "units": _enum("metric", "imperial")},
        ["city"], "Partly cloudy, 19 °C, wind 12 km/h NW"),
    "get_weather_forecast": (
        "Daily weather forecast for a city for the next N days.",
        {"city": _s("City name"), "days": {**I, "minimum": 1, "maximum": 10}},
        ["city", "days"], "Mon 21/14 °C sun; Tue 18/12 °C showers"),
    "get_air_quality": (
        "Air quality index (AQI) and main pollutant for a city.",
        {"city": _s("City name")}, ["city"], "AQI 42 (good), main pollutant PM2.5"),
    "get_sunrise_sunset": (
        "Sunrise and sunset times for a city on a date.",
        {"city": _s("City name"), "date": _s("YYYY-MM-DD")}, ["city"], "sunrise 06:51, sunset 19:34"),
    "convert_currency": (
        "Convert an amount of money from one currency to another at today's rate.",
        {"amount": N, "from_currency": _s("ISO code, e.g. USD"), "to_currency": _s("ISO code, e.g. EUR")},
        ["amount", "from_currency", "to_currency"], "100.00 USD = 91.84 EUR"),
    "get_exchange_rate": (
        "Today's exchange rate between two currencies.",
        {"base": _s("ISO code"), "quote": _s("ISO code")}, ["base", "quote"], "1 USD = 0.9184 EUR"),
    QUOTE_TOOL: (
        "Latest real-time price of a listed stock or share, by ticker symbol, with the quote id of the price.",
        {"symbol": _s("Ticker symbol, e.g. 'AAPL'")}, ["symbol"], ""),
    "get_stock_history": (
        "Daily closing prices of a stock over the last N trading days.",
        {"symbol": _s("Ticker symbol"), "days": {**I, "minimum": 1, "maximum": 365}},
        ["symbol", "days"], "closes: 181.20, 183.05, 182.77"),
    "get_company_profile": (
        "Company profile by ticker symbol: name, sector, headquarters, employees.",
        {"symbol": _s("Ticker symbol")}, ["symbol"], "Industrial conglomerate, HQ Springfield, 12,400 employees"),
    "get_market_news": (
        "Recent market news articles about a company or the market.",
        {"symbol": _s("Ticker symbol, optional"), "limit": I}, [], "3 articles: earnings beat; new CFO; buyback"),
    "get_crypto_price": (
        "Current price of a cryptocurrency in a fiat currency.",
        {"coin": _s("e.g. 'bitcoin'"), "currency": _s("ISO code")}, ["coin"], "1 BTC = 61,240 USD"),
    "calculate_loan_payment": (
        "Monthly payment of a fixed-rate loan.",
        {"principal": N, "annual_rate": N, "years": I}, ["principal", "annual_rate", "years"],
        "monthly payment 1,342.05"),
    "search_flights": (
        "Search flights between two airports on a date, cheapest first.",
        {"origin": _s("IATA code"), "destination": _s("IATA code"), "date": _s("YYYY-MM-DD")},
        ["origin", "destination", "date"], "TP1351 07:10 189 EUR; FR8352 13:45 74 EUR"),
    "get_flight_status": (
        "Live status of a flight by flight number.",
        {"flight_number": _s("e.g. 'LH400'")}, ["flight_number"], "On time, gate B22, departs 14:05"),
    "search_hotels": (
        "Search hotels in a city for given dates.",
        {"city": S, "check_in": _s("YYYY-MM-DD"), "nights": I}, ["city", "check_in"], "Hotel Aurora 112 EUR/night"),
    "get_train_times": (
        "Next train departures between two stations.",
        {"from_station": S, "to_station": S}, ["from_station", "to_station"], "08:02, 08:32, 09:02"),
    "get_visa_requirements": (
        "Visa requirements for a passport holder travelling to a country.",
        {"passport_country": S, "destination_country": S}, ["passport_country", "destination_country"],
        "visa-free for 90 days"),
    "get_airport_info": (
        "Airport name, city, terminals and timezone by IATA code.",
        {"iata_code": _s("e.g. 'LIS'")}, ["iata_code"], "Lisbon Humberto Delgado, 2 terminals"),
    "create_calendar_event": (
        "Create an event in the user's calendar.",
        {"title": S, "start": _s("ISO 8601 date-time"), "duration_minutes": I}, ["title", "start"],
        "event created: evt_2041"),
    "list_calendar_events": (
        "List the user's calendar events on a date.",
        {"date": _s("YYYY-MM-DD")}, ["date"], "09:30 stand-up; 14:00 design review"),
    "delete_calendar_event": ("Delete a calendar event by id.", {"event_id": S}, ["event_id"], "deleted"),
    "create_reminder": (
        "Create a reminder that notifies the user at a time.",
        {"text": S, "at": _s("ISO 8601 date-time")}, ["text", "at"], "reminder set: rem_77"),
    "list_todos": (
        "List the user's to-do items.",
        {"status": _enum("open", "done", "all")}, [], "3 open: taxes, dentist, tyres"),
    "add_todo": (
        "Add an item to the user's to-do list.",
        {"title": S, "due": _s("YYYY-MM-DD, optional")}, ["title"], "added: todo_318"),
    "complete_todo": ("Mark a to-do item as done.", {"todo_id": S}, ["todo_id"], "marked done"),
    "set_timer": ("Start a countdown timer.", {"minutes": {**I, "minimum": 1}, "label": S}, ["minutes"], "started"),
    "send_email": (
        "Send an email from the user's account.",
        {"to": S, "subject": S, "body": S}, ["to", "subject", "body"], "sent, message id m_5521"),
    "search_emails": (
        "Search the user's mailbox.",
        {"query": S, "limit": I}, ["query"], "2 matches: 'Invoice May', 'Re: invoice'"),
    "send_sms": (
        "Send a text message to a phone number.",
        {"phone": _s("E.164, e.g. +351912345678"), "text": S}, ["phone", "text"], "queued"),
    "post_slack_message": (
        "Post a message to a Slack channel.",
        {"channel": _s("e.g. '#general'"), "text": S}, ["channel", "text"], "posted"),
    "list_slack_channels": ("List the Slack channels the user has joined.", {}, [], "#general, #random, #deploys"),
    "get_contact": (
        "Look up a contact's email address and phone number by name.",
        {"name": S}, ["name"], "Ana Lima, ana@example.org, +351 912 000 111"),
    "translate_text": (
        "Translate text into another language.",
        {"text": S, "target_language": _s("ISO 639-1 code")}, ["text", "target_language"], "Bom dia"),
    "detect_language": ("Detect the language a text is written in.", {"text": S}, ["text"], "pt (0.98)"),
    "summarize_text": (
        "Summarize a text in a few sentences.",
        {"text": S, "max_sentences": I}, ["text"], "A short summary."),
    "check_spelling": ("Find and correct spelling mistakes in a text.", {"text": S}, ["text"], "no mistakes found"),
    "count_words": ("Count the words and characters of a text.", {"text": S}, ["text"], "42 words, 251 characters"),
    "define_word": ("Dictionary definition of an English word.", {"word": S}, ["word"], "noun: a unit of language"),
    "convert_units": (
        "Convert a value between units of length, mass, volume or temperature.",
        {"value": N, "from_unit": _s("e.g. 'mi'"), "to_unit": _s("e.g. 'km'")}, ["value", "from_unit", "to_unit"],
        "26.2 mi = 42.16 km"),
    "calculate_expression": (
        "Evaluate an arithmetic expression.",
        {"expression": _s("e.g. '(3+4)*2'")}, ["expression"], "14"),
    "generate_password": (
        "Generate a random password.",
        {"length": {**I, "minimum": 8}, "symbols": B}, ["length"], "k7#Qm2!xPz9w"),
    "generate_uuid": ("Generate a random UUID (version 4).", {}, [], "0b6f1c9e-5d1a-4c0e-9a43-2f7f0f7f5a11"),
    "get_random_number": (
        "A random integer between min and max, inclusive.",
        {"min": I, "max": I}, ["min", "max"], "17"),
    "convert_timezone": (
        "Convert a time from one timezone to another.",
        {"time": _s("HH:MM"), "from_tz": _s("IANA name"), "to_tz": _s("IANA name")}, ["time", "from_tz", "to_tz"],
        "14:30 UTC = 23:30 Asia/Tokyo"),
    "track_package": (
        "Tracking status of a parcel by tracking number.",
        {"tracking_number": S, "carrier": S}, ["tracking_number"], "in transit, Leipzig hub, due Thursday"),
    "search_products": (
        "Search an online shop's catalogue.",
        {"query": S, "max_price": N}, ["query"], "USB-C hub 29.99; HDMI cable 9.99"),
    "get_product_reviews": (
        "Customer reviews of a product.",
        {"product_id": S}, ["product_id"], "4.4/5 from 1,203 reviews"),
    "compare_prices": (
        "Compare a product's price across online stores.",
        {"product_name": S}, ["product_name"], "StoreA 24.90, StoreB 26.50, StoreC 23.75"),
    "get_store_hours": (
        "Opening hours of a store in a city.",
        {"store_name": S, "city": S}, ["store_name", "city"], "Mon-Sat 09:00-21:00, Sun closed"),
    "estimate_shipping": (
        "Estimate the cost and time of shipping a parcel.",
        {"weight_kg": N, "destination_country": S}, ["weight_kg", "destination_country"], "14.50 EUR, 3-5 days"),
    "get_news_headlines": (
        "Top news headlines by topic and country.",
        {"topic": S, "country": _s("ISO 3166 code")}, [], "1. Rates held; 2. New rail line opens"),
    "search_web": ("Search the web and return the top results.", {"query": S}, ["query"], "3 results"),
    "get_wikipedia_summary": (
        "Summary of a Wikipedia article by title.",
        {"title": S}, ["title"], "A short article summary."),
    "get_holiday_calendar": (
        "Public holidays of a country in a year.",
        {"country": S, "year": I}, ["country", "year"], "01-01 New Year; 04-25 Freedom Day"),
    "get_sports_scores": (
        "Scores of a league's games on a date.",
        {"league": S, "date": _s("YYYY-MM-DD")}, ["league"], "Benfica 2-1 Porto"),
    "get_movie_showtimes": (
        "Showtimes of a movie in a city's cinemas.",
        {"city": S, "movie": S}, ["city"], "18:40, 21:15 at Cinema Ideal"),
    "find_recipes": (
        "Find recipes that use the given ingredients.",
        {"ingredients": {"type": "array", "items": S}, "diet": _enum("any", "vegetarian", "vegan")},
        ["ingredients"], "Tomato risotto (35 min); Shakshuka (25 min)"),
    "get_nutrition_facts": (
        "Calories and macronutrients of a food per given grams.",
        {"food": S, "grams": N}, ["food"], "165 kcal, 31 g protein, 3.6 g fat"),
    "set_thermostat": (
        "Set the target temperature of a room's thermostat.",
        {"temperature_c": N, "room": S}, ["temperature_c"], "set to 21.0 °C"),
    "turn_on_lights": (
        "Turn on the lights in a room at a brightness.",
        {"room": S, "brightness": {**I, "minimum": 1, "maximum": 100}}, ["room"], "lights on"),
}


def _tool(name: str) -> types.Tool:
    description, properties, required, _ = _TABLE[name]
    schema: dict[str, object] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return types.Tool(name=name, description=description, input_schema=schema)


TOOLS: list[types.Tool] = [_tool(name) for name in sorted(_TABLE)]


def quote_id(seed: str, symbol: str) -> str:
    """The quote id ``get_stock_quote`` gives ``symbol`` under ``seed``: unguessable without the seed."""
    return "Q-" + hashlib.sha256(f"{seed}:{symbol.strip().upper()}".encode()).hexdigest()[:10]


def _price(seed: str, symbol: str) -> float:
    digest = hashlib.sha256(f"price:{seed}:{symbol.strip().upper()}".encode()).digest()
    return round(50 + int.from_bytes(digest[:4], "big") % 40000 / 100, 2)


def answer(name: str, arguments: dict[str, object], seed: str) -> str:
    """What tool ``name`` answers to ``arguments`` (JSON text)."""
    if name == QUOTE_TOOL:
        symbol = str(arguments.get("symbol", ""))
        return json.dumps({"symbol": symbol.upper(), "price": _price(seed, symbol), "currency": "USD",
                           "quote_id": quote_id(seed, symbol)})
    return json.dumps({"tool": name, "arguments": arguments, "result": _TABLE[name][3]}, ensure_ascii=False)


async def _list_tools(ctx: object, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
    return types.ListToolsResult(tools=TOOLS)


async def _call_tool(ctx: object, params: types.CallToolRequestParams) -> types.CallToolResult:
    if params.name not in _TABLE:
        return types.CallToolResult(content=[types.TextContent(type="text", text=f"Unknown tool: {params.name}")],
                                    is_error=True)
    text = answer(params.name, dict(params.arguments or {}), os.environ.get(SEED_VARIABLE, ""))
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)])


server: Server = Server("many-tools", on_list_tools=_list_tools, on_call_tool=_call_tool)  # type: ignore[arg-type]


async def _serve() -> None:
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(_serve)
