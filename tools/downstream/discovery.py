"""Finding and reading the user's `.mcp.json`: which other MCP servers the local model may use.

The file is the one Claude uses, `{"mcpServers": {name: entry}}`, where an entry is either
a process to start (`{"command", "args"?, "env"?, "cwd"?, "disabled"?}`, optionally
`"type": "stdio"`) or a remote server (`{"type": "http" | "streamable-http" | "sse", "url",
"headers"?}`).

The file in use is `config_path` when given (MCP_JSON_PATH), else the first that exists of
`./.mcp.json` (the project Claude was started in), `~/.lmstudio/mcp.json`, `~/.mcp.json`.
`refresh()` stats it and re-parses only when its mtime, size or inode changed (or, for a project's
file, the approvals that decide which of its servers may start), so calling it before every task
costs a few `stat`s. A file that turns malformed keeps the last good servers in use and reports why
in `parse_error`.

Trust: the file MCP_JSON_PATH names and the files in the home directory are the user's own, and all
their servers may start. A project's `./.mcp.json` came with the repository: its servers start only
when approved (`tools.downstream.trust`); the others are listed in `untrusted`, with why and how to
approve them, and are neither expanded nor started.

`${VAR}` and `${VAR:-default}` are expanded, in the entries that may start, in every string the
entry passes on (command, args, env, cwd, url, headers), from the bridge's own environment: what
Claude passes it (HOME, LOGNAME, PATH, SHELL, TERM, USER, the bridge entry's `env`, and Claude Code's
CLAUDE_PROJECT_DIR and the like). `NEVER_EXPANDED` (the bridge's LM Studio key) is refused. Every
value taken from the environment is masked wherever it lands (`tools.downstream.masking`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tools.downstream.entries import EntryError, ServerEntry, StdioEntry, parse_entry
from tools.downstream.errors import MCPConfigError, MCPServerNotFoundError
from tools.downstream.masking import secret_values
from tools.downstream.trust import ProjectApprovals
from utils.logging import register_secret

logger = logging.getLogger(__name__)

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
NEVER_EXPANDED = frozenset({"LMSTUDIO_API_KEY"})
"""Variables a config can never read: the bridge's own LM Studio key is for LM Studio only."""
_BRIDGE_COMMAND = "lmstudio-bridge"
_BRIDGE_PACKAGE = "lmstudio-bridge-enhanced"
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


def search_paths(cwd: Path, home: Path) -> list[Path]:
    """Where the config file is looked for when MCP_JSON_PATH is unset, in order (the project's first)."""
    return [cwd / ".mcp.json", home / ".lmstudio" / "mcp.json", home / ".mcp.json"]


@dataclass
class DiscoveryChange:
    """Which server names a refresh added, changed (entry content differs) or removed."""

    added: set[str] = field(default_factory=set)
    changed: set[str] = field(default_factory=set)
    removed: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)


