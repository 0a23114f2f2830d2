"""The ``multistep`` command line, through click's CliRunner and one real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cli_jobs
import pytest
from click.testing import CliRunner, Result

from multistep_core import Backend, TaskState, connect
from multistep_core.cli import EXIT_ERROR, EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OK, EXIT_TIMEOUT, MEMORY_HINT, cli


@pytest.fixture(autouse=True)
def _no_env_backend(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MULTISTEP_BACKEND", raising=False)
    monkeypatch.chdir(tmp_path)  # no pyproject.toml with a [tool.multistep] table above
    cli_jobs.gate.set()


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 't.db'}"


@pytest.fixture
def backend(url: str) -> Iterator[Backend]:
    b: Backend = connect(url)
    yield b
    b.close()


def run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


def as_json(result: Result) -> Any:
    return json.loads(result.stdout)


def finished_task(backend: Backend, task_id: str = "done-1") -> str:
    with backend.create_task(task_id) as task:
        task.add_jobs(cli_jobs.add, [[i, i] for i in range(5)])
        task.add_finalization_job(cli_jobs.finish)
    task.wait(timeout=20)
    return task_id


# -- demo -------------------------------------------------------------------------------
def test_demo_succeeds_in_process() -> None:
    r = run("demo", "--jobs", "40", "--seed", "1", "--json")
    assert r.exit_code == EXIT_OK, r.output
    data = as_json(r)
    assert data["state"] == "succeeded"
    assert data["jobs_succeeded"] == data["jobs_total"] == 40
    assert data["jobs_failed"] == 0
    assert data["retries"] == data["flaky_planned"] >= 1
    assert data["finalizer_order"] == ["aggregate", "publish"]
    assert data["aggregate"]["jobs"] == 40


def test_demo_on_sqlite_then_listed(url: str) -> None:
    r = run("demo", "--jobs", "20", "--backend", url)
    assert r.exit_code == EXIT_OK, r.output
    assert "succeeded" in r.stdout and "aggregate -> publish" in r.stdout
    tasks = as_json(run("-b", url, "ls", "--json"))
    assert [t["state"] for t in tasks] == ["succeeded"]
    assert tasks[0]["task_id"].startswith("demo-")


def test_demo_subprocess() -> None:
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("MULTISTEP_BACKEND", None)
    proc = subprocess.run(
        [sys.executable, "-m", "multistep_core", "demo", "--jobs", "60"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "succeeded" in proc.stdout
    assert "Traceback" not in proc.stderr


# -- reading state ------------------------------------------------------------------------
def test_ls_json_and_state_filter(backend: Backend, url: str) -> None:
    finished_task(backend, "done-1")
    backend.create_task("open-1").add_job(cli_jobs.add, 1, 2)  # never sealed: stays open
    r = run("-b", url, "ls", "--json")
    assert r.exit_code == EXIT_OK, r.output
    rows = {t["task_id"]: t for t in as_json(r)}
    assert set(rows) == {"done-1", "open-1"}
    assert rows["done-1"]["state"] == "succeeded"
    assert rows["done-1"]["succeeded"] == rows["done-1"]["total"] == 5
    assert rows["done-1"]["finalizers_done"] == 1
    assert rows["open-1"]["state"] == "open"
    only_open = as_json(run("-b", url, "ls", "--state", "open", "--json"))
    assert [t["task_id"] for t in only_open] == ["open-1"]
    limited = as_json(run("-b", url, "ls", "--limit", "1", "--json"))
    assert len(limited) == 1
    table = run("-b", url, "ls")
    assert "done-1" in table.stdout and "open-1" in table.stdout


def test_show_json_with_failure_and_traceback(backend: Backend, url: str) -> None:
    cli_jobs.gate.clear()
    with backend.create_task("bad-1", policy="continue") as task:
        task.add_job(cli_jobs.gated, 7)
        task.add_job(cli_jobs.add, 1, 1)
    task.wait(timeout=20)
    r = run("-b", url, "show", "bad-1", "--json")
    assert r.exit_code == EXIT_OK, r.output
    data = as_json(r)
    p = data["progress"]
    assert p["task_id"] == "bad-1" and p["state"] == "succeeded"
    assert (p["total"], p["succeeded"], p["failed"]) == (2, 1, 1)
    assert p["options"]["policy"] == "continue"
    assert p["percent"] == 100.0
    [f] = data["failures"]
    assert f["ref"] == "j0" and f["type"] == "ValueError" and "gate closed for 7" in f["message"]
    assert "Traceback" in f["traceback"]
    text = run("-b", url, "show", "bad-1")
    assert "gate closed for 7" in text.stdout and "policy=continue" in text.stdout


def test_watch_until_succeeded(backend: Backend, url: str) -> None:
    with backend.create_task("slow-1") as task:
        task.add_jobs(cli_jobs.nap, [30] * 10)
    r = run("-b", url, "watch", "slow-1", "--timeout", "30", "--json")
    assert r.exit_code == EXIT_OK, r.output
    data = as_json(r)
    assert data["state"] == "succeeded" and data["done"] == 10 and data["timed_out"] is False
    assert "succeeded" in run("-b", url, "watch", "slow-1").stdout


def test_watch_timeout_then_cancel_then_watch_fails(backend: Backend, url: str) -> None:
    backend.create_task("open-2").add_job(cli_jobs.add, 1, 2)
    r = run("-b", url, "watch", "open-2", "--timeout", "0.3", "--json")
    assert r.exit_code == EXIT_TIMEOUT, r.output
    assert as_json(r)["timed_out"] is True

    r = run("-b", url, "cancel", "open-2", "--by", "pytest", "--json")
    assert r.exit_code == EXIT_OK, r.output
    assert as_json(r) == {"task_id": "open-2", "cancelled": True, "state": "cancelled", "cancelled_by": "pytest"}
    assert backend.get_task("open-2").state == TaskState.CANCELLED

    again = run("-b", url, "cancel", "open-2", "--json")
    assert again.exit_code == EXIT_FAILED and as_json(again)["cancelled"] is False

    r = run("-b", url, "watch", "open-2", "--json")
    assert r.exit_code == EXIT_FAILED
    assert as_json(r)["state"] == "cancelled"


def test_retry_runs_failed_jobs_in_process(backend: Backend, url: str) -> None:
    cli_jobs.gate.clear()
    with backend.create_task("flaky-1") as task:
        task.add_jobs(cli_jobs.gated, [1, 2, 3])
        task.add_finalization_job(cli_jobs.finish)
    assert task.wait(timeout=20).state == TaskState.FAILED
    assert as_json(run("-b", url, "watch", "flaky-1", "--json"))["state"] == "failed"

    cli_jobs.gate.set()
    r = run("-b", url, "retry", "flaky-1", "--import", "cli_jobs", "--timeout", "30", "--json")
    assert r.exit_code == EXIT_OK, r.output
    data = as_json(r)
    assert data["state"] == "succeeded" and data["succeeded"] == 3 and data["failed"] == 0
    assert data["finalizers_done"] == 1

    r = run("-b", url, "retry", "flaky-1")  # no longer failed
    assert r.exit_code == EXIT_ERROR
    assert "only a failed task can be retried" in r.stderr
    assert "Traceback" not in r.output


def test_delete_asks_unless_yes(backend: Backend, url: str) -> None:
    finished_task(backend, "del-1")
    r = run("-b", url, "delete", "del-1", input="n\n")
    assert r.exit_code == EXIT_FAILED and "Aborted!" in r.stderr  # declined, not crashed
    assert backend.get_task("del-1").state == TaskState.SUCCEEDED  # still there
    r = run("-b", url, "delete", "del-1", input="y\n")
    assert r.exit_code == EXIT_OK, r.output
    finished_task(backend, "del-2")
    r = run("-b", url, "delete", "del-2", "--yes", "--json")
    assert r.exit_code == EXIT_OK, r.output
    assert as_json(r) == {"task_id": "del-2", "deleted": True}
    assert as_json(run("-b", url, "ls", "--json")) == []
    assert run("-b", url, "show", "del-2").exit_code == EXIT_NOT_FOUND


def test_rejected_json(backend: Backend, url: str) -> None:
    backend.runner.handle('{"fn": "os:system", "args": ["rm -rf /"]}')
    r = run("-b", url, "rejected", "--json")
    assert r.exit_code == EXIT_OK, r.output
    [item] = as_json(r)
    assert "os:system" in item["raw"] and item["reason"].startswith("refused")


# -- errors -------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [["show", "nope"], ["watch", "nope"], ["retry", "nope"],
                                     ["cancel", "nope"], ["delete", "nope", "--yes"]])
def test_missing_task_gives_not_found(backend: Backend, url: str, command: list[str]) -> None:
    r = run("-b", url, *command)
    assert r.exit_code == EXIT_NOT_FOUND, r.output
    assert "no task with id 'nope'" in r.stderr
    assert "Traceback" not in r.output


def test_missing_task_on_memory_hints_at_process_boundary() -> None:
    r = run("-b", "memory", "show", "nope")
    assert r.exit_code == EXIT_NOT_FOUND
    assert MEMORY_HINT in r.stderr
    r = run("ls")  # the default backend is memory
    assert r.exit_code == EXIT_OK and MEMORY_HINT in r.stderr


def test_unknown_backend_did_you_mean() -> None:
    r = run("-b", "sqllite", "ls")
    assert r.exit_code == EXIT_ERROR
    assert "did you mean 'sqlite'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.output


def test_env_backend_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MULTISTEP_BACKEND", "redsi")
    r = run("ls")
    assert r.exit_code == EXIT_ERROR and "did you mean 'redis'" in r.stderr


def test_worker_on_memory_has_no_separate_worker() -> None:
    r = run("-b", "memory", "worker", "cli_jobs")
    assert r.exit_code == EXIT_ERROR
    assert "has no separate worker" in r.stderr


def test_worker_names_the_module_that_fails_to_import() -> None:
    r = run("-b", "memory", "worker", "no_such_module_xyz")
    assert r.exit_code == EXIT_ERROR
    assert "no_such_module_xyz" in r.stderr


@pytest.mark.parametrize("command", ["demo", "worker", "ls", "show", "watch", "retry", "cancel", "delete", "rejected"])
def test_help_on_every_command(command: str) -> None:
    r = run(command, "--help")
    assert r.exit_code == 0 and "Usage:" in r.stdout


def test_group_help_documents_exit_codes() -> None:
    r = run("--help")
    assert "Exit codes" in r.stdout and "3  no task" in r.stdout


def test_ls_and_show_tell_the_group_the_running_jobs_under_the_cap_and_the_share(tmp_path: Path) -> None:
    # Given a capped task of a group and an uncapped task sharing one queue, jobs held running
    url = f"sqlite:///{tmp_path / 'share.db'}?threads=3"
    backend = connect(url)
    cli_jobs.hold.clear()
    try:
        with backend.create_task("capped", group="tenant-a", max_concurrency=1) as capped:
            capped.add_jobs(cli_jobs.held, [1, 2, 3])
        with backend.create_task("free") as free:
            free.add_jobs(cli_jobs.held, [1, 2, 3])
        deadline = time.monotonic() + 30
        while (capped.progress().running, free.progress().running) != (1, 2) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (capped.progress().running, free.progress().running) == (1, 2)
        # When an operator lists and shows them
        listed = run("-b", url, "ls")
        shown = run("-b", url, "show", "capped")
        listed_json = json.loads(run("-b", url, "ls", "--json").output)
    finally:
        cli_jobs.hold.set()
        backend.close()
    # Then the group, running/limit and the share of the queue's running jobs are there
    row = next(line for line in listed.output.splitlines() if "capped" in line)
    assert "tenant-a" in row and "1/1" in row and "33 %" in row
    assert "group tenant-a" in shown.output and "running 1 of at most 1" in shown.output
    assert "33 % of the 3 jobs running on queue default" in " ".join(shown.output.replace("│", " ").split())
    opts = {t["task_id"]: t["options"] for t in listed_json}
    assert opts["capped"]["group"] == "tenant-a" and opts["capped"]["max_concurrency"] == 1
