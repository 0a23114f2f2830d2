"""Core behaviour not tied to a backend: config and discovery, registry, messages, eager mode."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import core_jobs
import pytest

import multistep_core
from multistep_core import (
    BackendDriverMissing,
    BackendNotFound,
    ConfigurationError,
    InvalidJob,
    TaskState,
    connect,
    job,
)
from multistep_core.config import resolve
from multistep_core.model import decode_message, encode_message
from multistep_core.options import split_options


def test_import_needs_no_queue_library() -> None:
    # Given a fresh interpreter, importing the core must not import any driver
    import subprocess

    code = (
        "import sys, multistep_core; "
        "bad = [m for m in ('redis','rq','celery','kombu','dramatiq','pika') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_unknown_backend_says_did_you_mean() -> None:
    with pytest.raises(BackendNotFound, match="did you mean 'sqlite'"):
        connect("sqllite")
    with pytest.raises(BackendNotFound, match="did you mean 'celery'"):
        connect("celary+redis://localhost")


def test_missing_driver_names_the_pip_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an adapter whose driver cannot be imported
    monkeypatch.setitem(sys.modules, "multistep_fake_adapter", None)
    monkeypatch.setitem(
        multistep_core.config.ALIASES, "fakeq", ("multistep_fake_adapter:backend_from_url", "fakeq")
    )
    with pytest.raises(BackendDriverMissing, match=r'pip install "multistep\[fakeq\]"'):
        connect("fakeq+redis://localhost")


def test_unknown_option_is_named() -> None:
    with pytest.raises(ConfigurationError, match=r"'thread'.*did you mean 'threads'"):
        connect("memory", thread=3)


def test_backend_string_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MULTISTEP_BACKEND", raising=False)
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    assert resolve(None, sub)[0] == "memory"
    (tmp_path / "multistep.toml").write_text('backend = "sqlite:///x.db"\nthreads = 3\n')
    assert resolve(None, sub)[:2] == ("sqlite:///x.db", {"threads": 3})
    (tmp_path / "a" / "pyproject.toml").write_text('[tool.multistep]\nbackend = "eager"\n')
    assert resolve(None, sub)[0] == "eager"
    monkeypatch.setenv("MULTISTEP_BACKEND", "memory?threads=2")
    assert resolve(None, sub)[0] == "memory?threads=2"
    assert resolve("sqlite", sub)[0] == "sqlite"
    assert split_options("rq+redis://h:1/0?lease=2.5&eager=false") == ("rq+redis://h:1/0", {"lease": 2.5, "eager": False})


def test_factory_by_import_string_and_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    mod = types.ModuleType("my_backend_pkg")
    made: list[str] = []

    def factory(url: str, **opts: object) -> multistep_core.Backend:
        made.append(url)
        return connect("eager")

    mod.factory = factory  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "my_backend_pkg", mod)
    b = connect("my_backend_pkg:factory")
    assert made == ["my_backend_pkg:factory"] and b.name == "eager"

    class EP:
        name = "mine"

        def load(self) -> object:
            return factory

    monkeypatch.setattr(multistep_core.config, "_entry_points", lambda: {"mine": EP()})
    connect("mine+redis://somewhere")
    assert made[-1] == "mine+redis://somewhere"


def test_registry_refuses_what_workers_could_not_find() -> None:
    with pytest.raises(InvalidJob, match="lambda"):
        job(lambda: None)

    def outer() -> object:
        def inner() -> None: ...

        return inner

    with pytest.raises(InvalidJob, match="nested function or closure"):
        job(outer())  # type: ignore[arg-type]
    with pytest.raises(InvalidJob, match="non-negative"):
        job(retries=-1)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ('{"fn": "os:system", "args": ["id"]}', "unexpected field"),
        ('{"v": 2, "task": "t", "ref": "j0"}', "version"),
        ('{"v": 1, "task": "t\'x", "ref": "j0"}', "not allowed"),
        ('{"v": 1, "task": "t", "ref": "j-1"}', "not a job ref"),
        ("[1, 2]", "JSON object"),
        (b"\xff\xfe", "UTF-8"),
        ("x" * 5000, "small"),
    ],
)
def test_messages_are_decoded_strictly(raw: str | bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        decode_message(raw)


def test_message_round_trip() -> None:
    assert decode_message(encode_message("blog-42", "f3")) == ("blog-42", "f3")


def test_eager_mode_runs_jobs_inline_for_unit_tests() -> None:
    # Given the eager backend users put in their own unit tests
    core_jobs.CALLS.clear()
    backend = connect("eager")
    with backend.create_task(keep_results=True) as task:
        task.add_job(core_jobs.add, 1, 2)
        task.add_job(core_jobs.flaky_twice, "f")  # @job(retries=2) overrides max_retries=0
        assert core_jobs.CALLS[0] == "add 1 2"  # ran at once, inline
        task.add_finalization_job(core_jobs.summarize)
    # Then the whole task has run by the end of the block
    assert task.progress().state == TaskState.SUCCEEDED
    assert core_jobs.CALLS == ["add 1 2", "f:1", "f:2", "f:3", "sum 3"]


def test_eager_mode_runs_a_task_of_thousands_of_jobs_without_nesting_a_call_per_job() -> None:
    # Given the eager backend, where each job's finish hands the next ticket to the same thread
    backend = connect("eager")
    with backend.create_task(keep_results=True) as task:
        task.add_jobs(core_jobs.add, [(i, 1) for i in range(3000)])
        # Then every job ran by the time add_jobs returned (no RecursionError on the way)
        assert task.progress().succeeded == 3000
    assert task.progress().state == TaskState.SUCCEEDED
    assert task.results()["j2999"] == 3000
