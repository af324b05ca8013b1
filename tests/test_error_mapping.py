"""The pure parts of the error table: web pages cut to their title, stale connections, the retry filter.

(The table's rows through the client are in tests/test_llm_client.py.)
"""

from __future__ import annotations

import json

import httpx
import pytest

from llm.error_mapping import StatusFailure, Where, html_summary, map_error, worth_retrying
from llm.exceptions import (
    CircuitOpenError,
    LLMConnectionError,
    LLMResponseError,
    LLMServerError,
    LLMStatusError,
    LLMTimeoutError,
    StaleConnectionError,
)

WHERE = Where("http://localhost:1234", "/v1/models", 5.0, 300.0)
NGINX_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n"
    + "<hr><center>nginx/1.24.0</center>\r\n" * 40
    + "</body>\r\n</html>\r\n"
)
IS_THIS_LM_STUDIO = (
    "is http://localhost:1234 LM Studio's server? Check LMSTUDIO_BASE_URL "
    "(`curl http://localhost:1234/v1/models` should list your models)"
)


def test_an_html_error_page_is_cut_to_its_title_and_asks_whether_this_is_lm_studio() -> None:
    error = map_error(StatusFailure(502, NGINX_502, NGINX_502.strip()), WHERE)
    assert isinstance(error, LLMServerError)
    assert str(error) == (
        f'LM Studio failed internally (502) on /v1/models: an HTML page ("502 Bad Gateway"); {IS_THIS_LM_STUDIO}. '
        "Check its server log; retrying may help."
    )
    assert error.body == NGINX_502  # the whole page stays on the error for whoever needs it


def test_an_html_page_answered_with_200_is_not_json_and_named_by_its_title() -> None:
    page = "<!DOCTYPE html><html><head><title>Welcome to nginx!</title></head><body>" + "x" * 5000 + "</body></html>"
    try:
        json.loads(page)
    except json.JSONDecodeError as exc:
        error = map_error(exc, WHERE)
    assert isinstance(error, LLMResponseError)
    assert str(error) == (
        "LM Studio's answer from http://localhost:1234/v1/models was not valid JSON (Expecting value: line 1 column 1 "
        f'(char 0)): an HTML page ("Welcome to nginx!"). I{IS_THIS_LM_STUDIO[1:]}.'
    )


def test_a_page_without_a_title_is_named_by_its_first_words_and_never_quoted_whole() -> None:
    assert html_summary("<html><body><p>Service   unavailable</p></body></html>") == 'an HTML page ("Service unavailable")'
    assert len(html_summary("<html><body>" + "word " * 1000 + "</body></html>")) < 100


def test_a_plain_text_error_is_quoted_as_the_server_said_it() -> None:
    error = map_error(StatusFailure(400, '{"error": "bad request"}', "bad request"), WHERE)
    assert isinstance(error, LLMStatusError)
    assert str(error) == "LM Studio rejected the request to /v1/models (400): bad request"


@pytest.mark.parametrize(
    "problem",
    [httpx.RemoteProtocolError("Server disconnected without sending a response."), httpx.ReadError("reset")],
)
def test_a_drop_on_a_reused_connection_is_stale_not_could_not_connect(problem: httpx.HTTPError) -> None:
    stale = map_error(problem, WHERE, reused_connection=True)
    fresh = map_error(problem, WHERE)
    assert isinstance(stale, StaleConnectionError)
    assert "Is LM Studio running?" not in str(stale)
    assert str(stale).startswith("LM Studio at http://localhost:1234 closed a reused connection before answering")
    assert type(fresh) is LLMConnectionError and "Is LM Studio running?" in str(fresh)


def test_a_refused_connection_is_never_stale() -> None:
    error = map_error(httpx.ConnectError("refused"), WHERE, reused_connection=True)
    assert type(error) is LLMConnectionError


def _timeout(problem: httpx.TimeoutException) -> LLMTimeoutError:
    error = map_error(problem, WHERE)
    assert isinstance(error, LLMTimeoutError)
    return error


@pytest.mark.parametrize(
    ("error", "generation", "retried"),
    [
        (_timeout(httpx.ReadTimeout("slow")), True, False),
        (_timeout(httpx.WriteTimeout("slow")), True, False),
        (_timeout(httpx.ReadTimeout("slow")), False, True),
        (_timeout(httpx.ConnectTimeout("slow")), True, True),
        (_timeout(httpx.PoolTimeout("busy")), True, True),
        (LLMConnectionError(base_url="http://x"), True, True),
        (StaleConnectionError("closed", base_url="http://x"), True, True),
        (CircuitOpenError("http://x", 5.0), True, False),
        (LLMServerError("500", status_code=500), True, True),
        (LLMStatusError("400", status_code=400), True, False),
    ],
    ids=["generation-read", "generation-write", "listing-read", "connect", "pool", "connection", "stale",
         "circuit-open", "5xx", "4xx"],
)
def test_worth_retrying_says_what_a_second_attempt_can_fix(
    error: Exception, generation: bool, retried: bool
) -> None:
    assert worth_retrying(error, generation=generation) is retried


def test_a_500_that_is_a_validation_error_of_the_request_is_a_refusal_and_not_retried() -> None:
    """llama-cpp-python's server answers a body its schema refuses with 500 and pydantic's words, as captured
    from it: a second attempt of the same body gets the same answer."""
    message = (
        "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
        "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema'}"
    )
    body = json.dumps({"error": {"message": message, "type": "internal_server_error"}})
    where = Where("http://localhost:1234", "/v1/chat/completions", 5.0, 300.0, "gemma")
    error = map_error(StatusFailure(500, body, message), where)
    assert type(error) is LLMStatusError and error.status_code == 500
    assert str(error).startswith("LM Studio rejected the request to /v1/chat/completions (500): 1 validation error")
    assert not worth_retrying(error, generation=True)
    crashed = map_error(StatusFailure(500, "{}", "CUDA error: out of memory"), where)
    assert isinstance(crashed, LLMServerError) and worth_retrying(crashed, generation=True)
