"""The bridge's settings: one model, read once from the environment, passed to what needs it.

Every field maps to the environment variable of the same name in upper case
(`lmstudio_port` <- `LMSTUDIO_PORT`). `load_config(environ)` builds settings from the mapping
it is given (the process environment by default) and from nothing else; `get_config()` does
that once per process. A bad value fails at start with a
`ConfigError` that names the variable and the accepted values.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
MismatchPolicy = Literal["error", "note"]
ApiMode = Literal["auto", "responses", "chat"]


class ConfigError(ValueError):
    """A setting from the environment is invalid; the message names the variable."""


class BackendSpec(BaseModel):
    """One model server of LMSTUDIO_BACKENDS."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")
    url: str
    api_key: SecretStr | None = None
    max_concurrency: int | None = Field(None, ge=1, le=256)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://, e.g. http://10.0.0.5:1234")
        return value.rstrip("/").removesuffix("/v1")


class Settings(BaseSettings):
    """Everything the bridge can be told from its environment (see README, "Configuration")."""

    model_config = SettingsConfigDict(
        case_sensitive=False,
        extra="ignore",
        validate_default=True,
        frozen=True,
    )

    # --- LM Studio -------------------------------------------------------------------------
    lmstudio_host: str = Field("localhost", min_length=1, description="Host of LM Studio's server.")
    lmstudio_port: int = Field(1234, ge=1, le=65535, description="Port of LM Studio's server.")
    lmstudio_base_url: str | None = Field(
        None, description="Full base URL (e.g. http://10.0.0.5:1234); wins over host and port."
    )
    lmstudio_api_key: SecretStr | None = Field(
        None, description="Bearer token, when LM Studio's 'Require Authentication' is on."
    )
    default_model: str | None = Field(
        None, description="Model used when a call names none; unset means the model LM Studio has loaded."
    )
    model_aliases: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description='JSON object of short names, e.g. {"coder": "qwen/qwen3-coder-30b"}.',
    )
    lmstudio_api_mode: ApiMode = Field(
        "auto",
        description="Conversation API for autonomous runs: auto (probe /v1/responses), responses, or chat.",
    )
    lmstudio_connect_timeout_s: float = Field(5.0, gt=0, le=300, description="Connect timeout to LM Studio.")
    lmstudio_request_timeout_s: float = Field(
        300.0, gt=0, le=3600, description="Read timeout for one LM Studio request (a generation can be slow)."
    )
    lmstudio_call_timeout_s: float = Field(
        600.0,
        gt=0,
        le=86400,
        description="Wall-clock bound of one call to a model: its wait in the model's queue, retries and the "
        "whole answer.",
    )
    lmstudio_max_answer_mb: float = Field(
        32.0, gt=0, le=4096, description="Most data one answer from LM Studio may carry (streamed or not), in MB."
    )
    lmstudio_retry_attempts: int = Field(3, ge=1, le=10, description="Attempts per LM Studio request.")
    lmstudio_retry_base_delay_s: float = Field(0.5, ge=0, le=60, description="First retry delay; doubles.")
    lmstudio_retry_max_delay_s: float = Field(8.0, ge=0, le=300, description="Cap on one retry delay.")
    lmstudio_circuit_failures: int = Field(
        5, ge=1, le=100, description="Consecutive connection failures that open the circuit breaker."
    )
    lmstudio_circuit_reset_s: float = Field(
        15.0, gt=0, le=3600, description="Time the breaker stays open before one probe request."
    )
    lmstudio_max_concurrency: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Requests in flight per model (more wait in line); unset: the parallel slots LM Studio "
        "reports for the loaded model, else 4.",
    )
    lmstudio_backends: Annotated[list[BackendSpec], NoDecode] = Field(
        default_factory=list,
        description='JSON list of model servers, e.g. [{"name": "laptop", "url": "http://localhost:1234"}, '
        '{"name": "gpu", "url": "http://10.0.0.5:1234", "api_key": "...", "max_concurrency": 2}]; unset: the '
        "one server of LMSTUDIO_BASE_URL (or HOST/PORT), named lmstudio.",
    )
    model_cache_ttl_s: float = Field(60.0, ge=0, le=86400, description="How long the model list is cached.")
    lmstudio_model_ttl_s: int = Field(
        600,
        ge=0,
        le=7 * 86400,
        description="Idle seconds before LM Studio unloads a model it loaded just-in-time; 0 sends no ttl.",
    )
    lmstudio_auto_load: bool = Field(
        True,
        description="Load a named model that is not loaded (LM Studio 0.4's load API) rather than let LM Studio "
        "answer with another; off: such a call is refused.",
    )
    model_mismatch: MismatchPolicy = Field(
        "error",
        description="When LM Studio reports that another model answered than the one a call named: error or note.",
    )

    # --- MCP servers the local model may use ------------------------------------------------
    mcp_json_path: Path | None = Field(
        None, description="The .mcp.json to use; unset searches ./.mcp.json, ~/.lmstudio/mcp.json, ~/.mcp.json."
    )
    mcp_trust_project_config: bool = Field(
        False,
        description="Start every server of a project's ./.mcp.json, not only those approved in Claude Code.",
    )
    mcp_start_timeout_s: float = Field(
        30.0, gt=0, le=600, description="Time for a downstream MCP server to start and initialize."
    )
    mcp_tool_timeout_s: float = Field(120.0, gt=0, le=3600, description="Time for one downstream tool call.")
    mcp_tool_allow: Annotated[dict[str, list[str]], NoDecode] = Field(
        default_factory=dict,
        description='JSON: per server, glob patterns of the only tools offered, e.g. {"filesystem": ["read_*"]}; '
        'key "*" applies to every server.',
    )
    mcp_tool_deny: Annotated[dict[str, list[str]], NoDecode] = Field(
        default_factory=dict,
        description='JSON: per server, glob patterns of tools never offered, e.g. {"*": ["delete_*"]}.',
    )
    mcp_read_only_tools: bool = Field(
        False, description="Offer the local model only tools that declare readOnlyHint."
    )
    mcp_approve_writes: bool = Field(
        False,
        description="Ask the user (MCP elicitation) before the local model runs a tool that does not declare "
        "readOnlyHint.",
    )
    mcp_approve_tools: Annotated[dict[str, list[str]], NoDecode] = Field(
        default_factory=dict,
        description='JSON: per server, glob patterns of tools that always need the user\'s approval, e.g. '
        '{"*": ["delete_*"]}.',
    )
    mcp_approval_timeout_s: float = Field(
        300.0, gt=0, le=3600, description="How long to wait for the user's answer to an approval request."
    )
    mcp_idle_timeout_s: float = Field(
        600.0, ge=0, le=86400, description="Idle time after which a server's session is closed; 0 keeps it."
    )

    # --- Autonomous runs --------------------------------------------------------------------
    autonomous_timeout_s: float = Field(
        900.0, gt=0, le=86400, description="Wall-clock bound on one autonomous task."
    )
    autonomous_max_background_runs: int = Field(
        4, ge=1, le=64, description="Background runs (autonomous_start) that may run at once; more are refused."
    )
    autonomous_result_ttl_s: float = Field(
        3600.0, ge=60, le=7 * 86400, description="How long a finished background run's result is kept."
    )
    autonomous_repeat_limit: int = Field(
        3, ge=2, le=100, description="Identical tool calls (same name and arguments) that count as a loop."
    )
    tool_output_max_chars: int = Field(
        20000, ge=200, le=5_000_000, description="Longest tool output handed to the model; longer is cut."
    )
    model_context_tokens: int | None = Field(
        None,
        ge=512,
        le=10_000_000,
        description="Context length to assume when the model server does not report the loaded one; unset: 4096.",
    )
    tool_offer_max: int = Field(
        16,
        ge=2,
        le=1000,
        description="Most tools offered to the model at once; beyond it the most relevant are offered, "
        "with search_tools to find the others.",
    )

    result_max_chars: int = Field(
        80_000,
        ge=1000,
        le=10_000_000,
        description="Longest text a tool returns to Claude (each text and each string of structured content); "
        "longer is cut in the middle with a marker.",
    )

    # --- Logging ----------------------------------------------------------------------------
    log_level: LogLevel = Field("INFO", description="Log level (logs go to stderr).")
    log_format: Literal["text", "json"] = Field("text", description="text or json log lines.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # `load_config` hands over the environment explicitly, so the result depends on the
        # mapping given and nothing else (tests stay isolated from the shell they run in).
        return (init_settings,)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_format", "lmstudio_api_mode", mode="before")
    @classmethod
    def _lower_choice(cls, value: Any) -> Any:
        # Like LOG_LEVEL, any case: LOG_FORMAT=JSON means json.
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator(
        "lmstudio_base_url", "default_model", "lmstudio_api_key", "mcp_json_path", "lmstudio_max_concurrency",
        "model_context_tokens",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # `FOO=` in a shell or an MCP config's env means "not set", not "the empty string".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("lmstudio_api_key")
    @classmethod
    def _check_api_key(cls, value: SecretStr | None) -> SecretStr | None:
        # The key goes into an HTTP header: a control character (a trailing newline pasted with
        # it) or non-ASCII text would make every request fail, and every error quote it escaped,
        # past the masking, which looks for the key as it is.
        if value is None:
            return None
        key = value.get_secret_value()
        if any(not 0x20 <= ord(ch) < 0x7F for ch in key):
            raise ValueError(
                "contains a control character (a trailing newline or \\r?), a tab or non-ASCII text; "
                "copy the key again, without them"
            )
        return value

    @field_validator("lmstudio_base_url")
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://, e.g. http://localhost:1234")
        return value.rstrip("/").removesuffix("/v1")

    @field_validator("lmstudio_backends")
    @classmethod
    def _unique_backend_names(cls, value: list[BackendSpec]) -> list[BackendSpec]:
        names = [spec.name for spec in value]
        if len(set(names)) != len(names):
            raise ValueError(f"every server needs a name of its own (got {names})")
        return value

    @field_validator(
        "model_aliases", "mcp_tool_allow", "mcp_tool_deny", "mcp_approve_tools", "lmstudio_backends", mode="before"
    )
    @classmethod
    def _parse_json(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            what = "a JSON list of servers" if info.field_name == "lmstudio_backends" else "a JSON object"
            if not value.strip():
                return [] if info.field_name == "lmstudio_backends" else {}
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"must be {what} ({exc})") from exc
        return value

    @property
    def base_url(self) -> str:
        """LM Studio's server root, without `/v1` (e.g. `http://localhost:1234`)."""
        if self.lmstudio_base_url:
            return self.lmstudio_base_url
        return f"http://{self.lmstudio_host}:{self.lmstudio_port}"

    def masked(self) -> dict[str, Any]:
        """The effective settings as environment-style names, with secrets masked (for `doctor`)."""
        shown: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "********" if value.get_secret_value() else ""
            elif name == "lmstudio_backends":
                value = [spec.model_dump(exclude_none=True, mode="json") for spec in value]
                value = [{**spec, "api_key": "********"} if "api_key" in spec else spec for spec in value]
            elif isinstance(value, Path):
                value = str(value)
            shown[name.upper()] = value
        shown["(effective base URL)"] = self.base_url
        return shown


def _describe_bounds(field_name: str) -> str:
    """The accepted values of a field, from its declared bounds or literal choices."""
    info = Settings.model_fields[field_name]
    parts: list[str] = []
    for meta in info.metadata:
        for attr, word in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            bound = getattr(meta, attr, None)
            if bound is not None:
                parts.append(f"{word} {bound}")
    choices = getattr(info.annotation, "__args__", None)
    if choices and all(isinstance(c, str) for c in choices):
        parts.append("one of " + ", ".join(choices))
    return " and ".join(parts)


def load_config(environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from `environ` (the process environment when None).

    Raises:
        ConfigError: a variable has an invalid value; the message names it and what is accepted.
    """
    source = os.environ if environ is None else environ
    known = {name.upper() for name in Settings.model_fields}
    values = {key.lower(): value for key, value in source.items() if key.upper() in known}
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field_name = str(error["loc"][0]) if error["loc"] else ""
            # Inside a JSON setting, say where: LMSTUDIO_BACKENDS[1].url
            inner = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"][1:])
            variable = field_name.upper() + inner
            bounds = _describe_bounds(field_name) if field_name in Settings.model_fields and not inner else ""
            accepted = f" (accepted: {bounds})" if bounds else ""
            value = error.get("input")
            shown = "********" if "api_key" in field_name or "api_key" in inner else repr(_without_keys(value))
            problems.append(f"{variable}={shown} is invalid: {error['msg'].removeprefix('Value error, ')}{accepted}")
        raise ConfigError("Invalid configuration: " + "; ".join(problems)) from None


def _without_keys(value: object) -> object:
    """`value` with every `api_key` masked (a JSON setting's error must not print a secret)."""
    if isinstance(value, dict):
        return {k: "********" if k == "api_key" else _without_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_keys(item) for item in value]
    return value


@functools.cache
def get_config() -> Settings:
    """The process's settings, read from the environment on first use and then kept."""
    return load_config()
