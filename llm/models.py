"""The model catalog: the one place that answers "which model, and what does the server have".

Every tool, the agent, the client's queues and `doctor` ask `ModelCatalog`; nothing else decides.

- The list: LM Studio's models from the richest listing it has (0.4 `/api/v1/models`, 0.3
  `/api/v0/models`, else `/v1/models`), parsed into `ModelInfo` with type, loaded state, loaded
  and maximum context length, parallel slots and tool-use training. Cached for `ttl_s`; callers
  arriving during a fetch share it; an unknown name gets one fresh fetch before it is refused.
- Names: aliases (MODEL_ALIASES), exact then case-insensitive match, a loaded instance (`x:2`) only
  when the server lists that instance, suggestions for a typo (in `ModelNotFoundError`).
- The default-model policy: a call without `model` uses DEFAULT_MODEL (validated like a named
  one), else the loaded LLM, else the first LLM listed (LM Studio loads it just in time). Without
  `model`, an embeddings call uses the first embedding model.
- Loaded or not: a named model LM Studio would substitute is loaded first, or refused, and the model
  a reply names is checked against the one asked for; both by `llm.model_guard.ModelGuard`, which the
  catalog asks (`resolve`, `check_answer`).
- Queues: each model id gets one semaphore, sized by LMSTUDIO_MAX_CONCURRENCY, else the parallel
  slots the server reports for it, else `DEFAULT_CONCURRENCY`; the size is decided from the list
  the resolution itself read, so it never depends on what happened to be fetched earlier.

`resolve()` returns a `ResolvedModel`; the client's generation methods take only that, so a
request can only ever go out for a model the catalog resolved.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from llm.exceptions import (
    LLMConnectionError,
    LLMError,
    ModelNotFoundError,
    ModelTypeError,
    NoModelLoadedError,
)
from llm.model_guard import ModelGuard

logger = logging.getLogger(__name__)

Purpose = Literal["chat", "embeddings"]
Source = Literal["requested", "DEFAULT_MODEL", "loaded", "first listed", "first embedding model"]

DEFAULT_CONCURRENCY = 4
"""Requests in flight per model when neither LMSTUDIO_MAX_CONCURRENCY nor the server says (LM Studio's default)."""

_INSTANCE_SUFFIX = re.compile(r":\d+$")
_DEFAULT_NAMES = ("", "default")
# Which model types each purpose cannot use; a model whose type the server does not say is accepted.
_WRONG_TYPES: dict[Purpose, frozenset[str]] = {
    "chat": frozenset({"embeddings"}),
    "embeddings": frozenset({"llm", "vlm"}),
}


@dataclass(frozen=True)
class LoadedInstance:
    """One loaded copy of a model and the context it was loaded with (None when not reported)."""

    id: str
    context_length: int | None = None


@dataclass(frozen=True)
class ModelInfo:
    """One model as the server lists it; fields a poorer listing lacks stay None."""

    id: str
    type: str | None = None  # "llm", "vlm" or "embeddings" (LM Studio 0.4's "embedding" is normalised)
    state: str | None = None  # "loaded" / "not-loaded" as reported
    max_context_length: int | None = None
    loaded_instances: tuple[str, ...] = ()
    trained_for_tool_use: bool | None = None
    parallel: int | None = None  # predictions the loaded instances run at once (LM Studio 0.4+)
    loaded_context_length: int | None = None  # the context it is loaded with: the real budget
    instances: tuple[LoadedInstance, ...] = ()  # the loaded copies, each with its context (when reported)

    @property
    def is_embedding(self) -> bool:
        return self.type == "embeddings"

    @property
    def is_loaded(self) -> bool:
        return self.state == "loaded" or bool(self.loaded_instances)

    @property
    def context_length(self) -> int | None:
        """The budget a request has: the loaded context when known, else the model's maximum."""
        return self.loaded_context_length or self.max_context_length


@dataclass(frozen=True)
class ResolvedModel:
    """A model a call will use: the id to send, why it was chosen, what the server says of it, its queue."""

    id: str
    source: Source
    info: ModelInfo | None
    queue: asyncio.Semaphore = field(compare=False, repr=False)

    @property
    def context_length(self) -> int | None:
        return self.info.context_length if self.info is not None else None


def parse_models(data: object) -> list[ModelInfo]:
    """ModelInfos from any of the three listings.

    Raises:
        ValueError: the body has no list of models.
    """
    entries = None
    if isinstance(data, dict):
        entries = data.get("models") if isinstance(data.get("models"), list) else data.get("data")
    if not isinstance(entries, list):
        raise ValueError("the model listing has no 'models' or 'data' list")
    return [info for entry in entries if isinstance(entry, dict) and (info := _parse_entry(entry)) is not None]


def _parse_entry(entry: dict[str, object]) -> ModelInfo | None:
    model_id = entry.get("key") or entry.get("id")
    if not model_id:
        return None
    raw_instances = entry.get("loaded_instances")
    listed = raw_instances if isinstance(raw_instances, list) else []
    instances = tuple(str(i.get("id") if isinstance(i, dict) else i) for i in listed if i)
    state = entry.get("state")
    if state is None and isinstance(raw_instances, list):
        state = "loaded" if instances else "not-loaded"
    configs = [i["config"] for i in listed if isinstance(i, dict) and isinstance(i.get("config"), dict)]
    parallel = sum(c["parallel"] for c in configs if _positive_int(c.get("parallel")))
    loaded_contexts = [c["context_length"] for c in configs if _positive_int(c.get("context_length"))]
    loaded_context = min(loaded_contexts) if loaded_contexts else entry.get("loaded_context_length")
    capabilities = entry.get("capabilities")
    tool_use = capabilities.get("trained_for_tool_use") if isinstance(capabilities, dict) else None
    kind = entry.get("type")
    loaded_context = loaded_context if _positive_int(loaded_context) else None
    if isinstance(raw_instances, list):
        shown = tuple(_instance(i) for i in listed if i)
    else:  # 0.3's listing: one loaded copy at most, its context in `loaded_context_length`
        shown = (LoadedInstance(str(model_id), loaded_context),) if state == "loaded" else ()
    return ModelInfo(
        id=str(model_id),
        type="embeddings" if kind == "embedding" else kind if isinstance(kind, str) else None,
        state=state if isinstance(state, str) else None,
        max_context_length=entry["max_context_length"] if _positive_int(entry.get("max_context_length")) else None,
        loaded_instances=instances,
        trained_for_tool_use=tool_use if isinstance(tool_use, bool) else None,
        parallel=parallel or None,
        loaded_context_length=loaded_context,
        instances=shown,
    )


def _instance(raw: object) -> LoadedInstance:
    if not isinstance(raw, dict):
        return LoadedInstance(str(raw))
    config = raw.get("config")
    context = config.get("context_length") if isinstance(config, dict) else None
    return LoadedInstance(str(raw.get("id")), context if _positive_int(context) else None)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _match(name: str, infos: Sequence[ModelInfo]) -> tuple[ModelInfo, str] | None:
    """The model `name` refers to and the id to send for it, or None.

    Exact before case-insensitive; a model id or one of its listed instances. A name with an
    instance suffix must be a listed instance: "x:2" names the second loaded copy of "x", and a
    made-up number would get a queue of its own for a copy that does not exist.
    """
    candidates = [(info, model_id) for info in infos for model_id in (info.id, *info.loaded_instances)]
    for key in (str, str.casefold):
        for info, model_id in candidates:
            if key(model_id) == key(name):
                return info, model_id
    if _INSTANCE_SUFFIX.search(name):
        return None
    # A plain name for a model the server lists only by its instance ids ("x:1").
    for key in (str, str.casefold):
        for info, model_id in candidates:
            if key(_INSTANCE_SUFFIX.sub("", model_id)) == key(name):
                return info, _INSTANCE_SUFFIX.sub("", model_id)
    return None


class ModelCatalog:
    """The server's models, cached; names resolved and validated; default model; per-model queues."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[list[ModelInfo]]],
        *,
        base_url: str,
        ttl_s: float = 60.0,
        aliases: Mapping[str, str] | None = None,
        default_model: str | None = None,
        max_concurrency: int | None = None,
        guard: ModelGuard | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch_list = fetch
        self.guard = guard or ModelGuard()
        self.base_url = base_url
        self._ttl_s = ttl_s
        self._aliases = dict(aliases or {})
        self.default_model = default_model
        self._max_concurrency = max_concurrency
        self._clock = clock
        self._infos: list[ModelInfo] | None = None
        self._fetched_at = 0.0
        self._fetches = 0
        self._inflight: asyncio.Task[list[ModelInfo]] | None = None
        self._queues: dict[str, asyncio.Semaphore] = {}

    # --- the list ------------------------------------------------------------------------------

    async def models(self, *, refresh: bool = False) -> list[ModelInfo]:
        """The server's models: from the cache while it is fresh, else one shared fetch.

        Raises:
            LLMConnectionError: the server could not be asked (whatever failed, it is not "model not found").
        """
        if not refresh and self._infos is not None and self._clock() - self._fetched_at < self._ttl_s:
            return self._infos
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.create_task(self._fetch())
            # Retrieve the outcome even if every caller was cancelled, so no "never retrieved" noise.
            self._inflight.add_done_callback(lambda task: task.cancelled() or task.exception())
        return await asyncio.shield(self._inflight)

    async def _fetch(self) -> list[ModelInfo]:
        self._fetches += 1
        try:
            infos = await self._fetch_list()
        except LLMConnectionError:
            raise
        except LLMError as error:
            raise LLMConnectionError(
                f"Could not get the model list from {self.base_url}: {error}", error, base_url=self.base_url
            ) from error
        self._infos = infos
        self._fetched_at = self._clock()
        logger.debug("Model list refreshed: %d models", len(infos))
        return infos

    # --- names ---------------------------------------------------------------------------------

    async def resolve(self, name: str | None, *, purpose: Purpose = "chat") -> ResolvedModel:
        """The model a call uses: `name` (alias resolved, validated), else the default-model policy.

        Raises:
            ModelNotFoundError: no such model, even after a fresh look; lists those available.
            ModelTypeError: the model cannot serve `purpose` (e.g. an embedding model asked to chat).
            NoModelLoadedError: no name, no DEFAULT_MODEL, and the server lists no usable model.
            LLMConnectionError: the server could not be asked.
        """
        requested = name.strip() if name is not None else ""
        if requested.lower() not in _DEFAULT_NAMES:
            return await self._named(requested, "requested", purpose)
        if purpose == "chat" and self.default_model:
            return await self._named(self.default_model, "DEFAULT_MODEL", purpose)
        infos = await self.models()
        if purpose == "embeddings":
            embedders = [m for m in infos if m.is_embedding]
            if not embedders:
                raise NoModelLoadedError(
                    "No embedding model is available: LM Studio lists none. Download or load one in LM Studio "
                    "(e.g. nomic-embed-text), or name one with `model`.",
                    status_code=0,
                )
            return self._resolved(embedders[0], embedders[0].id, "first embedding model")
        llms = [m for m in infos if not m.is_embedding]
        loaded = [m for m in llms if m.is_loaded]
        if loaded:
            return self._resolved(loaded[0], loaded[0].id, "loaded")
        if llms:
            return self._resolved(llms[0], llms[0].id, "first listed")
        raise NoModelLoadedError(
            "LM Studio lists no model that can generate text. Download or load one in LM Studio, or set DEFAULT_MODEL.",
            status_code=0,
        )

    async def _named(self, name: str, source: Source, purpose: Purpose) -> ResolvedModel:
        target = self._aliases.get(name, name)
        fetches_before = self._fetches
        infos = await self.models()
        found = _match(target, infos)
        if found is None and self._fetches == fetches_before:
            logger.debug("Model %r not in the cached list; fetching a fresh one", target)
            infos = await self.models(refresh=True)
            found = _match(target, infos)
        if found is None:
            if target != name:
                logger.warning("Alias %r points to %r, which the server does not offer", name, target)
            raise ModelNotFoundError(target, [info.id for info in infos])
        info, model_id = found
        if info.type in _WRONG_TYPES[purpose]:
            raise ModelTypeError(model_id, str(info.type), purpose)
        if await self.guard.prepare(info, infos):
            # Loaded just now: its entry (loaded state, context) is new.
            info, model_id = _match(model_id, await self.models(refresh=True)) or found
        return self._resolved(info, model_id, source)

    def check_answer(self, model: ResolvedModel, answered: str | None) -> str | None:
        """After a call: a note when another model answered than `model` (see `llm.model_guard`).

        Raises:
            ModelMismatchError: the call named the model, another answered, and MODEL_MISMATCH is `error`.
        """
        return self.guard.check_answer(model, answered)

    def _resolved(self, info: ModelInfo, model_id: str, source: Source) -> ResolvedModel:
        queue = self._queues.get(model_id)
        if queue is None:
            limit = self._max_concurrency or info.parallel or DEFAULT_CONCURRENCY
            logger.debug("at most %d requests in flight for %s", limit, model_id)
            queue = self._queues[model_id] = asyncio.Semaphore(limit)
        return ResolvedModel(id=model_id, source=source, info=info, queue=queue)

    # --- the plan's names ----------------------------------------------------------------------

    async def get_available_models(self, use_cache: bool = True) -> list[str]:
        """The ids of the server's models (the plan's name)."""
        return [info.id for info in await self.models(refresh=not use_cache)]

    async def validate_model(self, model_name: str | None, *, purpose: Purpose = "chat") -> bool:
        """True when `model_name` can be used for `purpose` (the plan's name; raises as `resolve`)."""
        await self.resolve(model_name, purpose=purpose)
        return True


def instance_base(model_id: str) -> str:
    """The model id without a loaded-instance suffix (`qwen/qwen3-4b:2` -> `qwen/qwen3-4b`)."""
    return _INSTANCE_SUFFIX.sub("", model_id)
