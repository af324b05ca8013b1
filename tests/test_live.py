"""The live tier: the bridge as a subprocess against a REAL OpenAI-compatible model server.

Runs only with LMSTUDIO_LIVE=1 and LMSTUDIO_BASE_URL (LM Studio, or any compatible server); the
`live` marker makes it skip otherwise (see tests/conftest.py). LIVE_MODELS=a,b names the models to
use; by default the first two LLMs the server lists. CI serves a small base model on the CPU
(.ci/live_server.sh, quirks in .ci/LIVE_SERVER.md): its answers are babble, so these tests check
what the bridge does (which model it used, that every tool call got an answer, that runs end with a
valid stop reason and leave no process behind), not what the model says.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx
import pytest
from mcp import Client

from tests.support.bridge import (
    ROOT,
    bridge_env,
    processes_mentioning,
    subprocess_params,
    text_of,
    write_mcp_json,
)
from tests.support.mcp_servers import entry_config
from tools.downstream.entries import ServerEntry

pytestmark = [pytest.mark.live, pytest.mark.slow]

STOP_REASONS = {"completed", "max_rounds", "timeout", "loop_detected"}
MAX_ROUNDS = 4
# A real model may be loaded just in time: give requests longer than the stand-in tests do.
LIVE_ENV = {"LMSTUDIO_REQUEST_TIMEOUT_S": "120", "AUTONOMOUS_TIMEOUT_S": "120"}


def _api_key_env() -> dict[str, str]:
    key = os.environ.get("LMSTUDIO_API_KEY", "")
    return {"LMSTUDIO_API_KEY": key} if key else {}


@pytest.fixture(scope="session")
def live_url() -> str:
    return os.environ["LMSTUDIO_BASE_URL"].rstrip("/")


@pytest.fixture(scope="session")
def live_models(live_url: str) -> list[str]:
    """LIVE_MODELS, else the first two LLMs the server lists (LM Studio's typed list when it has one)."""
    named = [m.strip() for m in os.environ.get("LIVE_MODELS", "").split(",") if m.strip()]
    if named:
        return named
    key = os.environ.get("LMSTUDIO_API_KEY", "")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=live_url, headers=headers, timeout=30) as http:
        typed = http.get("/api/v0/models")
        if typed.status_code == 200:
            rows = typed.json().get("data", [])
            models = [r["id"] for r in rows if r.get("type") in ("llm", "vlm")]
        else:
            listed = http.get("/v1/models")
            listed.raise_for_status()
            models = [r["id"] for r in listed.json().get("data", []) if "embed" not in r["id"].lower()]
    if not models:
        pytest.fail(f"{live_url} lists no LLM: load or download one")
    return models[:2]


@pytest.fixture
def mcp_json(tmp_path: Path, workspace: Path, filesystem_entry: Callable[..., ServerEntry]) -> Path:
    return write_mcp_json(tmp_path / ".mcp.json", {"filesystem": entry_config(filesystem_entry(workspace))})


def live_bridge(url: str, mcp_json: Path) -> Client:
    # Every one of the filesystem server's 14 tools: the bridge narrows the set for a small context itself.
    env = bridge_env(url, mcp_json, **LIVE_ENV, **_api_key_env())
    return Client(subprocess_params(env), read_timeout_seconds=180)


def transcript(data: dict[str, object]) -> str:
    """A readable account of one autonomous run, printed with `pytest -s`."""
    lines = [
        f"model={data['model']} api={data['api']} rounds={data['rounds']} "
        f"stop_reason={data['stop_reason']} duration_s={data['duration_s']}",
    ]
    for call in data["tool_calls"]:  # type: ignore[union-attr]
        outcome = "ok" if call["ok"] else f"error: {call['error']!r}"
        lines.append(f"  tool {call['server']}/{call['name']} ({call['ms']} ms): {outcome}")
    lines.append(f"  answer: {data['answer']!r}")
    lines.append(f"  offered: {data['tools_offered']}; bridge assists: {data['assists']}; context: {data['context']}")
    lines.append(f"  notes: {data['notes']}")
    return "\n".join(lines)


def assert_a_well_ended_run(data: dict[str, object], model: str) -> None:
    assert data["model"] == model
    assert data["stop_reason"] in STOP_REASONS, data
    assert 1 <= data["rounds"] <= MAX_ROUNDS  # type: ignore[operator]
    for call in data["tool_calls"]:  # type: ignore[union-attr]
        # Executed, or answered with an error output (bad JSON arguments, unknown tool, tool failure).
        assert call["ok"] is True or (call["ok"] is False and call["error"]), call


def test_doctor_exits_0_and_prints_the_models(live_url: str, live_models: list[str], tmp_path: Path) -> None:
    mcp_json = write_mcp_json(tmp_path / ".mcp.json", {})
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        **bridge_env(live_url, mcp_json, **LIVE_ENV, **_api_key_env()),
    }
    done = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "doctor"],
        env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"reachable at {live_url}" in done.stdout
    lines = done.stdout.splitlines()
    for model in live_models:  # llama-server lists ids only: a bare line, nothing made up about the model
        assert any(line.strip() == f"- {model}" or line.strip().startswith(f"- {model} [") for line in lines), done.stdout


