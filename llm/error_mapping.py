"""From what went wrong on the wire to an `LLMError`: a pure table, no I/O (like httpx's `map_httpcore_exceptions`).

`map_error(problem, where)` is the one function the client calls; `problem` is what it saw:

    what happened                                              raised
    httpx.TimeoutException (connect, read, write, pool)        LLMTimeoutError (names the setting to raise)
    httpx.NetworkError / RemoteProtocolError                   LLMConnectionError(base_url=...)
      ... after the stream had started (`mid_stream`)          LLMConnectionError ("cut off mid-answer")
    other httpx.HTTPError                                      LLMResponseError
    StatusFailure 429                                          LLMRateLimitError(.retry_after_s from Retry-After)
    StatusFailure 200/400/404 "No models loaded"               NoModelLoadedError
    StatusFailure 200/400/404 model_not_found / "... not found" ModelNotFoundError(available_models=None)
    StatusFailure 200 with no message (an empty stream)        ContextLengthExceededError (LM Studio's
                                                               context-overflow bug; the message says so)
    StatusFailure 200/400/413 "context length|window", n_ctx,
            "tokens to keep", "exceed"                         ContextLengthExceededError
    StatusFailure 404/405/501, or "Unexpected endpoint"        EndpointNotSupportedError
    StatusFailure 200 with another message                     LLMResponseError
    StatusFailure 5xx                                          LLMServerError
    StatusFailure other 4xx                                    LLMStatusError(.status_code, .body)
    ValueError (not JSON, wrong shape)                         LLMResponseError
    StreamEndedEarly (output, then no finish)                  LLMResponseError ("ended before the model finished")

A `StatusFailure` is an HTTP error status with its body, or a 200 that carries an error (`status=200`).
Status errors raised without an HTTP status behind them carry `status_code=0`.
"""

from __future__ import annotations

import email.utils
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

from llm.exceptions import (
    ContextLengthExceededError,
    EndpointNotSupportedError,
    LLMConnectionError,
    LLMError,
    LLMRateLimitError,
    LLMResponseError,
    LLMServerError,
    LLMStatusError,
    LLMTimeoutError,
    ModelNotFoundError,
    NoModelLoadedError,
)

_NO_MODEL_LOADED = re.compile(r"no models? (is |are )?loaded")
_MODEL_NOT_FOUND = re.compile(
    r"model\b.{0,200}?\b(not found|does not exist|is not available)|invalid model|unknown model"
)
_CONTEXT_FULL = re.compile(r"context (length|window|size)|n_ctx|tokens to keep|exceed|context overflow")
_NO_ROUTE = re.compile(r"unexpected endpoint|unknown (endpoint|route)")


@dataclass(frozen=True)
class Where:
    """The request a problem belongs to, and the settings a message may name."""

    base_url: str
    path: str
    connect_timeout_s: float
    request_timeout_s: float
    model: str | None = None

    @property
    def url(self) -> str:
        return f"{self.base_url}{self.path}"


@dataclass(frozen=True)
class StatusFailure:
    """An error status with its body; or a 200 that carries an error, or an empty stream (`message` "")."""

    status: int
    body: str
    message: str
    code: str = ""
    retry_after: str | None = None

    @classmethod
    def from_response(cls, response: httpx.Response) -> StatusFailure:
        message, code = error_message(json_or_text(response.text))
        return cls(response.status_code, response.text, message, code, response.headers.get("Retry-After"))

    @classmethod
    def in_200(cls, message: str, body: str = "") -> StatusFailure:
        return cls(200, body, message)


class StreamEndedEarly(Exception):
    """A stream that carried some output but closed before the model finished (no finish reason)."""

    def __init__(self, chars: int) -> None:
        super().__init__(f"stream ended after {chars} characters without a finish")
        self.chars = chars


Problem = BaseException | StatusFailure


def map_error(problem: Problem, where: Where, *, mid_stream: bool = False) -> LLMError:
    """The `LLMError` for `problem`; `mid_stream`: it came while reading a stream that had begun."""
    if isinstance(problem, StatusFailure):
        return _map_status(problem, where)
    if isinstance(problem, httpx.HTTPError):
        return _map_transport(problem, where, mid_stream)
    if isinstance(problem, StreamEndedEarly):
        return LLMResponseError(
            f"LM Studio's stream from {where.url} ended before the model finished ({problem.chars} characters "
            "of answer had arrived, then no finish). The connection was cut or LM Studio stopped "
            "generating: check its server log, then retry.",
            problem,
        )
    if isinstance(problem, ValueError):
        what = "was not valid JSON" if isinstance(problem, json.JSONDecodeError) else "had an unexpected shape"
        return LLMResponseError(f"LM Studio's answer from {where.url} {what} ({problem}).", problem)
    return LLMResponseError(f"Request to {where.url} failed: {problem!r}", problem)


def _map_transport(problem: httpx.HTTPError, where: Where, mid_stream: bool) -> LLMError:
    if isinstance(problem, httpx.TimeoutException):
        if isinstance(problem, httpx.ConnectTimeout):
            seconds, setting = where.connect_timeout_s, "LMSTUDIO_CONNECT_TIMEOUT_S"
            what = f"Connecting to LM Studio at {where.base_url} took longer than {seconds:g} s"
        else:
            seconds, setting = where.request_timeout_s, "LMSTUDIO_REQUEST_TIMEOUT_S"
            what = f"LM Studio did not answer {where.url} within {seconds:g} s"
        return LLMTimeoutError(
            f"{what} ({type(problem).__name__}). A big model or a long prompt can need more: raise {setting}.",
            problem,
        )
    if isinstance(problem, (httpx.NetworkError, httpx.RemoteProtocolError)):
        if mid_stream:
            return LLMConnectionError(
                f"LM Studio's stream from {where.url} was cut off mid-answer ({type(problem).__name__}: {problem}). "
                "LM Studio may have crashed, restarted or unloaded the model: check its server log, then retry.",
                problem,
                base_url=where.base_url,
            )
        return LLMConnectionError(original_exception=problem, base_url=where.base_url)
    return LLMResponseError(f"Request to {where.url} failed: {problem!r}", problem)


