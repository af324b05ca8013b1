"""`lmstudio-bridge doctor`'s report, in process, against a mocked model server: complete, and true.

(The command line around it, exit codes and what reaches stdout and stderr: tests/test_main.py.)
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
import respx

from config import load_config
from tools.doctor import run_doctor

URL = "http://llama.test:8080"


@pytest.fixture
def llama_cpp() -> Iterator[respx.MockRouter]:
    """A server that is not LM Studio: only /v1/models, ids and nothing else (llama.cpp's server)."""
    with respx.mock(base_url=URL, assert_all_called=False) as router:
        router.get("/api/v1/models").respond(404, text="File Not Found")
        router.get("/api/v0/models").respond(404, text="File Not Found")
        router.get("/v1/models").respond(json={"data": [{"id": "gemma-3-270m"}, {"id": "gemma-3-270m-b"}]})
        yield router


async def report(**env: str) -> tuple[int, str]:
    out = io.StringIO()
    settings = load_config({"LMSTUDIO_BASE_URL": URL, "MCP_JSON_PATH": "/nonexistent/.mcp.json", **env})
    code = await run_doctor(settings, start_servers=False, out=out)
    return code, out.getvalue()


async def test_a_server_that_lists_only_ids_is_shown_with_what_is_known_and_nothing_made_up(
    llama_cpp: respx.MockRouter,
) -> None:
    code, text = await report()
    assert code == 0, text
    assert "        - gemma-3-270m\n        - gemma-3-270m-b\n" in text
    assert "?" not in text.split("Configuration")[0].replace("is this LM Studio?", "")
    assert "(the server lists model ids only, without type or loaded state: not LM Studio's listing; is this LM Studio?)" in text


async def test_the_report_says_which_api_autonomous_runs_use(llama_cpp: respx.MockRouter) -> None:
    _, auto = await report()
    _, chat = await report(LMSTUDIO_API_MODE="chat")
    assert (
        "  --    autonomous runs use: /v1/responses if the server has it (LM Studio 0.3.29+), else "
        "/v1/chat/completions: found out on the first autonomous run (bridge_stats then shows it)\n"
    ) in auto
    assert "  --    autonomous runs use: /v1/chat/completions (LMSTUDIO_API_MODE=chat)\n" in chat


async def test_unset_settings_are_said_to_be_unset_not_none(llama_cpp: respx.MockRouter) -> None:
    _, text = await report()
    assert "  DEFAULT_MODEL = (unset)\n" in text
    assert "  LMSTUDIO_API_KEY = (unset)\n" in text
    assert "= None" not in text
