"""The model catalog: the one place that answers "which model, on which server, loaded how".

Every tool, the agent, the client's queues and `doctor` ask `ModelCatalog`; nothing else decides.

- The list: every backend's models (`llm.listing.ModelInfo`, each tagged with its `server`), from
  the richest listing each has, fetched together, cached for `ttl_s`, one shared fetch for
  concurrent callers; an unknown name gets one fresh fetch before it is refused. A server that
  cannot be asked is left out (and reported by `health()`); only when none answers is it an error.
- Names: aliases (MODEL_ALIASES), exact then case-insensitive match, a loaded instance (`x:2`)
  only when listed, suggestions for a typo (in `ModelNotFoundError`), and `model@server` to pin a
  call to one server.
- Routing, first match wins: a server where the model is loaded and has a free slot; one where it
  is loaded (the call queues there); one that lists it (LM Studio loads it just in time). A server
  whose breaker is open (repeated connection failures) comes last. `elsewhere()` gives a call the
  same model on another server when its first one cannot be reached.
- The default-model policy: a call without `model` uses DEFAULT_MODEL (validated like a named
  one), else a loaded LLM, else the first LLM listed. Without `model`, an embeddings call uses the
  first embedding model.
- Queues: each (server, model) gets one semaphore, sized by the server's max_concurrency
  (LMSTUDIO_MAX_CONCURRENCY or its LMSTUDIO_BACKENDS entry), else the parallel slots it reports for
  the model, else `DEFAULT_CONCURRENCY`.
- Loaded or not: a named model LM Studio would substitute is loaded first, or refused, and the model
  a reply names is checked against the one asked for; both by `llm.model_guard.ModelGuard`, which the
  catalog asks (`resolve`, `check_answer`).

`resolve()` returns a `ResolvedModel`; the client's generation methods take only that, so a
request can only ever go out for a model the catalog resolved, on the server it chose.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from llm.exceptions import LLMConnectionError, LLMError, ModelNotFoundError, ModelTypeError, NoModelLoadedError
from llm.listing import ModelInfo, exact_matches, matches
from llm.model_guard import ModelGuard

if TYPE_CHECKING:
    from llm.backends import Backend

logger = logging.getLogger(__name__)

Purpose = Literal["chat", "embeddings"]
Source = Literal["requested", "DEFAULT_MODEL", "loaded", "first listed", "first embedding model"]

DEFAULT_CONCURRENCY = 4
"""Requests in flight per model when neither the settings nor the server say (LM Studio's default)."""

_DEFAULT_NAMES = ("", "default")
# Which model types each purpose cannot use; a model whose type the server does not say is accepted.
_WRONG_TYPES: dict[Purpose, frozenset[str]] = {
    "chat": frozenset({"embeddings"}),
    "embeddings": frozenset({"llm", "vlm"}),
}


@dataclass(frozen=True)
class ResolvedModel:
    """A model a call will use: the id to send, why it was chosen, what the server says of it, its queue,
    and the server it runs on (`pinned`: named with `model@server`, so it never moves)."""

    id: str
    source: Source
    info: ModelInfo | None
    queue: asyncio.Semaphore = field(compare=False, repr=False)
    backend: Backend | None = field(default=None, compare=False, repr=False)
    pinned: bool = False

    @property
    def context_length(self) -> int | None:
        return self.info.context_length if self.info is not None else None

    @property
    def server(self) -> str | None:
        return self.backend.name if self.backend is not None else None


@dataclass(frozen=True)
class ServerHealth:
    """How a server answered its last model listing."""

    name: str
    base_url: str
    ok: bool
    models: int
    latency_ms: float | None
    error: str | None


class ModelCatalog:
    """Every server's models, cached; names resolved, validated and routed; default model; queues."""

    def __init__(
        self,
        backends: Sequence[Backend],
        *,
        ttl_s: float = 60.0,
        aliases: Mapping[str, str] | None = None,
        default_model: str | None = None,
        guard: ModelGuard | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not backends:
            raise ValueError("a catalog needs at least one model server")
        self.backends = list(backends)
        self._by_name = {backend.name: backend for backend in self.backends}
        self.guard = guard or ModelGuard()
        self._ttl_s = ttl_s
        self._aliases = dict(aliases or {})
        self.default_model = default_model
        self._clock = clock
        self._infos: list[ModelInfo] | None = None
        # The cached list by exact id and instance id, and the answers built from it: a name asked
        # for again (every round of a run, every call naming a model) is two dict lookups.
        self._exact: dict[str, list[tuple[ModelInfo, str]]] = {}
        self._answers: dict[tuple[str | None, str, Source, bool], ResolvedModel] = {}
        self._health: dict[str, ServerHealth] = {}
        self._fetched_at = 0.0
        self._fetches = 0
        self._inflight: asyncio.Task[list[ModelInfo]] | None = None
        self._queues: dict[tuple[str, str], asyncio.Semaphore] = {}

    @property
    def base_url(self) -> str:
        """The first server's URL (the one server, in the usual set-up)."""
        return self.backends[0].base_url

    # --- the list ------------------------------------------------------------------------------

    async def models(self, *, refresh: bool = False) -> list[ModelInfo]:
        """Every server's models: from the cache while it is fresh, else one shared fetch.

        Raises:
            LLMConnectionError: no server could be asked (whatever failed, it is not "model not found").
        """
        if not refresh and self._infos is not None and self._clock() - self._fetched_at < self._ttl_s:
            return self._infos
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.create_task(self._fetch())
            # Retrieve the outcome even if every caller was cancelled, so no "never retrieved" noise.
            self._inflight.add_done_callback(lambda task: task.cancelled() or task.exception())
        return await asyncio.shield(self._inflight)

    def health(self) -> list[ServerHealth]:
        """Each server as its last listing found it (not asked yet: no entry)."""
        return [self._health[b.name] for b in self.backends if b.name in self._health]

    async def _fetch(self) -> list[ModelInfo]:
        self._fetches += 1
        answers = await asyncio.gather(*(self._fetch_one(b) for b in self.backends))
        errors = [error for _, error in answers if error is not None]
        if len(errors) == len(self.backends):
            if len(errors) == 1:
                raise errors[0]
            listed = "; ".join(f"{b.name} ({b.base_url}): {e}" for b, e in zip(self.backends, errors, strict=True))
            raise LLMConnectionError(f"No model server could be asked for its models: {listed}", errors[0])
        infos = [info for listing, _ in answers for info in listing]
        self._exact = exact_matches(infos)
        self._answers = {}
        self._infos = infos
        self._fetched_at = self._clock()
        logger.debug("Model list refreshed: %d models from %d server(s)", len(infos), len(self.backends) - len(errors))
        return infos

    async def _fetch_one(self, backend: Backend) -> tuple[list[ModelInfo], LLMConnectionError | None]:
        started = time.perf_counter()
        try:
            infos = await backend.client.list_models()
        except LLMError as error:
            failure = error if isinstance(error, LLMConnectionError) else LLMConnectionError(
                f"Could not get the model list from {backend.base_url}: {error}", error, base_url=backend.base_url
            )
            self._health[backend.name] = ServerHealth(backend.name, backend.base_url, False, 0, None, str(failure))
            if len(self.backends) > 1:
                logger.warning("model server %r left out: %s", backend.name, failure)
            return [], failure
        latency = round((time.perf_counter() - started) * 1000, 1)
        self._health[backend.name] = ServerHealth(backend.name, backend.base_url, True, len(infos), latency, None)
        return [replace(info, server=backend.name) for info in infos], None

    # --- names ---------------------------------------------------------------------------------

    async def resolve(
        self, name: str | None, *, purpose: Purpose = "chat", exclude: Collection[str] = ()
    ) -> ResolvedModel:
        """The model a call uses: `name` (alias resolved, validated, routed), else the default-model policy.

        `exclude`: servers not to route to.

        Raises:
            ModelNotFoundError: no such model, even after a fresh look; lists those available.
            ModelTypeError: the model cannot serve `purpose` (e.g. an embedding model asked to chat).
            NoModelLoadedError: no name, no DEFAULT_MODEL, and no server lists a usable model.
            LLMConnectionError: no server could be asked.
        """
        requested = name.strip() if name is not None else ""
        if requested.lower() not in _DEFAULT_NAMES:
            return await self._named(requested, "requested", purpose, exclude)
        if purpose == "chat" and self.default_model:
            return await self._named(self.default_model, "DEFAULT_MODEL", purpose, exclude)
        infos = [m for m in await self.models() if m.server not in exclude]
        if purpose == "embeddings":
            embedders = self._ordered([(m, m.id) for m in infos if m.is_embedding])
            if not embedders:
                raise NoModelLoadedError(
                    "No embedding model is available: LM Studio lists none. Download or load one in LM Studio "
                    "(e.g. nomic-embed-text), or name one with `model`.",
                    status_code=0,
                )
            return self._resolved(*embedders[0], "first embedding model")
        llms = self._ordered([(m, m.id) for m in infos if not m.is_embedding])
        if not llms:
            raise NoModelLoadedError(
                "LM Studio lists no model that can generate text. Download or load one in LM Studio, or set "
                "DEFAULT_MODEL.",
                status_code=0,
            )
        info, model_id = llms[0]
        return self._resolved(info, model_id, "loaded" if info.is_loaded else "first listed")

    async def elsewhere(self, resolved: ResolvedModel, *, purpose: Purpose = "chat") -> ResolvedModel | None:
        """The same model on another server (for a call whose server cannot be reached), or None."""
        if resolved.pinned or resolved.server is None or len(self.backends) == 1:
            return None
        try:
            other = await self._named(resolved.id, resolved.source, purpose, {resolved.server})
        except LLMError:
            return None
        return other if other.backend is not None and other.backend.reachable else None

    async def _named(self, name: str, source: Source, purpose: Purpose, exclude: Collection[str]) -> ResolvedModel:
        name, pinned = self._pinned(name)
        target = self._aliases.get(name, name)
        narrowed = bool(pinned or exclude)  # usually not: any server will do, nothing to filter out
        allowed = ({pinned} if pinned else set(self._by_name) - set(exclude)) if narrowed else self._by_name.keys()

        def found_in(infos: list[ModelInfo]) -> list[tuple[ModelInfo, str]]:
            found = self._matches(target, infos)
            return [m for m in found if m[0].server in allowed] if narrowed else found

        fetches_before = self._fetches
        infos = await self.models()
        found = found_in(infos)
        if not found and self._fetches == fetches_before:
            logger.debug("Model %r not in the cached list; fetching a fresh one", target)
            infos = await self.models(refresh=True)
            found = found_in(infos)
        if not found:
            if target != name:
                logger.warning("Alias %r points to %r, which no server offers", name, target)
            shown = f"{target}@{pinned}" if pinned else target
            down = [h for h in self.health() if not h.ok and h.name in allowed]
            if down:
                # The model may well be on the server that is down: say that, not "not found".
                servers = ", ".join(f"{h.name} ({h.base_url})" for h in down)
                raise LLMConnectionError(
                    f"Model '{shown}' is not on any model server that answered; {servers} could not be asked: "
                    f"{down[0].error}",
                    base_url=down[0].base_url,
                )
            raise ModelNotFoundError(shown, [self._label(i) for i in infos if not pinned or i.server == pinned])
        info, model_id = self._ordered(found)[0] if len(found) > 1 else found[0]
        if info.type in _WRONG_TYPES[purpose]:
            raise ModelTypeError(model_id, str(info.type), purpose)
        # A loaded model is ready as it is: the guard is asked only about one that is not.
        if not info.is_loaded and await self.guard.prepare(info, [i for i in infos if i.server == info.server]):
            # Loaded just now: its entry (loaded state, context) is new.
            fresh = [m for m in matches(model_id, await self.models(refresh=True)) if m[0].server == info.server]
            info, model_id = fresh[0] if fresh else (info, model_id)
        return self._resolved(info, model_id, source, pinned=bool(pinned))

    def check_answer(self, model: ResolvedModel, answered: str | None) -> str | None:
        """After a call: a note when another model answered than `model` (see `llm.model_guard`).

        Raises:
            ModelMismatchError: the call named the model, another answered, and MODEL_MISMATCH is `error`.
        """
        return self.guard.check_answer(model, answered)

    def _matches(self, name: str, infos: list[ModelInfo]) -> list[tuple[ModelInfo, str]]:
        """`matches(name, infos)`, from the index when `infos` is the cached list and `name` an exact id."""
        if infos is self._infos and name in self._exact:
            return self._exact[name]
        return matches(name, infos)

    def _pinned(self, name: str) -> tuple[str, str | None]:
        """`model@server` -> (model, server) when `server` is one of the backends' names (model ids may hold `@`)."""
        model, at, server = name.rpartition("@")
        if at and model and server in self._by_name:
            return model, server
        return name, None

    def _label(self, info: ModelInfo) -> str:
        return f"{info.id}@{info.server}" if len(self.backends) > 1 and info.server else info.id

    def _ordered(self, found: list[tuple[ModelInfo, str]]) -> list[tuple[ModelInfo, str]]:
        """Matches in routing order: reachable, loaded with a free slot, loaded, listed; then server order."""
        order = {b.name: index for index, b in enumerate(self.backends)}

        def rank(item: tuple[ModelInfo, str]) -> tuple[bool, bool, bool, int]:
            info, model_id = item
            backend = self._by_name.get(info.server or "", self.backends[0])
            queue = self._queues.get((backend.name, model_id))
            busy = queue is not None and queue.locked()
            return (not backend.reachable, not info.is_loaded, busy, order.get(backend.name, 0))

        return sorted(found, key=rank)

    def _resolved(self, info: ModelInfo, model_id: str, source: Source, *, pinned: bool = False) -> ResolvedModel:
        answer = self._answers.get((info.server, model_id, source, pinned))
        if answer is not None and answer.info is info:
            return answer
        backend = self._by_name.get(info.server or "", self.backends[0])
        key = (backend.name, model_id)
        queue = self._queues.get(key)
        if queue is None:
            limit = backend.max_concurrency or info.parallel or DEFAULT_CONCURRENCY
            logger.debug("at most %d requests in flight for %s on %s", limit, model_id, backend.name)
            queue = self._queues[key] = asyncio.Semaphore(limit)
        answer = ResolvedModel(id=model_id, source=source, info=info, queue=queue, backend=backend, pinned=pinned)
        self._answers[(info.server, model_id, source, pinned)] = answer
        return answer

    # --- the plan's names ----------------------------------------------------------------------

    async def get_available_models(self, use_cache: bool = True) -> list[str]:
        """The ids of the servers' models (the plan's name)."""
        return [info.id for info in await self.models(refresh=not use_cache)]

    async def validate_model(self, model_name: str | None, *, purpose: Purpose = "chat") -> bool:
        """True when `model_name` can be used for `purpose` (the plan's name; raises as `resolve`)."""
        await self.resolve(model_name, purpose=purpose)
        return True
