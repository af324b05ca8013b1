"""One downstream MCP server as the config file describes it: a validated, immutable entry.

    ServerEntry = StdioEntry | HttpEntry | SseEntry      (discriminated by `transport`)

An entry can only hold a state that works: a stdio entry always has a command, a remote one
always an http(s) URL. `parse_entry(name, raw, expand)` turns one raw `mcpServers` value into an
entry: `"type"` (`stdio`, `http`, `streamable-http`, `sse`) picks the kind, else the presence of
`command` or `url`; pydantic validates the fields; then `${VAR}` references are expanded by
`expand(value, what)`. Every problem raises `EntryError` with a message naming the server and what
to fix.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    TypeAdapter,
    ValidationError,
)

Transport = Literal["stdio", "http", "sse"]

_TYPES: dict[str, Transport] = {"stdio": "stdio", "http": "http", "streamable-http": "http", "sse": "sse"}


class EntryError(ValueError):
    """An entry that cannot be used; the message names the server and what to fix."""


def _number_as_text(value: object) -> object:
    # `"args": ["--port", 8080]` is common in hand-written configs: a number is its text.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


def _http_url(value: object) -> object:
    if isinstance(value, str) and not value.startswith(("http://", "https://")):
        raise ValueError(f"url {value!r} must start with http:// or https://")
    return value


Text = Annotated[str, BeforeValidator(_number_as_text)]
Url = Annotated[str, Field(min_length=1), BeforeValidator(_http_url)]


class _Entry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    disabled: StrictBool = False


class StdioEntry(_Entry):
    """A server the bridge starts as a child process and speaks to over stdin/stdout."""

    transport: Literal["stdio"] = "stdio"
    command: Annotated[Text, Field(min_length=1)]
    args: list[Text] = Field(default_factory=list)
    env: dict[str, Text] = Field(default_factory=dict)
    cwd: Text | None = None

    def expanded(self, expand: Callable[[str, str], str]) -> StdioEntry:
        """A copy with `${VAR}` expanded in every string the entry passes on."""
        return self.model_copy(
            update={
                "command": expand(self.command, '"command"'),
                "args": [expand(a, '"args"') for a in self.args],
                "env": {k: expand(v, f'"env.{k}"') for k, v in self.env.items()},
                "cwd": expand(self.cwd, '"cwd"') if self.cwd is not None else None,
            }
        )

    @property
    def where(self) -> str:
        return " ".join([self.command, *self.args])


class _RemoteEntry(_Entry):
    url: Url
    headers: dict[str, Text] = Field(default_factory=dict)

    def expanded(self, expand: Callable[[str, str], str]) -> ServerEntry:
        url = expand(self.url, '"url"')
        _http_url(url)
        return self.model_copy(  # type: ignore[return-value]
            update={"url": url, "headers": {k: expand(v, f'"headers.{k}"') for k, v in self.headers.items()}}
        )

    @property
    def where(self) -> str:
        return self.url


class HttpEntry(_RemoteEntry):
    """A remote server over streamable HTTP."""

    transport: Literal["http"] = "http"


class SseEntry(_RemoteEntry):
    """A remote server over the older HTTP+SSE transport."""

    transport: Literal["sse"] = "sse"


ServerEntry = StdioEntry | HttpEntry | SseEntry
_ADAPTER: TypeAdapter[ServerEntry] = TypeAdapter(
    Annotated[StdioEntry | HttpEntry | SseEntry, Field(discriminator="transport")]
)


def parse_entry(name: str, raw: object, expand: Callable[[str, str], str]) -> ServerEntry:
    """The entry `raw` describes, validated, with its variables expanded.

    Raises:
        EntryError: the entry cannot be used as written (the message says what to fix).
    """
    if not isinstance(raw, dict):
        raise EntryError(f"MCP server {name!r}: the entry must be a JSON object")
    kind = raw.get("type")
    if kind is None:
        has_command, has_url = "command" in raw, "url" in raw
        if has_command and has_url:
            raise EntryError(f'MCP server {name!r} has both "command" and "url"; set "type" to say which')
        if not has_command and not has_url:
            raise EntryError(
                f'MCP server {name!r} has neither "command" (a process to start) nor "url" (a remote '
                "server); add one of them"
            )
        transport: Transport = "stdio" if has_command else "http"
    elif isinstance(kind, str) and kind in _TYPES:
        transport = _TYPES[kind]
    else:
        raise EntryError(f"MCP server {name!r}: unknown type {kind!r}; use one of {', '.join(_TYPES)}")
    fields = {key: value for key, value in raw.items() if key != "type" and value is not None}
    try:
        entry = _ADAPTER.validate_python({**fields, "name": name, "transport": transport})
        return entry.expanded(expand)
    except ValidationError as exc:
        raise EntryError(f"MCP server {name!r}: {_describe(exc, transport)}") from None
    except EntryError:
        raise
    except ValueError as exc:  # a url that is no longer http(s) once expanded
        raise EntryError(f"MCP server {name!r}: {exc}") from None


def _describe(error: ValidationError, transport: Transport) -> str:
    """The first problem, said the way the config file is written."""
    problem = error.errors()[0]
    location = [str(part) for part in problem["loc"] if part != transport]
    field, kind = (location[0] if location else ""), problem["type"]
    if kind == "missing" or (field in ("command", "url") and kind == "string_too_short"):
        what = "the command to run" if field == "command" else "the server's URL"
        return f'it is of type {transport} but has no "{field}"; add {what}'
    if field == "disabled":
        return '"disabled" must be true or false'
    if field in ("env", "headers"):
        return f'"{field}" must be an object of strings'
    if field == "args":
        return '"args" must be a list of strings'
    if kind == "value_error":
        return str(problem["msg"]).removeprefix("Value error, ")
    return f'"{".".join(location)}": {problem["msg"]}'
