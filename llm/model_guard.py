"""The model asked for is the model that answers: the check before a call, and the one after it.

LM Studio answers with whatever model is loaded when the one a request names is not loaded and cannot
be loaded just in time (substitution); the reply's `model` says which model answered. The catalog
(`llm.models.ModelCatalog`) asks this module both questions; nothing else decides them.

Before a call (`ModelGuard.prepare`, from `ModelCatalog.resolve` for a model a call names or
DEFAULT_MODEL names), by `decide`:

    what the server says of the model                               decision
    loaded state not reported, or it is loaded                      ready
    not loaded, and no other model of its kind is loaded            ready: nothing to substitute it with
                                                                    (LM Studio loads it just in time)
    not loaded, another is, LMSTUDIO_AUTO_LOAD=0                    refuse: ModelNotLoadedError
    not loaded, another is, the server has LM Studio 0.4's load API load: POST /api/v1/models/load
    not loaded, another is, no load API (0.3, llama.cpp, ...)       ready: the check after the call decides

A load asks for MODEL_CONTEXT_TOKENS as the context length when that is set (else LM Studio's default
for the model). That API takes no `ttl`: a model the bridge loads stays loaded until it is unloaded or
LM Studio evicts it (LMSTUDIO_MODEL_TTL_S applies to models LM Studio loads just in time). Concurrent
calls for one model share one load.

After a call (`ModelGuard.check_answer`): the `model` the server reports, against the one resolved
(case and a loaded-instance suffix `:2` ignored). A mismatch on a model the call named is
`ModelMismatchError` with MODEL_MISMATCH=error (the default), a note with MODEL_MISMATCH=note; a
mismatch on the default model (`model` left out) is always a note.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from llm.exceptions import ModelMismatchError, ModelNotLoadedError
from llm.results import LoadResult

if TYPE_CHECKING:
    from llm.listing import ModelInfo
    from llm.models import ResolvedModel

logger = logging.getLogger(__name__)

Decision = Literal["ready", "load", "refuse"]
MismatchPolicy = Literal["error", "note"]
LoadFn = Callable[[str | None, str, int | None], Awaitable[LoadResult]]
"""`load(server, model_id, context_length)`: load a model on that server (None: the only one)."""


@dataclass(frozen=True)
class GuardPolicy:
    """The settings behind both checks (LMSTUDIO_AUTO_LOAD, MODEL_CONTEXT_TOKENS, MODEL_MISMATCH)."""

    auto_load: bool = True
    context_length: int | None = None
    mismatch: MismatchPolicy = "error"


def decide(info: ModelInfo, listed: Sequence[ModelInfo], *, auto_load: bool, can_load: bool) -> Decision:
    """What to do before a call names `info`, given every model the server lists (see the module table)."""
    if info.is_loaded or (info.state is None and not info.loaded_instances):
        return "ready"
    if not _substitutes(info, listed):
        return "ready"
    if not auto_load:
        return "refuse"
    return "load" if can_load else "ready"


def _substitutes(info: ModelInfo, listed: Sequence[ModelInfo]) -> list[str]:
    """The loaded models of `info`'s kind that LM Studio could answer with instead."""
    return [m.id for m in listed if m.id != info.id and m.is_loaded and m.is_embedding == info.is_embedding]


def same_model(asked: str, answered: str) -> bool:
    """Whether a reply's `model` names the model asked for (case and an instance suffix `:N` ignored)."""

    def base(name: str) -> str:
        head, _, tail = name.rpartition(":")
        return (head if head and tail.isdigit() else name).casefold()

    return base(asked) == base(answered)


class ModelGuard:
    """Loads a named model that LM Studio would otherwise substitute; checks who answered."""

    def __init__(
        self,
        policy: GuardPolicy | None = None,
        *,
        load: LoadFn | None = None,
        can_load: Callable[[str | None], bool] = lambda server: False,
    ) -> None:
        self.policy = policy or GuardPolicy()
        self._load = load
        self._can_load = can_load
        self._loads: dict[tuple[str | None, str], asyncio.Task[LoadResult]] = {}

    async def prepare(self, info: ModelInfo, listed: Sequence[ModelInfo]) -> bool:
        """Make sure a call naming `info` is answered by it; True when a model was loaded (list changed).

        `listed`: the models of the server `info` is on (substitution happens within one server).

        Raises:
            ModelNotLoadedError: it is not loaded, another is, and LMSTUDIO_AUTO_LOAD is off.
            ModelLoadError: LM Studio did not load it.
        """
        decision = decide(
            info, listed, auto_load=self.policy.auto_load,
            can_load=self._load is not None and self._can_load(info.server),
        )
        if decision == "ready":
            return False
        if decision == "refuse":
            raise ModelNotLoadedError(info.id, _substitutes(info, listed))
        assert self._load is not None
        key = (info.server, info.id)
        task = self._loads.get(key)
        if task is None or task.done():
            logger.info("loading %s (not loaded; LM Studio would answer with %s)", info.id, _substitutes(info, listed))
            task = self._loads[key] = asyncio.create_task(
                self._load(info.server, info.id, self.policy.context_length)
            )
            # Retrieve the outcome even if every caller was cancelled, so no "never retrieved" noise.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        result = await asyncio.shield(task)
        logger.info("loaded %s as %s in %s s", info.id, result.instance_id, result.load_time_s)
        return True

    def check_answer(self, model: ResolvedModel, answered: str | None) -> str | None:
        """A note when another model answered than `model`, None when it was that one (or not said).

        Raises:
            ModelMismatchError: the call named the model and MODEL_MISMATCH is `error`.
        """
        if not answered or same_model(model.id, answered):
            return None
        if model.source == "requested" and self.policy.mismatch == "error":
            raise ModelMismatchError(model.id, answered)
        why = "named" if model.source == "requested" else "the default model"
        return (
            f"LM Studio reports that {answered} answered, not {model.id} ({why}): it uses the loaded model when "
            f"the one asked for is not loaded. Load {model.id} (or unload the other) to get answers from it."
        )
