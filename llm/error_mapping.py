"""From what went wrong on the wire to an `LLMError`: a pure table, no I/O (like httpx's `map_httpcore_exceptions`).

`map_error(problem, where)` is the one function the client calls; `problem` is what it saw:

    what happened                                              raised
    httpx.TimeoutException (connect, read, write, pool)        LLMTimeoutError (names the setting to raise)
    httpx.NetworkError / RemoteProtocolError                   LLMConnectionError(base_url=...)
      ... on a reused keep-alive connection, before any answer StaleConnectionError (the client sends the
          (`reused_connection`: the server closed it while idle)  request once more on a new connection)
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
    StatusFailure 5xx that is pydantic's "validation error" of
            the request body (llama-cpp-python's server)        LLMStatusError (a refusal: not retried)
    StatusFailure 5xx                                          LLMServerError
    StatusFailure other 4xx                                    LLMStatusError(.status_code, .body)
    ValueError (not JSON, wrong shape)                         LLMResponseError (asks "is this LM Studio?")
    StreamEndedEarly (output, then no finish)                  LLMResponseError ("ended before the model finished")

A `StatusFailure` is an HTTP error status with its body, or a 200 that carries an error (`status=200`).
Status errors raised without an HTTP status behind them carry `status_code=0`. A body that is an HTML
page (a proxy, a web server, another program on the port) is never quoted whole: its title is shown,
with the question whether the URL is LM Studio's.

`worth_retrying(error, generation=...)` is the client's retry filter, pure as well: what a second
attempt of the same request can fix. A read timeout on a generation is not among it: the server keeps
generating for the abandoned request, and a retry would queue behind it.
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
    RETRYABLE_ERRORS,
    CircuitOpenError,
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
    StaleConnectionError,
)

_NO_MODEL_LOADED = re.compile(r"no models? (is |are )?loaded")
_MODEL_NOT_FOUND = re.compile(
    r"model\b.{0,200}?\b(not found|does not exist|is not available)|invalid model|unknown model"
)
_CONTEXT_FULL = re.compile(r"context (length|window|size)|n_ctx|tokens to keep|exceed|context overflow")
_NO_ROUTE = re.compile(r"unexpected endpoint|unknown (endpoint|route)")
# pydantic's words for a request body it refused: llama-cpp-python's server answers them with 500.
_INVALID_BODY = re.compile(r"validation error[\s\S]*'loc': \('body'")
_HTML = re.compile(r"^\s*(<!doctype html|<html|<head|<body|<\?xml)", re.IGNORECASE)
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]+>")
_TITLE_MAX = 80


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


def map_error(
    problem: Problem, where: Where, *, mid_stream: bool = False, reused_connection: bool = False
) -> LLMError:
    """The `LLMError` for `problem`.

    `mid_stream`: it came while reading a stream that had begun. `reused_connection`: the request went
    out on a keep-alive connection opened by an earlier request (no new connection was made for it).
    """
    if isinstance(problem, StatusFailure):
        return _map_status(problem, where)
    if isinstance(problem, httpx.HTTPError):
        return _map_transport(problem, where, mid_stream, reused_connection)
    if isinstance(problem, StreamEndedEarly):
        return LLMResponseError(
            f"LM Studio's stream from {where.url} ended before the model finished ({problem.chars} characters "
            "of answer had arrived, then no finish). The connection was cut or LM Studio stopped "
            "generating: check its server log, then retry.",
            problem,
        )
    if isinstance(problem, json.JSONDecodeError):
        page = f": {html_summary(problem.doc)}" if looks_like_html(problem.doc) else ""
        return LLMResponseError(
            f"LM Studio's answer from {where.url} was not valid JSON ({problem}){page}. "
            f"{_is_this_lm_studio(where, first_word='Is')}.",
            problem,
        )
    if isinstance(problem, ValueError):
        return LLMResponseError(f"LM Studio's answer from {where.url} had an unexpected shape ({problem}).", problem)
    return LLMResponseError(f"Request to {where.url} failed: {problem!r}", problem)


def worth_retrying(error: BaseException, *, generation: bool) -> bool:
    """Whether another attempt of the same request can succeed; `generation`: a POST that runs the model.

    Connect failures, 429 and 5xx can pass. A read (or write) timeout on a generation is not retried:
    the server goes on generating for the request it was sent, so a second attempt would queue behind
    the abandoned one and time out the same way. An open circuit fails fast by design.
    """
    if isinstance(error, CircuitOpenError):
        return False
    if generation and isinstance(error, LLMTimeoutError):
        return isinstance(error.original_exception, (httpx.ConnectTimeout, httpx.PoolTimeout))
    return isinstance(error, RETRYABLE_ERRORS)


def looks_like_html(text: str) -> bool:
    """Whether `text` is a web page rather than an API's answer."""
    return bool(_HTML.match(text))


