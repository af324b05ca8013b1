"""The benchmark script still runs and reports every section (its figures are not judged here:
performance is measured by the script, never asserted as wall-clock thresholds in tests)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.bridge import ROOT

pytestmark = pytest.mark.slow

SECTIONS = {
    "validation": {"cached_us", "uncached_ms"},
    "hot_reload": {"unchanged_us", "changed_us"},
    "pooled_calls": {"filesystem_pooled_ms", "filesystem_cold_start_ms", "time_pooled_ms", "time_cold_start_ms"},
    "loop_overhead": {"responses_per_round_ms", "chat_per_round_ms"},
    "request_bytes": {"responses_round_1_bytes", "responses_round_10_bytes", "responses_round_50_bytes",
                      "chat_round_1_bytes", "chat_round_10_bytes", "chat_round_50_bytes"},
    "concurrency": {"limit_64_1_tasks_wall_ms", "limit_64_16_tasks_wall_ms", "limit_64_64_tasks_wall_ms",
                    "limit_default_4_64_tasks_wall_ms", "benchmark_peak_rss_mb"},
    "startup": {"start_to_tools_ms", "idle_rss_mb"},
    "weak_models": {"all_completed_pct", "responses_completed_pct", "chat_completed_pct", "control_completed_pct",
                    "a_text_completed_pct", "g_prompt_completed_pct"},
}


def numbers_of(figure: dict[str, object]) -> list[object]:
    return [figure[key] for key in ("median", "p95", "value") if key in figure]


def test_the_quick_benchmark_reports_every_section_with_numbers(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    env_free_of_live = {"LMSTUDIO_LIVE": "0"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "benchmark_multi_model.py"), "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env_free_of_live},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cached_us" in done.stdout  # the table went to stdout

    results = json.loads(out.read_text())
    assert {"python", "platform", "cpu_count", "mcp", "httpx", "git_commit"} <= results["environment"].keys()
    sections = results["sections"]
    for section, metrics in SECTIONS.items():
        assert metrics <= sections[section].keys(), (section, sorted(sections[section]))
        for metric, figure in sections[section].items():
            numbers = numbers_of(figure)
            assert numbers, (section, metric, figure)
            assert all(isinstance(n, (int, float)) and math.isfinite(n) for n in numbers), (section, metric, figure)
    assert "skipped" in sections["live"]  # LMSTUDIO_LIVE is off here: skipped, with the reason