class MCPDiscovery:
    """The servers of the config file in use, re-read only when the file changes.

    `servers()` and `get()` load the file on first use; call `refresh()` to pick up edits
    (the pool's `apply()` takes its result). Nothing here raises on a bad file: the problem is
    kept in `parse_error` (whole file) or `entry_errors` (one entry) and logged.
    """

    def __init__(
        self,
        config_path: Path | None = None,
        *,
        cwd: Path | None = None,
        home: Path | None = None,
        trust_project: bool = False,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._config_path = Path(config_path).expanduser() if config_path is not None else None
        home = Path.home() if home is None else home
        self._search_paths = search_paths(Path.cwd() if cwd is None else cwd, home)
        self.approvals = ProjectApprovals(home, trust_all=trust_project)
        self._environ = os.environ if environ is None else environ
        self._signature: tuple[object, ...] | None = None
        self._loaded = False
        self._servers: dict[str, ServerEntry] = {}
        self.path: Path | None = None
        """The config file in use (None when none was found)."""
        self.parse_error: str | None = None
        """Why the file in use cannot be read, or that no file was found; None when all is well."""
        self.entry_errors: dict[str, str] = {}
        """Entries that cannot be used (name -> what to fix); the other entries still work."""
        self.excluded: dict[str, str] = {}
        """Entries left out because they launch this bridge itself (name -> why)."""
        self.untrusted: dict[str, str] = {}
        """Entries of a project's file that may not start: not approved, or rejected (name -> why and what to do)."""
        self._parse_error_line: int | None = None

    @property
    def candidates(self) -> list[Path]:
        """The paths that are considered for the config file, in order."""
        return [self._config_path] if self._config_path is not None else list(self._search_paths)

    @property
    def config_error(self) -> MCPConfigError | None:
        """`parse_error` as an error to raise or report (with the file and line), or None."""
        if self.parse_error is None:
            return None
        return MCPConfigError(self.parse_error, path=self.path, line=self._parse_error_line)

    def refresh(self) -> DiscoveryChange:
        """Re-read the config file if it changed since the last read; say which servers changed."""
        self._loaded = True
        found = self._find_file()
        if found is None:
            return self._set_missing()
        path, stat = found
        signature: tuple[object, ...] = (str(path), stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if self._is_project_file(path):
            signature += self.approvals.signature(path.parent)
        if signature == self._signature:
            return DiscoveryChange()
        self._signature = signature
        if path != self.path:
            logger.info("Using MCP server config %s", path)
            self.path = path
        return self._parse(path)

    def servers(self) -> dict[str, ServerEntry]:
        """Every usable entry, enabled and disabled (self-references and broken entries left out)."""
        if not self._loaded:
            self.refresh()
        return dict(self._servers)

    def unusable(self) -> dict[str, str]:
        """Entries of the file that cannot be used, with why: broken, launching this bridge, or not approved."""
        if not self._loaded:
            self.refresh()
        return {
            **self.entry_errors,
            **{name: f"not offered: {why}" for name, why in self.excluded.items()},
            **{name: f"not started: {why}" for name, why in self.untrusted.items()},
        }

    def get(self, name: str) -> ServerEntry:
        """The entry named `name`.

        Raises:
            MCPServerNotFoundError: no such entry; the message lists the known names.
            MCPConfigError: the entry exists but cannot be used (unset variable, no command nor url,
                or it launches this bridge).
        """
        if not self._loaded:
            self.refresh()
        if name in self._servers:
            return self._servers[name]
        if name in self.entry_errors:
            raise MCPConfigError(self.entry_errors[name], path=self.path, server=name)
        if name in self.untrusted:
            raise MCPConfigError(
                f"MCP server {name!r} in {self.path} is not started: {self.untrusted[name]}.",
                path=self.path,
                server=name,
            )
        if name in self.excluded:
            raise MCPConfigError(
                f"MCP server {name!r} in {self.path} is not offered: {self.excluded[name]}.",
                path=self.path,
                server=name,
            )
        raise MCPServerNotFoundError(name, self._servers, self.path, detail=self.parse_error)

    # --- reading the file ---------------------------------------------------------------------

    def _is_project_file(self, path: Path) -> bool:
        """True for the project's `./.mcp.json` (found by the search, and not the home directory's own)."""
        if self._config_path is not None or path != self._search_paths[0]:
            return False
        try:
            return not any(path.samefile(home_file) for home_file in self._search_paths[1:] if home_file.exists())
        except OSError:
            return True

    def _find_file(self) -> tuple[Path, os.stat_result] | None:
        for candidate in self.candidates:
            try:
                stat = candidate.stat()
            except OSError:
                continue
            if not os.path.isdir(candidate):
                return candidate, stat
        return None

    def _set_missing(self) -> DiscoveryChange:
        searched = ", ".join(str(p) for p in self.candidates)
        message = (
            f"No MCP config file found (searched: {searched}). Create one with "
            '{"mcpServers": {"name": {"command": "...", "args": [...]}}} or set MCP_JSON_PATH.'
        )
        if message != self.parse_error:
            logger.warning("%s", message)
        change = DiscoveryChange(removed=set(self._servers))
        self._servers = {}
        self.entry_errors = {}
        self.excluded = {}
        self.untrusted = {}
        self._signature = None
        self.path = None
        self.parse_error = message
        self._parse_error_line = None
        return change

    def _parse(self, path: Path) -> DiscoveryChange:
        try:
            text = path.read_text(encoding="utf-8")
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            return self._keep_last_good(
                f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", path, exc.lineno
            )
        except RecursionError:
            # `[` x 200000: Python's parser gives up on nesting this deep; so does every reader of the file.
            return self._keep_last_good(
                f"{path}: invalid JSON: its arrays or objects are nested too deeply to be read", path, None
            )
        except (OSError, UnicodeDecodeError) as exc:
            return self._keep_last_good(f"{path}: cannot be read: {exc}", path, None)
        servers_doc = document.get("mcpServers") if isinstance(document, dict) else None
        if not isinstance(servers_doc, dict):
            return self._keep_last_good(
                f'{path}: expected a JSON object with an "mcpServers" object of servers', path, None
            )

        servers: dict[str, ServerEntry] = {}
        entry_errors: dict[str, str] = {}
        excluded: dict[str, str] = {}
        untrusted = {
            name: why
            for name, why in self._verdicts(path, [str(n) for n in servers_doc]).items()
            if why is not None
        }
        for name, raw in servers_doc.items():
            if name in untrusted:
                continue  # not even expanded: its ${VAR}s must not read the bridge's environment
            expanded: list[tuple[str, str]] = []
            try:
                entry = parse_entry(
                    str(name), raw, lambda value, what, n=str(name), e=expanded: self._expand(value, n, what, e)
                )
            except EntryError as exc:
                entry_errors[name] = f"{exc} (in {path})"
                logger.warning("MCP server %r is unusable: %s", name, entry_errors[name])
                continue
            why = _launches_this_bridge(entry)
            if why is not None:
                excluded[name] = why
                logger.info("Excluding MCP server %r: %s", name, why)
                continue
            for secret, any_length in secret_values(entry, expanded):
                register_secret(secret, any_length=any_length)
            servers[name] = entry

        old = self._servers
        change = DiscoveryChange(
            added=set(servers) - set(old),
            changed={n for n in servers.keys() & old.keys() if servers[n] != old[n]},
            removed=set(old) - set(servers),
        )
        self._servers = servers
        self.entry_errors = entry_errors
        self.excluded = excluded
        if untrusted.keys() != self.untrusted.keys():
            for name, why in untrusted.items():
                logger.warning("MCP server %r is not started: %s", name, why)
        self.untrusted = untrusted
        self.parse_error = None
        self._parse_error_line = None
        if change:
            logger.info(
                "MCP servers from %s: added %s, changed %s, removed %s",
                path,
                sorted(change.added),
                sorted(change.changed),
                sorted(change.removed),
            )
        return change

    def _verdicts(self, path: Path, names: list[str]) -> dict[str, str | None]:
        if not self._is_project_file(path):
            return dict.fromkeys(names)
        return self.approvals.verdicts(path.parent, path, names)

    def _keep_last_good(self, problem: str, path: Path, line: int | None) -> DiscoveryChange:
        kept = ", ".join(sorted(self._servers)) or "none"
        self.parse_error = f"{problem}. Fix the file; until then the last good config stays in use (servers: {kept})."
        self._parse_error_line = line
        logger.error("%s", self.parse_error, extra={"config_path": str(path), "config_line": line})
        return DiscoveryChange()

    def _expand(self, value: str, server: str, what: str, expanded: list[tuple[str, str]]) -> str:
        """`value` with `${VAR}` and `${VAR:-default}` replaced; each value taken goes to `expanded`."""

        def substitute(match: re.Match[str]) -> str:
            variable, default = match.group(1), match.group(2)
            if variable in NEVER_EXPANDED:
                raise EntryError(
                    f"MCP server {server!r}: ${{{variable}}} (used in {what}) is the bridge's own LM Studio key "
                    "and is never passed to another server; give that server a variable of its own"
                )
            found = self._environ.get(variable)
            if found:
                expanded.append((variable, found))
            if default is not None:
                # Shell semantics of ${VAR:-default}: unset or empty both take the default.
                return found if found else default
            if found is None:
                raise EntryError(
                    f"MCP server {server!r}: environment variable {variable} (used in {what}) is not set; "
                    f"set it, or write ${{{variable}:-default}} to give a default"
                )
            return found

        return _VAR.sub(substitute, value)


def _launches_this_bridge(entry: ServerEntry) -> str | None:
    """Why `entry` would start this bridge (so that an autonomous run would recurse), or None."""
    if not isinstance(entry, StdioEntry):
        return None
    tokens = [entry.command, *entry.args]
    for token in tokens:
        base = os.path.basename(token.rstrip("/\\"))
        if base.removesuffix(".exe") == _BRIDGE_COMMAND:
            return f"it runs {token!r}, the command of this bridge"
        lowered = token.lower()
        if _BRIDGE_PACKAGE in lowered or _BRIDGE_PACKAGE.replace("-", "_") in lowered:
            return f"it runs the package {_BRIDGE_PACKAGE} (this bridge) via {token!r}"
        if base == "main.py" and _is_this_projects_main(token, entry.cwd):
            return f"it runs {token!r}, the main.py of this bridge"
    for flag, module in zip(tokens, tokens[1:], strict=False):
        if flag == "-m" and module == "main":
            return "it runs `-m main`, this bridge's entry module"
    if "-mmain" in tokens:
        return "it runs `-mmain`, this bridge's entry module"
    return None


def _is_this_projects_main(token: str, cwd: str | None) -> bool:
    path = Path(token).expanduser()
    if not path.is_absolute() and cwd:
        path = Path(cwd).expanduser() / path
    try:
        resolved = path.resolve()
    except OSError:
        return False
    # Another checkout of this project counts too: its main.py sits beside tools/downstream/discovery.py
    # (or, before 2.1, tools/mcp_discovery.py).
    return resolved == _PROJECT_ROOT / "main.py" or any(
        (resolved.parent / "tools" / marker).is_file() for marker in ("downstream/discovery.py", "mcp_discovery.py")
    )
