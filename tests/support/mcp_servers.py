"""Real MCP servers for tests: the npm reference servers (installed once into a cache) and mcp-server-time.

Loaded as a pytest plugin (`pytest_plugins = ["tests.support.mcp_servers"]` in tests/conftest.py).

Fixtures:
    npm_servers          (session) the npm prefix holding the pinned servers, installed on first use
    filesystem_entry     (function) factory: filesystem_entry(dir, name="filesystem") -> ServerEntry
    memory_entry         (function) factory: memory_entry(file, name="memory") -> ServerEntry (own MEMORY_FILE_PATH)
    everything_entry     (function) ServerEntry for server-everything over stdio
    time_entry           (function) ServerEntry for `python -m mcp_server_time --local-timezone UTC`

`entry_config(entry)` turns an entry into the dict to write under "mcpServers" in a .mcp.json.
Without node or npm the Node fixtures skip, saying so; with CI=true they fail instead, so CI
cannot pass by skipping them. `python -m tests.support.mcp_servers --install` runs the install.

Cache: ${LMSTUDIO_BRIDGE_TEST_CACHE:-~/.cache/lmstudio-bridge-tests}/npm. An flock on npm.lock
keeps parallel sessions from installing at once; an install whose pinned versions are all
present is skipped (a few file reads).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tools.downstream.entries import ServerEntry, StdioEntry

logger = logging.getLogger(__name__)

# Exact versions, checked with `npm view` and a real install + connect (protocol 2025-11-25).
NPM_PACKAGES: dict[str, str] = {
    "@modelcontextprotocol/server-filesystem": "2026.8.31",
    "@modelcontextprotocol/server-memory": "2026.8.31",
    "@modelcontextprotocol/server-everything": "2026.8.31",
}
_INSTALL_TIMEOUT_S = 600.0
_LOCK_TIMEOUT_S = 900.0
_LOCK_POLL_S = 0.2


class NodeUnavailableError(RuntimeError):
    """node or npm is missing, or the install failed; the message says which."""


def cache_dir() -> Path:
    """Where test downloads are kept (LMSTUDIO_BRIDGE_TEST_CACHE, else ~/.cache/lmstudio-bridge-tests)."""
    configured = os.environ.get("LMSTUDIO_BRIDGE_TEST_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "lmstudio-bridge-tests"


def npm_prefix() -> Path:
    return cache_dir() / "npm"


def server_script(prefix: Path, package: str) -> Path:
    """The `dist/index.js` of an installed server package."""
    return prefix / "node_modules" / package / "dist" / "index.js"


def installed_versions(prefix: Path) -> dict[str, str | None]:
    """Version of each pinned package found under `prefix` (None when absent or unreadable)."""
    found: dict[str, str | None] = {}
    for package in NPM_PACKAGES:
        manifest = prefix / "node_modules" / package / "package.json"
        try:
            found[package] = json.loads(manifest.read_text(encoding="utf-8")).get("version")
        except (OSError, ValueError):
            found[package] = None
    return found


def _is_current(prefix: Path) -> bool:
    return installed_versions(prefix) == NPM_PACKAGES and all(
        server_script(prefix, p).is_file() for p in NPM_PACKAGES
    )


@contextmanager
def _install_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        deadline = time.monotonic() + _LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise NodeUnavailableError(f"another install held {path} for over {_LOCK_TIMEOUT_S:g} s") from None
                time.sleep(_LOCK_POLL_S)  # another process is installing; support code, not a test
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def install_npm_servers(prefix: Path | None = None) -> Path:
    """Install the pinned npm servers into `prefix` once; return the prefix.

    Raises:
        NodeUnavailableError: node or npm is missing, or `npm install` failed (its output is in the message).
    """
    prefix = prefix or npm_prefix()
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        raise NodeUnavailableError(f"{' and '.join(missing)} not found on PATH: install Node.js 20+ to run these tests")
    if _is_current(prefix):
        return prefix
    with _install_lock(prefix.parent / "npm.lock"):
        if _is_current(prefix):  # someone else installed while we waited
            return prefix
        prefix.mkdir(parents=True, exist_ok=True)
        specs = [f"{package}@{version}" for package, version in NPM_PACKAGES.items()]
        command = ["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--save-exact", *specs]
        logger.info("Installing MCP test servers: %s", " ".join(command))
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=_INSTALL_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as exc:
            raise NodeUnavailableError(f"npm install did not finish within {_INSTALL_TIMEOUT_S:g} s") from exc
        if done.returncode != 0 or not _is_current(prefix):
            raise NodeUnavailableError(
                f"npm install failed (exit {done.returncode}); found {installed_versions(prefix)}:\n"
                f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
            )
    return prefix


def entry_config(entry: ServerEntry) -> dict[str, object]:
    """The .mcp.json form of an entry (what goes under "mcpServers"[name])."""
    if entry.transport == "stdio":
        config: dict[str, object] = {"command": entry.command, "args": list(entry.args)}
        if entry.env:
            config["env"] = dict(entry.env)
        if entry.cwd:
            config["cwd"] = entry.cwd
    else:
        config = {"type": entry.transport, "url": entry.url}
        if entry.headers:
            config["headers"] = dict(entry.headers)
    if entry.disabled:
        config["disabled"] = True
    return config


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _node_server(
    prefix: Path, name: str, package: str, args: list[str], env: dict[str, str] | None = None
) -> ServerEntry:
    node = shutil.which("node") or "node"
    return StdioEntry(
        name=name,
        transport="stdio",
        command=node,
        args=[str(server_script(prefix, package)), *args],
        env=env or {},
    )


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def npm_servers() -> Path:
    """The npm prefix with the pinned servers; skips without Node (fails instead when CI=true)."""
    try:
        return install_npm_servers()
    except NodeUnavailableError as exc:
        if _in_ci():
            pytest.fail(f"CI=true and the Node MCP test servers are unavailable: {exc}")
        pytest.skip(f"Node MCP test servers unavailable: {exc}")


@pytest.fixture
def filesystem_entry(npm_servers: Path) -> Callable[..., ServerEntry]:
    """Factory: the filesystem server allowed to use `directory` (and nothing else)."""

    def make(directory: Path, name: str = "filesystem") -> ServerEntry:
        return _node_server(
            npm_servers, name, "@modelcontextprotocol/server-filesystem", [str(Path(directory).resolve())]
        )

    return make


@pytest.fixture
def memory_entry(npm_servers: Path) -> Callable[..., ServerEntry]:
    """Factory: the memory server keeping its graph in `memory_file` (give each test its own)."""

    def make(memory_file: Path, name: str = "memory") -> ServerEntry:
        return _node_server(
            npm_servers,
            name,
            "@modelcontextprotocol/server-memory",
            [],
            env={"MEMORY_FILE_PATH": str(Path(memory_file).resolve())},
        )

    return make


@pytest.fixture
def everything_entry(npm_servers: Path) -> ServerEntry:
    """server-everything over stdio (echo, get-sum, trigger-long-running-operation, ...)."""
    return _node_server(npm_servers, "everything", "@modelcontextprotocol/server-everything", ["stdio"])


@pytest.fixture
def time_entry() -> ServerEntry:
    """mcp-server-time from PyPI, run by this interpreter, in UTC."""
    return StdioEntry(
        name="time",
        transport="stdio",
        command=sys.executable,
        args=["-m", "mcp_server_time", "--local-timezone", "UTC"],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Provision the real MCP servers the tests use.")
    parser.add_argument("--install", action="store_true", help="install the pinned npm servers into the cache")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    if not args.install:
        parser.print_help(sys.stderr)
        return 2
    try:
        prefix = install_npm_servers()
    except NodeUnavailableError as exc:
        logger.error("%s", exc)
        return 1
    logger.info("MCP test servers ready in %s: %s", prefix, installed_versions(prefix))
    return 0


if __name__ == "__main__":
    sys.exit(main())