def html_summary(page: str) -> str:
    """A web page in a few words: its title (or its first text), never the whole page."""
    found = _TITLE.search(page)
    title = found.group(1) if found else _TAG.sub(" ", page)
    title = " ".join(title.split())
    if len(title) > _TITLE_MAX:
        title = title[: _TITLE_MAX - 3] + "..."
    return f'an HTML page ("{title}")' if title else "an HTML page"


def _is_this_lm_studio(where: Where, *, first_word: str = "is") -> str:
    # Without its full stop: it sits inside other sentences too.
    return (
        f"{first_word} {where.base_url} LM Studio's server? Check LMSTUDIO_BASE_URL "
        f"(`curl {where.base_url}/v1/models` should list your models)"
    )


def _map_transport(problem: httpx.HTTPError, where: Where, mid_stream: bool, reused: bool) -> LLMError:
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
        if reused and not mid_stream and not isinstance(problem, httpx.ConnectError):
            return StaleConnectionError(
                f"LM Studio at {where.base_url} closed a reused connection before answering {where.path} "
                f"({type(problem).__name__}: {problem}); it does so after some answers (llama.cpp's server "
                "after refusing a streamed tool call)",
                problem,
                base_url=where.base_url,
            )
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


def _shown(failure: StatusFailure, where: Where) -> str:
    """The server's own words for a failure; a web page only by its title (the whole page says nothing)."""
    text = failure.message or failure.body
    if looks_like_html(text):
        return f"{html_summary(text)}; {_is_this_lm_studio(where)}"
    return failure.message or failure.body[:300] or "(empty body)"


def _rate_limited(f: StatusFailure, _: str, where: Where) -> LLMError:
    retry_after = retry_after_s(f.retry_after)
    wait = f" Retry after {retry_after:g} s." if retry_after is not None else ""
    return LLMRateLimitError(
        f"LM Studio is rate limiting requests (429): {_shown(f, where)}.{wait}", body=f.body, retry_after_s=retry_after
    )


def _no_model_loaded(f: StatusFailure, _: str, where: Where) -> LLMError:
    return NoModelLoadedError(
        f"LM Studio has no model loaded ({_shown(f, where)}). Load one in LM Studio (or `lms load <model>`), "
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
        f"The conversation does not fit the model's context: {_shown(f, where)}. Send a shorter prompt or task "
        "(an autonomous run: fewer or smaller tool results, e.g. a lower TOOL_OUTPUT_MAX_CHARS), lower "
        "max_tokens, or load the model with a larger context length in LM Studio.",
        status_code=f.status,
        body=f.body,
    )


def _no_route(f: StatusFailure, _: str, where: Where) -> LLMError:
    return EndpointNotSupportedError(
        f"The server at {where.base_url} does not support {where.path} ({f.status}: {_shown(f, where)}).",
        status_code=f.status,
        body=f.body,
    )


def _server_error(f: StatusFailure, _: str, where: Where) -> LLMError:
    return LLMServerError(
        f"LM Studio failed internally ({f.status}) on {where.path}: {_shown(f, where)}. Check its server log; "
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
        lambda f, t, w: LLMResponseError(f"LM Studio reported an error from {w.url}: {_shown(f, w)}"),
    ),
    _Rule(lambda f, t, w: f.status >= 500 and bool(_INVALID_BODY.search(t)), lambda f, t, w: _refused(f, w)),
    _Rule(lambda f, t, w: f.status >= 500, _server_error),
)


def _map_status(failure: StatusFailure, where: Where) -> LLMError:
    text = f"{failure.code} {failure.message}".lower()
    for rule in _STATUS_RULES:
        if rule.matches(failure, text, where):
            return rule.build(failure, text, where)
    return _refused(failure, where)


def _refused(failure: StatusFailure, where: Where) -> LLMError:
    """The request itself was refused (a 4xx, or a 5xx that is a validation error): not worth retrying."""
    return LLMStatusError(
        f"LM Studio rejected the request to {where.path} ({failure.status}): {_shown(failure, where)}",
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
