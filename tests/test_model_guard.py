"""The model asked for is the model that answers: the decision before a call, loading, and the check after it."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import respx

from llm.exceptions import LLMConnectionError, ModelLoadError, ModelMismatchError, ModelNotLoadedError
from llm.llm_client import ClientOptions, LLMClient
from llm.model_guard import GuardPolicy, ModelGuard, decide, same_model
from llm.backends import Backend
from llm.capabilities import ServerCapabilities
from llm.listing import LoadedInstance, ModelInfo
from llm.models import ModelCatalog, ResolvedModel
from llm.results import LoadResult

BASE = "http://lmstudio.test"

CODER = ModelInfo("qwen/qwen3-coder-30b", "llm", state="loaded", loaded_instances=("qwen/qwen3-coder-30b",))
THINKER = ModelInfo("qwen/qwen3-4b-thinking-2507", "llm", state="not-loaded")
NOMIC = ModelInfo("text-embedding-nomic-embed-text-v1.5", "embeddings", state="not-loaded")
UNREPORTED = ModelInfo("gemma-3-270m-it")


class Server:
    """A model list that a load changes, with a count of loads (what the catalog uses of a backend's client)."""

    base_url = BASE
    breaker_state = "closed"

    def __init__(self, *models: ModelInfo) -> None:
        self.models = {m.id: m for m in models}
        self.loads: list[tuple[str, int | None]] = []
        self.gate: asyncio.Event | None = None
        self.loading = asyncio.Event()

    async def list_models(self) -> list[ModelInfo]:
        return list(self.models.values())

    async def load(self, server: str | None, model_id: str, context_length: int | None) -> LoadResult:
        self.loads.append((model_id, context_length))
        self.loading.set()
        if self.gate is not None:
            await self.gate.wait()
        context = context_length or 4096
        self.models[model_id] = ModelInfo(
            model_id, self.models[model_id].type, state="loaded", loaded_instances=(model_id,),
            loaded_context_length=context, instances=(LoadedInstance(model_id, context),),
        )
        return LoadResult(model_id, 0.5, context)


def catalog(server: Server, policy: GuardPolicy | None = None, *, can_load: bool = True) -> ModelCatalog:
    guard = ModelGuard(policy, load=server.load, can_load=lambda _server: can_load)
    return ModelCatalog([Backend("lmstudio", server, ServerCapabilities(BASE))], guard=guard)  # type: ignore[arg-type]


def resolved(model_id: str, source: str = "requested") -> ResolvedModel:
    return ResolvedModel(model_id, source, None, asyncio.Semaphore(1))  # type: ignore[arg-type]


# --- the decision before a call -----------------------------------------------------------------


def test_a_loaded_model_or_one_whose_state_the_server_does_not_report_is_ready() -> None:
    assert decide(CODER, [CODER, THINKER], auto_load=True, can_load=True) == "ready"
    assert decide(UNREPORTED, [UNREPORTED, CODER], auto_load=False, can_load=True) == "ready"


def test_a_model_is_loaded_only_when_another_of_its_kind_could_answer_in_its_place() -> None:
    assert decide(THINKER, [CODER, THINKER], auto_load=True, can_load=True) == "load"
    # Nothing loaded that could stand in: LM Studio loads it just in time (or says none is loaded).
    assert decide(THINKER, [THINKER, NOMIC], auto_load=False, can_load=True) == "ready"
    # An embedding model is never substituted by a chat model, nor the other way round.
    assert decide(NOMIC, [CODER, NOMIC], auto_load=False, can_load=True) == "ready"


def test_with_loading_off_a_model_the_server_would_substitute_is_refused_and_without_the_api_sent_as_is() -> None:
    assert decide(THINKER, [CODER, THINKER], auto_load=False, can_load=True) == "refuse"
    assert decide(THINKER, [CODER, THINKER], auto_load=True, can_load=False) == "ready"


async def test_the_catalog_loads_a_model_lm_studio_would_substitute_and_resolves_it_as_loaded() -> None:
    server = Server(CODER, THINKER)
    chosen = await catalog(server, GuardPolicy(context_length=16384)).resolve(THINKER.id)
    assert server.loads == [(THINKER.id, 16384)]
    assert chosen.id == THINKER.id and chosen.info is not None and chosen.info.is_loaded
    assert chosen.context_length == 16384


async def test_a_default_model_that_is_loaded_starts_no_load() -> None:
    server = Server(CODER, THINKER)
    chosen = await catalog(server).resolve(None)
    assert (chosen.id, server.loads) == (CODER.id, [])


async def test_with_loading_off_the_refusal_names_the_loaded_model_and_the_setting() -> None:
    server = Server(CODER, THINKER)
    with pytest.raises(ModelNotLoadedError) as caught:
        await catalog(server, GuardPolicy(auto_load=False)).resolve(THINKER.id)
    assert server.loads == []
    assert caught.value.loaded == [CODER.id]
    assert "LMSTUDIO_AUTO_LOAD=1" in str(caught.value) and f"lms load {THINKER.id}" in str(caught.value)


async def test_concurrent_calls_for_one_model_share_one_load() -> None:
    server = Server(CODER, THINKER)
    server.gate = asyncio.Event()
    shared = catalog(server)
    calls = [asyncio.create_task(shared.resolve(THINKER.id)) for _ in range(3)]
    await asyncio.wait_for(server.loading.wait(), 5)
    server.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*calls), 5)
    assert server.loads == [(THINKER.id, None)]
    assert {r.id for r in results} == {THINKER.id}


