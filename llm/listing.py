"""What a model server says about its models: `ModelInfo`, read from any of its listings, and name matching.

    parse_models(body)   LM Studio 0.4 `/api/v1/models`, 0.3 `/api/v0/models`, or OpenAI's `/v1/models`
    matches(name, infos) the models a name can mean, best match first

Pure data and parsing; which of them a call uses is the catalog's decision (`llm.models`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_INSTANCE_SUFFIX = re.compile(r":\d+$")


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
    server: str | None = None  # the backend that lists it (set by the catalog)
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


def matches(name: str, infos: Sequence[ModelInfo]) -> list[tuple[ModelInfo, str]]:
    """The models `name` can mean, with the id to send for each: every one at the best match level.

    Exact before case-insensitive; a model id or one of its listed instances. A name with an
    instance suffix must be a listed instance: "x:2" names the second loaded copy of "x", and a
    made-up number would get a queue of its own for a copy that does not exist. Several servers
    may list the same model: each is a match.
    """
    candidates = _candidates(infos)
    for key in (str, str.casefold):
        found = [(info, model_id) for info, model_id in candidates if key(model_id) == key(name)]
        if found:
            return _one_per_server(found)
    if _INSTANCE_SUFFIX.search(name):
        return []
    # A plain name for a model the server lists only by its instance ids ("x:1").
    for key in (str, str.casefold):
        found = [(info, instance_base(model_id)) for info, model_id in candidates
                 if key(instance_base(model_id)) == key(name)]
        if found:
            return _one_per_server(found)
    return []


def exact_matches(infos: Sequence[ModelInfo]) -> dict[str, list[tuple[ModelInfo, str]]]:
    """`matches(name, infos)` for every name that matches exactly (an id or a listed instance), at once."""
    exact: dict[str, list[tuple[ModelInfo, str]]] = {}
    for info, model_id in _candidates(infos):
        exact.setdefault(model_id, []).append((info, model_id))
    return {model_id: _one_per_server(found) for model_id, found in exact.items()}


def _candidates(infos: Sequence[ModelInfo]) -> list[tuple[ModelInfo, str]]:
    return [(info, model_id) for info in infos for model_id in (info.id, *info.loaded_instances)]


def _one_per_server(found: list[tuple[ModelInfo, str]]) -> list[tuple[ModelInfo, str]]:
    """One match per server (a model and its instance can both match the same name)."""
    seen: set[str | None] = set()
    kept = []
    for info, model_id in found:
        if info.server not in seen:
            seen.add(info.server)
            kept.append((info, model_id))
    return kept


def instance_base(model_id: str) -> str:
    """The model id without a loaded-instance suffix (`qwen/qwen3-4b:2` -> `qwen/qwen3-4b`)."""
    return _INSTANCE_SUFFIX.sub("", model_id)