async def test_health_check_and_list_models_see_the_models(
    live_url: str, live_models: list[str], mcp_json: Path
) -> None:
    with anyio.fail_after(120):
        async with live_bridge(live_url, mcp_json) as client:
            health = await client.call_tool("health_check", {})
            listed = await client.call_tool("list_models", {})
    assert not health.is_error, text_of(health)
    assert health.structured_content["ok"] is True
    assert health.structured_content["models"] >= len(live_models)
    assert not listed.is_error, text_of(listed)
    ids = [row["id"] for row in listed.structured_content["models"]]
    assert set(live_models) <= set(ids), ids


async def test_chat_and_text_completion_answer_from_each_named_model(
    live_url: str, live_models: list[str], mcp_json: Path
) -> None:
    chats, texts = {}, {}
    with anyio.fail_after(180):
        async with live_bridge(live_url, mcp_json) as client:
            for model in live_models:
                chats[model] = await client.call_tool(
                    "chat_completion", {"prompt": "Say hello.", "model": model, "max_tokens": 16, "temperature": 0}
                )
                texts[model] = await client.call_tool(
                    "text_completion",
                    {"prompt": "The quick brown fox", "model": model, "max_tokens": 16, "temperature": 0},
                )
    for model in live_models:
        chat, text = chats[model], texts[model]
        # A base model may answer a chat with "": the bridge must still return a result, not an error.
        assert not chat.is_error, text_of(chat)
        assert chat.structured_content["model"] == model
        assert isinstance(chat.structured_content["answer"], str)
        assert not text.is_error, text_of(text)
        assert text.structured_content["model"] == model
        assert text.structured_content["text"], text.structured_content


async def test_an_autonomous_run_on_the_real_filesystem_server_ends_cleanly_and_leaves_no_process(
    live_url: str, live_models: list[str], mcp_json: Path, workspace: Path
) -> None:
    model = live_models[0]
    progress: list[str] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(message or "")

    with anyio.fail_after(180):
        async with live_bridge(live_url, mcp_json) as client:
            result = await client.call_tool(
                "autonomous_with_mcp",
                {
                    "mcp_name": "filesystem",
                    "task": "List the files, then read notes.txt and tell me the launch code.",
                    "model": model,
                    "max_rounds": MAX_ROUNDS,
                },
                progress_callback=on_progress,
            )
    data = result.structured_content
    print(f"\n--- live autonomous run ---\n{transcript(data)}\n  progress: {progress}")
    assert not result.is_error, text_of(result)
    assert_a_well_ended_run(data, model)
    assert data["servers"] == ["filesystem"]
    assert progress, "no progress notification arrived"
    assert progress[-1].startswith(f"finished: {data['stop_reason']}"), progress
    with anyio.fail_after(15):
        while processes_mentioning(str(workspace)):
            await anyio.sleep(0.1)


async def test_two_models_in_one_session_are_each_used_when_named(
    live_url: str, live_models: list[str], mcp_json: Path, workspace: Path
) -> None:
    if len(live_models) < 2:
        pytest.skip(f"needs two models; the server offers {live_models}: set LIVE_MODELS=a,b")
    first, second = live_models[:2]
    with anyio.fail_after(240):
        async with live_bridge(live_url, mcp_json) as client:
            chats = [
                await client.call_tool("chat_completion", {"prompt": "Hi.", "model": m, "max_tokens": 8})
                for m in (first, second)
            ]
            runs = [
                await client.call_tool(
                    "autonomous_with_mcp",
                    {"mcp_name": "filesystem", "task": "List the files.", "model": m, "max_rounds": 2},
                )
                for m in (first, second)
            ]
    assert [c.structured_content["model"] for c in chats] == [first, second], [text_of(c) for c in chats]
    for run, model in zip(runs, (first, second), strict=True):
        assert not run.is_error, text_of(run)
        assert run.structured_content["model"] == model
        assert run.structured_content["stop_reason"] in STOP_REASONS


async def test_a_model_the_server_does_not_have_is_refused_with_the_available_list(
    live_url: str, live_models: list[str], mcp_json: Path
) -> None:
    missing = "no-such-model-for-the-live-tier"
    with anyio.fail_after(120):
        async with live_bridge(live_url, mcp_json) as client:
            run = await client.call_tool(
                "autonomous_with_mcp", {"mcp_name": "filesystem", "task": "List files.", "model": missing}
            )
            chat = await client.call_tool("chat_completion", {"prompt": "Hi.", "model": missing})
    for result in (run, chat):
        message = text_of(result)
        assert result.is_error, message
        assert f"'{missing}' not found" in message and "Available" in message, message
        assert live_models[0] in message, message


