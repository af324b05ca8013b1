"""`lmstudio-bridge doctor`: a human-readable check of the whole set-up, exit code 0 or 1."""

from __future__ import annotations

from typing import TextIO

from config import Settings
from llm.exceptions import LLMError
from llm.llm_client import LLMClient
from tools.exceptions import MCPBridgeError
from tools.mcp_discovery import MCPDiscovery
from tools.session_pool import MCPSessionPool


async def run_doctor(settings: Settings, *, start_servers: bool, out: TextIO) -> int:
    """Check LM Studio and the MCP config, print what was found; 0 when LM Studio answers and models exist."""

    def say(line: str = "") -> None:
        out.write(line + "\n")

    healthy = True
    say("LM Studio")
    async with LLMClient(settings) as llm:
        try:
            models = await llm.list_models()
        except LLMError as exc:
            healthy = False
            say(f"  FAIL  {exc}")
        else:
            say(f"  ok    reachable at {llm.base_url}, {len(models)} model(s)")
            for m in models:
                context = f", context {m.max_context_length}" if m.max_context_length else ""
                say(f"        - {m.id} [{m.type or 'type ?'}, {m.state or 'state ?'}{context}]")
            if not models:
                healthy = False
                say("  FAIL  no models: download one in LM Studio (or load one with `lms load`)")
            else:
                try:
                    say(f"  ok    default model: {await llm.resolve_model(None)}")
                except LLMError as exc:
                    healthy = False
                    say(f"  FAIL  {exc}")

    say()
    say("Configuration (secrets masked)")
    for key, value in settings.masked().items():
        say(f"  {key} = {value}")

    say()
    say("MCP servers")
    discovery = MCPDiscovery(settings.mcp_json_path)
    discovery.refresh()
    say(f"  config file: {discovery.path or '(none found)'}")
    if discovery.parse_error:
        say(f"  WARN  {discovery.parse_error}")
    for name, reason in discovery.excluded.items():
        say(f"  skip  {name}: {reason}")
    servers = discovery.servers()
    if not servers:
        say("  (no servers configured: the autonomous tools need at least one)")
    async with MCPSessionPool(
        start_timeout_s=settings.mcp_start_timeout_s,
        call_timeout_s=settings.mcp_tool_timeout_s,
        idle_timeout_s=0,
    ) as pool:
        for name, entry in sorted(servers.items()):
            where = entry.url if entry.transport != "stdio" else " ".join([entry.command or "", *entry.args])
            if entry.disabled:
                say(f"  off   {name} ({entry.transport}) disabled: {where}")
                continue
            if not start_servers:
                say(f"  --    {name} ({entry.transport}): {where}")
                continue
            try:
                tools = await pool.list_tools(entry)
            except MCPBridgeError as exc:
                say(f"  FAIL  {name} ({entry.transport}): {exc}")
            else:
                say(f"  ok    {name} ({entry.transport}): {len(tools)} tools")
    if not start_servers and servers:
        say("  (run `lmstudio-bridge doctor --servers` to start each one and count its tools)")
    say()
    say("Result: " + ("OK" if healthy else "PROBLEMS FOUND (see FAIL lines)"))
    return 0 if healthy else 1
