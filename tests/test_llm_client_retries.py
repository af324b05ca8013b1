"""What the client sends again, and what it does not: a generation's read timeout never, a connect
failure with backoff, a reused connection the server had closed once at once and quietly.

The stale-connection case needs a real socket (respx never opens one): `DropsReusedConnections` is a
tiny HTTP/1.1 server that answers the first request on each connection and closes the connection when
a second one arrives on it, without answering (what llama.cpp's server does after refusing a streamed
tool call, as seen from the client's keep-alive pool).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import respx

from llm.exceptions import LLMConnectionError, LLMTimeoutError
from llm.llm_client import ClientOptions, LLMClient
from llm.models import ResolvedModel

BASE = "http://lmstudio.test:1234"
CHAT_OK = {
    "model": "qwen/qwen3-4b",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
}
MODELS = {"data": [{"id": "qwen/qwen3-4b", "type": "llm", "state": "loaded"}]}
QWEN = ResolvedModel("qwen/qwen3-4b", "requested", None, asyncio.Semaphore(4))
HI = [{"role": "user", "content": "hi"}]


async def no_sleep(seconds: float) -> None:
    return None


def options(base_url: str = BASE, attempts: int = 3) -> ClientOptions:
    return ClientOptions(base_url=base_url, retry_attempts=attempts, retry_base_delay_s=0, retry_max_delay_s=0,
                         model_ttl_s=0)


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


# --- the retry policy ----------------------------------------------------------------------------------


async def test_a_read_timeout_on_a_generation_is_not_retried(mock: respx.MockRouter) -> None:
    route = mock.post("/v1/chat/completions").mock(side_effect=httpx.ReadTimeout("slow"))
    async with LLMClient(options(attempts=3), sleep=no_sleep) as client:
        with pytest.raises(LLMTimeoutError, match="raise LMSTUDIO_REQUEST_TIMEOUT_S"):
            await client.chat_completion(HI, model=QWEN)
    assert route.call_count == 1


async def test_a_connect_timeout_on_a_generation_is_still_retried(mock: respx.MockRouter) -> None:
    route = mock.post("/v1/chat/completions")
    route.side_effect = [httpx.ConnectTimeout("slow"), httpx.ConnectError("refused"), httpx.Response(200, json=CHAT_OK)]
    async with LLMClient(options(attempts=3), sleep=no_sleep) as client:
        result = await client.chat_completion(HI, model=QWEN)
    assert result.content == "Hello"
    assert route.call_count == 3


async def test_a_read_timeout_on_the_model_listing_is_retried(mock: respx.MockRouter) -> None:
    route = mock.get("/api/v1/models")
    route.side_effect = [httpx.ReadTimeout("slow"), httpx.Response(200, json=MODELS)]
    async with LLMClient(options(attempts=2), sleep=no_sleep) as client:
        models = await client.list_models()
    assert [m.id for m in models] == ["qwen/qwen3-4b"]
    assert route.call_count == 2


# --- a keep-alive connection the server closed ---------------------------------------------------------


class DropsReusedConnections:
    """Answers the first request of each connection; closes the connection on the second, unanswered."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, str]] = []  # (connection number, "METHOD /path")
        self._server: asyncio.Server | None = None
        self._connections = 0

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> DropsReusedConnections:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections += 1
        number = self._connections
        try:
            for index in range(2):
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *header_lines = head.decode().split("\r\n")
                headers = dict(line.split(": ", 1) for line in header_lines if ": " in line)
                await reader.readexactly(int(headers.get("content-length", "0")))
                method, path, _ = request_line.split(" ")
                self.seen.append((number, f"{method} {path}"))
                if index == 1:
                    return  # the second request on a connection: closed without an answer
                body = json.dumps(MODELS if method == "GET" else CHAT_OK).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


@pytest.fixture
async def dropping() -> AsyncIterator[DropsReusedConnections]:
    async with DropsReusedConnections() as server:
        yield server


async def test_a_reused_connection_the_server_closed_is_sent_again_once_quietly(
    dropping: DropsReusedConnections, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with LLMClient(options(dropping.url, attempts=1), sleep=no_sleep) as client:
        await client.list_models()
        result = await client.chat_completion(HI, model=QWEN)
        stale = client.metrics.snapshot()
    assert result.content == "Hello"
    assert dropping.seen == [(1, "GET /api/v1/models"), (1, "POST /v1/chat/completions"), (2, "POST /v1/chat/completions")]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "Is LM Studio running?" not in caplog.text
    (note,) = [r.getMessage() for r in caplog.records if "reused connection" in r.getMessage()]
    assert note.startswith(f"LM Studio at {dropping.url} closed a reused connection before answering /v1/chat/completions")
    assert note.endswith("sending the request again on a new connection")
    assert "llm_stale_connections" in json.dumps(stale)


async def test_a_refused_new_connection_is_still_could_not_connect(dropping: DropsReusedConnections) -> None:
    url = dropping.url
    await dropping.__aexit__()  # nothing listens there any more
    async with LLMClient(options(url, attempts=1), sleep=no_sleep) as client:
        with pytest.raises(LLMConnectionError, match=r"Could not connect to LM Studio at .* Is LM Studio running\?"):
            await client.chat_completion(HI, model=QWEN)
