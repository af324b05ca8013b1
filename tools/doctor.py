"""`lmstudio-bridge doctor`: a human-readable check of the whole set-up, exit code 0 or 1.

It builds the same parts the server does (`tools.app.bridge_state`), so what it reports is what
the server would see: the model server and its models, the model a call without `model` would
use (a DEFAULT_MODEL the server lacks is a failure, with suggestions), the effective settings
(secrets masked), and every entry of the MCP config, usable or not.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from config import Settings
from llm.exceptions import LLMError
from tools.app import AppState, bridge_state
from tools.downstream.errors import MCPBridgeError
from utils.logging import redact


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
            say(f"  {key} = {value}")
        say()
        await _check_mcp_servers(state, start_servers, say)
    say()
    say("Result: " + ("OK" if healthy else "PROBLEMS FOUND (see FAIL lines)"))
    return 0 if healthy else 1


async def _check_model_server(state: AppState, say: Callable[[str], None]) -> bool:
    catalog = state.catalog
    say("LM Studio")
    try:
        models = await catalog.models(refresh=True)
    except LLMError as exc:
        say(f"  FAIL  {exc}")
        return False
    say(f"  ok    reachable at {catalog.base_url}, {len(models)} model(s)")
    for m in models:
        context = f", context {m.max_context_length}" if m.max_context_length else ""
        say(f"        - {m.id} [{m.type or 'type ?'}, {m.state or 'state ?'}{context}]")
    if not models:
        say("  FAIL  no models: download one in LM Studio (or load one with `lms load`)")
        return False
    try:
        default = await catalog.resolve(None)
    except LLMError as exc:
        say(f"  FAIL  default model: {exc}")
        return False
    say(f"  ok    default model: {default.id} ({default.source})")
    return True


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
