"""`lmstudio-bridge doctor`: a human-readable check of the whole set-up, exit code 0 or 1.

It builds the same parts the server does (`tools.app.bridge_state`), so what it reports is what
the server would see: the model server and its models (what the server says of each, and only
that), the model a call without `model` would use (a DEFAULT_MODEL the server lacks is a failure,
with suggestions), which API autonomous runs use, the effective settings (secrets masked, unset
ones said so), and every entry of the MCP config, usable or not.

The report is all it prints: the bridge's log stays silent unless LOG_LEVEL is set (`log_level`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from config import LogLevel, Settings
from llm.exceptions import LLMError
from llm.models import ModelInfo
from tools.app import AppState, bridge_state
from tools.downstream.errors import MCPBridgeError
from utils.logging import redact


def log_level(settings: Settings) -> LogLevel:
    """The log level while `doctor` runs: LOG_LEVEL when it is set, else only what is critical.

    The report already says what failed; log lines (start-up, retries) on the same screen would
    only bury it.
    """
    return settings.log_level if "log_level" in settings.model_fields_set else "CRITICAL"


async def run_doctor(settings: Settings, *, start_servers: bool, out: TextIO, home: Path | None = None) -> int:
    """Check the model server and the MCP config, print what was found; 0 when a usable model answers."""

    def say(line: str = "") -> None:
        # Entries' urls and args, server errors and stderr tails can carry tokens: masked like the logs.
        out.write(redact(line) + "\n")

    async with bridge_state(settings, home=home) as state:
        healthy = await _check_model_server(state, say)
        say()
        say("Configuration (secrets masked)")
        for key, value in settings.masked().items():
            say(f"  {key} = {'(unset)' if value is None else value}")
        say()
        await _check_mcp_servers(state, start_servers, say)
    say()
    say("Result: " + ("OK" if healthy else "PROBLEMS FOUND (see FAIL lines)"))
    return 0 if healthy else 1


async def _check_model_server(state: AppState, say: Callable[[str], None]) -> bool:
    catalog = state.catalog
    several = len(state.backends) > 1
    say("LM Studio" if not several else f"Model servers ({len(state.backends)})")
    try:
        models = await catalog.models(refresh=True)
    except LLMError as exc:
        say(f"  FAIL  {exc}")
        return False
    healthy = True
    for health in catalog.health():
        label = f"{health.name}: " if several else ""
        if not health.ok:
            say(f"  FAIL  {label}{health.error}")
            healthy = False
            continue
        say(f"  ok    {label}reachable at {health.base_url}, {health.models} model(s)")
        listed = [m for m in models if m.server == health.name]
        for m in listed:
            say(f"        - {_model_line(m)}")
        if listed and all(m.type is None and m.state is None for m in listed):
            say(
                "        (the server lists model ids only, without type or loaded state: not LM Studio's "
                "listing; is this LM Studio?)"
            )
    if not models:
        say("  FAIL  no models: download one in LM Studio (or load one with `lms load`)")
        return False
    try:
        default = await catalog.resolve(None)
    except LLMError as exc:
        say(f"  FAIL  default model: {exc}")
        return False
    where = f" on {default.server}" if several else ""
    say(f"  ok    default model: {default.id}{where} ({default.source})")
    for backend in state.backends:
        label = f"{backend.name}: " if several else ""
        say(f"  --    {label}autonomous runs use: {backend.capabilities.summary()}")
    return healthy


def _model_line(model: ModelInfo) -> str:
    """A model and what the server says of it (type, loaded state, context); nothing made up."""
    known = [part for part in (model.type, model.state) if part]
    if model.loaded_context_length:
        known.append(f"loaded with context {model.loaded_context_length}")
    if model.max_context_length:
        known.append(f"context up to {model.max_context_length}")
    return f"{model.id} [{', '.join(known)}]" if known else model.id


async def _check_mcp_servers(state: AppState, start_servers: bool, say: Callable[[str], None]) -> None:
    discovery = state.discovery
    discovery.refresh()
    say("MCP servers")
    say(f"  config file: {discovery.path or '(none found)'}")
    if discovery.parse_error:
        say(f"  WARN  {discovery.parse_error}")
    for name, reason in sorted(discovery.unusable().items()):
        say(f"  skip  {name}: {reason}")
    servers = discovery.servers()
    if not servers:
        say("  (no usable servers configured: the autonomous tools need at least one)")
        return
    for name, entry in sorted(servers.items()):
        if entry.disabled:
            say(f"  off   {name} ({entry.transport}) disabled: {entry.where}")
        elif not start_servers:
            say(f"  --    {name} ({entry.transport}): {entry.where}")
        else:
            try:
                tools = await state.pool.list_tools(entry)
            except MCPBridgeError as exc:
                say(f"  FAIL  {name} ({entry.transport}): {exc}")
            else:
                say(f"  ok    {name} ({entry.transport}): {len(tools)} tools")
    if not start_servers:
        say("  (run `lmstudio-bridge doctor --servers` to start each one and count its tools)")
