"""The model catalog against a scripted model list: caching, shared fetches, matching, aliases, types,
the default-model policy, queue sizes, and parsing the three listings."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from llm.exceptions import (
    CircuitOpenError,
    LLMConnectionError,
    LLMServerError,
    ModelNotFoundError,
    ModelTypeError,
    NoModelLoadedError,
)
from llm.backends import Backend
from llm.capabilities import ServerCapabilities
from llm.listing import LoadedInstance, ModelInfo, parse_models
from llm.models import DEFAULT_CONCURRENCY, ModelCatalog

BASE_URL = "http://localhost:1234"


class FakeServer:
    """The model list (or failures) a test controls, with a count of fetches."""

    def __init__(self, *models: ModelInfo, errors: list[Exception] | None = None) -> None:
        self.models = list(models)
        self.errors = list(errors or [])
        self.fetches = 0
        self.gate: asyncio.Event | None = None

    async def list_models(self) -> list[ModelInfo]:
        self.fetches += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.errors:
            raise self.errors.pop(0)
        return list(self.models)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


QWEN = ModelInfo("qwen/qwen3-4b", "llm", loaded_instances=("qwen/qwen3-4b", "qwen/qwen3-4b:2"), state="loaded")
CODER = ModelInfo("qwen/qwen3-coder-30b", "llm", state="not-loaded")
NOMIC = ModelInfo("text-embedding-nomic-embed-text-v1.5", "embeddings", state="not-loaded")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def client() -> FakeServer:
    return FakeServer(QWEN, CODER, NOMIC)


@dataclass
class FakeClientOfServer:
    """What the catalog uses of a backend's client: its listing, its URL, its breaker state."""

    server: FakeServer
    base_url: str = BASE_URL
    breaker_state: str = "closed"

    async def list_models(self) -> list[ModelInfo]:
        return await self.server.list_models()


def backend(server: FakeServer, name: str = "lmstudio", *, max_concurrency: int | None = None,
            url: str = BASE_URL) -> Backend:
    return Backend(name, FakeClientOfServer(server, url), ServerCapabilities(url), max_concurrency)  # type: ignore[arg-type]


def make_validator(client: FakeServer, clock: FakeClock, *, max_concurrency: int | None = None,
                   **kwargs: object) -> ModelCatalog:
    return ModelCatalog([backend(client, max_concurrency=max_concurrency)], clock=clock, **kwargs)  # type: ignore[arg-type]


async def test_existing_model_is_valid(client: FakeServer, clock: FakeClock) -> None:
    assert await make_validator(client, clock).validate_model("qwen/qwen3-coder-30b") is True


async def test_unknown_model_error_lists_available_models(client: FakeServer, clock: FakeClock) -> None:
    with pytest.raises(ModelNotFoundError) as exc_info:
        await make_validator(client, clock).validate_model("nonexistent-model-xyz")

    assert exc_info.value.model_name == "nonexistent-model-xyz"
    assert exc_info.value.available_models == [QWEN.id, CODER.id, NOMIC.id]
    assert "nonexistent-model-xyz" in str(exc_info.value)


@pytest.mark.parametrize("name", [None, "default", "", "Default"])
async def test_no_name_means_the_loaded_llm(name: str | None, client: FakeServer, clock: FakeClock) -> None:
    resolved = await make_validator(client, clock).resolve(name)
    assert (resolved.id, resolved.source) == (QWEN.id, "loaded")


async def test_no_name_means_default_model_checked_like_a_named_one(client: FakeServer, clock: FakeClock) -> None:
    catalog = make_validator(client, clock, default_model="Qwen/Qwen3-Coder-30B")
    resolved = await catalog.resolve(None)
    assert (resolved.id, resolved.source) == (CODER.id, "DEFAULT_MODEL")
    with pytest.raises(ModelNotFoundError, match="Did you mean qwen/qwen3-coder-30b"):
        await make_validator(client, clock, default_model="qwen3-coder-30b").resolve(None)


async def test_no_name_and_nothing_loaded_means_the_first_llm_listed(clock: FakeClock) -> None:
    resolved = await make_validator(FakeServer(NOMIC, CODER), clock).resolve(None)
    assert (resolved.id, resolved.source) == (CODER.id, "first listed")


