"""The bounds of one call to a model server: how long it may take, and how much of an answer is read.

    bounded_call(queue, timeout_s, url=..., model=...)   the model's queue slot and the request, within
                                                           LMSTUDIO_CALL_TIMEOUT_S -> CallTimeoutError
    capped_bytes(response, limit)                          a body's bytes, stopped past LMSTUDIO_MAX_ANSWER_MB
    buffered(response, limit)                              a non-streamed body read whole, within the same cap

A read timeout (LMSTUDIO_REQUEST_TIMEOUT_S) bounds each wait for the next piece of an answer, so
an answer that trickles, or never ends, would run and grow without these: a trickling stream ran
45 s until the client gave up, an endless one took the bridge from 281 MB to 855 MB in 15 s, and
four stuck calls held every slot of their model's queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from llm.exceptions import AnswerTooLargeError, CallTimeoutError


@asynccontextmanager
async def bounded_call(queue: asyncio.Semaphore, timeout_s: float, *, url: str, model: str) -> AsyncIterator[None]:
    """A place in the model's queue, then the body of the `async with`, all within `timeout_s`.

    Raises:
        CallTimeoutError: the bound passed, in line or while the answer came; the body was cancelled
            (its request abandoned, its connection closed) and the slot is free for the next call.
    """
    bound = asyncio.timeout(timeout_s)
    in_line = True
    try:
        async with bound, queue:
            in_line = False
            yield
    except TimeoutError as exc:
        if not bound.expired():
            raise
        raise CallTimeoutError(url, model, timeout_s, in_line=in_line) from exc


async def capped_bytes(response: httpx.Response, limit: int) -> AsyncIterator[bytes]:
    """The body's bytes as they arrive.

    Raises:
        AnswerTooLargeError: once more than `limit` bytes have arrived (the rest is not read).
    """
    received = 0
    async for chunk in response.aiter_bytes():
        received += len(chunk)
        if received > limit:
            raise AnswerTooLargeError(str(response.request.url), limit)
        yield chunk


async def buffered(response: httpx.Response, limit: int) -> httpx.Response:
    """`response` (opened as a stream) with its whole body read and the stream closed.

    Raises:
        AnswerTooLargeError: the body is longer than `limit` bytes.
        httpx.HTTPError: reading the body failed.
    """
    body = bytearray()
    try:
        async for chunk in capped_bytes(response, limit):
            body += chunk
    finally:
        await response.aclose()
    # Rebuilt from the decoded bytes: the headers that described the encoded body no longer apply.
    headers = [
        (name, value)
        for name, value in response.headers.raw
        if name.lower() not in (b"content-encoding", b"content-length", b"transfer-encoding")
    ]
    return httpx.Response(response.status_code, headers=headers, content=bytes(body), request=response.request)
