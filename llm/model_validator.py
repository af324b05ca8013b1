"""Checks that a model name refers to a model LM Studio offers, before a request is spent on it.

LM Studio ignores the `model` sent when only one model is loaded, so a typo would silently run the
wrong model: the bridge validates on its own side. The model list is cached for `cache_ttl_s`;
concurrent callers share one fetch; an unknown name gets one fresh fetch before it is rejected
(the user may have just downloaded it). A name matches exactly first, then case-insensitively, and
an instance suffix (`qwen/qwen3-4b:2`) matches its model and vice versa. Aliases from the config map
short names to model ids.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Literal

from llm.exceptions import (
    RETRYABLE_ERRORS,
    CircuitOpenError,
    LLMConnectionError,
    LLMError,
    ModelNotFoundError,
    ModelTypeError,
)
from utils.error_handling import retry_with_backoff

if TYPE_CHECKING:
    from llm.llm_client import LLMClient, ModelInfo

logger = logging.getLogger(__name__)

Purpose = Literal["chat", "embeddings"]

_INSTANCE_SUFFIX = re.compile(r":\d+$")
# Which model types each purpose cannot use; a model whose type the server does not say is accepted.
_WRONG_TYPES: dict[Purpose, frozenset[str]] = {
    "chat": frozenset({"embeddings"}),
    "embeddings": frozenset({"llm", "vlm"}),
}


def _match(name: str, infos: Sequence[ModelInfo]) -> tuple[ModelInfo, str] | None:
    """The model `name` refers to and the id to send for it, or None."""
    candidates = [(info, model_id) for info in infos for model_id in (info.id, *info.loaded_instances)]
    for key in (str, str.casefold):
        for info, model_id in candidates:
            if key(model_id) == key(name):
                return info, model_id
    # "x:2" names one loaded instance of "x"; send it as given so that instance answers.
    base = _INSTANCE_SUFFIX.sub("", name)
    for key in (str, str.casefold):
        for info, model_id in candidates:
            candidate_base = _INSTANCE_SUFFIX.sub("", model_id)
            if key(candidate_base) == key(base):
                return info, name if base != name else candidate_base
    return None


class ModelValidator:
    """Validates and resolves model names against LM Studio's (cached) model list."""

    def __init__(
        self,
        client: LLMClient,
        *,
        cache_ttl_s: float = 60.0,
        aliases: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        fetch_attempts: int = 3,
    ) -> None:
        self._client = client
        self._cache_ttl_s = cache_ttl_s
        self._aliases = dict(aliases or {})
        self._clock = clock
        self._infos: list[ModelInfo] | None = None
        self._fetched_at = 0.0
        self._fetches = 0
        self._inflight: asyncio.Task[list[ModelInfo]] | None = None
        # The client retries each request too; these few extra attempts cover a model list asked
        # for while LM Studio is still starting. An open circuit means it is down: do not wait.
        self._list_models = retry_with_backoff(
            max_retries=fetch_attempts,
            base_delay=0.25,
            max_delay=1.0,
            exceptions=RETRYABLE_ERRORS,
            should_retry=lambda error: not isinstance(error, CircuitOpenError),
            sleep=sleep,
        )(client.list_models)

    async def get_model_infos(self, use_cache: bool = True) -> list[ModelInfo]:
        """LM Studio's models, from the cache while it is fresh.

        Raises:
            LLMConnectionError: LM Studio could not be asked (after retries).
        """
        if use_cache and self._infos is not None and self._clock() - self._fetched_at < self._cache_ttl_s:
            return self._infos
        # Callers arriving while a fetch is out wait for it rather than start their own.
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.create_task(self._fetch())
            # Retrieve the outcome even if every caller was cancelled, so no "never retrieved" noise.
            self._inflight.add_done_callback(lambda task: task.cancelled() or task.exception())
        return await asyncio.shield(self._inflight)

    async def get_available_models(self, use_cache: bool = True) -> list[str]:
        """The ids of LM Studio's models (see `get_model_infos`)."""
        return [info.id for info in await self.get_model_infos(use_cache)]

    async def resolve_model_name(self, model_name: str | None, *, purpose: Purpose = "chat") -> str | None:
        """The model id to send for `model_name`: None for the default, aliases resolved.

        Raises:
            ModelNotFoundError: no such model, even after a fresh look; lists those available.
            ModelTypeError: the model cannot serve `purpose` (e.g. an embedding model asked to chat).
            LLMConnectionError: LM Studio could not be asked.
        """
        if model_name is None or model_name.strip().lower() in ("", "default"):
            return None
        target = self._aliases.get(model_name, model_name)
        fetches_before = self._fetches
        infos = await self.get_model_infos()
        found = _match(target, infos)
        if found is None and self._fetches == fetches_before:
            logger.debug("Model %r not in the cached list; fetching a fresh one", target)
            infos = await self.get_model_infos(use_cache=False)
            found = _match(target, infos)
        if found is None:
            if target != model_name:
                logger.warning("Alias %r points to %r, which LM Studio does not offer", model_name, target)
            raise ModelNotFoundError(target, [info.id for info in infos])
        info, model_id = found
        if info.type is not None and info.type in _WRONG_TYPES[purpose]:
            raise ModelTypeError(model_id, info.type, purpose)
        logger.debug("Model %r valid for %s as %r", model_name, purpose, model_id)
        return model_id

    async def validate_model(self, model_name: str | None, *, purpose: Purpose = "chat") -> bool:
        """True when `model_name` can be used for `purpose` (None and "default" always can).

        Raises:
            ModelNotFoundError, ModelTypeError, LLMConnectionError: as `resolve_model_name`.
        """
        await self.resolve_model_name(model_name, purpose=purpose)
        return True

    def clear_cache(self) -> None:
        """Forget the model list; the next lookup fetches it again."""
        self._infos = None
        logger.debug("Model cache cleared")

    async def _fetch(self) -> list[ModelInfo]:
        self._fetches += 1
        try:
            infos = await self._list_models()
        except LLMConnectionError:
            raise
        except LLMError as error:
            # Whatever kept us from the list (timeout, 5xx, bad answer), it is not "model not found".
            raise LLMConnectionError(
                f"Could not get the model list from LM Studio at {self._client.base_url}: {error}",
                error,
                base_url=self._client.base_url,
            ) from error
        self._infos = infos
        self._fetched_at = self._clock()
        logger.debug("Model list refreshed: %d models", len(infos))
        return infos


async def resolve_model_for_call(
    validator: ModelValidator,
    client: LLMClient,
    requested: str | None,
    *,
    default_model: str | None,
    purpose: Purpose = "chat",
) -> str:
    """The concrete model id one call uses, validated before anything runs.

    The model asked for (alias resolved, checked against LM Studio's list), else DEFAULT_MODEL
    (checked the same way, so a typo there fails clearly too), else the model LM Studio has loaded.

    Raises:
        ModelNotFoundError, ModelTypeError: the name cannot be used.
        LLMConnectionError: LM Studio cannot be reached to check it.
    """
    name = requested if requested not in (None, "", "default") else default_model
    resolved = await validator.resolve_model_name(name, purpose=purpose)
    return resolved if resolved is not None else await client.resolve_model(None)
