"""Logging for the bridge: stderr only (stdout is the MCP protocol), text or JSON, with run ids.

`configure_logging(settings)` is called once by `main` before the server is built. Each
autonomous run sets `run_id` (a context variable), so every line logged while it runs,
in any module, carries it. `register_secret()` adds a value that must never appear in a
log line: it is replaced by `***` by a filter on the handler, whichever logger logged it;
`redact()` and `redact_data()` do the same for what tools return and `doctor` prints.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import threading
import urllib.parse
import uuid
from datetime import UTC, datetime
from typing import TextIO

run_id: contextvars.ContextVar[str] = contextvars.ContextVar("run_id", default="-")


def new_run_id() -> str:
    """A short id for one autonomous run (8 hex digits: unique enough within one bridge's log)."""
    return uuid.uuid4().hex[:8]

_secrets: tuple[str, ...] = ()  # longest first: a secret that contains another is masked whole
_short_secrets: re.Pattern[str] | None = None
_short_values: set[str] = set()
_secrets_lock = threading.Lock()
_MIN_SECRET_LEN = 4  # shorter values only with `any_length`
_SUBSTRING_MIN_LEN = 8  # shorter values are masked only where they stand as a word of their own
MASK = "***"


def _written_forms(value: str) -> set[str]:
    """`value` as it may appear in text: as is, JSON- or repr-escaped, percent-encoded in a URL."""
    forms = {
        value,
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        repr(value)[1:-1],
        urllib.parse.quote(value, safe=""),
        urllib.parse.quote_plus(value),
    }
    return {form for form in forms if form}


def register_secret(value: str | None, *, any_length: bool = False) -> None:
    """Never show `value` (an API key, a header value, a value a config took from the environment).

    Values of 8 characters or more are masked wherever they occur, in every written form (escaped
    in JSON or repr, percent-encoded); shorter ones only where they stand as a word of their own,
    so that a 5-letter password does not scramble every word that happens to contain it. Values
    under 4 characters are masked only with `any_length` (a value under a credential's name).
    """
    global _secrets, _short_secrets
    if not value or (len(value) < _MIN_SECRET_LEN and not any_length):
        return
    with _secrets_lock:
        if len(value) >= _SUBSTRING_MIN_LEN:
            _secrets = tuple(sorted(set(_secrets) | _written_forms(value), key=len, reverse=True))
        elif value not in _short_values:
            _short_values.add(value)
            words = "|".join(re.escape(v) for v in sorted(_short_values, key=len, reverse=True))
            _short_secrets = re.compile(rf"(?<![\w-])(?:{words})(?![\w-])")


def redact(text: str) -> str:
    """`text` with every registered secret replaced by `***`."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    if _short_secrets is not None:
        text = _short_secrets.sub(MASK, text)
    return text


def redact_data(data: object) -> object:
    """`data` (JSON-like: dicts, lists, strings, numbers) with every string redacted.

    Masking the structure itself, not its JSON text: a secret containing `"`, `\\` or non-ASCII
    is written escaped in JSON, and would slip past a search for the secret as it is.
    """
    if isinstance(data, str):
        return redact(data)
    if isinstance(data, dict):
        return {key: redact_data(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [redact_data(item) for item in data]
    return data


class _ContextFilter(logging.Filter):
    """Stamps the run id on each record and scrubs secrets from the final message."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = run_id.get()
        if _secrets or _short_secrets is not None:
            record.msg = redact(record.getMessage())
            record.args = None
            if record.exc_info and record.exc_info[1] is not None:
                # Render the traceback now, scrubbed, so the formatter prints this text instead.
                record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
                record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, run_id, msg (and exc when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "run_id": getattr(record, "run_id", "-"),
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(run_id)s] %(message)s"


def configure_logging(level: str = "INFO", fmt: str = "text", stream: TextIO | None = None) -> logging.Handler:
    """Send every log record to stderr (or `stream`) in the chosen format; returns the handler."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(_ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Third-party request logs would repeat every LM Studio call at INFO; keep them for DEBUG.
    for noisy in ("httpx", "httpcore", "httpx2", "httpcore2"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    logging.captureWarnings(True)
    return handler
