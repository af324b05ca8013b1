"""ModelValidator against a fake client: caching, shared fetches, matching, aliases, types, failures."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from llm.exceptions import CircuitOpenError, LLMConnectionError, LLMServerError, ModelNotFoundError, ModelTypeError
from llm.model_validator import ModelValidator


@dataclass(frozen=True)
class FakeModelInfo:
    """Stands in for llm.llm_client.ModelInfo (same fields the validator reads)."""

    id: str
    type: str | None = "llm"
    state: str | None = "not-loaded"
    max_context_length: int | None = None
    loaded_instances: tuple[str, ...] = ()


class FakeClient:
    """An LLMClient stand-in whose model list (or failures) the test controls."""

    base_url = "http://localhost:1234"

    def __init__(self, *models: FakeModelInfo, errors: list[Exception] | None = None) -> None:
        self.models = list(models)
        self.errors = list(errors or [])
        self.fetches = 0
        self.gate: asyncio.Event | None = None

    async def list_models(self) -> list[FakeModelInfo]:
        self.fetches += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.errors:
            raise self.errors.pop(0)
        return list(self.models)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


QWEN = FakeModelInfo("qwen/qwen3-4b", loaded_instances=("qwen/qwen3-4b", "qwen/qwen3-4b:2"), state="loaded")
CODER = FakeModelInfo("qwen/qwen3-coder-30b")
NOMIC = FakeModelInfo("text-embedding-nomic-embed-text-v1.5", type="embeddings")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def client() -> FakeClient:
    return FakeClient(QWEN, CODER, NOMIC)


def make_validator(client: FakeClient, clock: FakeClock, **kwargs: object) -> ModelValidator:
    return ModelValidator(client, clock=clock, sleep=clock.sleep, **kwargs)  # type: ignore[arg-type]


async def test_existing_model_is_valid(client: FakeClient, clock: FakeClock) -> None:
    assert await make_validator(client, clock).validate_model("qwen/qwen3-coder-30b") is True


async def test_unknown_model_error_lists_available_models(client: FakeClient, clock: FakeClock) -> None:
    with pytest.raises(ModelNotFoundError) as exc_info:
        await make_validator(client, clock).validate_model("nonexistent-model-xyz")

    assert exc_info.value.model_name == "nonexistent-model-xyz"
    assert exc_info.value.available_models == [QWEN.id, CODER.id, NOMIC.id]
    assert "nonexistent-model-xyz" in str(exc_info.value)


@pytest.mark.parametrize("name", [None, "default", "", "Default"])
async def test_default_model_is_valid_without_fetching(
    name: str | None, client: FakeClient, clock: FakeClock
) -> None:
    validator = make_validator(client, clock)

    assert await validator.validate_model(name) is True
    assert await validator.resolve_model_name(name) is None
    assert client.fetches == 0


async def test_model_list_is_cached_within_ttl(client: FakeClient, clock: FakeClock) -> None:
    validator = make_validator(client, clock, cache_ttl_s=60.0)

    await validator.validate_model(QWEN.id)
    clock.now = 59.0
    await validator.validate_model(CODER.id)
    assert await validator.get_available_models() == [QWEN.id, CODER.id, NOMIC.id]

    assert client.fetches == 1


async def test_model_list_is_fetched_again_after_ttl(client: FakeClient, clock: FakeClock) -> None:
    validator = make_validator(client, clock, cache_ttl_s=60.0)

    await validator.validate_model(QWEN.id)
    clock.now = 60.0
    await validator.validate_model(QWEN.id)

    assert client.fetches == 2


async def test_clear_cache_forces_a_fetch(client: FakeClient, clock: FakeClock) -> None:
    validator = make_validator(client, clock)
    await validator.get_available_models()

    validator.clear_cache()
    await validator.get_available_models()

    assert client.fetches == 2


async def test_concurrent_validations_share_one_fetch(client: FakeClient, clock: FakeClock) -> None:
    validator = make_validator(client, clock)
    client.gate = asyncio.Event()

    pending = asyncio.gather(*(validator.validate_model(QWEN.id) for _ in range(10)))
    await asyncio.sleep(0)  # let every validation reach the fetch
    client.gate.set()

    assert await asyncio.wait_for(pending, timeout=5) == [True] * 10
    assert client.fetches == 1


async def test_unknown_name_gets_one_fresh_fetch_before_failing(client: FakeClient, clock: FakeClock) -> None:
    validator = make_validator(client, clock)
    await validator.get_available_models()

    with pytest.raises(ModelNotFoundError):
        await validator.validate_model("nope")

    assert client.fetches == 2


async def test_model_downloaded_after_caching_is_found_by_the_fresh_fetch(
    client: FakeClient, clock: FakeClock
) -> None:
    validator = make_validator(client, clock)
    await validator.get_available_models()
    client.models.append(FakeModelInfo("google/gemma-3-270m"))

    assert await validator.validate_model("google/gemma-3-270m") is True
    assert client.fetches == 2


async def test_unknown_name_on_a_cold_cache_is_fetched_only_once(client: FakeClient, clock: FakeClock) -> None:
    with pytest.raises(ModelNotFoundError):
        await make_validator(client, clock).validate_model("nope")

    assert client.fetches == 1


async def test_not_found_message_suggests_the_close_match(client: FakeClient, clock: FakeClock) -> None:
    with pytest.raises(ModelNotFoundError) as exc_info:
        await make_validator(client, clock).validate_model("qwen3-coder-30b")

    assert exc_info.value.suggestions[0] == CODER.id
    assert "Did you mean qwen/qwen3-coder-30b" in str(exc_info.value)


async def test_names_match_case_insensitively_and_resolve_to_the_server_id(
    client: FakeClient, clock: FakeClock
) -> None:
    assert await make_validator(client, clock).resolve_model_name("Qwen/Qwen3-Coder-30B") == CODER.id


async def test_exact_match_wins_over_case_insensitive_match(clock: FakeClock) -> None:
    client = FakeClient(FakeModelInfo("Model-A", type="embeddings"), FakeModelInfo("model-a"))

    assert await make_validator(client, clock).resolve_model_name("model-a") == "model-a"


@pytest.mark.parametrize(
    ("requested", "sent"),
    [
        ("qwen/qwen3-4b:2", "qwen/qwen3-4b:2"),  # a listed loaded instance
        ("qwen/qwen3-coder-30b:3", "qwen/qwen3-coder-30b:3"),  # an instance the list does not show
    ],
)
async def test_instance_suffix_matches_its_model_and_is_sent_as_given(
    requested: str, sent: str, client: FakeClient, clock: FakeClock
) -> None:
    assert await make_validator(client, clock).resolve_model_name(requested) == sent


async def test_plain_name_matches_a_model_listed_only_by_instance_id(clock: FakeClock) -> None:
    client = FakeClient(FakeModelInfo("qwen/qwen3-4b:2"))

    assert await make_validator(client, clock).resolve_model_name("qwen/qwen3-4b") == "qwen/qwen3-4b"


async def test_alias_resolves_to_its_target(client: FakeClient, clock: FakeClock) -> None:
    validator = make_validator(client, clock, aliases={"coder": CODER.id})

    assert await validator.resolve_model_name("coder") == CODER.id


async def test_alias_to_a_missing_model_is_not_found(client: FakeClient, clock: FakeClock) -> None:
    validator = make_validator(client, clock, aliases={"big": "meta/llama-3.3-70b"})

    with pytest.raises(ModelNotFoundError) as exc_info:
        await validator.validate_model("big")

    assert exc_info.value.model_name == "meta/llama-3.3-70b"


async def test_embedding_model_is_rejected_for_chat(client: FakeClient, clock: FakeClock) -> None:
    with pytest.raises(ModelTypeError) as exc_info:
        await make_validator(client, clock).validate_model(NOMIC.id, purpose="chat")

    assert exc_info.value.model_type == "embeddings"


async def test_chat_model_is_rejected_for_embeddings_but_embedding_model_is_accepted(
    client: FakeClient, clock: FakeClock
) -> None:
    validator = make_validator(client, clock)

    with pytest.raises(ModelTypeError):
        await validator.validate_model(QWEN.id, purpose="embeddings")
    assert await validator.validate_model(NOMIC.id, purpose="embeddings") is True


async def test_model_of_unknown_type_is_accepted_for_any_purpose(clock: FakeClock) -> None:
    validator = make_validator(FakeClient(FakeModelInfo("mystery", type=None)), clock)

    assert await validator.validate_model("mystery", purpose="chat") is True
    assert await validator.validate_model("mystery", purpose="embeddings") is True


async def test_transient_failure_is_retried(client: FakeClient, clock: FakeClock) -> None:
    client.errors = [LLMConnectionError(base_url=client.base_url)]

    assert await make_validator(client, clock).validate_model(QWEN.id) is True
    assert client.fetches == 2
    assert len(clock.sleeps) == 1


async def test_unreachable_server_raises_connection_error_after_retries(
    client: FakeClient, clock: FakeClock
) -> None:
    client.errors = [LLMConnectionError(base_url=client.base_url) for _ in range(3)]

    with pytest.raises(LLMConnectionError) as exc_info:
        await make_validator(client, clock).validate_model("nope")

    assert not isinstance(exc_info.value, ModelNotFoundError)
    assert client.fetches == 3
    assert len(clock.sleeps) == 2


async def test_server_errors_surface_as_connection_errors_not_model_not_found(
    client: FakeClient, clock: FakeClock
) -> None:
    client.errors = [LLMServerError("boom", status_code=500) for _ in range(3)]

    with pytest.raises(LLMConnectionError) as exc_info:
        await make_validator(client, clock).get_available_models()

    assert isinstance(exc_info.value.original_exception, LLMServerError)
    assert "http://localhost:1234" in str(exc_info.value)


async def test_open_circuit_fails_at_once_without_retrying(client: FakeClient, clock: FakeClock) -> None:
    client.errors = [CircuitOpenError(client.base_url, 10.0)]

    with pytest.raises(CircuitOpenError):
        await make_validator(client, clock).get_available_models()

    assert client.fetches == 1
