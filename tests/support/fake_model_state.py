"""The stand-in's changing model state: which models are loaded, loading one, substitution, structured output.

Kept apart from ``fake_lmstudio`` (which renders answers) so that the rules the bridge's guarantees are
tested against read in one place:

- Loaded state changes: LM Studio 0.4's ``POST /api/v1/models/load`` (``{"model", "context_length"?, ...}``)
  marks a model loaded, with the context length asked for (else its ``loaded_context_length``, else its
  maximum), and answers ``{"type", "instance_id", "load_time_seconds", "status": "loaded"}`` (plus
  ``load_config`` with ``echo_load_config``). A model in ``fails_to_load`` gets LM Studio's 500 instead.
  Every load is recorded in ``loads``.
- Substitution (``substitutes=True``): a request naming a listed model that is not loaded is answered by
  the first loaded model of its kind, and the reply's ``model`` says so, as LM Studio does when it cannot
  load the one named. Without it the stand-in plays just-in-time loading: it answers as the model named.
- Structured output: which ``response_format`` types ``/v1/chat/completions`` accepts (``json_schema`` as
  LM Studio, ``json_object`` as llama-cpp-python, or none); any other is refused: with 500 and pydantic's
  message naming the field in llama-cpp-python's case (as its server really answers), else with 400. ``/v1/responses`` takes ``text.format`` unless ``text_format=False`` (accepted, never enforced, as
  reported of LM Studio). Whether the answer is JSON is the script's choice: a script reads the request.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

ResponseFormat = Literal["json_schema", "json_object", "none"]

LOAD_FAILURE_MESSAGE = "Failed to load model: not enough memory to load this model"


class _Model(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def loaded(self) -> bool: ...
    @property
    def loaded_context_length(self) -> int | None: ...
    @property
    def max_context_length(self) -> int: ...


@dataclass
class ModelState:
    """Loaded state and the answers that depend on it; thread-safe (the stand-in serves from a thread)."""

    models: Sequence[_Model]
    substitutes: bool = False
    response_format: ResponseFormat = "json_schema"
    text_format: bool = True
    fails_to_load: frozenset[str] = frozenset()
    loads: list[dict[str, object]] = field(default_factory=list)
    _loaded: dict[str, int | None] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._loaded = {m.id: m.loaded_context_length for m in self.models if m.loaded}

    def is_loaded(self, model: _Model) -> bool:
        with self._lock:
            return model.id in self._loaded

    def loaded_context_length(self, model: _Model) -> int | None:
        """The context the model is loaded with, as LM Studio reports it (None when not loaded or not set)."""
        with self._lock:
            return self._loaded.get(model.id)

    def answering_model(self, requested: str) -> str:
        """Which model answers a request naming `requested` (a listed model)."""
        wanted = next(m for m in self.models if m.id == requested)
        if not self.substitutes or self.is_loaded(wanted):
            return requested
        kind = _kind(wanted)
        stand_in = next((m for m in self.models if _kind(m) == kind and self.is_loaded(m)), None)
        return stand_in.id if stand_in is not None else requested

    def load(self, body: dict[str, object]) -> tuple[int, dict[str, object]]:
        """LM Studio 0.4's answer to ``POST /api/v1/models/load``: status and JSON body."""
        requested = body.get("model")
        model = next((m for m in self.models if m.id == requested), None)
        with self._lock:
            self.loads.append(dict(body))
        if model is None:
            return 404, {"error": {"message": f'Model "{requested}" not found.', "code": "model_not_found"}}
        if model.id in self.fails_to_load:
            return 500, {"error": LOAD_FAILURE_MESSAGE}
        asked = body.get("context_length")
        context = asked if isinstance(asked, int) else model.loaded_context_length
        with self._lock:
            self._loaded[model.id] = context
        answer: dict[str, object] = {
            "type": "embedding" if model.type == "embeddings" else "llm",
            "instance_id": model.id,
            "load_time_seconds": 0.01,
            "status": "loaded",
        }
        if body.get("echo_load_config"):
            answer["load_config"] = {"context_length": context or model.max_context_length}
        return 200, answer

    def output_format_refusal(self, path: str, body: dict[str, object]) -> tuple[int, str] | None:
        """The status and message for a structured-output field this server does not take, or None."""
        if path == "/v1/chat/completions" and isinstance(body.get("response_format"), dict):
            kind = body["response_format"].get("type")  # type: ignore[union-attr]
            if kind == "text" or kind == self.response_format:
                return None
            if self.response_format == "json_object":  # llama-cpp-python's own words (it answers them with 500)
                return 500, (
                    "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
                    f"'msg': \"Input should be 'text' or 'json_object'\", 'input': {kind!r}}}"
                )
            return 400, "'response_format.type' must be 'json_schema' or 'text'"
        if path == "/v1/responses" and isinstance(body.get("text"), dict) and not self.text_format:
            return 400, "Unrecognized key 'text' in the request body"
        return None


def _kind(model: _Model) -> str:
    return "embeddings" if model.type == "embeddings" else "llm"
