"""A scripted LM Studio stand-in for tests and the benchmark.

``FakeLMStudio`` is a real HTTP server (starlette app, uvicorn) running in a background thread with
its own event loop on ``127.0.0.1`` and an OS-assigned port, so in-process async tests, a bridge
started as a subprocess and the benchmark script can all reach it at ``fake.url``::

    from tests.support.fake_lmstudio import FakeLMStudio, Turn, call

    script = [Turn(tool_calls=[call("read_file", path="a.txt")]), Turn(text="It says hello.")]
    with FakeLMStudio(script=script, latency_s=0.05) as fake:
        ...  # point the bridge at fake.url
        assert len(fake.generation_requests()) == 2

What the model says is fixed by the script: a list of ``Turn`` consumed in order by generation
requests (``/v1/chat/completions``, ``/v1/completions``, ``/v1/responses``), or a callable that picks
the turn from the request (for concurrent runs, where arrival order is not fixed). Each turn is
rendered in the format of the endpoint that asked, streamed or not, the way LM Studio sends it,
including its quirks: plain-string error bodies, 404 ``model_not_found``, and the context-overflow bug
that answers 200 with an empty stream. Every request is recorded with its JSON body and byte size.

Which LM Studio it mimics (``lmstudio_version``):

- ``"0.3"`` (default): LM Studio 0.3.29+: ``/v1/models``, ``/api/v0/models``, ``/v1/responses``;
  ``/api/v1/models`` answers 404.
- ``"0.4"``: LM Studio 0.4: also ``GET /api/v1/models`` (``models[]`` with ``key``, ``loaded_instances[]``
  carrying ``config.context_length`` and ``config.parallel``, ``capabilities.trained_for_tool_use``).

Model limits, all opt-in per ``FakeModel`` so that nothing changes for a model that sets none:
``loaded_context_length`` is reported (``/api/v0/models`` ``loaded_context_length``, ``/api/v1/models``
``config.context_length``) and enforced: a generation request whose estimated tokens
(``tests.support.lmstudio_limits.estimate_tokens``: ~4 bytes a token, the stored conversation included
for ``previous_response_id``) exceed it gets LM Studio's overflow error, a 400 with a string ``error``,
or with ``context_overflow="empty_stream"`` LM Studio's bug: a 200 empty event stream when the request
was streamed. ``refuses_tools`` answers 400 to any request that carries a non-empty ``tools`` field, like a
server whose template cannot take tools.

What changes while it runs (``tests.support.fake_model_state``): models loaded through 0.4's
``POST /api/v1/models/load`` (``fake.state.loads`` records each), substitution of the loaded model for one
that is not (``substitutes=True``), and which structured-output fields are taken (``response_format``,
``text_format``).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import math
import re
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.fake_model_state import ModelState, ResponseFormat
from tests.support.lmstudio_limits import TOOLS_REFUSED_MESSAGE, estimate_tokens, overflow_message

__all__ = [
    "DEFAULT_MODELS",
    "FakeLMStudio",
    "FakeModel",
    "RecordedRequest",
    "Script",
    "Turn",
    "call",
]

logger = logging.getLogger(__name__)

GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/responses")
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
EMBEDDING_DIMENSIONS = 8
# How often a hanging request looks for its client's disconnect or the server's stop.
HANG_POLL_S = 0.02
# How often the server looks for a stop request (uvicorn's own loop looks every 0.1 s).
EXIT_POLL_S = 0.01

@dataclass(frozen=True)
class FakeModel:
    """One model the stand-in lists and accepts in requests.

    ``loaded_context_length`` (the context the loaded instance has, LM Studio's real budget) is reported
    and enforced when set; ``trained_for_tool_use`` is reported by ``/api/v1/models`` when set;
    ``refuses_tools`` makes requests with a ``tools`` field fail with 400. ``parallel`` is the loaded
    instance's prediction slots, reported by ``/api/v1/models``.
    """

    id: str
    type: Literal["llm", "vlm", "embeddings"] = "llm"
    loaded: bool = True
    max_context_length: int = 32768
    loaded_context_length: int | None = None
    trained_for_tool_use: bool | None = None
    refuses_tools: bool = False
    parallel: int = 4


DEFAULT_MODELS: tuple[FakeModel, ...] = (
    FakeModel("qwen/qwen3-coder-30b", "llm", loaded=True, max_context_length=262144),
    FakeModel("mistralai/magistral-small-2509", "llm", loaded=False, max_context_length=131072),
    FakeModel("text-embedding-nomic-embed-text-v1.5", "embeddings", loaded=False, max_context_length=2048),
)


@dataclass
class Turn:
    """What the model answers to one generation request.

    ``tool_calls`` holds ``(name, arguments)``; a ``str`` argument is sent verbatim (to script
    malformed JSON). ``error`` replaces the answer with that HTTP status and body (a ``str`` body is
    sent as ``{"error": "<str>"}``, as LM Studio does for context overflow). ``hang`` never answers
    until the client disconnects; ``empty_stream`` answers 200 with an event stream that closes
    without content (LM Studio's context-overflow bug), whether or not a stream was asked for.
    ``endless`` answers and never finishes (a model stuck repeating itself, or a proxy that trickles):
    streamed, 1 KiB text deltas one after another, ``chunk_delay_s`` apart; not streamed, a JSON body
    whose answer string never closes; until the client goes away.
    """

    text: str = ""
    tool_calls: list[tuple[str, dict[str, object] | str]] = field(default_factory=list)
    reasoning: str | None = None
    delay_s: float = 0.0
    error: tuple[int, dict[str, object] | str] | None = None
    usage: tuple[int, int] | None = None
    hang: bool = False
    empty_stream: bool = False
    endless: bool = False
    chunk_delay_s: float = 0.0
    cut: bool = False  # the answer stopped at max_tokens: finish_reason "length" / status "incomplete"


def call(name: str, **arguments: object) -> tuple[str, dict[str, object]]:
    """A tool call for ``Turn.tool_calls``: ``call("read_file", path="a.txt")``."""
    return (name, arguments)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the stand-in received it (header names lower-cased)."""

    method: str
    path: str
    body: dict[str, object] | None
    size_bytes: int
    headers: dict[str, str]
    client_port: int | None = None  # the client's end of the TCP connection: same port, same connection


Script = Sequence[Turn] | Callable[[RecordedRequest], Turn]

EXHAUSTED_TURN = Turn(text="(script exhausted)")


class FakeLMStudio:
    """A scripted LM Studio on ``127.0.0.1``, served from a background thread.

    Use it as a context manager (or call ``start()``/``stop()``); ``url`` is valid once started.
    """

    def __init__(
        self,
        script: Script = (),
        *,
        models: Iterable[FakeModel] = DEFAULT_MODELS,
        responses_api: bool = True,
        latency_s: float = 0.0,
        api_key: str | None = None,
        reject_tools: Iterable[str] = (),
        lmstudio_version: Literal["0.3", "0.4"] = "0.3",
        context_overflow: Literal["error", "empty_stream"] = "error",
        substitutes: bool = False,
        response_format: ResponseFormat = "json_schema",
        text_format: bool = True,
        fails_to_load: Iterable[str] = (),
    ) -> None:
        self.models: tuple[FakeModel, ...] = tuple(models)
        self.state = ModelState(
            self.models,
            substitutes=substitutes,
            response_format=response_format,
            text_format=text_format,
            fails_to_load=frozenset(fails_to_load),
        )
        self.lmstudio_version = lmstudio_version
        # How a request too big for a model's loaded context is answered (see the module docstring).
        self.context_overflow = context_overflow
        # Tools whose schema the stand-in refuses (400), as llama.cpp does with schemas it cannot
        # turn into a grammar; the request is refused whole, like the real thing.
        self.reject_tools = set(reject_tools)
        self.responses_api = responses_api
        self.latency_s = latency_s
        self.api_key = api_key

        self._lock = threading.Lock()
        self._turns: deque[Turn] = deque()
        self._script_fn: Callable[[RecordedRequest], Turn] | None = None
        self._requests: list[RecordedRequest] = []
        self._failures: deque[tuple[int, dict[str, object] | str]] = deque()
        self._conversations: dict[str, list[dict[str, object]]] = {}
        self._ids = itertools.count(1)
        self._stopping = threading.Event()
        self.set_script(script)

        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._port: int | None = None
        self.app = self._build_app()

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``. Raises ``RuntimeError`` before ``start()``."""
        if self._port is None:
            raise RuntimeError("FakeLMStudio is not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeLMStudio is not started")
        return self._port

    def start(self) -> None:
        """Serve in a background thread; return once it accepts connections.

        Raises:
            RuntimeError: the server did not come up within 10 s.
        """
        if self._thread is not None:
            raise RuntimeError("FakeLMStudio is already started")
        self._stopping.clear()
        # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY on accepted connections only when
        # the listening socket says TCP, and without it small replies wait ~40 ms for a delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._socket = sock
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        self._server = _QuickExitServer(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [sock]},
            name=f"fake-lmstudio-{self._port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("FakeLMStudio did not start within %.0f s" % START_TIMEOUT_S)
            self._stopping.wait(0.005)
        logger.debug("FakeLMStudio serving on %s", self.url)

    def stop(self) -> None:
        """Shut uvicorn down (hanging requests are released) and join the thread, bounded."""
        self._stopping.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)
            if self._thread.is_alive():
                logger.warning("FakeLMStudio thread did not stop in %.0f s; forcing exit", STOP_TIMEOUT_S)
                if self._server is not None:
                    self._server.force_exit = True
                self._thread.join(STOP_TIMEOUT_S)
        if self._socket is not None:
            self._socket.close()
        self._thread = None
        self._server = None
        self._socket = None

    def __enter__(self) -> FakeLMStudio:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ control and inspection

    def set_script(self, script: Script) -> None:
        """Replace the script: a list of turns consumed in order, or ``request -> Turn``."""
        with self._lock:
            if callable(script):
                self._script_fn = script
                self._turns = deque()
            else:
                self._script_fn = None
                self._turns = deque(script)

    def fail_next(self, status: int, body: dict[str, object] | str = "Internal error", count: int = 1) -> None:
        """Make the next ``count`` generation requests answer ``status`` with ``body``."""
        with self._lock:
            self._failures.extend([(status, body)] * count)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def generation_requests(self) -> list[RecordedRequest]:
        """The recorded requests to chat completions, completions and responses."""
        return [r for r in self.requests if r.path in GENERATION_PATHS]

    def clear(self) -> None:
        """Forget the recorded requests (the script and stored responses stay)."""
        with self._lock:
            self._requests.clear()

    def conversation(self, response_id: str) -> list[dict[str, object]]:
        """The items a stored response holds: earlier turns, its input, then its output."""
        with self._lock:
            return list(self._conversations[response_id])

    # ------------------------------------------------------------------ the app

    def _build_app(self) -> Starlette:
        routes = [
            Route("/v1/models", self._openai_models, methods=["GET"]),
            Route("/api/v0/models", self._rich_models, methods=["GET"]),
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/completions", self._completions, methods=["POST"]),
            Route("/v1/embeddings", self._embeddings, methods=["POST"]),
            Route("/v1/responses", self._responses, methods=["POST"]),
        ]
        if self.lmstudio_version == "0.4":
            routes.append(Route("/api/v1/models", self._native_models, methods=["GET"]))
            routes.append(Route("/api/v1/models/load", self._load_model, methods=["POST"]))
        app = Starlette(routes=routes)
        app.add_middleware(_RecordAndAuth, fake=self)
        return app

    def _record(self, recorded: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(recorded)

    def _next_failure(self) -> tuple[int, dict[str, object] | str] | None:
        with self._lock:
            return self._failures.popleft() if self._failures else None

    def _next_turn(self, recorded: RecordedRequest) -> Turn:
        with self._lock:
            script_fn = self._script_fn
            if script_fn is None:
                return self._turns.popleft() if self._turns else EXHAUSTED_TURN
        return script_fn(recorded)

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids)}"

    async def _openai_models(self, request: Request) -> Response:
        data = [{"id": m.id, "object": "model", "owned_by": "organization_owner"} for m in self.models]
        return JSONResponse({"object": "list", "data": data})

    async def _rich_models(self, request: Request) -> Response:
        data = []
        for m in self.models:
            entry: dict[str, object] = {
                "id": m.id,
                "object": "model",
                "type": m.type,
                "publisher": _publisher(m.id),
                "state": "loaded" if self.state.is_loaded(m) else "not-loaded",
                "max_context_length": m.max_context_length,
            }
            loaded_context = self.state.loaded_context_length(m)
            if loaded_context is not None:
                entry["loaded_context_length"] = loaded_context
            data.append(entry)
        return JSONResponse({"object": "list", "data": data})

    async def _native_models(self, request: Request) -> Response:
        """LM Studio 0.4's ``GET /api/v1/models`` (the fields the bridge and the weak-model suite read)."""
        listed = []
        for m in self.models:
            entry: dict[str, object] = {
                "type": "embedding" if m.type == "embeddings" else "llm",
                "publisher": _publisher(m.id),
                "key": m.id,
                "display_name": m.id.split("/")[-1],
                "max_context_length": m.max_context_length,
                "format": "gguf",
                "loaded_instances": [],
            }
            if self.state.is_loaded(m):
                loaded_context = self.state.loaded_context_length(m)
                config: dict[str, object] = {"context_length": loaded_context or m.max_context_length}
                if m.type != "embeddings":
                    config["parallel"] = m.parallel
                entry["loaded_instances"] = [{"id": m.id, "config": config}]
            if m.type != "embeddings":
                entry["capabilities"] = {
                    "vision": m.type == "vlm",
                    "trained_for_tool_use": bool(m.trained_for_tool_use),
                }
            listed.append(entry)
        return JSONResponse({"models": listed})

    async def _load_model(self, request: Request) -> Response:
        """LM Studio 0.4's ``POST /api/v1/models/load`` (see ``fake_model_state``)."""
        status, payload = self.state.load(_recorded(request).body or {})
        return JSONResponse(payload, status_code=status)

    async def _embeddings(self, request: Request) -> Response:
        body = _recorded(request).body or {}
        model, refusal = self._check_model(body)
        if refusal is not None:
            return refusal
        raw_input = body.get("input", "")
        texts = [str(t) for t in raw_input] if isinstance(raw_input, list) else [str(raw_input)]
        data = [{"object": "embedding", "index": i, "embedding": _embed(t)} for i, t in enumerate(texts)]
        tokens = sum(_count_tokens(t) for t in texts)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def _chat(self, request: Request) -> Response:
        prepared = await self._prepare_generation(request)
        if isinstance(prepared, Response):
            return prepared
        recorded, model, turn = prepared
        prompt_tokens, completion_tokens = _usage(turn, recorded)
        calls = [(f"call_{next(self._ids)}", name, _arguments_text(args)) for name, args in turn.tool_calls]
        finish_reason = "length" if turn.cut else "tool_calls" if calls else "stop"
        completion_id = self._new_id("chatcmpl")
        created = int(time.time())
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        body = recorded.body or {}
        if not body.get("stream"):
            message: dict[str, object] = {"role": "assistant", "content": turn.text}
            if turn.reasoning is not None:
                message["reasoning_content"] = turn.reasoning
            if calls:
                message["tool_calls"] = [
                    {"id": cid, "type": "function", "function": {"name": name, "arguments": arguments}}
                    for cid, name, arguments in calls
                ]
            return JSONResponse(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
                    "usage": usage,
                    "system_fingerprint": model,
                }
            )

        def chunk(delta: dict[str, object], finish: str | None = None) -> str:
            return _sse_data(
                {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "system_fingerprint": model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                }
            )

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))  # type: ignore[union-attr]

        async def events() -> AsyncIterator[str]:
            yield chunk({"role": "assistant", "content": ""})
            for piece in _text_pieces(turn.reasoning or ""):
                yield chunk({"reasoning_content": piece})
            for piece in _text_pieces(turn.text):
                yield chunk({"content": piece})
            for index, (cid, name, arguments) in enumerate(calls):
                yield chunk(
                    {
                        "tool_calls": [
                            {"index": index, "id": cid, "type": "function",
                             "function": {"name": name, "arguments": ""}}
                        ]
                    }
                )
                for piece in _split(arguments):
                    yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
            yield chunk({}, finish_reason)
            if include_usage:
                yield _sse_data(
                    {
                        "id": completion_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": usage,
                    }
                )
            yield "data: [DONE]\n\n"

        return _event_stream(events())

    async def _completions(self, request: Request) -> Response:
        prepared = await self._prepare_generation(request)
        if isinstance(prepared, Response):
            return prepared
        recorded, model, turn = prepared
        prompt_tokens, completion_tokens = _usage(turn, recorded)
        completion_id = self._new_id("cmpl")
        created = int(time.time())

        def body_for(text: str, finish: str | None) -> dict[str, object]:
            return {
                "id": completion_id,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
            }

        if not (recorded.body or {}).get("stream"):
            full = body_for(turn.text, "stop")
            full["usage"] = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
            return JSONResponse(full)

        async def events() -> AsyncIterator[str]:
            for piece in _text_pieces(turn.text):
                yield _sse_data(body_for(piece, None))
            yield _sse_data(body_for("", "stop"))
            yield "data: [DONE]\n\n"

        return _event_stream(events())

    async def _responses(self, request: Request) -> Response:
        if not self.responses_api:
            # What llama.cpp's server (and other servers without a Responses API) answer.
            return JSONResponse({"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}},
                                status_code=404)
        body = _recorded(request).body or {}
        previous_id = body.get("previous_response_id")
        prepared = await self._prepare_generation(request, lambda: self._check_previous(previous_id))
        if isinstance(prepared, Response):
            return prepared
        recorded, model, turn = prepared
        prompt_tokens, completion_tokens = _usage(turn, recorded)

        output: list[dict[str, object]] = []
        if turn.reasoning is not None:
            output.append(
                {
                    "id": self._new_id("rs"),
                    "type": "reasoning",
                    "summary": [],
                    "content": [{"type": "reasoning_text", "text": turn.reasoning}],
                }
            )
        if turn.text or not turn.tool_calls:
            output.append(
                {
                    "id": self._new_id("msg"),
                    "type": "message",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": turn.text, "annotations": []}],
                }
            )
        for name, args in turn.tool_calls:
            output.append(
                {
                    "id": self._new_id("fc"),
                    "type": "function_call",
                    "call_id": self._new_id("call"),
                    "name": name,
                    "arguments": _arguments_text(args),
                    "status": "completed",
                }
            )

        response_id = self._new_id("resp")
        with self._lock:
            history = list(self._conversations.get(str(previous_id), [])) if previous_id else []
            self._conversations[response_id] = history + _input_items(body.get("input")) + output
        full: dict[str, object] = {
            "id": response_id,
            "object": "response",
            "created_at": int(time.time()),
            "status": "incomplete" if turn.cut else "completed",
            **({"incomplete_details": {"reason": "max_output_tokens"}} if turn.cut else {}),
            "model": model,
            "previous_response_id": previous_id,
            "output": output,
            "usage": {
                "input_tokens": prompt_tokens,
                "output_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        if not body.get("stream"):
            return JSONResponse(full)
        return _event_stream(_response_events(full, output))

    async def _prepare_generation(
        self, request: Request, check: Callable[[], Response | None] = lambda: None
    ) -> tuple[RecordedRequest, str, Turn] | Response:
        """Fault injection, request checks, turn choice and latency shared by every generation endpoint."""
        recorded = _recorded(request)
        failure = self._next_failure()
        if failure is not None:
            return _error_response(*failure)
        body = recorded.body or {}
        model, refusal = self._check_model(body)
        if refusal is None:
            refusal = self._check_tools(body)
        if refusal is None and (refused := self.state.output_format_refusal(request.url.path, body)):
            refusal = _error_response(*refused)
        if refusal is None:
            refusal = check()
        if refusal is None:
            refusal = self._check_limits(model, request.url.path, body)
        if refusal is not None:
            return refusal
        turn = self._next_turn(recorded)
        await asyncio.sleep(self.latency_s + turn.delay_s)
        if turn.hang:
            await self._hang(request)
            return Response(status_code=503)
        if turn.error is not None:
            return _error_response(*turn.error)
        if turn.empty_stream:
            return Response(b"", media_type="text/event-stream")
        if turn.endless:
            return self._endless(request.url.path, bool(body.get("stream")), turn.chunk_delay_s)
        return recorded, model, turn

    def _endless(self, path: str, stream: bool, delay_s: float) -> Response:
        """An answer that never ends (see ``Turn.endless``); the stream stops when the client disconnects."""
        piece = "la " * 341 + "l"
        if not stream:
            first = '{"id": "endless", "object": "chat.completion", "choices": [{"index": 0, "message": {"content": "'
            item = piece
        elif path == "/v1/responses":
            first, item = "", _sse_event("response.output_text.delta", {"output_index": 0, "delta": piece})
        elif path == "/v1/completions":
            first, item = "", _sse_data({"choices": [{"index": 0, "text": piece, "finish_reason": None}]})
        else:
            first, item = "", _sse_data({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})

        async def forever() -> AsyncIterator[str]:
            yield first
            while not self._stopping.is_set():
                yield item
                await asyncio.sleep(delay_s)

        media = "text/event-stream" if stream else "application/json"
        return StreamingResponse(forever(), media_type=media)

    def _check_tools(self, body: dict[str, object]) -> Response | None:
        """A 400 naming the first refused tool the request offers, if any."""
        for tool in body.get("tools") or []:
            if not isinstance(tool, dict):
                continue
            function = tool.get("function") if isinstance(tool.get("function"), dict) else tool
            name = function.get("name")
            if name in self.reject_tools:
                return _error_response(400, f"Invalid tool '{name}': failed to convert its JSON schema to a grammar")
        return None

    def _check_limits(self, model_id: str, path: str, body: dict[str, object]) -> Response | None:
        """The refusals of a model with limits: the ``tools`` field, or a request its loaded context cannot hold."""
        model = next((m for m in self.models if m.id == model_id), None)
        if model is None:
            return None
        if model.refuses_tools and body.get("tools"):
            return _error_response(
                400, {"error": {"code": 400, "message": TOOLS_REFUSED_MESSAGE, "type": "invalid_request_error"}}
            )
        # A model not loaded yet is held to the context it will be loaded with (just-in-time loading).
        loaded_context = self.state.loaded_context_length(model) or model.loaded_context_length
        if loaded_context is None:
            return None
        history: list[dict[str, object]] = []
        previous_id = body.get("previous_response_id") if path == "/v1/responses" else None
        if previous_id is not None:
            with self._lock:
                history = list(self._conversations.get(str(previous_id), []))
        tokens = estimate_tokens(body, history)
        if tokens <= loaded_context:
            return None
        if self.context_overflow == "empty_stream" and body.get("stream"):
            return Response(b"", media_type="text/event-stream")
        return _error_response(400, overflow_message(tokens, loaded_context))

    def _check_previous(self, previous_id: object) -> Response | None:
        """LM Studio's answer to a ``previous_response_id`` it has not stored."""
        if previous_id is None:
            return None
        with self._lock:
            if previous_id in self._conversations:
                return None
        return _error_response(
            400,
            {
                "error": {
                    "message": f"Could not find stored response for previous_response_id: {previous_id}",
                    "type": "invalid_request_error",
                    "param": "previous_response_id",
                    "code": "previous_response_not_found",
                }
            },
        )

    async def _hang(self, request: Request) -> None:
        while not self._stopping.is_set():
            if await request.is_disconnected():
                logger.debug("client gave up on a hanging request to %s", request.url.path)
                return
            await asyncio.sleep(HANG_POLL_S)

    def _check_model(self, body: dict[str, object]) -> tuple[str, Response | None]:
        requested = body.get("model")
        if requested is None:
            loaded = [m.id for m in self.models if self.state.is_loaded(m) and m.type != "embeddings"]
            return (loaded[0] if loaded else ""), None
        if any(m.id == requested for m in self.models):
            return self.state.answering_model(str(requested)), None
        refusal = _error_response(
            404,
            {
                "error": {
                    "message": f'Model "{requested}" not found. Please specify a valid model.',
                    "type": "invalid_request_error",
                    "param": "model",
                    "code": "model_not_found",
                }
            },
        )
        return str(requested), refusal


class _QuickExitServer(uvicorn.Server):
    """uvicorn's server, noticing ``should_exit`` sooner: tests start and stop one per test."""

    async def main_loop(self) -> None:
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            await asyncio.sleep(EXIT_POLL_S)


class _RecordAndAuth:
    """ASGI middleware: read and record every request, then enforce the bearer token."""

    def __init__(self, app: Callable[..., object], fake: FakeLMStudio) -> None:
        self.app = app
        self.fake = fake

    async def __call__(self, scope: dict[str, object], receive: Callable[..., object],
                       send: Callable[..., object]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # type: ignore[operator]
            return
        request = Request(scope, receive)  # type: ignore[arg-type]
        raw = await request.body()
        body: dict[str, object] | None = None
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
            body = parsed if isinstance(parsed, dict) else None
        recorded = RecordedRequest(
            method=request.method,
            path=request.url.path,
            body=body,
            size_bytes=len(raw),
            headers={k.lower(): v for k, v in request.headers.items()},
            client_port=request.client.port if request.client else None,
        )
        self.fake._record(recorded)
        scope.setdefault("state", {})
        scope["state"]["recorded"] = recorded  # type: ignore[index]

        if self.fake.api_key is not None:
            if recorded.headers.get("authorization") != f"Bearer {self.fake.api_key}":
                response = _error_response(
                    401,
                    {"error": {"message": "Invalid or missing API key", "type": "invalid_request_error",
                               "code": "invalid_api_key"}},
                )
                await response(scope, receive, send)  # type: ignore[arg-type]
                return

        # The body was consumed above; replay it for the route, then pass through later messages
        # (a disconnect, which a hanging request waits for).
        replayed = False

        async def replay() -> object:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()  # type: ignore[misc]

        await self.app(scope, replay, send)  # type: ignore[operator]


# ---------------------------------------------------------------------- rendering helpers


def _publisher(model_id: str) -> str:
    return model_id.split("/")[0] if "/" in model_id else "lmstudio-community"


def _recorded(request: Request) -> RecordedRequest:
    recorded: RecordedRequest = request.scope["state"]["recorded"]
    return recorded


def _error_response(status: int, body: dict[str, object] | str) -> JSONResponse:
    return JSONResponse({"error": body} if isinstance(body, str) else body, status_code=status)


def _event_stream(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _sse_data(payload: dict[str, object]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _sse_event(name: str, payload: dict[str, object]) -> str:
    return f"event: {name}\ndata: {json.dumps({'type': name, **payload})}\n\n"


def _arguments_text(arguments: dict[str, object] | str) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def _count_tokens(text: str) -> int:
    """A rough token count (about four bytes a token), enough for usage figures."""
    return max(1, math.ceil(len(text.encode()) / 4)) if text else 0


def _usage(turn: Turn, recorded: RecordedRequest) -> tuple[int, int]:
    if turn.usage is not None:
        return turn.usage
    produced = turn.text + (turn.reasoning or "") + "".join(
        name + _arguments_text(args) for name, args in turn.tool_calls
    )
    return max(1, recorded.size_bytes // 4), _count_tokens(produced)


def _text_pieces(text: str) -> list[str]:
    """Split text into word-sized deltas, as a model streams them (several for any sentence)."""
    return re.findall(r"\s*\S+\s*|\s+", text) if text else []


def _split(text: str, parts: int = 3) -> list[str]:
    """Split text into ``parts`` nearly equal fragments (at least two when it has two characters)."""
    if len(text) < 2:
        return [text]
    parts = min(parts, len(text))
    size = math.ceil(len(text) / parts)
    return [text[i : i + size] for i in range(0, len(text), size)]


def _embed(text: str) -> list[float]:
    """A small unit vector derived from the text: the same text always gives the same vector."""
    digest = hashlib.sha256(text.encode()).digest()
    raw = [(b - 127.5) / 127.5 for b in digest[:EMBEDDING_DIMENSIONS]]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [round(x / norm, 6) for x in raw]


def _input_items(raw: object) -> list[dict[str, object]]:
    if raw is None:
        return []
    if isinstance(raw, str):
        return [{"role": "user", "content": raw}]
    if isinstance(raw, list):
        return [item if isinstance(item, dict) else {"role": "user", "content": str(item)} for item in raw]
    return [{"role": "user", "content": str(raw)}]


async def _response_events(full: dict[str, object], output: list[dict[str, object]]) -> AsyncIterator[str]:
    """The Responses API event stream for an already-built response."""
    sequence = itertools.count()

    def event(name: str, **payload: object) -> str:
        return _sse_event(name, {"sequence_number": next(sequence), **payload})

    yield event("response.created", response={**full, "status": "in_progress", "output": [], "usage": None})
    yield event("response.in_progress", response={**full, "status": "in_progress", "output": [], "usage": None})
    for index, item in enumerate(output):
        item_id = item["id"]
        kind = item["type"]
        if kind == "reasoning":
            yield event("response.output_item.added", output_index=index, item={**item, "content": []})
            text = item["content"][0]["text"]  # type: ignore[index]
            for piece in _text_pieces(text):
                yield event("response.reasoning_text.delta", item_id=item_id, output_index=index,
                            content_index=0, delta=piece)
            yield event("response.reasoning_text.done", item_id=item_id, output_index=index,
                        content_index=0, text=text)
        elif kind == "message":
            yield event("response.output_item.added", output_index=index,
                        item={**item, "status": "in_progress", "content": []})
            part = {"type": "output_text", "text": "", "annotations": []}
            yield event("response.content_part.added", item_id=item_id, output_index=index,
                        content_index=0, part=part)
            text = item["content"][0]["text"]  # type: ignore[index]
            for piece in _text_pieces(text):
                yield event("response.output_text.delta", item_id=item_id, output_index=index,
                            content_index=0, delta=piece)
            yield event("response.output_text.done", item_id=item_id, output_index=index,
                        content_index=0, text=text)
            yield event("response.content_part.done", item_id=item_id, output_index=index,
                        content_index=0, part={**part, "text": text})
        else:
            yield event("response.output_item.added", output_index=index,
                        item={**item, "status": "in_progress", "arguments": ""})
            arguments = str(item["arguments"])
            for piece in _split(arguments):
                yield event("response.function_call_arguments.delta", item_id=item_id, output_index=index,
                            delta=piece)
            yield event("response.function_call_arguments.done", item_id=item_id, output_index=index,
                        arguments=arguments)
        yield event("response.output_item.done", output_index=index, item=item)
    yield event("response.incomplete" if full["status"] == "incomplete" else "response.completed", response=full)
