"""Settings read from an environment mapping: defaults, precedence, and errors that name the variable."""

from __future__ import annotations

import pytest

from config import ConfigError, load_config


def test_defaults_point_at_a_local_lm_studio() -> None:
    settings = load_config({})

    assert settings.base_url == "http://localhost:1234"
    assert settings.lmstudio_api_key is None
    assert settings.default_model is None
    assert settings.model_aliases == {}
    assert settings.model_cache_ttl_s == 60.0
    assert settings.log_level == "INFO"
    assert settings.lmstudio_api_mode == "auto"


def test_host_and_port_build_the_base_url() -> None:
    assert load_config({"LMSTUDIO_HOST": "10.0.0.5", "LMSTUDIO_PORT": "8080"}).base_url == "http://10.0.0.5:8080"


def test_base_url_wins_over_host_and_port_and_loses_its_v1_suffix() -> None:
    settings = load_config(
        {"LMSTUDIO_BASE_URL": "http://gpu-box:1234/v1/", "LMSTUDIO_HOST": "other", "LMSTUDIO_PORT": "9999"}
    )

    assert settings.base_url == "http://gpu-box:1234"


def test_base_url_without_scheme_is_rejected_with_its_variable_name() -> None:
    with pytest.raises(ConfigError, match="LMSTUDIO_BASE_URL"):
        load_config({"LMSTUDIO_BASE_URL": "gpu-box:1234"})


@pytest.mark.parametrize("port", ["0", "70000", "abc"])
def test_invalid_port_names_the_variable_and_the_range(port: str) -> None:
    with pytest.raises(ConfigError) as exc_info:
        load_config({"LMSTUDIO_PORT": port})

    message = str(exc_info.value)
    assert "LMSTUDIO_PORT" in message
    if port != "abc":
        assert ">= 1 and <= 65535" in message


def test_log_level_is_case_insensitive_and_invalid_level_is_rejected() -> None:
    assert load_config({"LOG_LEVEL": "debug"}).log_level == "DEBUG"

    with pytest.raises(ConfigError) as exc_info:
        load_config({"LOG_LEVEL": "LOUD"})
    assert "LOG_LEVEL" in str(exc_info.value)
    assert "DEBUG" in str(exc_info.value)


def test_model_aliases_json_is_parsed() -> None:
    settings = load_config({"MODEL_ALIASES": '{"coder": "qwen/qwen3-coder-30b"}'})

    assert settings.model_aliases == {"coder": "qwen/qwen3-coder-30b"}


def test_bad_model_aliases_json_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="MODEL_ALIASES") as exc_info:
        load_config({"MODEL_ALIASES": "{coder: qwen}"})

    assert "JSON object" in str(exc_info.value)


def test_masked_hides_the_api_key() -> None:
    shown = load_config({"LMSTUDIO_API_KEY": "sk-secret-123"}).masked()

    assert shown["LMSTUDIO_API_KEY"] == "********"
    assert "sk-secret-123" not in repr(shown)
    assert shown["(effective base URL)"] == "http://localhost:1234"


def test_invalid_api_key_value_is_not_echoed_in_the_error() -> None:
    with pytest.raises(ConfigError) as exc_info:
        load_config({"LMSTUDIO_API_KEY": "sk-secret-123", "LMSTUDIO_PORT": "0"})

    assert "sk-secret-123" not in str(exc_info.value)


@pytest.mark.parametrize("variable", ["LMSTUDIO_BASE_URL", "DEFAULT_MODEL", "LMSTUDIO_API_KEY", "MCP_JSON_PATH"])
def test_empty_string_means_unset(variable: str) -> None:
    settings = load_config({variable: "  "})

    assert getattr(settings, variable.lower()) is None


def test_empty_model_aliases_means_no_aliases() -> None:
    assert load_config({"MODEL_ALIASES": ""}).model_aliases == {}


def test_variable_names_are_case_insensitive_and_unknown_ones_ignored() -> None:
    settings = load_config({"lmstudio_port": "4321", "UNRELATED": "x"})

    assert settings.lmstudio_port == 4321



@pytest.mark.parametrize("written", ["JSON", "Json", " json "])
def test_log_format_takes_any_case_like_log_level(written: str) -> None:
    assert load_config({"LOG_FORMAT": written}).log_format == "json"


def test_api_mode_takes_any_case_and_a_wrong_choice_still_names_the_variable() -> None:
    assert load_config({"LMSTUDIO_API_MODE": "Chat"}).lmstudio_api_mode == "chat"
    with pytest.raises(ConfigError, match="LOG_FORMAT='yaml' is invalid"):
        load_config({"LOG_FORMAT": "yaml"})
