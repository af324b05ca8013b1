"""Shared pytest set-up: the real MCP server fixtures, and the opt-in live tier."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["tests.support.mcp_servers"]

LIVE_SKIP_REASON = "live tier: set LMSTUDIO_LIVE=1 and LMSTUDIO_BASE_URL to run against a real model server"


def live_tier_enabled() -> bool:
    """True when the `live` tests should run: LMSTUDIO_LIVE=1 and a LMSTUDIO_BASE_URL to run against."""
    return os.environ.get("LMSTUDIO_LIVE", "").strip() == "1" and bool(os.environ.get("LMSTUDIO_BASE_URL", "").strip())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if live_tier_enabled():
        return
    skip_live = pytest.mark.skip(reason=LIVE_SKIP_REASON)
    for item in items:
        if "live" in item.keywords:
            item.add_marker(skip_live)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A project directory with one known file, for tasks that read real files."""
    directory = tmp_path / "project"
    directory.mkdir()
    (directory / "notes.txt").write_text("The launch code is PELICAN-42.\n")
    return directory