async def test_only_embedding_models_means_no_model_that_can_chat(clock: FakeClock) -> None:
    with pytest.raises(NoModelLoadedError, match="DEFAULT_MODEL"):
        await make_validator(FakeServer(NOMIC), clock).resolve(None)


async def test_an_embeddings_call_without_a_name_uses_the_first_embedding_model(
    client: FakeServer, clock: FakeClock
) -> None:
    resolved = await make_validator(client, clock).resolve(None, purpose="embeddings")
    assert (resolved.id, resolved.source) == (NOMIC.id, "first embedding model")


async def test_no_embedding_model_says_so_and_what_to_load(clock: FakeClock) -> None:
    with pytest.raises(NoModelLoadedError, match="No embedding model is available.*nomic-embed-text"):
        await make_validator(FakeServer(QWEN), clock).resolve(None, purpose="embeddings")


async def test_calls_without_a_name_use_the_cached_list(client: FakeServer, clock: FakeClock) -> None:
    catalog = make_validator(client, clock)
    for _ in range(5):
        await catalog.resolve(None)
    assert client.fetches == 1


async def test_model_list_is_cached_within_ttl(client: FakeServer, clock: FakeClock) -> None:
    validator = make_validator(client, clock, ttl_s=60.0)

    await validator.validate_model(QWEN.id)
    clock.now = 59.0
    await validator.validate_model(CODER.id)
    assert await validator.get_available_models() == [QWEN.id, CODER.id, NOMIC.id]

    assert client.fetches == 1


async def test_model_list_is_fetched_again_after_ttl(client: FakeServer, clock: FakeClock) -> None:
    validator = make_validator(client, clock, ttl_s=60.0)

    await validator.validate_model(QWEN.id)
    clock.now = 60.0
    await validator.validate_model(QWEN.id)

    assert client.fetches == 2


async def test_a_name_resolved_again_follows_the_list_the_server_gives_after_the_ttl(clock: FakeClock) -> None:
    # The catalog answers a repeated name from an index of the cached list: a new list must replace it.
    server = FakeServer(CODER, QWEN)
    catalog = make_validator(server, clock, ttl_s=60.0)
    first = await catalog.resolve(CODER.id)
    assert await catalog.resolve(CODER.id) is first  # same list: the same answer

    server.models = [ModelInfo(CODER.id, "llm", state="loaded", max_context_length=8192), QWEN]
    clock.now = 60.0
    again = await catalog.resolve(CODER.id)

    assert again.info is not None and again.info.is_loaded and again.context_length == 8192
    assert again.queue is first.queue  # the model's queue outlives its listing
    server.models = [QWEN]
    clock.now = 120.0
    with pytest.raises(ModelNotFoundError):
        await catalog.resolve(CODER.id)


async def test_refresh_forces_a_fetch(client: FakeServer, clock: FakeClock) -> None:
    catalog = make_validator(client, clock)
    await catalog.models()
    await catalog.models(refresh=True)
    assert client.fetches == 2


async def test_concurrent_validations_share_one_fetch(client: FakeServer, clock: FakeClock) -> None:
    validator = make_validator(client, clock)
    client.gate = asyncio.Event()

    pending = asyncio.gather(*(validator.validate_model(QWEN.id) for _ in range(10)))
    await asyncio.sleep(0)  # let every validation reach the fetch
    client.gate.set()

    assert await asyncio.wait_for(pending, timeout=5) == [True] * 10
    assert client.fetches == 1


async def test_unknown_name_gets_one_fresh_fetch_before_failing(client: FakeServer, clock: FakeClock) -> None:
    validator = make_validator(client, clock)
    await validator.get_available_models()

    with pytest.raises(ModelNotFoundError):
        await validator.validate_model("nope")

    assert client.fetches == 2


async def test_model_downloaded_after_caching_is_found_by_the_fresh_fetch(
    client: FakeServer, clock: FakeClock
) -> None:
    validator = make_validator(client, clock)
    await validator.get_available_models()
    client.models.append(ModelInfo("google/gemma-3-270m"))

    assert await validator.validate_model("google/gemma-3-270m") is True
    assert client.fetches == 2


async def test_unknown_name_on_a_cold_cache_is_fetched_only_once(client: FakeServer, clock: FakeClock) -> None:
    with pytest.raises(ModelNotFoundError):
        await make_validator(client, clock).validate_model("nope")

    assert client.fetches == 1


