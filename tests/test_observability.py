"""What an operator sees: structured logs with run ids, counters in bridge_stats, spans, no secrets."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.support.bridge import (
    bridge_env,
    bridge_settings,
    in_process_bridge,
    subprocess_params,
    text_of,
    write_mcp_json,
)
from tests.support.fake_lmstudio import FakeLMStudio, Turn, call
from utils.logging import configure_logging

TIME_SERVER = {"command": sys.executable, "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]}

_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def tracing() -> Iterator[InMemorySpanExporter]:
    # The global provider can be set once per process; the bridge's tracer is a proxy that follows it.
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    trace.set_tracer_provider(provider)
    yield _EXPORTER


@pytest.fixture
def fake() -> Iterator[FakeLMStudio]:
    with FakeLMStudio() as server:
        yield server


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    configure_logging("INFO", "json", stream=stream)
    yield stream
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def script() -> list[Turn]:
    return [Turn(tool_calls=[call("get_current_time", timezone="UTC")]), Turn(text="It is noon.")]


async def test_json_logs_carry_the_run_id_round_and_tool_timings(
    fake: FakeLMStudio, tmp_path: Path, json_logs: io.StringIO
) -> None:
    fake.set_script(script())
    mcp_json = write_mcp_json(tmp_path / ".mcp.json", {"time": TIME_SERVER})
    async with in_process_bridge(bridge_settings(fake.url, mcp_json)) as client:
        await client.call_tool("autonomous_with_mcp", {"mcp_name": "time", "task": "time?"})
    records = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    run_lines = [r for r in records if r["logger"].startswith("tools.agent")]
    run_ids = {r["run_id"] for r in run_lines}
    assert len(run_ids) == 1 and "-" not in run_ids
    assert any("get_current_time on time ok in" in r["msg"] and r["msg"].startswith("round 1:") for r in run_lines)
    assert any("autonomous run finished: completed" in r["msg"] for r in run_lines)


async def test_bridge_stats_counts_requests_tool_calls_rounds_and_stop_reasons(fake: FakeLMStudio, tmp_path: Path) -> None:
    fake.set_script(script())
    mcp_json = write_mcp_json(tmp_path / ".mcp.json", {"time": TIME_SERVER})
    async with in_process_bridge(bridge_settings(fake.url, mcp_json)) as client:
        await client.call_tool("autonomous_with_mcp", {"mcp_name": "time", "task": "time?"})
        fake.fail_next(500)
        fake.set_script([Turn(text="after a retry")])
        await client.call_tool("chat_completion", {"prompt": "hi"})
        stats = (await client.call_tool("bridge_stats", {})).structured_content
    counters = stats["counters"]
    assert counters["autonomous_runs{stop_reason=completed}"] == 1
    assert counters["tool_calls{ok=true,server=time}"] == 1
    assert counters["llm_requests{endpoint=/v1/responses,server=lmstudio}"] == 2
    assert counters["llm_retries{kind=LLMServerError,server=lmstudio}"] == 1
    assert counters["llm_failures{kind=LLMServerError,server=lmstudio}"] == 1
    assert stats["histograms_ms"]["autonomous_rounds"]["count"] == 1
    assert stats["histograms_ms"]["tool_call_ms{server=time}"]["count"] == 1


async def test_runs_and_tool_calls_are_traced_as_spans(
    fake: FakeLMStudio, tmp_path: Path, tracing: InMemorySpanExporter
) -> None:
    tracing.clear()
    fake.set_script(script())
    mcp_json = write_mcp_json(tmp_path / ".mcp.json", {"time": TIME_SERVER})
    async with in_process_bridge(bridge_settings(fake.url, mcp_json)) as client:
        await client.call_tool("autonomous_with_mcp", {"mcp_name": "time", "task": "time?"})
    spans = {span.name: span for span in tracing.get_finished_spans()}
    assert spans["autonomous_run"].attributes["stop_reason"] == "completed"
    tool_span = spans["tool_call"]
    assert tool_span.attributes["mcp.tool"] == "get_current_time"
    assert tool_span.parent is not None and tool_span.parent.span_id == spans["autonomous_run"].context.span_id
    llm_spans = [span for span in tracing.get_finished_spans() if span.name == "llm_request"]
    assert {span.attributes["http.route"] for span in llm_spans} >= {"/v1/responses"}
    assert all(
        span.attributes["http.status_code"] == 200 for span in llm_spans if span.attributes["http.route"] == "/v1/responses"
    )


@pytest.mark.slow
async def test_planted_secrets_never_reach_logs_or_results(fake: FakeLMStudio, tmp_path: Path) -> None:
    api_key = "sk-PLANTED-api-key-1234"
    env_secret = "PLANTED-env-value-5678"
    header_secret = "PLANTED-header-value-9012"
    mcp_json = write_mcp_json(
        tmp_path / ".mcp.json",
        {
            "echoenv": {
                "command": sys.executable,
                "args": ["-c", "import os, sys; sys.stderr.write(os.environ['TOKEN']); sys.exit(1)"],
                "env": {"TOKEN": env_secret},
            },
            "remote": {"type": "http", "url": "http://127.0.0.1:9/mcp", "headers": {"Authorization": f"Bearer {header_secret}"}},
        },
    )
    fake.api_key = api_key
    env = bridge_env(fake.url, mcp_json, LMSTUDIO_API_KEY=api_key, LOG_LEVEL="DEBUG", MCP_START_TIMEOUT_S="5")
    stderr = tmp_path / "bridge.stderr"
    texts: list[str] = []
    with stderr.open("w") as errlog, anyio.fail_after(60):
        from mcp import ClientSession
        from mcp.client.stdio import stdio_client

        async with stdio_client(subprocess_params(env), errlog=errlog) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                for name, args in [
                    ("autonomous_with_mcp", {"mcp_name": "echoenv", "task": "x"}),
                    ("autonomous_with_mcp", {"mcp_name": "remote", "task": "x"}),
                    ("list_available_mcps", {}),
                    ("health_check", {}),
                ]:
                    result = await session.call_tool(name, args)
                    texts.append(text_of(result) + json.dumps(result.structured_content))
    logs = stderr.read_text()
    assert "echoenv" in logs and "DEBUG" in logs  # the logs were captured, and at DEBUG
    everything = logs + "\n".join(texts)
    for secret in (api_key, env_secret, header_secret):
        assert secret not in everything
    assert "***" in everything  # the env value the server printed was masked, not dropped silently
