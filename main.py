"""Command line of the bridge: `lmstudio-bridge` serves MCP over stdio; `doctor` checks the set-up.

Only wiring lives here: read the settings, configure logging, build and run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import anyio

from config import ConfigError, get_config
from utils.version import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmstudio-bridge",
        description=(
            "MCP server (stdio) that lets Claude use local models served by LM Studio, including "
            "autonomous runs with your other MCP servers. Configure it with environment variables "
            "(see README). Without a command it serves MCP on stdin/stdout."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("serve", help="serve MCP over stdio (the default)")
    doctor = commands.add_parser(
        "doctor", help="check LM Studio, list its models, show the config and the MCP servers found"
    )
    doctor.add_argument("--servers", action="store_true", help="also start each enabled MCP server and count its tools")
    return parser


def cli(argv: list[str] | None = None) -> int:
    """Entry point of the `lmstudio-bridge` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        settings = get_config()
    except ConfigError as exc:
        sys.stderr.write(f"lmstudio-bridge: {exc}\n")
        return 2

    from utils.logging import configure_logging

    if args.command == "doctor":
        from tools.doctor import log_level, run_doctor

        configure_logging(log_level(settings), settings.log_format)
        return asyncio.run(run_doctor(settings, start_servers=args.servers, out=sys.stdout))

    configure_logging(settings.log_level, settings.log_format)

    from tools.downstream.transports import launched_by_bridge
    from tools.server import create_server, serve_until_client_leaves

    if refusal := launched_by_bridge(os.environ):
        sys.stderr.write(f"lmstudio-bridge: {refusal}\n")
        return 2
    anyio.run(serve_until_client_leaves, create_server(settings))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