async def test_not_found_message_suggests_the_close_match(client: FakeServer, clock: FakeClock) -> None:
    with pytest.raises(ModelNotFoundError) as exc_info:
        await make_validator(client, clock).validate_model("qwen3-coder-30b")

    assert exc_info.value.suggestions[0] == CODER.id
    assert "Did you mean qwen/qwen3-coder-30b" in str(exc_info.value)


async def test_names_match_case_insensitively_and_resolve_to_the_server_id(
    client: FakeServer, clock: FakeClock
) -> None:
    assert (await make_validator(client, clock).resolve("Qwen/Qwen3-Coder-30B")).id == CODER.id


async def test_exact_match_wins_over_case_insensitive_match(clock: FakeClock) -> None:
    client = FakeServer(ModelInfo("Model-A", type="embeddings"), ModelInfo("model-a"))

    assert (await make_validator(client, clock).resolve("model-a")).id == "model-a"


async def test_a_listed_instance_is_sent_as_given(client: FakeServer, clock: FakeClock) -> None:
    assert (await make_validator(client, clock).resolve("qwen/qwen3-4b:2")).id == "qwen/qwen3-4b:2"


@pytest.mark.parametrize("made_up", ["qwen/qwen3-4b:99999", "qwen/qwen3-coder-30b:3"])
async def test_an_instance_the_server_does_not_list_is_not_found(
    made_up: str, client: FakeServer, clock: FakeClock
) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        await make_validator(client, clock).resolve(made_up)
    assert info.value.model_name == made_up


async def test_plain_name_matches_a_model_listed_only_by_instance_id(clock: FakeClock) -> None:
    client = FakeServer(ModelInfo("qwen/qwen3-4b:2"))

    assert (await make_validator(client, clock).resolve("qwen/qwen3-4b")).id == "qwen/qwen3-4b"


async def test_alias_resolves_to_its_target(client: FakeServer, clock: FakeClock) -> None:
    validator = make_validator(client, clock, aliases={"coder": CODER.id})

    assert (await validator.resolve("coder")).id == CODER.id


async def test_alias_to_a_missing_model_is_not_found(client: FakeServer, clock: FakeClock) -> None:
    validator = make_validator(client, clock, aliases={"big": "meta/llama-3.3-70b"})

    with pytest.raises(ModelNotFoundError) as exc_info:
        await validator.validate_model("big")

    assert exc_info.value.model_name == "meta/llama-3.3-70b"


async def test_embedding_model_is_rejected_for_chat(client: FakeServer, clock: FakeClock) -> None:
    with pytest.raises(ModelTypeError) as exc_info:
        await make_validator(client, clock).validate_model(NOMIC.id, purpose="chat")

    assert exc_info.value.model_type == "embeddings"


async def test_chat_model_is_rejected_for_embeddings_but_embedding_model_is_accepted(
    client: FakeServer, clock: FakeClock
) -> None:
    validator = make_validator(client, clock)

    with pytest.raises(ModelTypeError):
        await validator.validate_model(QWEN.id, purpose="embeddings")
    assert await validator.validate_model(NOMIC.id, purpose="embeddings") is True


async def test_model_of_unknown_type_is_accepted_for_any_purpose(clock: FakeClock) -> None:
    validator = make_validator(FakeServer(ModelInfo("mystery", type=None)), clock)

    assert await validator.validate_model("mystery", purpose="chat") is True
    assert await validator.validate_model("mystery", purpose="embeddings") is True


async def test_an_unreachable_server_is_a_connection_error_not_model_not_found(
    client: FakeServer, clock: FakeClock
) -> None:
    client.errors = [LLMConnectionError(base_url=client_url()) for _ in range(3)]

    with pytest.raises(LLMConnectionError) as exc_info:
        await make_validator(client, clock).validate_model("nope")

    assert not isinstance(exc_info.value, ModelNotFoundError)
    assert client.fetches == 1  # the client retried the request; the catalog does not multiply attempts


def client_url() -> str:
    return BASE_URL


async def test_server_errors_surface_as_connection_errors_not_model_not_found(
    client: FakeServer, clock: FakeClock
) -> None:
    client.errors = [LLMServerError("boom", status_code=500)]

    with pytest.raises(LLMConnectionError) as exc_info:
        await make_validator(client, clock).get_available_models()

    assert isinstance(exc_info.value.original_exception, LLMServerError)
    assert "http://localhost:1234" in str(exc_info.value)


