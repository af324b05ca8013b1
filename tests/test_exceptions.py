"""The LM Studio error tree: fields callers rely on, messages users see, what counts as retryable."""

from __future__ import annotations

import inspect

import pytest

import llm.exceptions as exceptions_module
from llm.exceptions import (
    RETRYABLE_ERRORS,
    CircuitOpenError,
    ContextLengthExceededError,
    LLMConnectionError,
    LLMError,
    LLMRateLimitError,
    LLMResponseError,
    LLMServerError,
    LLMStatusError,
    LLMTimeoutError,
    ModelNotFoundError,
    ModelTypeError,
)


def test_base_exception_stores_original() -> None:
    original = ValueError("original error")

    error = LLMError("wrapped", original)

    assert error.original_exception is original
    assert str(error) == "wrapped"


def test_model_not_found_carries_name_and_available_models_in_its_message() -> None:
    error = ModelNotFoundError("x", ["a", "b"])

    assert error.model_name == "x"
    assert error.available_models == ["a", "b"]
    assert str(error).startswith("Model 'x' not found. Available: a, b")


def test_model_not_found_suggests_the_same_model_under_its_publisher() -> None:
    error = ModelNotFoundError("qwen3-coder-30b", ["qwen/qwen3-coder-30b", "google/gemma-3-270m"])

    assert error.suggestions == ["qwen/qwen3-coder-30b"]
    assert "Did you mean qwen/qwen3-coder-30b?" in str(error)


def test_model_not_found_with_no_models_tells_the_user_to_load_one() -> None:
    assert "load a model" in str(ModelNotFoundError("x", []))


def test_every_error_class_is_an_llm_error() -> None:
    classes = [
        obj
        for obj in vars(exceptions_module).values()
        if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == exceptions_module.__name__
    ]

    assert len(classes) >= 14
    assert all(issubclass(cls, LLMError) for cls in classes)


def test_retryable_set_is_connection_timeout_rate_limit_and_server_errors() -> None:
    assert set(RETRYABLE_ERRORS) == {LLMConnectionError, LLMTimeoutError, LLMRateLimitError, LLMServerError}
    assert not issubclass(ContextLengthExceededError, RETRYABLE_ERRORS)
    assert not issubclass(ModelNotFoundError, RETRYABLE_ERRORS)


@pytest.mark.parametrize("cls", [LLMStatusError, LLMServerError, ContextLengthExceededError])
def test_status_errors_carry_status_code_and_body(cls: type[LLMStatusError]) -> None:
    error = cls("failed", status_code=500, body='{"error": "boom"}')

    assert isinstance(error, LLMResponseError)
    assert (error.status_code, error.body) == (500, '{"error": "boom"}')


def test_rate_limit_error_defaults_to_429_and_keeps_retry_after() -> None:
    error = LLMRateLimitError("slow down", retry_after_s=2.5)

    assert (error.status_code, error.retry_after_s) == (429, 2.5)


def test_timestamp_is_timezone_aware() -> None:
    assert LLMError("x").timestamp.utcoffset() is not None


def test_connection_error_names_the_server_and_how_to_start_it() -> None:
    message = str(LLMConnectionError(base_url="http://localhost:1234"))

    assert "http://localhost:1234" in message
    assert "Developer tab" in message


def test_circuit_open_error_is_a_connection_error_with_retry_after() -> None:
    error = CircuitOpenError("http://localhost:1234", 12.0)

    assert isinstance(error, LLMConnectionError)
    assert error.retry_after_s == 12.0
    assert "12 s" in str(error)


def test_model_type_error_names_model_type_and_use() -> None:
    error = ModelTypeError("nomic-embed", "embeddings", "chat")

    assert (error.model_name, error.model_type) == ("nomic-embed", "embeddings")
    assert "cannot be used for chat" in str(error)
