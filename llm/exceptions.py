"""Errors of the LM Studio side. `llm.llm_client` is the one place that raises them from HTTP.

    LLMError(message, original_exception=None)      .original_exception .timestamp
    ├── LLMConnectionError        cannot reach the server (refused, DNS, reset)    retried
    │   ├── CircuitOpenError      too many failures in a row: failing fast
    │   └── StaleConnectionError  the server closed an idle keep-alive connection  sent again at once
    ├── LLMTimeoutError           connect or read timed out      retried (not a generation's read)
    ├── CallTimeoutError          the whole call ran past LMSTUDIO_CALL_TIMEOUT_S   .timeout_s .in_line
    ├── LLMResponseError          the answer is unusable: bad JSON, wrong shape, cut stream
    │   ├── AnswerTooLargeError   the answer passed LMSTUDIO_MAX_ANSWER_MB          .limit_bytes
    │   ├── LLMStatusError        an HTTP error status          .status_code .body
    │   │   ├── LLMRateLimitError         429                   .retry_after_s    retried
    │   │   ├── LLMServerError            5xx                                     retried
    │   │   ├── NoModelLoadedError        400/404 "no models loaded"
    │   │   ├── EndpointNotSupportedError 404/405/501 on a route this server lacks (/v1/responses)
    │   │   └── ContextLengthExceededError  prompt + output do not fit the context
    │   ├── ModelMismatchError    another model answered than the one named   .asked .answered
    │   └── StructuredOutputError the answer does not match output_schema, even repaired  .problem .raw
    ├── ModelLoadError            LM Studio could not load the model named    .model_name
    └── LLMValidationError        the request names something that cannot be used
        ├── ModelNotFoundError    .model_name .available_models .suggestions
        ├── ModelTypeError        e.g. an embedding model asked to chat  .model_name .model_type
        ├── ModelNotLoadedError   not loaded, another is, and loading is off  .model_name .loaded
        └── OutputSchemaError     output_schema is not a valid JSON Schema   .problem

Every message says what failed and what to do; tools show `str(error)` to the user as is.
Only the errors marked "retried" can succeed on a retry (`RETRYABLE_ERRORS`; the client's exact
filter is `llm.error_mapping.worth_retrying`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

_START_HINT = "Is LM Studio running? Start its server from the Developer tab (or `lms server start`)."


class LLMError(Exception):
    """Base of every LM Studio error; keeps the low-level cause and when it happened."""

    def __init__(self, message: str, original_exception: BaseException | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.original_exception = original_exception
        self.timestamp = datetime.now(UTC)


class LLMConnectionError(LLMError):
    """LM Studio could not be reached at `base_url`."""

    def __init__(
        self,
        message: str | None = None,
        original_exception: BaseException | None = None,
        *,
        base_url: str | None = None,
    ) -> None:
        self.base_url = base_url
        where = f" at {base_url}" if base_url else ""
        super().__init__(message or f"Could not connect to LM Studio{where}. {_START_HINT}", original_exception)


class CircuitOpenError(LLMConnectionError):
    """Recent requests all failed to connect; calls fail fast until `retry_after_s` passes."""

    def __init__(self, base_url: str | None, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s
        where = f" at {base_url}" if base_url else ""
        super().__init__(
            f"LM Studio{where} is unreachable (several connection failures in a row); not trying again for "
            f"{retry_after_s:.0f} s. {_START_HINT}",
            base_url=base_url,
        )


class StaleConnectionError(LLMConnectionError):
    """A request sent on a reused keep-alive connection found it closed by the server, before any answer.

    Not a sign that the server is down (it answered on that connection before): the client sends the
    request again at once on a new connection, and logs it as what it is.
    """


class LLMTimeoutError(LLMError):
    """LM Studio did not answer in time."""


class LLMResponseError(LLMError):
    """LM Studio answered, but not with something usable."""


class LLMStatusError(LLMResponseError):
    """LM Studio answered with an HTTP error status."""

    def __init__(
        self,
        message: str,
        original_exception: BaseException | None = None,
        *,
        status_code: int,
        body: str = "",
    ) -> None:
        super().__init__(message, original_exception)
        self.status_code = status_code
        self.body = body


class LLMRateLimitError(LLMStatusError):
    """429: LM Studio (or a proxy in front of it) asked us to slow down."""

    def __init__(
        self,
        message: str,
        original_exception: BaseException | None = None,
        *,
        status_code: int = 429,
        body: str = "",
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, original_exception, status_code=status_code, body=body)
        self.retry_after_s = retry_after_s


class LLMServerError(LLMStatusError):
    """5xx: LM Studio failed internally; usually transient."""


class NoModelLoadedError(LLMStatusError):
    """LM Studio has no model loaded and could not load one just in time."""


class EndpointNotSupportedError(LLMStatusError):
    """The server has no such route (e.g. llama.cpp's server has no `/v1/responses`)."""


class ContextLengthExceededError(LLMStatusError):
    """The conversation no longer fits the model's context window."""


class LLMValidationError(LLMError):
    """The request names a model (or option) that cannot be used."""


def _closest(name: str, candidates: Sequence[str], limit: int = 3) -> list[str]:
    import difflib

    lowered = {c.lower(): c for c in candidates}
    found = difflib.get_close_matches(name.lower(), list(lowered), n=limit, cutoff=0.5)
    # A name given without its publisher ("qwen3-coder-30b") should still find "qwen/qwen3-coder-30b".
    tails = [c for c in candidates if c.lower().rsplit("/", 1)[-1] == name.lower().rsplit("/", 1)[-1]]
    ordered = tails + [lowered[f] for f in found]
    return list(dict.fromkeys(ordered))[:limit]


class ModelNotFoundError(LLMValidationError):
    """The requested model is not among those LM Studio offers.

    `available_models` is None when the server refused the name in a request and the list is not
    at hand (the error mapping does no I/O); the message then points to list_models.
    """

    def __init__(
        self,
        model_name: str,
        available_models: Sequence[str] | None,
        original_exception: BaseException | None = None,
    ) -> None:
        self.model_name = model_name
        self.available_models = list(available_models) if available_models is not None else []
        self.suggestions = _closest(model_name, self.available_models)
        if available_models is None:
            message = (
                f"Model '{model_name}' not found: the server refused it (it may have been removed or renamed "
                "since its model list was read). See list_models for the models available now."
            )
        else:
            listed = ", ".join(self.available_models) if self.available_models else "(none)"
            message = f"Model '{model_name}' not found. Available: {listed}"
            if self.suggestions:
                message += ". Did you mean " + " or ".join(self.suggestions) + "?"
            elif not self.available_models:
                message += ". Download or load a model in LM Studio, then try again."
        super().__init__(message, original_exception)


class ModelTypeError(LLMValidationError):
    """The model exists but is of the wrong kind for this call (e.g. embeddings for chat)."""

    def __init__(self, model_name: str, model_type: str, needed: str) -> None:
        self.model_name = model_name
        self.model_type = model_type
        self.needed = needed
        super().__init__(
            f"Model '{model_name}' is an {model_type} model and cannot be used for {needed}. "
            "Pick another with list_models."
        )


class CallTimeoutError(LLMError):
    """A call did not finish within its wall-clock bound; it was stopped and its queue slot freed.

    Not retried: the bound covers the retries already.
    """

    def __init__(self, url: str, model: str, timeout_s: float, *, in_line: bool) -> None:
        self.timeout_s = timeout_s
        self.in_line = in_line
        if in_line:
            message = (
                f"Model {model!r} had no free place within {timeout_s:g} s (LMSTUDIO_CALL_TIMEOUT_S): the requests "
                "already running on it held every slot of its queue (LMSTUDIO_MAX_CONCURRENCY). Retry when they "
                "are done, or raise LMSTUDIO_MAX_CONCURRENCY if LM Studio runs more requests of it in parallel."
            )
        else:
            message = (
                f"LM Studio did not finish answering {url} for model {model!r} within {timeout_s:g} s "
                "(LMSTUDIO_CALL_TIMEOUT_S); the call was stopped and its place in the model's queue freed. "
                "A long answer needs a lower max_tokens or a higher LMSTUDIO_CALL_TIMEOUT_S."
            )
        super().__init__(message)


class AnswerTooLargeError(LLMResponseError):
    """An answer grew past the cap on what one answer may carry; the rest was not read."""

    def __init__(self, url: str, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        super().__init__(
            f"LM Studio's answer from {url} passed {limit_bytes / 1_000_000:g} MB (LMSTUDIO_MAX_ANSWER_MB) and was "
            "stopped there: the model may be repeating itself without end. Set a lower max_tokens, or raise "
            "LMSTUDIO_MAX_ANSWER_MB."
        )


class ModelNotLoadedError(LLMValidationError):
    """The model named is not loaded while another is (LM Studio would answer with that one), and the
    bridge may not load it (LMSTUDIO_AUTO_LOAD=0)."""

    def __init__(self, model_name: str, loaded: Sequence[str]) -> None:
        self.model_name = model_name
        self.loaded = list(loaded)
        super().__init__(
            f"Model '{model_name}' is not loaded, and LM Studio would answer with the loaded model "
            f"({', '.join(self.loaded)}) instead. The bridge loads models only with LMSTUDIO_AUTO_LOAD=1 "
            f"(it is off): load it in LM Studio (`lms load {model_name}`), or set LMSTUDIO_AUTO_LOAD=1."
        )


class ModelLoadError(LLMError):
    """LM Studio refused or failed to load the model the bridge asked it to load."""

    def __init__(self, model_name: str, reason: str, original_exception: BaseException | None = None) -> None:
        self.model_name = model_name
        super().__init__(
            f"LM Studio could not load model '{model_name}' ({reason.rstrip('.')}). It may not fit in memory: "
            f"see LM Studio's server log, load it by hand (`lms load {model_name}`), or pick a loaded model "
            "with list_models.",
            original_exception,
        )


class ModelMismatchError(LLMResponseError):
    """The server says another model answered than the one the call named (LM Studio's substitution)."""

    def __init__(self, asked: str, answered: str) -> None:
        self.asked = asked
        self.answered = answered
        super().__init__(
            f"LM Studio answered with model '{answered}', not '{asked}' as asked: it uses the loaded model "
            f"when the one named is not loaded and cannot be loaded. Load '{asked}' in LM Studio "
            f"(`lms load {asked}`; on LM Studio 0.4+ the bridge loads it itself with LMSTUDIO_AUTO_LOAD=1), "
            "or set MODEL_MISMATCH=note to accept such answers with a note."
        )


class StructuredOutputError(LLMResponseError):
    """The model's answer does not match the output schema, even after one repair round."""

    RAW_SHOWN = 2000

    def __init__(self, problem: str, raw: str) -> None:
        self.problem = problem
        self.raw = raw
        shown = raw if len(raw) <= self.RAW_SHOWN else raw[: self.RAW_SHOWN] + f"... ({len(raw)} characters)"
        super().__init__(
            f"The model's answer does not match output_schema, even after one repair round: {problem}. "
            f"Its answer was: {shown!r}. Try a simpler schema, a clearer task, or a larger model."
        )


class OutputSchemaError(LLMValidationError):
    """The `output_schema` a call gave is not a valid JSON Schema (nothing was sent to the model)."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(
            f"output_schema is not a valid JSON Schema: {problem}. Give a JSON Schema object, e.g. "
            '{"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}.'
        )


RETRYABLE_ERRORS: tuple[type[LLMError], ...] = (
    LLMConnectionError,
    LLMTimeoutError,
    LLMRateLimitError,
    LLMServerError,
)
"""What a retry can fix. CircuitOpenError is a connection error but is never retried (see client)."""