async def test_open_circuit_fails_at_once_without_retrying(client: FakeServer, clock: FakeClock) -> None:
    client.errors = [CircuitOpenError(BASE_URL, 10.0)]

    with pytest.raises(CircuitOpenError):
        await make_validator(client, clock).get_available_models()

    assert client.fetches == 1


# --- queues ------------------------------------------------------------------------------------


async def test_a_model_queue_follows_the_parallel_slots_the_server_reports(clock: FakeClock) -> None:
    # The first call ever needs no earlier listing: the resolution reads the list itself.
    server = FakeServer(ModelInfo("a/b", "llm", state="loaded", parallel=2))
    resolved = await make_validator(server, clock).resolve("a/b")
    assert resolved.queue._value == 2  # noqa: SLF001 - the semaphore's size is the point


async def test_max_concurrency_wins_over_the_reported_slots_and_the_default_applies_otherwise(
    clock: FakeClock,
) -> None:
    server = FakeServer(ModelInfo("a/b", "llm", parallel=2), ModelInfo("c/d", "llm"))
    assert (await make_validator(server, clock, max_concurrency=7).resolve("a/b")).queue._value == 7  # noqa: SLF001
    assert (await make_validator(server, clock).resolve("c/d")).queue._value == DEFAULT_CONCURRENCY  # noqa: SLF001


async def test_every_resolution_of_a_model_shares_one_queue(client: FakeServer, clock: FakeClock) -> None:
    catalog = make_validator(client, clock)
    first, second = await catalog.resolve(QWEN.id), await catalog.resolve(None)
    assert first.queue is second.queue


# --- parsing the listings ----------------------------------------------------------------------


def test_lm_studio_0_4_listing_gives_loaded_context_per_instance_slots_and_tool_use() -> None:
    [model] = parse_models(
        {
            "models": [
                {
                    "key": "qwen/qwen3-4b",
                    "type": "llm",
                    "max_context_length": 32768,
                    "loaded_instances": [
                        {"id": "qwen/qwen3-4b", "config": {"context_length": 8192, "parallel": 4}},
                        {"id": "qwen/qwen3-4b:2", "config": {"context_length": 4096, "parallel": 2}},
                    ],
                    "capabilities": {"trained_for_tool_use": True},
                }
            ]
        }
    )
    assert model == ModelInfo(
        id="qwen/qwen3-4b",
        type="llm",
        state="loaded",
        max_context_length=32768,
        loaded_instances=("qwen/qwen3-4b", "qwen/qwen3-4b:2"),
        trained_for_tool_use=True,
        parallel=6,
        loaded_context_length=4096,
        instances=(LoadedInstance("qwen/qwen3-4b", 8192), LoadedInstance("qwen/qwen3-4b:2", 4096)),
    )
    assert model.context_length == 4096 and model.is_loaded


def test_lm_studio_0_3_listing_gives_state_and_loaded_context() -> None:
    [model, embedder] = parse_models(
        {
            "data": [
                {"id": "a/b", "type": "llm", "state": "loaded", "max_context_length": 32768,
                 "loaded_context_length": 4096},
                {"id": "nomic", "type": "embedding", "state": "not-loaded"},
            ]
        }
    )
    assert (model.is_loaded, model.context_length, model.max_context_length) == (True, 4096, 32768)
    assert model.instances == (LoadedInstance("a/b", 4096),)
    assert embedder.is_embedding and not embedder.is_loaded and embedder.instances == ()


def test_an_openai_listing_gives_ids_only() -> None:
    assert parse_models({"data": [{"id": "x"}, {"object": "model"}]}) == [ModelInfo("x")]
    with pytest.raises(ValueError):
        parse_models({"object": "list"})


# --- several servers ---------------------------------------------------------------------------

LAPTOP = FakeServer(ModelInfo("qwen/qwen3-4b", "llm", state="loaded", parallel=1), ModelInfo("small", "llm"))
GPU = FakeServer(ModelInfo("qwen/qwen3-4b", "llm", state="not-loaded"), ModelInfo("qwen/qwen3-coder-30b", "llm",
                                                                                  state="loaded"))


