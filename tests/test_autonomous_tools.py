"""The autonomous tools as Claude calls them (an in-process MCP client), against the scripted stand-in and
the toy MCP server: what is checked before LM Studio is asked, what a failed run reports, and that a
run's servers stay its own while it waits on its model."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from mcp.types import CallToolResult

from tests.support.bridge import ROOT, bridge_settings, in_process_bridge, model_requests, text_of, tool_outputs, write_mcp_json
from tests.support.fake_lmstudio import FakeLMStudio, Turn, call

pytestmark = pytest.mark.slow


@pytest.fixture
def fake() -> Iterator[FakeLMStudio]:
    with FakeLMStudio() as server:
        yield server


def toy_entry(**extra: object) -> dict[str, object]:
    return {"command": sys.executable, "args": ["-m", "tests.support.toy_server"], "cwd": str(ROOT),
            "env": {"PYTHONPATH": str(ROOT)}, **extra}


@pytest.fixture
def mcp_json(tmp_path: Path) -> Path:
    return write_mcp_json(tmp_path / ".mcp.json", {"toy": toy_entry(), "off": toy_entry(disabled=True)})


def error_text(result: CallToolResult) -> str:
    assert result.is_error, text_of(result)
    return text_of(result)


async def test_local_mistakes_are_refused_before_lm_studio_is_asked(fake: FakeLMStudio, mcp_json: Path) -> None:
    async with in_process_bridge(bridge_settings(fake.url, mcp_json)) as client:
        typo = error_text(await client.call_tool("autonomous_with_mcp", {"mcp_name": "toyy", "task": "t"}))
        disabled = error_text(await client.call_tool("autonomous_with_mcp", {"mcp_name": "off", "task": "t"}))
        blank = error_text(await client.call_tool("autonomous_with_mcp", {"mcp_name": "toy", "task": "  \n "}))
        no_names = error_text(
            await client.call_tool("autonomous_with_multiple_mcps", {"mcp_names": [" "], "task": "t"})
        )
    assert fake.requests == [], "LM Studio was asked before the local checks"
    assert typo == (
        f"Error: No MCP server named 'toyy'. Known servers: off, toy. To use it, add it under \"mcpServers\" in "
        f"{mcp_json}."
    )
    assert disabled == (
        f"Error: MCP server 'off' is disabled in {mcp_json}. Remove \"disabled\": true from its entry to use it."
    )
    assert blank == (
        "Error: The task is empty: say what the local model should do, e.g. 'List the files in the project'."
    )
    assert no_names == (
        "Error: No usable MCP server names in [' ']: give at least one, each as list_available_mcps shows it."
    )


async def test_a_typo_in_the_server_name_is_named_as_such_while_lm_studio_is_down(mcp_json: Path) -> None:
    settings = bridge_settings("http://127.0.0.1:9", mcp_json, LMSTUDIO_RETRY_ATTEMPTS="1")
    async with in_process_bridge(settings) as client:
        typo = error_text(await client.call_tool("autonomous_with_mcp", {"mcp_name": "toyy", "task": "t"}))
    assert typo.startswith("Error: No MCP server named 'toyy'. Known servers: off, toy.")


async def test_a_run_that_fails_on_its_first_responses_request_reports_api_responses(
    fake: FakeLMStudio, mcp_json: Path
) -> None:
    fake.set_script([Turn(error=(400, "Invalid 'input': bad item"))])
    async with in_process_bridge(bridge_settings(fake.url, mcp_json)) as client:
        result = await client.call_tool("autonomous_with_mcp", {"mcp_name": "toy", "task": "t"})
    assert error_text(result).startswith("Error: [Run stopped early because of an error: LM Studio rejected")
    assert [r.path for r in fake.generation_requests()] == ["/v1/responses"]
    assert result.structured_content["api"] == "responses"


async def test_a_stateful_server_keeps_its_state_while_the_run_waits_on_a_slow_model(
    fake: FakeLMStudio, mcp_json: Path
) -> None:
    # The idle timeout is a fifth of the model's pause: a server that is not reaped mid-run only because
    # a tool call was in flight would be, here, and the recall would reach a new process (value=None).
    fake.set_script([
        Turn(tool_calls=[call("remember", key="launch", value="PELICAN-42")]),
        Turn(tool_calls=[call("recall", key="launch")], delay_s=1.0),
        Turn(text="It is PELICAN-42."),
    ])
    settings = bridge_settings(fake.url, mcp_json, MCP_IDLE_TIMEOUT_S="0.2")
    with anyio.fail_after(60):
        async with in_process_bridge(settings) as client:
            result = await client.call_tool("autonomous_with_mcp", {"mcp_name": "toy", "task": "remember, then recall"})
    assert tool_outputs(model_requests(fake)[2]) == ["value=PELICAN-42"]
    assert text_of(result) == "It is PELICAN-42."
