"""The direct LM Studio tools, through an in-process MCP client, against the scripted stand-in."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager

import pytest
from mcp import Client

from tests.support.bridge import bridge_settings, in_process_bridge, text_of
from tests.support.fake_lmstudio import FakeLMStudio, FakeModel, Turn

Bridge = Callable[[], AbstractAsyncContextManager[Client]]

DIRECT_TOOLS = {
    "health_check",
    "list_models",
    "get_current_model",
    "chat_completion",
    "text_completion",
    "generate_embeddings",
    "create_response",
}


@pytest.fixture
def fake() -> Iterator[FakeLMStudio]:
    with FakeLMStudio() as server:
        yield server


@pytest.fixture
def bridge(fake: FakeLMStudio) -> Callable[[], AbstractAsyncContextManager[Client]]:
    # Tests enter the bridge themselves: anyio task groups must be exited by the task that
    # entered them, which an async fixture's separate set-up and tear-down tasks do not do.
    return lambda: in_process_bridge(bridge_settings(fake.url))


async def test_every_direct_tool_is_listed_with_a_description(bridge: Bridge) -> None:
    async with bridge() as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert DIRECT_TOOLS <= set(tools)
        for name in DIRECT_TOOLS:
            assert tools[name].description, name


async def test_health_check_reports_models_and_loaded_state(bridge: Bridge, fake: FakeLMStudio) -> None:
    async with bridge() as client:
        result = await client.call_tool("health_check", {})
        assert not result.is_error
        assert fake.url in text_of(result)
        assert result.structured_content["loaded"] == ["qwen/qwen3-coder-30b"]
        assert result.structured_content["models"] == 3


async def test_health_check_against_an_unreachable_port_is_a_clear_error() -> None:
    settings = bridge_settings("http://127.0.0.1:9", LMSTUDIO_RETRY_ATTEMPTS="1")
    async with in_process_bridge(settings) as client:
        result = await client.call_tool("health_check", {})
    assert result.is_error
    text = text_of(result)
    assert text.startswith("Error:")
    assert "http://127.0.0.1:9" in text
    assert "LM Studio" in text and "start" in text.lower()


async def test_list_models_shows_type_state_and_context_length(bridge: Bridge) -> None:
    async with bridge() as client:
        result = await client.call_tool("list_models", {})
        rows = {row["id"]: row for row in result.structured_content["models"]}
        assert rows["qwen/qwen3-coder-30b"] == {
            "id": "qwen/qwen3-coder-30b",
            "server": "lmstudio",
            "type": "llm",
            "state": "loaded",
            "max_context_length": 262144,
            "loaded_context_length": None,
            "loaded_instances": [{"id": "qwen/qwen3-coder-30b", "context_length": None}],
            "trained_for_tool_use": None,
        }
        assert rows["text-embedding-nomic-embed-text-v1.5"]["type"] == "embeddings"


async def test_get_current_model_names_the_loaded_model_without_generating(
    bridge: Bridge, fake: FakeLMStudio
) -> None:
    async with bridge() as client:
        result = await client.call_tool("get_current_model", {})
        assert result.structured_content["model"] == "qwen/qwen3-coder-30b"
        assert fake.generation_requests() == []


async def test_chat_completion_answers_without_its_reasoning(bridge: Bridge, fake: FakeLMStudio) -> None:
    async with bridge() as client:
        fake.set_script([Turn(text="<think>count the letters</think>There are 3.", reasoning="hidden")])
        result = await client.call_tool("chat_completion", {"prompt": "How many r in strawberry?"})
        assert not result.is_error
        assert text_of(result) == "There are 3."
        assert "count the letters" in result.structured_content["reasoning"]
        sent = fake.generation_requests()[0].body
        assert sent["model"] == "qwen/qwen3-coder-30b"
        assert sent["messages"][-1] == {"role": "user", "content": "How many r in strawberry?"}


async def test_chat_completion_sends_the_system_prompt_and_the_named_model(
    bridge: Bridge, fake: FakeLMStudio
) -> None:
    async with bridge() as client:
        fake.set_script([Turn(text="ok")])
        await client.call_tool(
            "chat_completion",
            {"prompt": "hi", "system_prompt": "Be terse.", "model": "mistralai/magistral-small-2509", "max_tokens": 50},
        )
        sent = fake.generation_requests()[0].body
        assert sent["model"] == "mistralai/magistral-small-2509"
        assert sent["messages"][0] == {"role": "system", "content": "Be terse."}
        assert sent["max_tokens"] == 50


async def test_a_model_that_does_not_exist_fails_with_the_available_list_and_no_generation(
    bridge: Bridge, fake: FakeLMStudio
) -> None:
    async with bridge() as client:
        result = await client.call_tool("chat_completion", {"prompt": "hi", "model": "qwen3-coder-30b"})
        assert result.is_error
        text = text_of(result)
        assert "Model 'qwen3-coder-30b' not found" in text
        assert "Available:" in text and "qwen/qwen3-coder-30b" in text
        assert "Did you mean qwen/qwen3-coder-30b" in text
        assert fake.generation_requests() == []


async def test_an_embedding_model_cannot_chat(bridge: Bridge) -> None:
    async with bridge() as client:
        result = await client.call_tool(
            "chat_completion", {"prompt": "hi", "model": "text-embedding-nomic-embed-text-v1.5"}
        )
        assert result.is_error
        assert "embeddings" in text_of(result)


async def test_text_completion_returns_the_continuation(bridge: Bridge, fake: FakeLMStudio) -> None:
    async with bridge() as client:
        fake.set_script([Turn(text="    return n")])
        result = await client.call_tool("text_completion", {"prompt": "def f(n):\n", "stop": ["\n\n"]})
        assert not result.is_error
        assert text_of(result) == "    return n"
        sent = fake.generation_requests()[0]
        assert sent.path == "/v1/completions"
        assert sent.body["stop"] == ["\n\n"]


async def test_generate_embeddings_uses_an_embedding_model_for_a_list(bridge: Bridge, fake: FakeLMStudio) -> None:
    async with bridge() as client:
        result = await client.call_tool("generate_embeddings", {"text": ["first", "second"]})
        assert not result.is_error
        data = result.structured_content
        assert data["model"] == "text-embedding-nomic-embed-text-v1.5"
        assert len(data["embeddings"]) == 2
        assert data["dimensions"] == len(data["embeddings"][0]) > 0


async def test_generate_embeddings_refuses_an_empty_list(bridge: Bridge) -> None:
    async with bridge() as client:
        result = await client.call_tool("generate_embeddings", {"text": []})
        assert result.is_error


async def test_create_response_returns_an_id_that_continues_the_conversation(
    bridge: Bridge, fake: FakeLMStudio
) -> None:
    async with bridge() as client:
        fake.set_script([Turn(text="Hello, Ada."), Turn(text="Your name is Ada.")])
        first = await client.call_tool("create_response", {"input": "My name is Ada."})
        response_id = first.structured_content["response_id"]
        assert response_id in text_of(first)
        second = await client.call_tool(
            "create_response", {"input": "What is my name?", "previous_response_id": response_id}
        )
        assert not second.is_error
        assert second.structured_content["text"] == "Your name is Ada."
        assert fake.generation_requests()[1].body["previous_response_id"] == response_id


async def test_an_unknown_previous_response_id_is_reported_not_raised(bridge: Bridge) -> None:
    async with bridge() as client:
        result = await client.call_tool("create_response", {"input": "hi", "previous_response_id": "resp_nope"})
        assert result.is_error
        assert text_of(result).startswith("Error:")


async def test_out_of_range_arguments_are_rejected_before_any_request(bridge: Bridge, fake: FakeLMStudio) -> None:
    async with bridge() as client:
        result = await client.call_tool("chat_completion", {"prompt": "hi", "temperature": 5})
        assert result.is_error
        assert "temperature" in text_of(result)
        assert fake.generation_requests() == []


async def test_lm_studio_errors_reach_claude_as_actionable_text(bridge: Bridge, fake: FakeLMStudio) -> None:
    async with bridge() as client:
        fake.set_script([Turn(error=(400, "Trying to keep the first 9000 tokens when context the overflows"))])
        result = await client.call_tool("chat_completion", {"prompt": "a very long prompt"})
        assert result.is_error
        assert "context" in text_of(result).lower()
        assert "Traceback" not in text_of(result)


async def test_without_an_embedding_model_generate_embeddings_says_none_is_available_and_what_to_load() -> None:
    with FakeLMStudio(models=[FakeModel("qwen/qwen3-coder-30b")]) as fake:
        async with in_process_bridge(bridge_settings(fake.url)) as client:
            result = await client.call_tool("generate_embeddings", {"text": "hello"})
        assert fake.generation_requests() == []
    assert result.is_error
    assert text_of(result) == (
        "Error: No embedding model is available: LM Studio lists none. Download or load one in LM Studio "
        "(e.g. nomic-embed-text), or name one with `model`."
    )


async def test_a_made_up_instance_suffix_is_refused_like_any_unknown_model(bridge: Bridge, fake: FakeLMStudio) -> None:
    async with bridge() as client:
        result = await client.call_tool("chat_completion", {"prompt": "hi", "model": "qwen/qwen3-coder-30b:99999"})
    assert result.is_error
    assert text_of(result) == (
        "Error: Model 'qwen/qwen3-coder-30b:99999' not found. Available: qwen/qwen3-coder-30b, "
        "mistralai/magistral-small-2509, text-embedding-nomic-embed-text-v1.5. Did you mean qwen/qwen3-coder-30b?"
    )
    assert fake.generation_requests() == []
