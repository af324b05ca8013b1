"""Whether the servers of a project's `.mcp.json` may be started: only when the user said so.

A project's `./.mcp.json` comes with the repository: a clone can put any command in it. Claude Code
asks before it starts such a server; the bridge follows the user's answer, and starts nothing the
user did not approve. `ProjectApprovals.verdicts(project_dir, names)` says, per server name, None
(approved) or why not.

What counts as approval, in this order (Claude Code's own precedence: a rejection wins):
1. rejected: the name is in `disabledMcpjsonServers` of any source below -> never started;
2. approved: the name is in `enabledMcpjsonServers`, or `enableAllProjectMcpServers` is true, in
   any source below, or MCP_TRUST_PROJECT_CONFIG=1 (every project, every server);
3. otherwise pending: not started.

The sources, all written by Claude Code or by the user, never by the repository:
- `~/.claude.json`, `projects["<project dir>"]` (where Claude Code kept approvals until 2.1.196);
- `~/.claude/settings.json` (the user's own settings);
- `<project dir>/.claude/settings.local.json` (where Claude Code 2.1.197+ writes them), read only
  when `~/.claude.json` says the user accepted the workspace trust dialog for that project: a
  repository could commit that file, and Claude Code ignores it too in a folder not trusted.
A project's committed `.claude/settings.json` is never read. Approval is by server name, as in
Claude Code (it stores no hash of the entry).

Files are re-read only when they change (`signature()` is what the discovery compares).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_ENABLED = "enabledMcpjsonServers"
_DISABLED = "disabledMcpjsonServers"
_ENABLE_ALL = "enableAllProjectMcpServers"


@dataclass(frozen=True)
class _Choices:
    """What one source says about a project's servers."""

    source: Path
    enabled: frozenset[str] = frozenset()
    disabled: frozenset[str] = frozenset()
    enable_all: bool = False

    @classmethod
    def read(cls, source: Path, block: object) -> _Choices:
        if not isinstance(block, dict):
            return cls(source)
        return cls(
            source,
            enabled=_names(block.get(_ENABLED)),
            disabled=_names(block.get(_DISABLED)),
            enable_all=block.get(_ENABLE_ALL) is True,
        )


def _names(value: object) -> frozenset[str]:
    return frozenset(v for v in value if isinstance(v, str)) if isinstance(value, list) else frozenset()


class ProjectApprovals:
    """Claude Code's approvals of project servers, read from the user's files under `home`."""

    def __init__(self, home: Path, *, trust_all: bool = False) -> None:
        self.home = home
        self.trust_all = trust_all
        self._cache: dict[Path, tuple[tuple[int, int, int], Any]] = {}

    @property
    def claude_json(self) -> Path:
        return self.home / ".claude.json"

    @property
    def user_settings(self) -> Path:
        return self.home / ".claude" / "settings.json"

    def sources(self, project_dir: Path) -> list[Path]:
        """Every file whose change can change a verdict for `project_dir`."""
        return [self.claude_json, self.user_settings, project_dir / ".claude" / "settings.local.json"]

    def signature(self, project_dir: Path) -> tuple[tuple[int, int, int] | None, ...]:
        """The state of the sources (mtime, size, inode): verdicts can only change when it does."""
        return tuple(_stat(path) for path in self.sources(project_dir))

    def verdicts(self, project_dir: Path, config_path: Path, names: list[str]) -> dict[str, str | None]:
        """Per server name of `config_path` (the project's file): None if it may start, else why not."""
        choices = self._choices(project_dir)
        verdicts: dict[str, str | None] = {}
        for name in names:
            rejected_in = next((c.source for c in choices if name in c.disabled), None)
            if rejected_in is not None:
                verdicts[name] = (
                    f"you rejected it for this project in Claude Code ({_DISABLED} in {rejected_in}). "
                    f"Run `claude mcp reset-project-choices` in {project_dir} to choose again"
                )
            elif self.trust_all or any(name in c.enabled or c.enable_all for c in choices):
                verdicts[name] = None
            else:
                verdicts[name] = (
                    f"it comes from the project config {config_path}, and you have not approved it. "
                    f"Approve it in Claude Code (start `claude` in {project_dir} and accept the server), "
                    f"set MCP_TRUST_PROJECT_CONFIG=1 to trust every project's servers, or set "
                    f"MCP_JSON_PATH={config_path} to use this file as your own"
                )
        return verdicts

    def _choices(self, project_dir: Path) -> list[_Choices]:
        claude = self._load(self.claude_json)
        projects = claude.get("projects") if isinstance(claude, dict) else None
        project: object = None
        if isinstance(projects, dict):
            # Claude Code keys projects by the absolute directory it was started in.
            for key in dict.fromkeys([str(project_dir), str(project_dir.resolve())]):
                if key in projects:
                    project = projects[key]
                    break
        found = [
            _Choices.read(self.claude_json, project),
            _Choices.read(self.user_settings, self._load(self.user_settings)),
        ]
        if isinstance(project, dict) and project.get("hasTrustDialogAccepted") is True:
            local = project_dir / ".claude" / "settings.local.json"
            found.append(_Choices.read(local, self._load(local)))
        return found

    def _load(self, path: Path) -> Any:
        """The JSON in `path` (None when missing or unreadable), parsed again only when it changed."""
        stat = _stat(path)
        if stat is None:
            self._cache.pop(path, None)
            return None
        cached = self._cache.get(path)
        if cached is not None and cached[0] == stat:
            return cached[1]
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            # Unreadable approvals approve nothing; the servers stay pending, and the log says why.
            logger.warning("Cannot read Claude Code's settings %s (%s): its approvals are not used", path, exc)
            document = None
        self._cache[path] = (stat, document)
        return document


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)