async def test_a_server_without_the_load_api_gets_the_request_as_it_is() -> None:
    server = Server(CODER, THINKER)
    chosen = await catalog(server, can_load=False).resolve(THINKER.id)
    assert (chosen.id, server.loads) == (THINKER.id, [])


# --- the check after a call ---------------------------------------------------------------------


def test_the_same_model_is_recognised_whatever_the_case_or_instance_suffix() -> None:
    assert same_model("qwen/qwen3-4b", "Qwen/Qwen3-4B:2")
    assert not same_model("qwen/qwen3-4b", "qwen/qwen3-coder-30b")
    assert ModelGuard().check_answer(resolved("qwen/qwen3-4b"), "qwen/qwen3-4b:2") is None
    assert ModelGuard().check_answer(resolved("qwen/qwen3-4b"), None) is None


def test_another_model_answering_a_named_model_is_an_error_by_default_and_a_note_when_set() -> None:
    with pytest.raises(ModelMismatchError) as caught:
        ModelGuard().check_answer(resolved(THINKER.id), CODER.id)
    assert (caught.value.asked, caught.value.answered) == (THINKER.id, CODER.id)
    assert "MODEL_MISMATCH=note" in str(caught.value)
    note = ModelGuard(GuardPolicy(mismatch="note")).check_answer(resolved(THINKER.id), CODER.id)
    assert note is not None and CODER.id in note and THINKER.id in note


def test_another_model_answering_for_the_default_model_is_always_a_note() -> None:
    for source in ("DEFAULT_MODEL", "loaded", "first listed"):
        note = ModelGuard().check_answer(resolved(THINKER.id, source), CODER.id)
        assert note is not None and "the default model" in note


# --- the load request ---------------------------------------------------------------------------


@pytest.fixture
def mock() -> respx.MockRouter:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


def client() -> LLMClient:
    return LLMClient(ClientOptions(BASE, retry_attempts=2, retry_base_delay_s=0, retry_max_delay_s=0))


async def test_the_load_request_names_the_model_and_context_and_sends_no_ttl(mock: respx.MockRouter) -> None:
    route = mock.post("/api/v1/models/load").respond(
        json={"type": "llm", "instance_id": THINKER.id, "load_time_seconds": 2.5, "status": "loaded",
              "load_config": {"context_length": 8192}}
    )
    async with client() as llm:
        result = await llm.load_model(THINKER.id, context_length=8192)
    assert result == LoadResult(THINKER.id, 2.5, 8192)
    assert json.loads(route.calls.last.request.content) == {
        "model": THINKER.id, "echo_load_config": True, "context_length": 8192
    }


async def test_a_failed_load_says_why_and_what_to_do_and_an_unreachable_server_stays_a_connection_error(
    mock: respx.MockRouter,
) -> None:
    mock.post("/api/v1/models/load").respond(400, json={"error": "Failed to load model: not enough memory"})
    async with client() as llm:
        with pytest.raises(ModelLoadError) as caught:
            await llm.load_model(THINKER.id)
    message = str(caught.value)
    assert "could not load model 'qwen/qwen3-4b-thinking-2507'" in message and "not enough memory" in message
    assert "lms load" in message
    mock.post("/api/v1/models/load").mock(side_effect=httpx.ConnectError("refused"))
    async with client() as llm:
        with pytest.raises(LLMConnectionError):
            await llm.load_model(THINKER.id)