@dataclass(frozen=True)
class _Rule:
    """A row of the status table: when `matches`, `build` makes the error."""

    matches: Callable[[StatusFailure, str, Where], bool]
    build: Callable[[StatusFailure, str, Where], LLMError]


def _shown(failure: StatusFailure) -> str:
    return failure.message or failure.body[:300] or "(empty body)"


def _rate_limited(f: StatusFailure, _: str, where: Where) -> LLMError:
    retry_after = retry_after_s(f.retry_after)
    wait = f" Retry after {retry_after:g} s." if retry_after is not None else ""
    return LLMRateLimitError(
        f"LM Studio is rate limiting requests (429): {_shown(f)}.{wait}", body=f.body, retry_after_s=retry_after
    )


def _no_model_loaded(f: StatusFailure, _: str, where: Where) -> LLMError:
    return NoModelLoadedError(
        f"LM Studio has no model loaded ({_shown(f)}). Load one in LM Studio (or `lms load <model>`), "
        "or set DEFAULT_MODEL to a model it can load just in time.",
        status_code=f.status,
        body=f.body,
    )


def _empty_stream(f: StatusFailure, _: str, where: Where) -> LLMError:
    return ContextLengthExceededError(
        f"LM Studio ended the stream from {where.url} without any output. The conversation may no longer "
        "fit the model's context (LM Studio reports an overflow this way): shorten it, or load the "
        "model with a larger context length.",
        status_code=f.status,
        body=f.body,
    )


def _context_full(f: StatusFailure, _: str, where: Where) -> LLMError:
    return ContextLengthExceededError(
        f"The conversation does not fit the model's context: {_shown(f)}. Send a shorter prompt or task "
        "(an autonomous run: fewer or smaller tool results, e.g. a lower TOOL_OUTPUT_MAX_CHARS), lower "
        "max_tokens, or load the model with a larger context length in LM Studio.",
        status_code=f.status,
        body=f.body,
    )


def _no_route(f: StatusFailure, _: str, where: Where) -> LLMError:
    return EndpointNotSupportedError(
        f"The server at {where.base_url} does not support {where.path} ({f.status}: {_shown(f)}).",
        status_code=f.status,
        body=f.body,
    )


def _server_error(f: StatusFailure, _: str, where: Where) -> LLMError:
    return LLMServerError(
        f"LM Studio failed internally ({f.status}) on {where.path}: {_shown(f)}. Check its server log; "
        "retrying may help.",
        status_code=f.status,
        body=f.body,
    )


_STATUS_RULES: tuple[_Rule, ...] = (
    _Rule(lambda f, t, w: f.status == 429, _rate_limited),
    _Rule(lambda f, t, w: f.status in (200, 400, 404) and bool(_NO_MODEL_LOADED.search(t)), _no_model_loaded),
    _Rule(
        lambda f, t, w: w.model is not None
        and f.status in (200, 400, 404)
        and (f.code == "model_not_found" or bool(_MODEL_NOT_FOUND.search(t))),
        lambda f, t, w: ModelNotFoundError(str(w.model), None),
    ),
    _Rule(lambda f, t, w: f.status == 200 and not f.message, _empty_stream),
    _Rule(lambda f, t, w: f.status in (200, 400, 413) and bool(_CONTEXT_FULL.search(t)), _context_full),
    _Rule(lambda f, t, w: f.status in (404, 405, 501) or bool(_NO_ROUTE.search(t)), _no_route),
    _Rule(
        lambda f, t, w: f.status == 200,
        lambda f, t, w: LLMResponseError(f"LM Studio reported an error from {w.url}: {_shown(f)}"),
    ),
    _Rule(lambda f, t, w: f.status >= 500, _server_error),
)


def _map_status(failure: StatusFailure, where: Where) -> LLMError:
    text = f"{failure.code} {failure.message}".lower()
    for rule in _STATUS_RULES:
        if rule.matches(failure, text, where):
            return rule.build(failure, text, where)
    return LLMStatusError(
        f"LM Studio rejected the request to {where.path} ({failure.status}): {_shown(failure)}",
        status_code=failure.status,
        body=failure.body,
    )


# --- reading error bodies ------------------------------------------------------------------------


def json_or_text(body: str) -> object:
    try:
        return json.loads(body)
    except ValueError:
        return body


def error_message(data: object) -> tuple[str, str]:
    """(message, code) from LM Studio's error bodies: `{"error": "..."}`, `{"error": {...}}`, or plain text."""
    if isinstance(data, str):
        return data.strip(), ""
    if not isinstance(data, dict):
        return "", ""
    error = data.get("error", data)
    if isinstance(error, str):
        return error, str(data.get("code") or "")
    if isinstance(error, dict):
        message = error.get("message") or error.get("detail") or ""
        return str(message), str(error.get("code") or data.get("code") or "")
    return "", ""


def retry_after_s(value: str | None) -> float | None:
    """Retry-After as seconds, from either its delta-seconds or its HTTP-date form."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
