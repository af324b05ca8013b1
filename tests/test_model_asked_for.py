"""End to end: the model a call names is the model that answers, through the bridge as a subprocess.

The stand-in plays LM Studio 0.4 (which loads a model on request) and 0.3 (which has no load API), with
substitution on: a request for a model that is not loaded is answered by the loaded one, and says so.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from mcp import Client

from tests.support.bridge import bridge_env, model_requests, subprocess_params, text_of, write_mcp_json
from tests.support.fake_lmstudio import FakeLMStudio, FakeModel, Turn

pytestmark = pytest.mark.slow

CODER = "qwen/qwen3-coder-30b"
THINKER = "qwen/qwen3-4b-thinking-2507"
NOMIC = "text-embedding-nomic-embed-text-v1.5"
BGE = "text-embedding-bge-small-en-v1.5"
MODELS = (
    FakeModel(CODER, loaded=True, max_context_length=262144, loaded_context_length=32768),
    FakeModel(THINKER, loaded=False, max_context_length=262144, loaded_context_length=8192),
    FakeModel(NOMIC, "embeddings", loaded=True, max_context_length=2048),
    FakeModel(BGE, "embeddings", loaded=False, max_context_length=512),
)
TIME_SERVER = {"command": sys.executable, "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]}


def bridge(fake: FakeLMStudio, mcp_json: Path | None = None, **extra: str) -> Client:
    return Client(subprocess_params(bridge_env(fake.url, mcp_json, **extra)), read_timeout_seconds=60)


@pytest.fixture
def mcp_json(tmp_path: Path) -> Path:
    return write_mcp_json(tmp_path / ".mcp.json", {"time": TIME_SERVER})


@pytest.fixture(params=["responses", "chat"])
def api(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def lmstudio_0_4() -> Iterator[FakeLMStudio]:
    with FakeLMStudio(lambda r: Turn(text="from the stand-in"), models=MODELS, lmstudio_version="0.4",
                      substitutes=True) as fake:
        yield fake


async def test_a_named_model_lm_studio_would_substitute_is_loaded_first_then_listed_with_its_context(
    lmstudio_0_4: FakeLMStudio,
) -> None:
    fake = lmstudio_0_4
    with anyio.fail_after(60):
        async with bridge(fake, MODEL_CONTEXT_TOKENS="16384") as client:
            before = await client.call_tool("health_check", {})
            answer = await client.call_tool("chat_completion", {"prompt": "hi", "model": THINKER})
            listed = await client.call_tool("list_models", {})
            after = await client.call_tool("health_check", {})
    assert before.structured_content["loaded_instances"] == [
        {"id": CODER, "context_length": 32768}, {"id": NOMIC, "context_length": 2048}
    ]
    assert not answer.is_error, text_of(answer)
    assert answer.structured_content["model"] == THINKER and "note" not in answer.structured_content
    # Loaded with the configured context length, and no ttl: that API takes none.
    assert fake.state.loads == [{"model": THINKER, "echo_load_config": True, "context_length": 16384}]
    row = next(r for r in listed.structured_content["models"] if r["id"] == THINKER)
    assert row["state"] == "loaded" and row["loaded_context_length"] == 16384
    assert row["loaded_instances"] == [{"id": THINKER, "context_length": 16384}]
    assert f"{THINKER} (context 16384)" in text_of(after)


async def test_with_loading_off_a_model_lm_studio_would_substitute_is_refused_before_generating(
    lmstudio_0_4: FakeLMStudio,
) -> None:
    with anyio.fail_after(60):
        async with bridge(lmstudio_0_4, LMSTUDIO_AUTO_LOAD="0") as client:
            refused = await client.call_tool("chat_completion", {"prompt": "hi", "model": THINKER})
    assert refused.is_error
    assert text_of(refused) == (
        f"Error: Model '{THINKER}' is not loaded, and LM Studio would answer with the loaded model ({CODER}) "
        "instead. The bridge loads models only with LMSTUDIO_AUTO_LOAD=1 (it is off): load it in LM Studio "
        f"(`lms load {THINKER}`), or set LMSTUDIO_AUTO_LOAD=1."
    )
    assert refused.structured_content["error"] == "ModelNotLoadedError"
    assert lmstudio_0_4.generation_requests() == [] and lmstudio_0_4.state.loads == []


async def test_every_direct_tool_refuses_an_answer_from_another_model_than_the_one_named() -> None:
    """LM Studio 0.3 has no load API: the request goes out, and the reply's `model` gives the substitution away."""
    with FakeLMStudio(lambda r: Turn(text="from the loaded model"), models=MODELS, substitutes=True) as fake:
        with anyio.fail_after(60):
            async with bridge(fake) as client:
                results = {
                    "chat_completion": await client.call_tool("chat_completion", {"prompt": "hi", "model": THINKER}),
                    "text_completion": await client.call_tool("text_completion", {"prompt": "hi", "model": THINKER}),
                    "create_response": await client.call_tool("create_response", {"input": "hi", "model": THINKER}),
                    "generate_embeddings": await client.call_tool("generate_embeddings", {"text": "hi", "model": BGE}),
                }
    for tool, result in results.items():
        assert result.is_error, tool
        assert result.structured_content["error"] == "ModelMismatchError", tool
        assert "MODEL_MISMATCH=note" in text_of(result), tool
    assert text_of(results["chat_completion"]).startswith(
        f"Error: LM Studio answered with model '{CODER}', not '{THINKER}' as asked"
    )


