"""Faults, injected one at a time: whatever LM Studio, a downstream MCP server, the config file or
the caller does, the bridge keeps serving, says what went wrong and what to do, loses nothing, and
leaves no process behind.

Each test drives the bridge through its own MCP tools (an in-process client, or the bridge as a
subprocess for the caller-input cases), injects one fault, checks the message the user sees, then
checks that the next call works. Every downstream server started here carries the test's tmp dir
on its command line; the `marker` fixture checks on tear-down that none of them is still running.
docs/TROUBLESHOOTING.md quotes the messages these tests check.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx
import pytest
import respx
from mcp import Client
from mcp.types import CallToolResult

from config import load_config
from llm.bounds import bounded_call
from llm.exceptions import CallTimeoutError, LLMResponseError, LLMServerError
from llm.llm_client import ClientOptions, LLMClient
from llm.models import ResolvedModel
from tests.support.bridge import (
    ROOT,
    bridge_env,
    bridge_settings,
    in_process_bridge,
    model_requests,
    processes_mentioning,
    subprocess_params,
    text_of,
    tool_outputs,
    write_mcp_json,
)
from tests.support.fake_lmstudio import FakeLMStudio, RecordedRequest, Turn, call

pytestmark = pytest.mark.slow

NO_PROCESS_LEFT_S = 15.0
NO_MODELS_LOADED = "No models loaded. Please load a model in the developer page or use the `lms load` command."
CONTEXT_OVERFLOW = (
    "Trying to keep the first 5210 tokens when context the overflows. However, the model is loaded with "
    "context length of 4096; consider increasing the context length or enabling a context overflow policy."
)

CODER = ResolvedModel("qwen/qwen3-coder-30b", "requested", None, asyncio.Semaphore(4))


# --- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[str]:
    """The tmp dir, put on every downstream server's command line; none may outlive the test."""
    yield str(tmp_path)
    deadline = time.monotonic() + NO_PROCESS_LEFT_S
    while (left := processes_mentioning(str(tmp_path))) and time.monotonic() < deadline:
        time.sleep(0.05)  # waiting on a condition, bounded: processes take a moment to be reaped
    assert not left, f"downstream processes left behind: {left}"


@pytest.fixture
def fake() -> Iterator[FakeLMStudio]:
    with FakeLMStudio() as server:
        yield server


def toy(marker: str) -> dict[str, object]:
    """The toy server's entry (tests/support/toy_server.py); `marker` only tags its command line."""
    return {
        "command": sys.executable,
        "args": ["-m", "tests.support.toy_server", marker],
        "cwd": str(ROOT),
        "env": {"PYTHONPATH": str(ROOT)},
    }


def python_entry(code: str, marker: str) -> dict[str, object]:
    """A `python -c CODE` entry (its marker argument lands in sys.argv, unused)."""
    return {"command": sys.executable, "args": ["-c", code, marker]}


def config(tmp_path: Path, marker: str, **servers: dict[str, object]) -> Path:
    return write_mcp_json(tmp_path / ".mcp.json", {"toy": toy(marker), **servers})


async def run(client: Client, mcp_name: str = "toy", task: str = "do it", **extra: object) -> CallToolResult:
    return await client.call_tool("autonomous_with_mcp", {"mcp_name": mcp_name, "task": task, **extra})


async def chat(client: Client, prompt: str = "hi", **extra: object) -> CallToolResult:
    return await client.call_tool("chat_completion", {"prompt": prompt, **extra})


def error_text(result: CallToolResult) -> str:
    assert result.is_error, f"expected an error, got: {text_of(result)}"
    text = text_of(result)
    assert text.startswith("Error:") and "Traceback" not in text, text
    return text


class Switch:
    """A TCP forwarder in front of the stand-in: LM Studio can be cut off and brought back on one URL.

    `mode` "forward" passes connections through; "reset" accepts and drops them at once (a crashed
    or restarting server). `down()` stops listening and cuts every open connection (refused from then on).
    """

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._server: asyncio.base_events.Server | None = None
        self._port = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self.mode = "forward"
        self.connections = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self._port)
        self._port = self._server.sockets[0].getsockname()[1]

    def down(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()

    async def __aenter__(self) -> Switch:
        await self.up()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.down()
        if self._handlers:  # every connection was cut: their handlers end at once
            await asyncio.wait(self._handlers, timeout=5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        handler.add_done_callback(self._handlers.discard)
        if self.mode == "reset":
            writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, upstream_writer}
        try:
            await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))
        finally:
            self._writers -= {writer, upstream_writer}

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.transport.abort()


def sse(*payloads: dict[str, object], done: bool = True) -> bytes:
    events = b"".join(b"data: " + json.dumps(p).encode() + b"\n\n" for p in payloads)
    return events + (b"data: [DONE]\n\n" if done else b"")


