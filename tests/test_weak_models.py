"""The weak-model suite under pytest: one test per task and API path, checked the way the CLI checks it.

Every task completes on today's bridge. A task added for a habit the bridge does not handle yet goes in
`FAILING_TODAY`: it is then marked `xfail(strict=True)` with the feature it needs, so that the feature
landing turns its tests into unexpected passes, which fail the run until the id is removed. Only a
failed success criterion counts as the expected failure (`raises=TaskFailed`): a broken harness
fails the test whatever the marker says.

Each task also runs `relieved` (the same work with the obstacle taken away): that must complete
today, or the task would measure something other than its habit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.weak_model_suite import API_PATHS, TASKS, Task, TaskOutcome, main, run_task

pytestmark = pytest.mark.slow

FAILING_TODAY: frozenset[str] = frozenset()
"""Task ids that fail on today's bridge on both API paths; remove an id when its feature lands."""


class TaskFailed(AssertionError):
    """The task's success criterion was not met (the one failure an xfail marker may expect)."""


def _params(relieved: bool) -> list[object]:
    params = []
    for task in TASKS:
        for api in API_PATHS:
            marks = []
            if not relieved and task.id in FAILING_TODAY:
                reason = f"needs {task.feature}: issue 14"
                marks.append(pytest.mark.xfail(strict=True, raises=TaskFailed, reason=reason))
            params.append(pytest.param(task, api, id=f"{task.id}-{api}", marks=marks))
    return params


def _require(outcome: TaskOutcome) -> None:
    assert outcome.harness_error is None, f"the suite itself failed: {outcome.harness_error}"
    if not outcome.success:
        raise TaskFailed(f"{outcome.task} on {outcome.api}: {outcome.why}")


@pytest.mark.parametrize(("task", "api"), _params(relieved=False))
async def test_the_delegated_task_completes_despite_the_models_habit(
    task: Task, api: str, tmp_path: Path, npm_servers: Path
) -> None:
    _require(await run_task(task, api, tmp_path, npm_servers))


@pytest.mark.parametrize(("task", "api"), _params(relieved=True))
async def test_the_same_work_completes_once_the_obstacle_is_taken_away(
    task: Task, api: str, tmp_path: Path, npm_servers: Path
) -> None:
    _require(await run_task(task, api, tmp_path, npm_servers, relieved=True))


def test_every_habit_of_the_issue_has_a_task_and_every_failing_task_exists() -> None:
    modes = {task.mode for task in TASKS}
    assert modes == {"control", "a_text", "b_args", "c_names", "d_context", "e_tools", "f_repeat", "g_prompt"}
    assert sum(task.mode == "control" for task in TASKS) == 2
    assert FAILING_TODAY <= {task.id for task in TASKS}
    assert all(task.feature for task in TASKS if task.id in FAILING_TODAY)


def test_the_command_line_prints_the_table_and_writes_the_json_report(
    tmp_path: Path, npm_servers: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_file = tmp_path / "report.json"
    code = main(["--only", "control_read_file", "--api", "chat", "--json-file", str(report_file)])

    assert code == 0
    assert "| control | (control) | 1/1 | 1/1 |" in capsys.readouterr().out
    report = json.loads(report_file.read_text())
    assert (report["completed"], report["runs"]) == (1, 1)
    assert report["outcomes"][0]["stop_reason"] == "completed"


def test_the_command_line_refuses_an_unknown_task(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--only", "no_such_task"]) == 2
    assert capsys.readouterr().out == ""
