"""Server-sent events: bytes split anywhere in, `SSEEvent(data, event, id)` out, ending at `[DONE]`.

    SSEParser   incremental parser (the WHATWG event-stream rules: CR, LF or CRLF line ends, comments, multi-line data)
    aiter_sse   the events of an async byte stream
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

DONE = "[DONE]"


@dataclass(frozen=True)
class SSEEvent:
    data: str
    event: str | None = None
    id: str | None = None

    @property
    def is_done(self) -> bool:
        """OpenAI-style end marker (`data: [DONE]`)."""
        return self.data.strip() == DONE

    def json(self) -> object:
        """The data parsed as JSON. Raises json.JSONDecodeError."""
        return json.loads(self.data)


_LINE_END = re.compile(r"\r\n|\r|\n")


class SSEParser:
    """Incremental parser of the text/event-stream format (WHATWG), fed chunks split anywhere."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._data: list[str] = []
        self._event: str | None = None
        self._id: str | None = None

    def feed(self, chunk: bytes | str) -> list[SSEEvent]:
        """Add a chunk; returns the events it completed."""
        self._buffer += self._decoder.decode(chunk) if isinstance(chunk, bytes) else chunk
        events: list[SSEEvent] = []
        while match := _LINE_END.search(self._buffer):
            # A lone trailing "\r" may be the first half of a "\r\n" still in flight.
            if match.group() == "\r" and match.end() == len(self._buffer):
                break
            line, self._buffer = self._buffer[: match.start()], self._buffer[match.end() :]
            if (event := self._take_line(line)) is not None:
                events.append(event)
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: flush a final event that was not followed by a blank line."""
        tail = self._buffer + self._decoder.decode(b"", final=True)
        self._buffer = ""
        events = [e for e in (self._take_line(tail.rstrip("\r")) if tail else None, self._dispatch()) if e]
        return events

    def _take_line(self, line: str) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value
        return None

    def _dispatch(self) -> SSEEvent | None:
        if not self._data:
            self._event = None
            return None
        event = SSEEvent(data="\n".join(self._data), event=self._event, id=self._id)
        self._data, self._event = [], None
        return event


async def aiter_sse(chunks: AsyncIterable[bytes]) -> AsyncIterator[SSEEvent]:
    """The SSE events of a byte stream, ending at `[DONE]` or at the end of the stream."""
    parser = SSEParser()
    async for chunk in chunks:
        for event in parser.feed(chunk):
            if event.is_done:
                return
            yield event
    for event in parser.close():
        if event.is_done:
            return
        yield event
