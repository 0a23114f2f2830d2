"""Failure triage on the command line (issue 13, section 3): grouping, arguments, one percent
definition, exit codes, hints, JSON errors."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cli_jobs
import pytest
from click.testing import CliRunner, Result

from multistep_core import Backend, connect
from multistep_core.cli import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OK, cli


@pytest.fixture(autouse=True)
def _no_env_backend(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MULTISTEP_BACKEND", raising=False)
    monkeypatch.chdir(tmp_path)
    cli_jobs.gate.set()


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 't.db'}"


@pytest.fixture
def backend(url: str) -> Iterator[Backend]:
    b: Backend = connect(url)
    yield b
    b.close()


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def as_json(result: Result) -> Any:
    return json.loads(result.stdout)


def many_failures(backend: Backend, task_id: str = "many") -> None:
    # 40 identical failures, 2 of another kind, 1 success, a finalizer that never runs
    with backend.create_task(task_id) as task:
        task.add_jobs(cli_jobs.boom, [[i] for i in range(40)])
        task.add_job(cli_jobs.too_big, "x" * 1000, n=1)
        task.add_job(cli_jobs.too_big, "y" * 1000, n=2)
        task.add_job(cli_jobs.add, 1, 2)
        task.add_finalization_job(cli_jobs.finish)
    assert task.wait(timeout=30).state == "failed"


def test_show_groups_identical_failures_with_one_traceback_each(backend: Backend, url: str) -> None:
    many_failures(backend)
    r = run("-b", url, "show", "many")
    assert r.exit_code == EXIT_FAILED, r.output  # docs/cli.md: 1 when the task ended failed
    out = r.stdout
    assert "42 failure(s) in 2 group(s):" in out
    assert "40 x ValueError" in out and "the same failure every time" in out
    assert out.count("Traceback (most recent call last)") == 2  # one per group, not 42
    assert len(out.splitlines()) < 150
    assert "multistep retry many" in r.stderr


def test_show_limit_and_json_groups(backend: Backend, url: str) -> None:
    many_failures(backend, "lim")
    r = run("-b", url, "show", "lim", "--limit", "1")
    assert r.stdout.count("Traceback (most recent call last)") == 1
    assert "... 1 more group(s), 2 failure(s): show lim --limit 2" in r.stdout
    data = as_json(run("-b", url, "show", "lim", "--json", "--limit", "1"))
    [group] = data["failure_groups"]
    assert (group["type"], group["count"], group["message"]) == ("ValueError", 40, "the same failure every time")
    assert group["functions"] == ["cli_jobs:boom"] and group["refs"][:2] == ["j0", "j1"]
    assert len(data["failures"]) == 42


def test_show_prints_the_failed_jobs_arguments_truncated(backend: Backend, url: str) -> None:
    many_failures(backend, "args")
    data = as_json(run("-b", url, "show", "args", "--json"))
    by_ref = {f["ref"]: f for f in data["failures"]}
    assert by_ref["j0"]["args"] == "[0]"
    big = by_ref["j40"]["args"]
    assert big.startswith('["xxxx') and big.endswith("...") and len(big) == 300  # cut, kwargs lost with the cut
    out = run("-b", url, "show", "args").stdout
    assert "j0 args [0]" in out
    assert 'j40 args ["xxxxx' in out and "xxxx" * 20 not in out  # on screen: one short line


def test_one_percent_everywhere_for_a_failed_task(backend: Backend, url: str) -> None:
    # 1 failed of 50, with a finalizer that will never run: the task has ended, so 100 %
    cli_jobs.gate.clear()
    with backend.create_task("pct") as task:
        task.add_jobs(cli_jobs.add, [[i, i] for i in range(49)])
        task.add_job(cli_jobs.gated, 1)
        task.add_finalization_job(cli_jobs.finish)
    p = task.wait(timeout=30)
    assert (p.state, p.failed, p.percent) == ("failed", 1, 100.0)
    assert "100.0 %" in run("-b", url, "show", "pct").stdout
    assert as_json(run("-b", url, "show", "pct", "--json"))["progress"]["percent"] == 100.0
    assert as_json(run("-b", url, "watch", "pct", "--json"))["percent"] == 100.0
    assert "100.0 %" in run("-b", url, "watch", "pct").stdout


def test_one_percent_everywhere_for_an_unfinished_task(backend: Backend, url: str) -> None:
    # an open task whose 5 jobs all ended: not 100 % (more may be added), the same figure everywhere
    task = backend.create_task("open-pct")
    task.add_jobs(cli_jobs.add, [[i, i] for i in range(5)])
    task.add_finalization_job(cli_jobs.finish)
    deadline = time.monotonic() + 20
    while (p := task.progress()).done < 5:  # gate on the store: every job ended
        assert time.monotonic() < deadline, p
        time.sleep(0.01)
    expected = p.percent
    assert expected == 83.3  # 5 of 6 units (5 jobs, 1 finalizer), rounded down
    assert f"{expected:.1f} %" in run("-b", url, "show", "open-pct").stdout
    assert as_json(run("-b", url, "show", "open-pct", "--json"))["progress"]["percent"] == expected
    task.cancel(by="test")


def test_watch_on_a_failed_task_hints_at_show_and_retry(backend: Backend, url: str) -> None:
    cli_jobs.gate.clear()
    with backend.create_task("w-failed") as task:
        task.add_job(cli_jobs.gated, 1)
    task.wait(timeout=20)
    r = run("-b", url, "watch", "w-failed")
    assert r.exit_code == EXIT_FAILED
    assert "multistep show w-failed" in r.stderr
    assert "multistep retry w-failed -i MODULE" in r.stderr  # sqlite runs retried jobs in the retrying process


def test_show_exit_codes_follow_the_task(backend: Backend, url: str) -> None:
    with backend.create_task("ok") as task:
        task.add_job(cli_jobs.add, 1, 2)
    task.wait(timeout=20)
    backend.create_task("to-cancel").cancel(by="test")
    assert run("-b", url, "show", "ok").exit_code == EXIT_OK
    assert run("-b", url, "show", "to-cancel").exit_code == EXIT_FAILED
    assert run("-b", url, "show", "to-cancel", "--json").exit_code == EXIT_FAILED


def test_show_json_for_an_unknown_id_prints_json(backend: Backend, url: str) -> None:
    r = run("-b", url, "show", "nope", "--json")
    assert r.exit_code == EXIT_NOT_FOUND
    assert as_json(r) == {"error": "no task with id 'nope'", "exit_code": EXIT_NOT_FOUND}


def test_demo_names_failed_attempts_apart_from_failed_jobs() -> None:
    r = run("demo", "--jobs", "60", "--seed", "3")
    assert r.exit_code == EXIT_OK, r.output
    assert "jobs failed for good" in r.stdout and "failed attempts, retried" in r.stdout
    assert "jobs failed  " not in r.stdout