async def test_the_live_task_set_ends_every_task_with_a_clean_stop(live_url: str, live_models: list[str]) -> None:
    """The fixed task set of tests/support/live_tasks.py on the real model: completions are reported,
    not asserted (a 270M base model fails most); every task must end cleanly, within its bound."""
    from tests.support.live_tasks import TASK_TIMEOUT_S, TASKS, run_all, summary, table

    outcomes = await run_all(live_url, live_models[0])
    print(f"\n--- live task set on {live_models[0]} ---\n{table(outcomes)}\n{json.dumps(summary(outcomes))}")
    assert [o.task for o in outcomes] == [t.id for t in TASKS]
    for outcome in outcomes:
        assert outcome.stop_reason in STOP_REASONS, outcome
        assert outcome.seconds < TASK_TIMEOUT_S + 60, outcome


# --- two real servers (LMSTUDIO_BACKENDS) -------------------------------------------------------


@pytest.fixture(scope="session")
def second_server() -> tuple[str, list[str]]:
    """The second real server CI runs (.ci/live_server.sh): its URL and models; skips without it."""
    url = os.environ.get("LIVE_BASE_URL_TWO", "").rstrip("/")
    models = [m.strip() for m in os.environ.get("LIVE_MODELS_TWO", "").split(",") if m.strip()]
    if not url or not models:
        pytest.skip("set LIVE_BASE_URL_TWO and LIVE_MODELS_TWO for the two-server tests (.ci/live_server.sh env)")
    return url, models


def two_server_bridge(first: tuple[str, str], second: tuple[str, str], mcp_json: Path | None = None) -> Client:
    backends = [{"name": name, "url": url} for name, url in (first, second)]
    env = bridge_env("http://127.0.0.1:9", mcp_json, LMSTUDIO_BACKENDS=json.dumps(backends), **LIVE_ENV,
                     LMSTUDIO_RETRY_ATTEMPTS="1")
    return Client(subprocess_params(env), read_timeout_seconds=180)


async def test_one_workflow_uses_a_model_of_each_real_server(
    live_url: str, live_models: list[str], second_server: tuple[str, list[str]], mcp_json: Path
) -> None:
    two_url, two_models = second_server
    only_one = next(m for m in live_models if m not in two_models)
    only_two = next(m for m in two_models if m not in live_models)
    with anyio.fail_after(300):
        async with two_server_bridge(("one", live_url), ("two", two_url), mcp_json) as client:
            health = (await client.call_tool("health_check", {})).structured_content
            listed = (await client.call_tool("list_models", {})).structured_content
            runs = [
                await client.call_tool(
                    "autonomous_with_mcp",
                    {"mcp_name": "filesystem", "task": "List the files.", "model": model, "max_rounds": 2},
                )
                for model in (only_one, only_two)
            ]
            stats = (await client.call_tool("bridge_stats", {})).structured_content
    print(f"\n--- two-server workflow ---\nservers: {health['servers']}")
    for run in runs:
        print(transcript(run.structured_content))
    assert [s["ok"] for s in health["servers"]] == [True, True]
    assert {(m["id"], m["server"]) for m in listed["models"]} >= {(only_one, "one"), (only_two, "two")}
    for run, model in zip(runs, (only_one, only_two), strict=True):
        assert not run.is_error, text_of(run)
        assert run.structured_content["model"] == model
        assert run.structured_content["stop_reason"] in STOP_REASONS
    counters = stats["counters"]
    assert any(key.endswith("server=one}") for key in counters if key.startswith("llm_requests"))
    assert any(key.endswith("server=two}") for key in counters if key.startswith("llm_requests"))


async def test_stopping_one_real_server_fails_over_or_fails_clearly(
    live_url: str, live_models: list[str], second_server: tuple[str, list[str]]
) -> None:
    two_url, two_models = second_server
    shared = next(m for m in two_models if m in live_models)
    only_two = next(m for m in two_models if m not in live_models)
    script = ROOT / ".ci" / "live_server.sh"
    try:
        with anyio.fail_after(300):
            # The second server first: the shared model goes there until it is stopped.
            async with two_server_bridge(("two", two_url), ("one", live_url)) as client:
                await client.call_tool("list_models", {})
                stopped = subprocess.run([str(script), "stop", "two"], capture_output=True, text=True, timeout=60)
                assert stopped.returncode == 0, stopped.stderr
                failed_over = await client.call_tool(
                    "chat_completion", {"prompt": "Say hi.", "model": shared, "max_tokens": 8}
                )
                gone = await client.call_tool("chat_completion", {"prompt": "Say hi.", "model": only_two})
                health = await client.call_tool("health_check", {})
    finally:
        subprocess.run([str(script), "start"], capture_output=True, text=True, timeout=600)
    print(f"\n--- server two stopped ---\nshared: {text_of(failed_over)!r}\nonly on two: {text_of(gone)}\n"
          f"health: {text_of(health)}")
    assert not failed_over.is_error, text_of(failed_over)
    assert failed_over.structured_content["model"] == shared
    assert gone.is_error and ("two" in text_of(gone) or two_url in text_of(gone))
    servers = {s["name"]: s["ok"] for s in health.structured_content["servers"]}
    assert servers == {"two": False, "one": True}