def chunk(content: str, finish: str | None = None) -> dict[str, object]:
    return {"model": "qwen/qwen3-coder-30b", "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]}


MOCK_URL = "http://lmstudio.test:1234"
MOCK_MODELS = {"data": [{"id": "qwen/qwen3-coder-30b", "type": "llm", "state": "loaded", "max_context_length": 4096}]}


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    """LM Studio's HTTP API mocked at the httpx level (the MCP SDK uses httpx2: untouched)."""
    with respx.mock(base_url=MOCK_URL, assert_all_called=False) as router:
        router.get("/api/v1/models").respond(404, json={"error": "Unexpected endpoint or method."})
        router.get("/api/v0/models").respond(json=MOCK_MODELS)
        yield router


# --- LM Studio ---------------------------------------------------------------------------------


async def test_lm_studio_down_at_start_the_bridge_serves_and_health_check_says_how_to_start_it(
    fake: FakeLMStudio,
) -> None:
    switch = Switch(fake.port)
    async with switch:
        pass  # only to be given a free port: from now on nothing listens there, LM Studio is not running
    settings = bridge_settings(switch.url, LMSTUDIO_RETRY_ATTEMPTS="2")
    with anyio.fail_after(30):
        async with in_process_bridge(settings) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert {"health_check", "chat_completion", "autonomous_with_mcp", "list_available_mcps"} <= names
            down = error_text(await client.call_tool("health_check", {}))
            async with switch:  # LM Studio is started
                fake.set_script([Turn(text="Hello.")])
                assert not (await client.call_tool("health_check", {})).is_error
                assert text_of(await chat(client)) == "Hello."
    assert down == (
        f"Error: Could not connect to LM Studio at {switch.url}. Is LM Studio running? "
        "Start its server from the Developer tab (or `lms server start`)."
    )


async def test_lm_studio_going_down_mid_run_ends_it_with_the_error_and_keeps_what_the_model_said(
    fake: FakeLMStudio, tmp_path: Path, marker: str
) -> None:
    loop = asyncio.get_running_loop()
    switch = Switch(fake.port)

    def script(request: RecordedRequest) -> Turn:
        if not request.body or request.body.get("previous_response_id") is None:
            return Turn(text="Let me look at the echo first.", tool_calls=[call("echo", text="hi")])
        loop.call_soon_threadsafe(switch.down)  # LM Studio dies while generating the second answer
        return Turn(hang=True)

    fake.set_script(script)
    with anyio.fail_after(60):
        async with switch, in_process_bridge(
            bridge_settings(switch.url, config(tmp_path, marker), LMSTUDIO_RETRY_ATTEMPTS="2")
        ) as client:
            result = await run(client)
            await switch.up()
            fake.set_script([Turn(text="Back.")])
            again = await run(client)
    text = error_text(result)
    assert text.startswith("Error: Let me look at the echo first.\n\n[Run stopped early because of an error: ")
    assert f"Could not connect to LM Studio at {switch.url}" in text
    data = result.structured_content
    assert data["stop_reason"] == "error" and data["answer"] == "Let me look at the echo first."
    assert [(c["name"], c["ok"]) for c in data["tool_calls"]] == [("echo", True)]
    assert text_of(again) == "Back."


async def test_two_500s_are_retried_and_the_call_succeeds(fake: FakeLMStudio) -> None:
    fake.fail_next(500, "Internal server error", count=2)
    fake.set_script([Turn(text="Third time lucky.")])
    async with in_process_bridge(bridge_settings(fake.url, LMSTUDIO_RETRY_ATTEMPTS="3")) as client:
        result = await chat(client)
    assert text_of(result) == "Third time lucky."
    assert len(fake.generation_requests()) == 3


async def test_persistent_500s_give_up_after_the_configured_attempts_with_a_clear_error(fake: FakeLMStudio) -> None:
    fake.fail_next(500, "Internal server error", count=3)
    async with in_process_bridge(bridge_settings(fake.url, LMSTUDIO_RETRY_ATTEMPTS="3")) as client:
        failed = await chat(client)
        attempts = len(fake.generation_requests())
        fake.set_script([Turn(text="Recovered.")])
        again = await chat(client)
    assert error_text(failed) == (
        "Error: LM Studio failed internally (500) on /v1/chat/completions: Internal server error. "
        "Check its server log; retrying may help."
    )
    assert attempts == 3
    assert text_of(again) == "Recovered."


async def test_the_retry_delays_are_capped_so_the_total_time_is_bounded(fake: FakeLMStudio) -> None:
    """The documented bound: attempts x (connect + request timeout) + the sum of the capped delays."""
    delays: list[float] = []

    async def record(seconds: float) -> None:
        delays.append(seconds)

    fake.fail_next(503, "busy", count=5)
    settings = load_config(
        {"LMSTUDIO_BASE_URL": fake.url, "LMSTUDIO_RETRY_ATTEMPTS": "5", "LMSTUDIO_RETRY_BASE_DELAY_S": "0.5",
         "LMSTUDIO_RETRY_MAX_DELAY_S": "2"}
    )
    async with LLMClient(ClientOptions.from_settings(settings), sleep=record) as client:
        with pytest.raises(LLMServerError):
            await client.chat_completion([{"role": "user", "content": "hi"}], model=CODER)
    assert len(delays) == 4
    assert all(0 <= d <= cap for d, cap in zip(delays, [0.5, 1.0, 2.0, 2.0], strict=True))


async def test_rate_limiting_is_retried_and_when_it_persists_says_so(fake: FakeLMStudio) -> None:
    async with in_process_bridge(bridge_settings(fake.url, LMSTUDIO_RETRY_ATTEMPTS="2")) as client:
        fake.fail_next(429, "Too many requests", count=1)
        fake.set_script([Turn(text="After a pause.")])
        retried = await chat(client)
        fake.fail_next(429, "Too many requests", count=2)
        limited = await chat(client)
        fake.set_script([Turn(text="Fine again.")])
        again = await chat(client)
    assert text_of(retried) == "After a pause."
    assert error_text(limited) == "Error: LM Studio is rate limiting requests (429): Too many requests."
    assert text_of(again) == "Fine again."


async def test_a_read_timeout_is_not_retried_names_the_setting_to_raise_and_the_next_call_works(
    fake: FakeLMStudio,
) -> None:
    # Three attempts allowed: a generation that timed out is still not sent again (the server would
    # go on generating the first one, and the second would wait behind it).
    settings = bridge_settings(fake.url, LMSTUDIO_REQUEST_TIMEOUT_S="0.5", LMSTUDIO_RETRY_ATTEMPTS="3")
    async with in_process_bridge(settings) as client:
        fake.set_script([Turn(text="too late", delay_s=1.5), Turn(text="a retry would get this")])
        slow = await chat(client)
        attempts = len(fake.generation_requests())
        fake.set_script([Turn(text="In time.")])
        again = await chat(client)
    assert error_text(slow) == (
        f"Error: LM Studio did not answer {fake.url}/v1/chat/completions within 0.5 s (ReadTimeout). "
        "A big model or a long prompt can need more: raise LMSTUDIO_REQUEST_TIMEOUT_S."
    )
    assert attempts == 1
    assert text_of(again) == "In time."


async def test_a_trickling_answer_is_stopped_by_the_call_timeout_naming_it_and_the_next_call_works(
    fake: FakeLMStudio,
) -> None:
    """Each piece arrives well within the read timeout, so only a bound on the whole call can stop it."""
    settings = bridge_settings(fake.url, LMSTUDIO_CALL_TIMEOUT_S="1", LMSTUDIO_REQUEST_TIMEOUT_S="30")
    fake.set_script([Turn(endless=True, chunk_delay_s=0.05), Turn(text="Fine.")])
    with anyio.fail_after(30):
        async with in_process_bridge(settings) as client:
            trickling = await chat(client)
            again = await chat(client)
    assert error_text(trickling) == (
        f"Error: LM Studio did not finish answering {fake.url}/v1/chat/completions for model 'qwen/qwen3-coder-30b' "
        "within 1 s (LMSTUDIO_CALL_TIMEOUT_S); the call was stopped and its place in the model's queue freed. "
        "A long answer needs a lower max_tokens or a higher LMSTUDIO_CALL_TIMEOUT_S."
    )
    assert text_of(again) == "Fine."


async def test_a_stuck_call_frees_its_models_only_queue_slot_for_the_next_call(fake: FakeLMStudio) -> None:
    settings = bridge_settings(fake.url, LMSTUDIO_CALL_TIMEOUT_S="1", LMSTUDIO_MAX_CONCURRENCY="1")
    fake.set_script([Turn(hang=True), Turn(text="My turn.")])
    with anyio.fail_after(30):
        async with in_process_bridge(settings) as client:
            stuck = await chat(client)
            after = await chat(client)
    assert "did not finish answering" in error_text(stuck)
    assert text_of(after) == "My turn."


async def test_a_call_that_waits_in_a_full_queue_past_the_bound_says_so() -> None:
    queue = asyncio.Semaphore(1)
    await queue.acquire()  # a call that never ends holds the only slot
    with pytest.raises(CallTimeoutError) as caught:
        async with bounded_call(queue, 0.05, url="http://localhost:1234/v1/chat/completions", model="m"):
            raise AssertionError("got a slot that was taken")
    assert caught.value.in_line
    assert str(caught.value) == (
        "Model 'm' had no free place within 0.05 s (LMSTUDIO_CALL_TIMEOUT_S): the requests already running on it "
        "held every slot of its queue (LMSTUDIO_MAX_CONCURRENCY). Retry when they are done, or raise "
        "LMSTUDIO_MAX_CONCURRENCY if LM Studio runs more requests of it in parallel."
    )


@pytest.mark.parametrize("tool", ["chat_completion", "text_completion", "create_response"])
async def test_an_endless_answer_is_cut_at_the_answer_cap_and_memory_stays_bounded(
    fake: FakeLMStudio, tool: str
) -> None:
    """chat_completion streams; text_completion and create_response read a whole body: both are capped."""
    path = {"chat_completion": "/v1/chat/completions", "text_completion": "/v1/completions",
            "create_response": "/v1/responses"}[tool]
    argument = "input" if tool == "create_response" else "prompt"
    settings = bridge_settings(fake.url, LMSTUDIO_MAX_ANSWER_MB="1", LMSTUDIO_REQUEST_TIMEOUT_S="30")
    fake.set_script([Turn(endless=True), Turn(text="Back to normal.")])
    with anyio.fail_after(30):
        async with in_process_bridge(settings) as client:
            tracemalloc.start()
            try:
                endless = await client.call_tool(tool, {argument: "go on"})
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            again = await client.call_tool(tool, {argument: "hi"})
    assert error_text(endless) == (
        f"Error: LM Studio's answer from {fake.url}{path} passed 1 MB (LMSTUDIO_MAX_ANSWER_MB) and was stopped there: "
        "the model may be repeating itself without end. Set a lower max_tokens, or raise LMSTUDIO_MAX_ANSWER_MB."
    )
    assert text_of(again).startswith("Back to normal.")
    assert peak < 40 * 1024 * 1024, f"peak {peak / 2**20:.0f} MiB while reading a 1 MB-capped endless answer"


async def test_a_slow_first_token_within_the_timeout_works_and_progress_is_reported(fake: FakeLMStudio) -> None:
    progress: list[str] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(message or "")

    settings = bridge_settings(fake.url, LMSTUDIO_REQUEST_TIMEOUT_S="5")
    async with in_process_bridge(settings) as client:
        fake.set_script([Turn(text="Worth the wait.", delay_s=1.5)])
        result = await client.call_tool("chat_completion", {"prompt": "hi"}, progress_callback=on_progress)
    assert text_of(result) == "Worth the wait."
    assert progress and progress[0].startswith("qwen/qwen3-coder-30b: generating"), progress


@pytest.mark.parametrize(
    "fault",
    [httpx.ReadError("[Errno 104] Connection reset by peer"), httpx.RemoteProtocolError("Server disconnected")],
    ids=["read-error", "remote-protocol-error"],
)
async def test_a_reset_connection_is_retried_then_reported_as_unreachable(
    mock: respx.MockRouter, fault: httpx.HTTPError
) -> None:
    ok = httpx.Response(200, content=sse(chunk("Made it.", "stop")), headers={"Content-Type": "text/event-stream"})
    route = mock.post("/v1/chat/completions")
    async with in_process_bridge(bridge_settings(MOCK_URL, LMSTUDIO_RETRY_ATTEMPTS="2")) as client:
        route.side_effect = [fault, ok]
        retried = await chat(client)
        route.side_effect = fault
        failed = await chat(client)
        route.side_effect = None
        route.return_value = ok
        again = await chat(client)
    assert text_of(retried) == "Made it."
    assert error_text(failed).startswith(f"Error: Could not connect to LM Studio at {MOCK_URL}.")
    assert text_of(again) == "Made it."


async def test_an_answer_that_is_not_json_is_reported_as_such(mock: respx.MockRouter) -> None:
    route = mock.post("/v1/completions")
    async with in_process_bridge(bridge_settings(MOCK_URL)) as client:
        route.respond(200, text="<html>Bad gateway</html>")
        broken = await client.call_tool("text_completion", {"prompt": "def f():"})
        route.respond(200, json={"choices": [{"text": " pass", "finish_reason": "stop"}]})
        again = await client.call_tool("text_completion", {"prompt": "def f():"})
    assert error_text(broken).startswith(
        f"Error: LM Studio's answer from {MOCK_URL}/v1/completions was not valid JSON (Expecting value"
    )
    assert text_of(again) == " pass"


async def test_a_web_page_instead_of_lm_studio_is_named_by_its_title_and_the_url_questioned(
    mock: respx.MockRouter,
) -> None:
    page = "<!DOCTYPE html>\n<html><head><title>Welcome to nginx!</title></head><body>" + "<p>x</p>" * 500 + "</body></html>"
    bad_gateway = "<html><head><title>502 Bad Gateway</title></head><body>" + "<hr>nginx" * 200 + "</body></html>"
    for route in ("/api/v1/models", "/api/v0/models", "/v1/models"):
        mock.get(route).respond(200, text=page, headers={"Content-Type": "text/html"})
    mock.post("/v1/chat/completions").respond(502, text=bad_gateway, headers={"Content-Type": "text/html"})
    settings = bridge_settings(MOCK_URL, DEFAULT_MODEL="qwen/qwen3-coder-30b", LMSTUDIO_RETRY_ATTEMPTS="1")
    async with in_process_bridge(settings) as client:
        health = error_text(await client.call_tool("health_check", {}))
        mock.get("/api/v1/models").respond(404, json={"error": "Unexpected endpoint or method."})
        mock.get("/api/v0/models").respond(json=MOCK_MODELS)
        proxied = error_text(await chat(client))
    question = (
        f"{MOCK_URL} LM Studio's server? Check LMSTUDIO_BASE_URL (`curl {MOCK_URL}/v1/models` should list your models)"
    )
    assert health == (
        f"Error: Could not get the model list from {MOCK_URL}: LM Studio's answer from {MOCK_URL}/v1/models was not "
        f'valid JSON (Expecting value: line 1 column 1 (char 0)): an HTML page ("Welcome to nginx!"). Is {question}.'
    )
    assert proxied == (
        f'Error: LM Studio failed internally (502) on /v1/chat/completions: an HTML page ("502 Bad Gateway"); is '
        f"{question}. Check its server log; retrying may help."
    )


async def test_a_stream_event_that_is_not_json_is_reported_as_such(mock: respx.MockRouter) -> None:
    route = mock.post("/v1/chat/completions")
    async with in_process_bridge(bridge_settings(MOCK_URL)) as client:
        route.respond(200, content=b"data: {not json\n\n", headers={"Content-Type": "text/event-stream"})
        broken = await chat(client)
    assert error_text(broken).startswith(
        f"Error: LM Studio's answer from {MOCK_URL}/v1/chat/completions was not valid JSON"
    )


async def test_a_stream_that_ends_before_the_model_finished_is_an_error_not_a_short_answer(
    mock: respx.MockRouter,
) -> None:
    route = mock.post("/v1/chat/completions")
    async with in_process_bridge(bridge_settings(MOCK_URL)) as client:
        route.respond(200, content=sse(chunk("The answer is"), done=False), headers={"Content-Type": "text/event-stream"})
        cut = await chat(client)
        route.respond(200, content=sse(chunk("The answer is 42.", "stop")), headers={"Content-Type": "text/event-stream"})
        again = await chat(client)
    assert error_text(cut).startswith(
        f"Error: LM Studio's stream from {MOCK_URL}/v1/chat/completions ended before the model finished"
    )
    assert text_of(again) == "The answer is 42."


async def test_a_responses_stream_that_ends_before_completed_is_an_error(mock: respx.MockRouter) -> None:
    events = [
        {"type": "response.created", "response": {"id": "resp_1", "status": "in_progress", "output": []}},
        {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0, "delta": "The answer"},
    ]
    mock.post("/v1/responses").respond(200, content=sse(*events, done=False), headers={"Content-Type": "text/event-stream"})
    async with LLMClient(ClientOptions.from_settings(bridge_settings(MOCK_URL))) as client:
        with pytest.raises(LLMResponseError, match="ended before the model finished \\(10 characters"):
            await client.create_response("hi", model=CODER, stream=True)


async def test_a_stream_cut_by_a_dropped_connection_says_it_was_cut(mock: respx.MockRouter) -> None:
    class CutMidway(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield sse(chunk("The answer is"), done=False)
            raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")

    route = mock.post("/v1/chat/completions")
    async with in_process_bridge(bridge_settings(MOCK_URL)) as client:
        route.side_effect = lambda request: httpx.Response(
            200, stream=CutMidway(), headers={"Content-Type": "text/event-stream"}
        )
        cut = await chat(client)
    assert error_text(cut).startswith(
        f"Error: LM Studio's stream from {MOCK_URL}/v1/chat/completions was cut off mid-answer"
    )


async def test_a_streamed_request_answered_with_plain_json_is_not_mistaken_for_an_overflow(
    mock: respx.MockRouter,
) -> None:
    mock.post("/v1/chat/completions").respond(200, json={"error": "Model is unloading, try again"})
    async with in_process_bridge(bridge_settings(MOCK_URL)) as client:
        result = await chat(client)
    assert error_text(result) == (
        f"Error: LM Studio reported an error from {MOCK_URL}/v1/chat/completions: Model is unloading, try again"
    )


async def test_context_overflow_in_both_of_lm_studios_forms_says_to_shorten_or_load_a_larger_context(
    fake: FakeLMStudio,
) -> None:
    async with in_process_bridge(bridge_settings(fake.url)) as client:
        fake.set_script([Turn(error=(400, CONTEXT_OVERFLOW)), Turn(empty_stream=True), Turn(text="Short enough.")])
        as_400 = await chat(client)
        as_empty_stream = await chat(client)
        again = await chat(client)
    assert error_text(as_400) == (
        f"Error: The conversation does not fit the model's context: {CONTEXT_OVERFLOW}. Send a shorter prompt or "
        "task (an autonomous run: fewer or smaller tool results, e.g. a lower TOOL_OUTPUT_MAX_CHARS), lower "
        "max_tokens, or load the model with a larger context length in LM Studio."
    )
    assert error_text(as_empty_stream) == (
        f"Error: LM Studio ended the stream from {fake.url}/v1/chat/completions without any output. The "
        "conversation may no longer fit the model's context (LM Studio reports an overflow this way): shorten "
        "it, or load the model with a larger context length."
    )
    assert text_of(again) == "Short enough."


async def test_an_unknown_model_is_refused_before_generation_with_the_closest_names(fake: FakeLMStudio) -> None:
    async with in_process_bridge(bridge_settings(fake.url)) as client:
        unknown = await chat(client, model="qwen/qwen3-coder")
        fake.set_script([Turn(text="Right model.")])
        again = await chat(client, model="qwen/qwen3-coder-30b")
    assert error_text(unknown) == (
        "Error: Model 'qwen/qwen3-coder' not found. Available: qwen/qwen3-coder-30b, "
        "mistralai/magistral-small-2509, text-embedding-nomic-embed-text-v1.5. Did you mean qwen/qwen3-coder-30b?"
    )
    assert text_of(again) == "Right model."
    assert len(fake.generation_requests()) == 1


async def test_no_model_loaded_says_to_load_one(fake: FakeLMStudio) -> None:
    async with in_process_bridge(bridge_settings(fake.url)) as client:
        fake.set_script([Turn(error=(400, NO_MODELS_LOADED)), Turn(text="Loaded now.")])
        unloaded = await chat(client)
        again = await chat(client)
    assert error_text(unloaded) == (
        f"Error: LM Studio has no model loaded ({NO_MODELS_LOADED}). Load one in LM Studio (or `lms load "
        "<model>`), or set DEFAULT_MODEL to a model it can load just in time."
    )
    assert text_of(again) == "Loaded now."


async def test_the_circuit_opens_after_repeated_connection_failures_fails_fast_and_closes_by_itself(
    fake: FakeLMStudio,
) -> None:
    async with Switch(fake.port) as switch:
        settings = bridge_settings(
            switch.url, LMSTUDIO_CIRCUIT_FAILURES="2", LMSTUDIO_CIRCUIT_RESET_S="0.5", LMSTUDIO_RETRY_ATTEMPTS="2"
        )
        with anyio.fail_after(30):
            async with in_process_bridge(settings) as client:
                switch.mode = "reset"
                first = error_text(await client.call_tool("health_check", {}))
                tried = switch.connections
                fast = error_text(await client.call_tool("health_check", {}))
                untried = switch.connections
                switch.mode = "forward"
                while (back := await client.call_tool("health_check", {})).is_error:
                    await anyio.sleep(0.1)  # polling the breaker's own clock, bounded by fail_after
    assert first.startswith(f"Error: Could not connect to LM Studio at {switch.url}.")
    assert tried == 2
    assert fast.startswith(
        f"Error: LM Studio at {switch.url} is unreachable (several connection failures in a row); not trying "
        "again for "
    )
    assert "Start its server from the Developer tab" in fast
    assert untried == tried, "an open circuit must not make any HTTP attempt"
    assert text_of(back).startswith(f"LM Studio is reachable at {switch.url}")


# --- downstream MCP servers ----------------------------------------------------------------------


async def test_a_server_whose_command_does_not_exist_fails_to_start_naming_it(
    fake: FakeLMStudio, tmp_path: Path, marker: str
) -> None:
    mcp_json = config(tmp_path, marker, ghost={"command": "/nonexistent/mcp-ghost-server", "args": [marker]})
    async with in_process_bridge(bridge_settings(fake.url, mcp_json)) as client:
        failed = await run(client, "ghost")
        fake.set_script([Turn(text="Toy works.")])
        again = await run(client, "toy")
    assert error_text(failed).startswith(
        "Error: MCP server 'ghost' failed to start: command not found: /nonexistent/mcp-ghost-server. "
        "Check its command, args, env and cwd in the config file (try running the command by hand)."
    )
    assert text_of(again) == "Toy works."


async def test_a_server_that_exits_at_start_reports_its_exit_code_and_stderr_tail(
    fake: FakeLMStudio, tmp_path: Path, marker: str
) -> None:
    code = "import sys; sys.stderr.write('Error: GITHUB_TOKEN is not set\\n'); sys.exit(2)"
    mcp_json = config(tmp_path, marker, broken=python_entry(code, marker))
    async with in_process_bridge(bridge_settings(fake.url, mcp_json)) as client:
        failed = await run(client, "broken")
        listed = await client.call_tool("list_available_mcps", {})
    text = error_text(failed)
    assert text.startswith("Error: MCP server 'broken' failed to start: ")
    assert "It exited with code 2." in text
    assert text.endswith("Last lines of its stderr:\nError: GITHUB_TOKEN is not set")
    (row,) = [r for r in listed.structured_content["servers"] if r["name"] == "broken"]
    assert "GITHUB_TOKEN" in row["last_error"]


async def test_a_server_that_exits_during_initialize_fails_to_start_and_the_next_call_works(
    fake: FakeLMStudio, tmp_path: Path, marker: str
) -> None:
    mcp_json = config(tmp_path, marker, quitter=python_entry("import sys; sys.stdin.readline(); sys.exit(1)", marker))
    with anyio.fail_after(30):
        async with in_process_bridge(bridge_settings(fake.url, mcp_json)) as client:
            failed = await run(client, "quitter")
            fake.set_script([Turn(text="Toy works.")])
            again = await run(client, "toy")
    text = error_text(failed)
    assert text.startswith("Error: MCP server 'quitter' failed to start: ")
    assert "It exited with code 1." in text
    assert text_of(again) == "Toy works."


async def test_a_slow_starting_server_is_bounded_by_the_start_timeout_not_the_tool_timeout(
    fake: FakeLMStudio, tmp_path: Path, marker: str
) -> None:
    slow = "import runpy, time; time.sleep(1.5); runpy.run_module('tests.support.toy_server', run_name='__main__')"
    entry = {**toy(marker), "args": ["-c", slow, marker]}
    fake.set_script([Turn(tool_calls=[call("echo", text="up")]), Turn(text="Started slowly.")])
    settings = bridge_settings(fake.url, config(tmp_path, marker, slow=entry), MCP_TOOL_TIMEOUT_S="0.5")
    with anyio.fail_after(30):
        async with in_process_bridge(settings) as client:
            result = await run(client, "slow")
    assert text_of(result) == "Started slowly.", text_of(result)
    assert tool_outputs(model_requests(fake)[1]) == ["up"]


async def test_a_server_whose_first_stdout_line_is_not_utf8_starts_and_answers(
    fake: FakeLMStudio, tmp_path: Path, marker: str
) -> None:
    # A banner in a legacy encoding before the first JSON-RPC message: read as a bad line and skipped,
    # not a reader that dies and leaves the start to time out.
    banner = "import os, runpy; os.write(1, b'\\xff\\xfe Gr\\xfc\\xdfe\\n'); "
    code = banner + "runpy.run_module('tests.support.toy_server', run_name='__main__')"
    entry = {**toy(marker), "args": ["-c", code, marker]}
    fake.set_script([Turn(tool_calls=[call("echo", text="through")]), Turn(text="Started despite the banner.")])
    settings = bridge_settings(fake.url, config(tmp_path, marker, latin1=entry), MCP_START_TIMEOUT_S="10")
    with anyio.fail_after(30):
        async with in_process_bridge(settings) as client:
            result = await run(client, "latin1")
    assert text_of(result) == "Started despite the banner.", text_of(result)
    assert tool_outputs(model_requests(fake)[1]) == ["through"]


async def test_the_autonomous_timeout_bounds_the_whole_call_including_server_start_up(
    fake: FakeLMStudio, tmp_path: Path, marker: str
) -> None:
    """A server that takes its whole MCP_START_TIMEOUT_S to start must not stretch a 1 s task to 30 s."""
    slow = python_entry("import time; time.sleep(60)", marker)
    settings = bridge_settings(
        fake.url, config(tmp_path, marker, slow=slow), AUTONOMOUS_TIMEOUT_S="1", MCP_START_TIMEOUT_S="30"
    )
    async with in_process_bridge(settings) as client:
        with anyio.fail_after(15):
            result = await run(client, "slow")
    assert not result.is_error
    assert text_of(result).startswith("[Run stopped early because it ran out of time after 1 s (AUTONOMOUS_TIMEOUT_S).")
    assert result.structured_content["stop_reason"] == "timeout"
    assert result.structured_content["rounds"] == 0 and result.structured_content["model"] == "qwen/qwen3-coder-30b"
    assert result.structured_content["notes"] == [
        "AUTONOMOUS_TIMEOUT_S (1 s) ran out while starting MCP servers (slow still starting; MCP_START_TIMEOUT_S "
        "allows 30 s)"
    ]
    assert fake.generation_requests() == []


async def test_a_server_crashing_mid_call_goes_back_to_the_model_and_restarts_for_the_next_call(
    fake: FakeLMStudio, tmp_path: Path, marker: str
) -> None:
    fake.set_script([Turn(tool_calls=[call("crash")]), Turn(text="It crashed."),
                     Turn(tool_calls=[call("echo", text="back")]), Turn(text="Recovered.")])
    with anyio.fail_after(60):
        async with in_process_bridge(bridge_settings(fake.url, config(tmp_path, marker))) as client:
            crashed = await run(client)
            again = await run(client)
    requests = model_requests(fake)
    assert text_of(crashed) == "It crashed."
    assert tool_outputs(requests[1]) == [
        "Error: MCP server 'toy' stopped while a call was running (it crashed or closed its connection). "
        "It will be restarted on the next call; retry the call."
    ]
    assert text_of(again) == "Recovered."
    assert tool_outputs(requests[3]) == ["back"]


async def test_a_hanging_tool_call_times_out_naming_server_and_tool_and_the_run_goes_on(
    fake: FakeLMStudio, tmp_path: Path, marker: str
) -> None:
    fake.set_script([Turn(tool_calls=[call("sleep", seconds=60)]), Turn(tool_calls=[call("echo", text="still here")]),
                     Turn(text="Done despite the hang.")])
    settings = bridge_settings(fake.url, config(tmp_path, marker), MCP_TOOL_TIMEOUT_S="1")
    with anyio.fail_after(60):
        async with in_process_bridge(settings) as client:
            result = await run(client)
    requests = model_requests(fake)
    assert tool_outputs(requests[1]) == [
        "Error: Tool 'sleep' of MCP server 'toy' did not answer within 1 s. Try a smaller request, or raise "
        "MCP_TOOL_TIMEOUT_S."
    ]
    assert tool_outputs(requests[2]) == ["still here"]
    assert text_of(result) == "Done despite the hang."


async def test_progress_for_many_tool_calls_in_one_turn_is_throttled(
    fake: FakeLMStudio, tmp_path: Path, marker: str
) -> None:
    messages: list[str] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    fake.set_script([Turn(tool_calls=[call("echo", text=str(i)) for i in range(100)]), Turn(text="All echoed.")])
    async with in_process_bridge(bridge_settings(fake.url, config(tmp_path, marker))) as client:
        result = await client.call_tool(
            "autonomous_with_mcp", {"mcp_name": "toy", "task": "echo"}, progress_callback=on_progress
        )
    assert text_of(result) == "All echoed." and len(result.structured_content["tool_calls"]) == 100
    calling = [m for m in messages if ": calling " in m]
    assert calling and calling[0].startswith("round 1: calling echo ("), messages  # the round's first call shows
    assert len(calling) < 15, f"{len(calling)} notifications for 100 tool calls: {messages}"
    assert messages[0] == "connecting to MCP servers: toy" and messages[1].startswith("started:")
    assert messages[-1] == "finished: completed after 2 round(s)"


async def test_a_tool_error_result_goes_back_to_the_model_as_its_output(
    fake: FakeLMStudio, tmp_path: Path, marker: str
) -> None:
    fake.set_script([Turn(tool_calls=[call("fail")]), Turn(text="The tool refused.")])
    async with in_process_bridge(bridge_settings(fake.url, config(tmp_path, marker))) as client:
        result = await run(client)
    assert tool_outputs(model_requests(fake)[1]) == [
        "Error (reported by the tool): Error executing tool fail: the toy tool failed on purpose"
    ]
    assert text_of(result) == "The tool refused."
    assert result.structured_content["tool_calls"][0]["ok"] is False


async def test_json_rpc_errors_the_server_sends_reach_the_model_and_its_session_stays_in_use(
    fake: FakeLMStudio, tmp_path: Path, marker: str
) -> None:
    # -32000 and -32001 are also the codes the MCP SDK raises itself for a closed connection and a
    # timeout: sent by a live server at once, they are neither.
    fake.set_script([
        Turn(tool_calls=[call("pid")]),
        Turn(tool_calls=[call("rpc_error", code=-32000, message="database is locked")]),
        Turn(tool_calls=[call("rpc_error", code=-32001, message="upstream took too long")]),
        Turn(tool_calls=[call("rpc_error", code=-32602, message="unknown field 'x'")]),
        Turn(tool_calls=[call("pid")]),
        Turn(text="Same process throughout."),
    ])
    with anyio.fail_after(60):
        async with in_process_bridge(bridge_settings(fake.url, config(tmp_path, marker))) as client:
            result = await run(client)
    outputs = [tool_outputs(request) for request in model_requests(fake)[1:]]
    failed = "Error: Calling tool 'rpc_error' of MCP server 'toy' failed: the server answered with JSON-RPC error"
    assert outputs[1:4] == [
        [f"{failed} -32000: database is locked. The server is still running: retry, or try another way."],
        [f"{failed} -32001: upstream took too long. The server is still running: retry, or try another way."],
        [f"{failed} -32602: unknown field 'x'. Check the tool name and arguments against the server's tool list."],
    ]
    assert outputs[4] == outputs[0], "the server's own errors must not cost it its session"
    assert text_of(result) == "Same process throughout."


async def test_a_5_mb_tool_result_is_truncated_and_memory_stays_bounded(
    fake: FakeLMStudio, tmp_path: Path, marker: str
) -> None:
    fake.set_script([Turn(tool_calls=[call("echo", text="warm up")]), Turn(text="warm"),
                     Turn(tool_calls=[call("big", size_mb=5)]), Turn(text="Seen it.")])
    settings = bridge_settings(fake.url, config(tmp_path, marker), TOOL_OUTPUT_MAX_CHARS="1000")
    with anyio.fail_after(60):
        async with in_process_bridge(settings) as client:
            await run(client)
            tracemalloc.start()
            try:
                result = await run(client)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    (output,) = tool_outputs(model_requests(fake)[-1])
    assert output.endswith("\n[... truncated: 5241880 of 5242880 characters cut]")
    assert model_requests(fake)[-1].size_bytes < 20_000
    assert text_of(result) == "Seen it."
    assert peak < 200 * 1024 * 1024, f"peak {peak / 2**20:.0f} MiB while handling a 5 MB result"


async def test_garbage_on_a_servers_stdout_does_not_break_the_call_or_the_session(
    fake: FakeLMStudio, tmp_path: Path, marker: str
) -> None:
    fake.set_script([Turn(tool_calls=[call("garbage")]), Turn(tool_calls=[call("echo", text="clean")]),
                     Turn(text="Both answered.")])
    async with in_process_bridge(bridge_settings(fake.url, config(tmp_path, marker))) as client:
        result = await run(client)
        listed = await client.call_tool("list_available_mcps", {})
    requests = model_requests(fake)
    assert tool_outputs(requests[1]) == ["wrote garbage"]
    assert tool_outputs(requests[2]) == ["clean"]
    assert text_of(result) == "Both answered."
    (row,) = listed.structured_content["servers"]
    assert row["started"] is True and row["last_error"] is None


async def test_a_token_in_an_entrys_env_is_masked_in_messages_but_its_other_values_are_not(
    fake: FakeLMStudio, tmp_path: Path, marker: str
) -> None:
    code = "import os, sys; sys.stderr.write(os.environ['API_TOKEN'] + ' ' + os.environ['DATA_DIR']); sys.exit(1)"
    entry = {**python_entry(code, marker), "env": {"API_TOKEN": "sk-live-4f9a8b7c", "DATA_DIR": marker}}
    async with in_process_bridge(bridge_settings(fake.url, config(tmp_path, marker, leaky=entry))) as client:
        failed = await run(client, "leaky")
    assert error_text(failed).endswith(f"Last lines of its stderr:\n*** {marker}")


# --- the config file -------------------------------------------------------------------------------


async def test_a_missing_config_file_is_reported_with_the_paths_searched(fake: FakeLMStudio, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / ".mcp.json"
    async with in_process_bridge(bridge_settings(fake.url, missing)) as client:
        listed = await client.call_tool("list_available_mcps", {})
        failed = await run(client)
    expected = (
        f"No MCP config file found (searched: {missing}). Create one with "
        '{"mcpServers": {"name": {"command": "...", "args": [...]}}} or set MCP_JSON_PATH.'
    )
    assert listed.structured_content["config_error"] == expected
    assert error_text(failed) == (
        f"Error: No MCP server named 'toy'. Known servers: none. To use it, add it under \"mcpServers\" in "
        f"your .mcp.json. ({expected})"
    )


async def test_malformed_json_names_file_and_line_and_later_breakage_keeps_the_last_good_config(
    fake: FakeLMStudio, tmp_path: Path, marker: str
) -> None:
    mcp_json = tmp_path / ".mcp.json"
    mcp_json.write_text('{\n  "mcpServers": {\n    "toy": {"command": "python",}\n  }\n}\n')
    async with in_process_bridge(bridge_settings(fake.url, mcp_json)) as client:
        broken = await run(client)
        config(tmp_path, marker)
        fake.set_script([Turn(text="Good config."), Turn(text="Still the good config.")])
        good = await run(client)
        mcp_json.write_text(mcp_json.read_text()[:-10])  # an editor saves half a file
        kept = await run(client)
        listed = await client.call_tool("list_available_mcps", {})
    assert error_text(broken).startswith(
        f"Error: No MCP server named 'toy'. Known servers: none. To use it, add it under \"mcpServers\" in "
        f"{mcp_json}. ({mcp_json}: invalid JSON at line 3, column 33: Expecting property name enclosed in "
        "double quotes. Fix the file; until then the last good config stays in use (servers: none).)"
    )
    assert text_of(good) == "Good config."
    assert text_of(kept) == "Still the good config."
    assert kept.structured_content["notes"][0].startswith(f"{mcp_json}: invalid JSON at line ")
    assert listed.structured_content["config_error"].endswith(
        "Fix the file; until then the last good config stays in use (servers: toy)."
    )


async def test_a_config_nested_too_deeply_is_a_config_error_and_clears_once_fixed(
    fake: FakeLMStudio, tmp_path: Path, marker: str
) -> None:
    mcp_json = config(tmp_path, marker)
    fake.set_script([Turn(text="Last good config.")])
    async with in_process_bridge(bridge_settings(fake.url, mcp_json)) as client:
        await client.call_tool("list_available_mcps", {})
        mcp_json.write_text("[" * 200_000)
        broken = await client.call_tool("list_available_mcps", {})
        kept = await run(client)
        config(tmp_path, marker, other=toy(marker))
        fixed = await client.call_tool("list_available_mcps", {})
    expected = (
        f"{mcp_json}: invalid JSON: its arrays or objects are nested too deeply to be read. Fix the file; until then "
        "the last good config stays in use (servers: toy)."
    )
    assert not broken.is_error and broken.structured_content["config_error"] == expected
    assert text_of(kept) == "Last good config." and kept.structured_content["notes"] == [expected]
    assert fixed.structured_content["config_error"] is None
    assert [row["name"] for row in fixed.structured_content["servers"]] == ["other", "toy"]


async def test_config_entry_faults_each_name_the_server_and_what_to_fix(
    fake: FakeLMStudio, tmp_path: Path, marker: str
) -> None:
    mcp_json = config(
        tmp_path,
        marker,
        nothing={"args": ["x"]},
        needs_var={"command": "node", "args": ["${LMSB_FAULTS_UNSET_VARIABLE}/index.js"]},
        myself={"command": sys.executable, "args": [str(ROOT / "main.py")]},
    )
    async with in_process_bridge(bridge_settings(fake.url, mcp_json)) as client:
        unknown = await run(client, "githubb")
        nothing = await run(client, "nothing")
        needs_var = await run(client, "needs_var")
        myself = await run(client, "myself")
        listed = await client.call_tool("list_available_mcps", {})
        fake.set_script([Turn(text="Toy still works.")])
        again = await run(client, "toy")
    assert error_text(unknown) == (
        "Error: No MCP server named 'githubb'. Known servers: toy. To use it, add it under \"mcpServers\" in "
        f"{mcp_json}."
    )
    assert error_text(nothing) == (
        "Error: MCP server 'nothing' has neither \"command\" (a process to start) nor \"url\" (a remote server); "
        f"add one of them (in {mcp_json})"
    )
    assert error_text(needs_var) == (
        "Error: MCP server 'needs_var': environment variable LMSB_FAULTS_UNSET_VARIABLE (used in \"args\") is "
        "not set; set it, or write ${LMSB_FAULTS_UNSET_VARIABLE:-default} to give a default "
        f"(in {mcp_json})"
    )
    assert error_text(myself) == (
        f"Error: MCP server 'myself' in {mcp_json} is not offered: it runs '{ROOT / 'main.py'}', the main.py of "
        "this bridge."
    )
    assert listed.structured_content["excluded"] == {"myself": f"it runs '{ROOT / 'main.py'}', the main.py of this bridge"}
    rows = {r["name"]: r for r in listed.structured_content["servers"]}
    assert [name for name, row in rows.items() if row["usable"]] == ["toy"]
    # The entries it cannot use are listed too, each with why (as TROUBLESHOOTING promises).
    assert "LMSB_FAULTS_UNSET_VARIABLE" in rows["needs_var"]["last_error"]
    assert "neither" in rows["nothing"]["last_error"] and "this bridge" in rows["myself"]["last_error"]
    assert text_of(again) == "Toy still works."


# --- the caller's input, through the bridge as a subprocess ------------------------------------------


BAD_CALLS: list[tuple[str, dict[str, object], str]] = [
    ("autonomous_with_mcp", {"mcp_name": "toy", "task": ""}, "task"),
    ("autonomous_with_mcp", {"mcp_name": "toy", "task": "x" * 10_001}, "task"),
    ("autonomous_with_mcp", {"mcp_name": "toy", "task": "t", "max_rounds": 0}, "max_rounds"),
    ("autonomous_with_mcp", {"mcp_name": "toy", "task": "t", "max_rounds": -3}, "max_rounds"),
    ("autonomous_with_mcp", {"mcp_name": "toy", "task": "t", "max_tokens": "lots"}, "max_tokens"),
    ("autonomous_with_mcp", {"mcp_name": "toy", "task": "t", "max_tokens": 1.5}, "max_tokens"),
    ("autonomous_with_multiple_mcps", {"mcp_names": "toy", "task": "t"}, "mcp_names"),
    ("autonomous_with_mcp", {"mcp_name": "toy", "task": "t", "model": "qwen/qwen3-coder"}, "model"),
]


async def test_bad_caller_input_is_an_error_naming_the_parameter_and_the_next_call_works(
    fake: FakeLMStudio, tmp_path: Path, marker: str
) -> None:
    fake.set_script(lambda request: Turn(text="Fine."))
    messages: dict[str, str] = {}
    params = subprocess_params(bridge_env(fake.url, config(tmp_path, marker)))
    with anyio.fail_after(90):
        async with Client(params, read_timeout_seconds=30) as client:
            for tool, arguments, parameter in BAD_CALLS:
                bad = await client.call_tool(tool, arguments)
                assert bad.is_error, (tool, arguments, text_of(bad))
                messages[f"{tool} {json.dumps(arguments)[:80]}"] = text_of(bad)
                assert parameter in text_of(bad).lower(), (parameter, text_of(bad))
                good = await run(client, task="say fine")
                assert not good.is_error and text_of(good) == "Fine.", text_of(good)
    assert "Did you mean qwen/qwen3-coder-30b?" in messages[next(k for k in messages if "qwen3-coder" in k)]
    assert not fake.generation_requests()[0].body.get("model") == "qwen/qwen3-coder"


# --- what goes back to Claude ------------------------------------------------------------------------


async def test_a_huge_answer_reaches_claude_once_and_cut_to_result_max_chars_with_a_marker(fake: FakeLMStudio) -> None:
    answer = "A" * 150_000 + "the conclusion."
    fake.set_script([Turn(text=answer)])
    async with in_process_bridge(bridge_settings(fake.url, RESULT_MAX_CHARS="10000")) as client:
        result = await chat(client)
    (block,) = result.content
    assert block.text == (
        "A" * 8000 + "\n\n[... 140015 of 150015 characters cut here by the bridge (RESULT_MAX_CHARS = 10000) ...]\n\n"
        + "A" * 1985 + "the conclusion."
    )
    # Claude Code would show only the structured content, Claude Desktop only the text: one copy, as text.
    assert result.structured_content is None
    summary = result.meta["lmstudio-bridge/result"]
    assert summary["answer"] is None and summary["model"] == "qwen/qwen3-coder-30b"
    assert summary["finish_reason"] == "stop"


async def test_an_autonomous_runs_huge_answer_is_cut_and_sent_once_with_its_summary_in_meta(
    fake: FakeLMStudio, tmp_path: Path, marker: str
) -> None:
    fake.set_script([Turn(text="B" * 200_000)])
    settings = bridge_settings(fake.url, config(tmp_path, marker), RESULT_MAX_CHARS="5000")
    async with in_process_bridge(settings) as client:
        result = await run(client)
    assert len(text_of(result)) < 5200
    assert "characters cut here by the bridge (RESULT_MAX_CHARS = 5000)" in text_of(result)
    assert result.structured_content is None
    assert result.meta["lmstudio-bridge/result"]["stop_reason"] == "completed"
    assert result.meta["lmstudio-bridge/result"]["answer"] is None


async def test_a_short_answer_keeps_both_its_text_and_its_structured_content(fake: FakeLMStudio) -> None:
    fake.set_script([Turn(text="Short and sweet.")])
    async with in_process_bridge(bridge_settings(fake.url)) as client:
        result = await chat(client)
    assert text_of(result) == "Short and sweet."
    assert result.structured_content is not None and result.structured_content["answer"] == "Short and sweet."
