"""The command line: --version, --help, doctor, and bad configuration at start."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.bridge import ROOT, bridge_env, write_mcp_json
from tests.support.fake_lmstudio import FakeLMStudio
from utils.version import __version__


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args],
        env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "PYTHONPATH": str(ROOT), **(env or {})},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def fake() -> Iterator[FakeLMStudio]:
    with FakeLMStudio() as server:
        yield server


def test_version_prints_the_package_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"lmstudio-bridge {__version__}"


def test_help_names_the_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert "doctor" in result.stdout and "serve" in result.stdout


def test_an_invalid_setting_stops_the_start_naming_the_variable() -> None:
    result = run_cli("doctor", env={"LMSTUDIO_PORT": "70000"})
    assert result.returncode == 2
    assert "LMSTUDIO_PORT='70000' is invalid" in result.stderr
    assert "<= 65535" in result.stderr
    assert result.stdout == ""


def test_doctor_lists_models_with_their_state_and_masks_secrets(fake: FakeLMStudio, tmp_path: Path) -> None:
    mcp_json = write_mcp_json(
        tmp_path / ".mcp.json",
        {"time": {"command": sys.executable, "args": ["-m", "mcp_server_time"]}, "off": {"command": "x", "disabled": True}},
    )
    env = bridge_env(fake.url, mcp_json, LMSTUDIO_API_KEY="sk-doctor-secret")
    result = run_cli("doctor", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"reachable at {fake.url}" in out
    assert "qwen/qwen3-coder-30b [llm, loaded" in out
    assert "default model: qwen/qwen3-coder-30b" in out
    assert "LMSTUDIO_API_KEY = ********" in out
    assert "sk-doctor-secret" not in out + result.stderr
    assert f"config file: {mcp_json}" in out
    assert "off" in out and "disabled" in out
    assert "Result: OK" in out


def test_doctor_with_servers_starts_each_enabled_one_and_counts_its_tools(fake: FakeLMStudio, tmp_path: Path) -> None:
    mcp_json = write_mcp_json(
        tmp_path / ".mcp.json",
        {
            "time": {"command": sys.executable, "args": ["-m", "mcp_server_time"]},
            "broken": {"command": sys.executable, "args": ["-c", "import sys; sys.stderr.write('boom-marker\\n'); sys.exit(3)"]},
        },
    )
    result = run_cli("doctor", "--servers", env=bridge_env(fake.url, mcp_json))
    assert "ok    time (stdio): 2 tools" in result.stdout
    assert "FAIL  broken" in result.stdout and "boom-marker" in result.stdout


def test_doctor_exits_1_when_lm_studio_is_unreachable() -> None:
    result = run_cli("doctor", env=bridge_env("http://127.0.0.1:9", LMSTUDIO_RETRY_ATTEMPTS="1"))
    assert result.returncode == 1
    assert "FAIL  Could not connect to LM Studio at http://127.0.0.1:9" in result.stdout
    assert "PROBLEMS FOUND" in result.stdout


def test_doctor_fails_when_default_model_names_a_model_the_server_lacks(fake: FakeLMStudio) -> None:
    result = run_cli("doctor", env=bridge_env(fake.url, DEFAULT_MODEL="qwen/qwen3-coder-3b"))
    assert result.returncode == 1
    assert "FAIL  default model: Model 'qwen/qwen3-coder-3b' not found" in result.stdout
    assert "Did you mean qwen/qwen3-coder-30b" in result.stdout
    assert "PROBLEMS FOUND" in result.stdout


def test_doctor_lists_the_entries_it_cannot_use_with_why(fake: FakeLMStudio, tmp_path: Path) -> None:
    mcp_json = write_mcp_json(
        tmp_path / ".mcp.json",
        {
            "time": {"command": sys.executable, "args": ["-m", "mcp_server_time"]},
            "needs-key": {"command": "x", "env": {"API_KEY": "${LMSB_DOCTOR_UNSET_VARIABLE}"}},
            "wrong": {"command": "x", "args": "not-a-list"},
        },
    )
    result = run_cli("doctor", env=bridge_env(fake.url, mcp_json))
    assert result.returncode == 0, result.stdout
    assert "skip  needs-key: MCP server 'needs-key': environment variable LMSB_DOCTOR_UNSET_VARIABLE" in result.stdout
    assert "skip  wrong: MCP server 'wrong': \"args\" must be a list of strings" in result.stdout


def test_doctor_checks_every_model_server_and_fails_when_one_is_down(fake: FakeLMStudio) -> None:
    backends = [{"name": "laptop", "url": fake.url}, {"name": "gpu", "url": "http://127.0.0.1:9"}]
    env = bridge_env("http://127.0.0.1:9", LMSTUDIO_BACKENDS=json.dumps(backends), LMSTUDIO_RETRY_ATTEMPTS="1")
    result = run_cli("doctor", env=env)
    assert result.returncode == 1
    assert "Model servers (2)" in result.stdout
    assert f"ok    laptop: reachable at {fake.url}, 3 model(s)" in result.stdout
    assert "FAIL  gpu: Could not connect to LM Studio at http://127.0.0.1:9" in result.stdout
    assert "default model: qwen/qwen3-coder-30b on laptop" in result.stdout


def test_doctor_prints_only_its_report_unless_log_level_asks_for_more(fake: FakeLMStudio) -> None:
    quiet = run_cli("doctor", env=bridge_env(fake.url))
    retrying = run_cli("doctor", env=bridge_env("http://127.0.0.1:9", LMSTUDIO_RETRY_ATTEMPTS="2"))
    chatty = run_cli("doctor", env=bridge_env(fake.url, LOG_LEVEL="info"))
    assert quiet.returncode == 0 and "Result: OK" in quiet.stdout
    assert quiet.stderr == "", quiet.stderr
    assert retrying.returncode == 1 and retrying.stderr == "", retrying.stderr
    assert "ready; LM Studio at" in chatty.stderr
    assert "Result: OK" in chatty.stdout and "ready" not in chatty.stdout