async def test_with_mismatch_set_to_note_the_answer_comes_back_with_a_note_and_without_model_always_a_note() -> None:
    with FakeLMStudio(lambda r: Turn(text="from the loaded model"), models=MODELS, substitutes=True) as fake:
        with anyio.fail_after(60):
            async with bridge(fake, MODEL_MISMATCH="note") as client:
                named = await client.call_tool("chat_completion", {"prompt": "hi", "model": THINKER})
            async with bridge(fake, DEFAULT_MODEL=THINKER) as client:
                default = await client.call_tool("chat_completion", {"prompt": "hi"})
    for result in (named, default):
        assert not result.is_error, text_of(result)
        assert result.structured_content["model"] == CODER
        assert CODER in result.structured_content["note"] and THINKER in result.structured_content["note"]
        assert text_of(result).startswith("from the loaded model\n\n[Note: LM Studio reports that")


async def test_an_autonomous_run_named_for_one_model_and_answered_by_another_stops_before_any_tool_runs(
    api: str, mcp_json: Path
) -> None:
    script = [Turn(tool_calls=[("get_current_time", {"timezone": "UTC"})]), Turn(text="done")]
    with FakeLMStudio(script, models=MODELS, substitutes=True, responses_api=api == "responses") as fake:
        with anyio.fail_after(60):
            async with bridge(fake, mcp_json) as client:
                refused = await client.call_tool(
                    "autonomous_with_mcp", {"mcp_name": "time", "task": "time?", "model": THINKER}
                )
            fake.set_script(script)
            async with bridge(fake, mcp_json, DEFAULT_MODEL=THINKER) as client:
                noted = await client.call_tool("autonomous_with_mcp", {"mcp_name": "time", "task": "time?"})
    assert refused.is_error
    data = refused.structured_content
    assert data["stop_reason"] == "error" and data["tool_calls"] == [] and data["answer"] == ""
    assert data["api"] == api
    assert f"LM Studio answered with model '{CODER}', not '{THINKER}'" in data["error"]
    assert not noted.is_error, text_of(noted)
    assert noted.structured_content["stop_reason"] == "completed"
    assert any("the default model" in n and CODER in n for n in noted.structured_content["notes"])
    # One request for the refused run (nothing after it), two for the noted one.
    assert len(model_requests(fake)) == 3


async def test_an_autonomous_run_loads_the_model_it_names_on_lm_studio_0_4(api: str, mcp_json: Path) -> None:
    script = [Turn(tool_calls=[("get_current_time", {"timezone": "UTC"})]), Turn(text="done")]
    with FakeLMStudio(script, models=MODELS, substitutes=True, lmstudio_version="0.4",
                      responses_api=api == "responses") as fake:
        with anyio.fail_after(60):
            async with bridge(fake, mcp_json) as client:
                result = await client.call_tool(
                    "autonomous_with_mcp", {"mcp_name": "time", "task": "time?", "model": THINKER}
                )
    assert not result.is_error, text_of(result)
    data = result.structured_content
    assert (data["stop_reason"], data["model"], data["api"]) == ("completed", THINKER, api)
    assert [load["model"] for load in fake.state.loads] == [THINKER]
    # The run's budget is the context the model was just loaded with.
    assert data["context"]["context_tokens"] == 8192 and data["context"]["source"] == "loaded"
