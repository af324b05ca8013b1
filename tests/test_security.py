"""Safe by default: secrets never leave the bridge.

Each test plays what a careless set-up or a hostile repository would do, and checks what the user
sees. docs/TROUBLESHOOTING.md quotes the messages checked here.
"""

from __future__ import annotations

import pytest

from config import ConfigError, load_config

# --- LMSTUDIO_API_KEY ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["sk-live-abc123\n", "sk-live-abc123\r", "sk-live\tabc123", "sk-live-abc123\x00", "sk-lïve-abc123"]
)
def test_an_api_key_with_a_control_character_or_non_ascii_is_refused_at_start_without_echoing_it(key: str) -> None:
    with pytest.raises(ConfigError) as exc_info:
        load_config({"LMSTUDIO_API_KEY": key})

    assert str(exc_info.value) == (
        "Invalid configuration: LMSTUDIO_API_KEY=******** is invalid: contains a control character "
        "(a trailing newline or \\r?), a tab or non-ASCII text; copy the key again, without them"
    )
    assert "abc123" not in str(exc_info.value)


def test_a_plain_api_key_is_accepted() -> None:
    settings = load_config({"LMSTUDIO_API_KEY": "sk-live-abc123_XYZ.456"})

    assert settings.lmstudio_api_key is not None
    assert settings.lmstudio_api_key.get_secret_value() == "sk-live-abc123_XYZ.456"
