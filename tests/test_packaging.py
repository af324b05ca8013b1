"""The built wheel, installed into a clean venv, is a working bridge (not just the editable checkout)."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from tests.support.bridge import ROOT
from utils.version import __version__

pytestmark = pytest.mark.slow


def test_the_wheel_ships_every_top_level_module_and_runs_from_a_clean_venv(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(ROOT)],
        check=True,
        timeout=300,
        cwd=tmp_path,
    )
    (wheel,) = dist.glob("lmstudio_bridge_enhanced-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"main.py", "config.py", "llm/llm_client.py", "tools/server.py", "utils/version.py"} <= names
    assert not any(name.startswith("tests/") for name in names)

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(wheel)], check=True, timeout=600)

    clean_env = {"PATH": f"{env_dir / 'bin'}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}
    version = subprocess.run(
        [str(env_dir / "bin" / "lmstudio-bridge"), "--version"],
        capture_output=True, text=True, timeout=60, env=clean_env, cwd=tmp_path, check=True,
    )
    assert version.stdout.strip() == f"lmstudio-bridge {__version__}"
    # Imported from site-packages, not from this checkout.
    where = subprocess.run(
        [str(python), "-c", "import config, main, tools.server; print(tools.server.__file__)"],
        capture_output=True, text=True, timeout=60, env=clean_env, cwd=tmp_path, check=True,
    )
    assert str(env_dir) in where.stdout
