"""Building a bridge for tests: settings pointed at a stand-in, an in-process client, a subprocess."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

from mcp import Client, StdioServerParameters

from config import Settings, load_config
from tests.support.fake_lmstudio import FakeLMStudio, RecordedRequest
from tools.server import create_server

ROOT = Path(__file__).resolve().parents[2]
ISOLATED_HOME = Path(tempfile.gettempdir()) / "lmstudio-bridge-tests-home"
"""The home directory of every bridge a test builds: empty, so no test reads the developer's own
~/.mcp.json or Claude Code's ~/.claude.json (tests of those files give a home of their own)."""

FAST = {
    # No real waiting in tests: retries are immediate, the breaker stays out of the way.
    "LMSTUDIO_RETRY_BASE_DELAY_S": "0",
    "LMSTUDIO_RETRY_MAX_DELAY_S": "0",
    "LMSTUDIO_CIRCUIT_FAILURES": "100",
    "LMSTUDIO_CONNECT_TIMEOUT_S": "2",
    "LMSTUDIO_REQUEST_TIMEOUT_S": "30",
    "MCP_START_TIMEOUT_S": "30",
}


def write_mcp_json(path: Path, servers: Mapping[str, Mapping[str, object]]) -> Path:
    """Write an `.mcp.json` with `servers` and return its path."""
    path.write_text(json.dumps({"mcpServers": servers}, indent=2))
    return path


def bridge_env(base_url: str, mcp_json: Path | None = None, **extra: str) -> dict[str, str]:
    """Environment variables for a bridge talking to `base_url` (a stand-in or a live server)."""
    env = {"LMSTUDIO_BASE_URL": base_url, **FAST}
    if mcp_json is not None:
        env["MCP_JSON_PATH"] = str(mcp_json)
    env.update(extra)
    return env


def bridge_settings(base_url: str, mcp_json: Path | None = None, **extra: str) -> Settings:
    return load_config(bridge_env(base_url, mcp_json, **extra))


def isolated_home() -> Path:
    ISOLATED_HOME.mkdir(exist_ok=True)
    return ISOLATED_HOME


@asynccontextmanager
async def in_process_bridge(settings: Settings, *, home: Path | None = None) -> AsyncIterator[Client]:
    """A connected `mcp.Client` talking to a bridge in this process (`home`: an empty one by default)."""
    async with Client(create_server(settings, home=home or isolated_home()), read_timeout_seconds=60) as client:
        yield client


def subprocess_params(env: Mapping[str, str], *, cwd: Path = ROOT) -> StdioServerParameters:
    """How to start the bridge as a subprocess, the way Claude does (only `env` passed through; HOME is
    an empty directory unless `env` gives one)."""
    return StdioServerParameters(
        command=sys.executable,
        args=[str(ROOT / "main.py")],
        env={"HOME": str(isolated_home()), **env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
        cwd=str(cwd),
    )


def text_of(result: object) -> str:
    """The concatenated text content of a tool result."""
    return "\n".join(getattr(block, "text", "") for block in getattr(result, "content", []))


def model_requests(fake: FakeLMStudio) -> list[RecordedRequest]:
    """The conversation's requests, without the one-off `/v1/responses` probe on a chat-only server."""
    requests = fake.generation_requests()
    if fake.responses_api:
        return requests
    return [r for r in requests if r.path != "/v1/responses"]


def tool_outputs(request: RecordedRequest) -> list[str]:
    """The tool outputs the newest round of `request` carries back to the model, in order."""
    body = request.body or {}
    if request.path == "/v1/responses":
        items = body["input"] if isinstance(body["input"], list) else []
        return [item["output"] for item in items if isinstance(item, dict) and item.get("type") == "function_call_output"]
    trailing: list[str] = []
    for message in reversed(body["messages"]):
        if message["role"] != "tool":
            break
        trailing.insert(0, message["content"])
    return trailing


def processes_mentioning(marker: str) -> list[int]:
    """Pids of live processes whose command line or environment contains `marker` (a unique tmp dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            seen = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if marker.encode() in seen and state != "Z":
            found.append(int(entry.name))
    return found
