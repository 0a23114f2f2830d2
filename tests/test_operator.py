"""What an operator reads after the fact (issue 13, section 3, the items the store keeps):
failure history after a successful retry, jobs a failed task never started, a final state that
stays readable, retry of a cancelled task. On the stores that keep state: memory, SQLite, Redis."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import cli_jobs
import pytest
from click.testing import CliRunner
from conftest import require_service
from multistep_conformance import jobs as conf_jobs
from services import REDIS_ADDR, REDIS_HOST, REDIS_PORT

from multistep_core import Backend, connect
from multistep_core.cli import EXIT_ERROR, EXIT_FAILED, EXIT_OK, cli
from multistep_core.errors import InvalidJob, InvalidTransition


@pytest.fixture(params=["memory", "sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Backend, str]]:
    if request.param == "memory":
        url = "memory?threads=1"
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ops.db'}?threads=1"
    else:
        require_service("Redis", REDIS_HOST, REDIS_PORT)
        url = f"redis://{REDIS_ADDR}/5?threads=1&prefix=ops{uuid.uuid4().hex[:8]}"  # DB 5: this file's
    b: Backend = connect(url)
    cli_jobs.gate.set()
    yield b, url
    cli_jobs.gate.set()
    b.close()


def test_failures_are_kept_after_a_successful_retry_marked_resolved(backend: tuple[Backend, str]) -> None:
    b, url = backend
    # Given a task whose job failed for good
    cli_jobs.gate.clear()
    with b.create_task() as task:
        task.add_job(cli_jobs.gated, 7)
        task.add_job(cli_jobs.add, 1, 2)
    assert task.wait(timeout=20).state == "failed"
    [before] = task.failures()
    assert (before.ref, before.type, before.resolved, before.args) == ("j0", "ValueError", False, "[7]")
    # When the cause is fixed and the task retried to success
    cli_jobs.gate.set()
    task.retry()
    assert task.wait(timeout=20).state == "succeeded"
    # Then the failure is still there, marked resolved by the later attempt
    [after] = task.failures()
    assert (after.ref, after.type, after.message, after.resolved) == ("j0", "ValueError", before.message, True)
    if not url.startswith("memory"):  # another process reads the same history
        r = CliRunner().invoke(cli, ["-b", url, "show", task.id])
        assert r.exit_code == EXIT_OK, r.output
        assert "1 of them resolved by a later attempt" in r.stdout and "gate closed for 7" in r.stdout


def test_fail_fast_shows_the_jobs_it_never_started_as_skipped(backend: tuple[Backend, str], tmp_path: Path) -> None:
    b, url = backend
    journal = str(tmp_path / "journal.log")
    gate = str(tmp_path / "gate")
    # Given one worker thread busy with a job that fails once the gate opens, and ten jobs behind it
    with b.create_task(policy="fail_fast") as task:
        task.add_job(conf_jobs.always_fail, journal, "bad", 0.0, gate)
        task.add_jobs(conf_jobs.record, [(journal, f"later{i}") for i in range(10)])
    open(gate, "w").close()
    p = task.wait(timeout=20)
    # Then the ten are reported skipped, not pending for ever
    assert (p.state, p.failed, p.succeeded, p.running, p.skipped) == ("failed", 1, 0, 0, 10)
    assert p.to_dict()["skipped"] == 10
    if not url.startswith("memory"):
        r = CliRunner().invoke(cli, ["-b", url, "show", task.id])
        assert r.exit_code == EXIT_FAILED
        assert "10 skipped" in r.stdout
        assert json.loads(CliRunner().invoke(cli, ["-b", url, "show", task.id, "--json"]).stdout)["progress"]["skipped"] == 10


def test_a_retention_too_short_to_read_the_end_is_refused(backend: tuple[Backend, str]) -> None:
    b, _ = backend
    with pytest.raises(InvalidJob) as info:
        b.create_task(retention=0)
    assert type(info.value) is InvalidJob
    assert "retention=0 would delete the task the moment it ends" in str(info.value)
    assert "give at least 1 s" in str(info.value)
    # and the shortest allowed still lets the waiter read how the task ended
    with b.create_task(retention=1) as task:
        task.add_job(cli_jobs.add, 1, 2)
    assert task.wait(timeout=20).state == "succeeded"


def test_retry_of_a_cancelled_task_is_refused_saying_what_to_do(backend: tuple[Backend, str]) -> None:
    b, url = backend
    task = b.create_task()
    task.cancel(by="test")
    with pytest.raises(InvalidTransition) as info:
        task.retry()
    assert type(info.value) is InvalidTransition
    assert str(info.value) == (
        f"task {task.id!r} is cancelled; only a failed task can be retried: a cancelled task is final; "
        "create a new task to run its jobs again"
    )
    if not url.startswith("memory"):
        r = CliRunner().invoke(cli, ["-b", url, "retry", task.id])
        assert r.exit_code == EXIT_ERROR
        assert "a cancelled task is final; create a new task to run its jobs again" in r.stderr