def two_servers(clock: FakeClock, laptop: FakeServer = LAPTOP, gpu: FakeServer = GPU, **kwargs: object) -> ModelCatalog:
    return ModelCatalog(
        [backend(laptop, "laptop", url="http://laptop:1234"), backend(gpu, "gpu", url="http://gpu:1234")],
        clock=clock,
        **kwargs,  # type: ignore[arg-type]
    )


async def test_the_lists_of_every_server_are_merged_each_model_tagged_with_its_server(clock: FakeClock) -> None:
    models = await two_servers(clock).models()
    assert [(m.id, m.server) for m in models] == [
        ("qwen/qwen3-4b", "laptop"), ("small", "laptop"), ("qwen/qwen3-4b", "gpu"), ("qwen/qwen3-coder-30b", "gpu"),
    ]


async def test_a_model_goes_to_the_server_that_serves_it(clock: FakeClock) -> None:
    catalog = two_servers(clock)
    assert (await catalog.resolve("qwen/qwen3-coder-30b")).server == "gpu"
    assert (await catalog.resolve("small")).server == "laptop"


async def test_a_model_on_two_servers_goes_where_it_is_loaded_and_has_a_free_slot(clock: FakeClock) -> None:
    catalog = two_servers(clock)
    first = await catalog.resolve("qwen/qwen3-4b")
    assert first.server == "laptop"  # loaded there, listed only on the gpu
    async with first.queue:  # its one slot is taken: still loaded there, so the call queues there
        assert (await catalog.resolve("qwen/qwen3-4b")).server == "laptop"
    loaded_both = FakeServer(ModelInfo("qwen/qwen3-4b", "llm", state="loaded"))
    catalog = two_servers(clock, gpu=loaded_both)
    first = await catalog.resolve("qwen/qwen3-4b")
    async with first.queue:  # loaded on both: a busy server gives way to one with a free slot
        assert (await catalog.resolve("qwen/qwen3-4b")).server == "gpu"


async def test_model_at_server_pins_a_call_and_an_unknown_server_part_is_part_of_the_name(clock: FakeClock) -> None:
    catalog = two_servers(clock)
    pinned = await catalog.resolve("qwen/qwen3-4b@gpu")
    assert (pinned.id, pinned.server, pinned.pinned) == ("qwen/qwen3-4b", "gpu", True)
    with pytest.raises(ModelNotFoundError) as info:
        await catalog.resolve("small@gpu")
    assert info.value.model_name == "small@gpu" and "qwen/qwen3-coder-30b@gpu" in info.value.available_models
    with pytest.raises(ModelNotFoundError):  # "@q4_k_m" names no server: the whole is a model id
        await catalog.resolve("small@q4_k_m")


async def test_a_server_that_cannot_be_asked_is_left_out_and_reported(clock: FakeClock) -> None:
    down = FakeServer(errors=[LLMConnectionError(base_url="http://gpu:1234")])
    catalog = two_servers(clock, gpu=down)
    assert [m.server for m in await catalog.models()] == ["laptop", "laptop"]
    laptop, gpu = catalog.health()
    assert laptop.ok and laptop.models == 2
    assert not gpu.ok and "http://gpu:1234" in (gpu.error or "")


async def test_no_server_answering_is_one_error_naming_each(clock: FakeClock) -> None:
    catalog = two_servers(clock, laptop=FakeServer(errors=[LLMConnectionError(base_url="http://laptop:1234")]),
                          gpu=FakeServer(errors=[LLMConnectionError(base_url="http://gpu:1234")]))
    with pytest.raises(LLMConnectionError, match="No model server could be asked.*laptop.*gpu"):
        await catalog.models()


async def test_the_same_model_elsewhere_is_found_for_a_failover_unless_pinned(clock: FakeClock) -> None:
    catalog = two_servers(clock)
    first = await catalog.resolve("qwen/qwen3-4b")
    other = await catalog.elsewhere(first)
    assert other is not None and other.server == "gpu"
    assert await catalog.elsewhere(await catalog.resolve("qwen/qwen3-4b@laptop")) is None
    assert await catalog.elsewhere(await catalog.resolve("small")) is None  # nowhere else


async def test_each_server_has_its_own_queue_per_model(clock: FakeClock) -> None:
    catalog = two_servers(clock)
    on_laptop, on_gpu = await catalog.resolve("qwen/qwen3-4b@laptop"), await catalog.resolve("qwen/qwen3-4b@gpu")
    assert on_laptop.queue is not on_gpu.queue
