"""Backend strings and options of the embedded backends, and where a config file's paths point.

Each bad input names the input and asserts the exact error class and a message that says
what to do (issue 13, section 1).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from services import REDIS_ADDR

from multistep_core import connect
from multistep_core.cli import EXIT_ERROR, EXIT_OK, cli
from multistep_core.errors import ConfigurationError
from multistep_core.model import TaskOptions


@pytest.fixture(autouse=True)
def _clean_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MULTISTEP_BACKEND", raising=False)
    monkeypatch.chdir(tmp_path)  # no config file above, and stray files land here


def test_sqlite_with_two_slashes_is_refused_with_the_right_form(tmp_path: Path) -> None:
    # Given the common typo sqlite://tasks.db (tasks.db is read as a host)
    with pytest.raises(ConfigurationError) as info:
        connect("sqlite://tasks.db")
    # Then the error shows the right form, and no ./multistep.db appeared
    assert type(info.value) is ConfigurationError
    msg = str(info.value)
    assert "'sqlite://tasks.db' names no file" in msg and "sqlite:///tasks.db" in msg and "sqlite:////" in msg
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("memory?lease=abc", "the memory option lease='abc' (str) must be a number of seconds greater than 0, e.g. lease=30"),
        ("memory?lease=-1", "the memory option lease=-1 (int) must be a number of seconds greater than 0"),
        ("memory?lease=0", "the memory option lease=0 (int) must be a number of seconds greater than 0"),
        ("memory?threads=0", "the memory option threads=0 (int) must be an integer from 1 to 1024, e.g. threads=4"),
        ("memory?threads=two", "the memory option threads='two' (str) must be an integer from 1 to 1024"),
        ("memory?threads=2.5", "the memory option threads=2.5 (float) must be an integer from 1 to 1024"),
        ("eager?lease=nan", "the eager option lease=nan (float) must be a number of seconds greater than 0"),
        ("sqlite:///t.db?lease=abc", "the sqlite option lease='abc' (str) must be a number of seconds greater than 0"),
        ("sqlite:///t.db?threads=-3", "the sqlite option threads=-3 (int) must be an integer from 1 to 1024"),
    ],
)
def test_bad_option_values_of_embedded_backends(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        connect(url)
    assert type(info.value) is ConfigurationError
    assert message in str(info.value)


def test_unknown_embedded_option_lists_what_the_backend_takes() -> None:
    with pytest.raises(ConfigurationError) as info:
        connect("memory?leas=3")
    assert type(info.value) is ConfigurationError
    assert str(info.value) == (
        "unknown option 'leas' (did you mean 'lease'?) for the memory backend; it takes: go_on, lease, threads, window"
    )


def test_bad_option_from_the_cli_is_one_line_not_a_traceback() -> None:
    r = CliRunner().invoke(cli, ["-b", "memory?lease=abc", "ls"])
    assert r.exit_code == EXIT_ERROR
    assert r.stderr.strip() == (
        "error: the memory option lease='abc' (str) must be a number of seconds greater than 0, e.g. lease=30"
    )
    assert "Traceback" not in r.output


@pytest.mark.usefixtures("redis_service")
def test_a_redis_database_out_of_range_is_a_configuration_error() -> None:
    url = f"redis://{REDIS_ADDR}/99"
    with pytest.raises(ConfigurationError) as info:
        connect(url)
    assert type(info.value) is ConfigurationError
    msg = str(info.value)
    assert f"the Redis store at {url} has no database 99" in msg
    assert "0-15, by default" in msg and "redis://host:6379/0" in msg


@pytest.mark.usefixtures("redis_service")
def test_redis_backend_options_are_checked() -> None:
    with pytest.raises(ConfigurationError) as info:
        connect(f"redis://{REDIS_ADDR}/0?prefx=a")
    assert type(info.value) is ConfigurationError
    takes = "it takes: go_on, lease, prefix, threads, window"
    assert f"'prefx' (did you mean 'prefix'?) for the redis backend; {takes}" in str(info.value)
    with pytest.raises(ConfigurationError, match=r"the redis option lease='abc' \(str\) must be a number of seconds"):
        connect(f"redis://{REDIS_ADDR}/0?lease=abc")


def test_ls_on_a_missing_sqlite_file_creates_nothing(tmp_path: Path) -> None:
    # Given a path whose directory does not exist
    r = CliRunner().invoke(cli, ["-b", "sqlite:///missing-dir/x.db", "ls"])
    # Then ls says so (exit 2) and creates neither the directory nor the file
    assert r.exit_code == EXIT_ERROR, r.output
    assert f"no SQLite store at {tmp_path / 'missing-dir' / 'x.db'}" in r.stderr
    assert "sqlite:////abs/path.db is absolute" in r.stderr
    assert not (tmp_path / "missing-dir").exists()
    # and show --json reports the same error as JSON on stdout
    r = CliRunner().invoke(cli, ["-b", "sqlite:///missing-dir/x.db", "show", "t1", "--json"])
    assert r.exit_code == EXIT_ERROR
    assert '"exit_code": 2' in r.stdout and "no SQLite store at" in r.stdout


def test_relative_sqlite_path_in_pyproject_is_relative_to_that_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a project whose pyproject.toml names sqlite:///state/tasks.db (and a store= in a sub-table form)
    project = tmp_path / "project"
    (project / "state").mkdir(parents=True)
    (project / "src" / "deep").mkdir(parents=True)
    (project / "pyproject.toml").write_text('[tool.multistep]\nbackend = "sqlite:///state/tasks.db"\nthreads = 2\n')
    # When a process works in a subdirectory
    monkeypatch.chdir(project / "src" / "deep")
    b = connect()
    try:
        with b.create_task("t1") as task:
            pass
        assert task.wait(timeout=10).state == "succeeded"
    finally:
        b.close()
    # Then the file is next to pyproject.toml, not under the working directory
    assert (project / "state" / "tasks.db").is_file()
    assert not (project / "src" / "deep" / "state").exists()
    # and the CLI, started from the subdirectory, reads the same store
    r = CliRunner().invoke(cli, ["ls", "--json"])
    assert r.exit_code == EXIT_OK, r.output
    assert '"task_id": "t1"' in r.stdout


def test_a_relative_sqlite_store_in_a_config_file_is_anchored_too(tmp_path: Path) -> None:
    from multistep_core.config import _anchored
    from multistep_core.options import split_options

    source = str(tmp_path / "pyproject.toml")
    url, opts = _anchored("celery+amqp://guest:guest@h:5672//?store=sqlite:///state/t.db", {"lease": 5}, source)
    assert split_options(url)[1]["store"] == f"sqlite:///{tmp_path}/state/t.db"
    url, opts = _anchored("dramatiq+amqp://h/", {"store": "sqlite:///t.db"}, source)
    assert (url, opts["store"]) == ("dramatiq+amqp://h/", f"sqlite:///{tmp_path}/t.db")
    # absolute paths, :memory: and the argument or environment forms are left alone
    assert _anchored("sqlite:////abs/t.db", {}, source)[0] == "sqlite:////abs/t.db"
    assert _anchored("sqlite:///:memory:", {}, source)[0] == "sqlite:///:memory:"
    assert _anchored("sqlite:///t.db", {}, "$MULTISTEP_BACKEND")[0] == "sqlite:///t.db"


#: A backend string of each kind with ``{opt}`` for a dispatch option (``{tmp}``: a directory).
DISPATCH_OPTION_URLS = [
    "memory?{opt}",
    "sqlite:///{tmp}/o.db?{opt}",
    f"redis://{REDIS_ADDR}/7?{{opt}}&prefix=msopt",
    f"rq+redis://{REDIS_ADDR}/7?{{opt}}&prefix=msopt",
    f"dramatiq+redis://{REDIS_ADDR}/7?{{opt}}&prefix=msopt",
    f"celery+redis://{REDIS_ADDR}/7?{{opt}}&prefix=msopt",
]


@pytest.mark.parametrize("url", DISPATCH_OPTION_URLS)
def test_window_option_sets_the_tickets_a_queue_gets(url: str, tmp_path: Path) -> None:
    # Given a backend string with window=8
    b = connect(url.format(tmp=tmp_path, opt="window=8"))
    try:
        assert b.store.window == 8
        # When a task of 100 jobs is added (tickets counted at the queue, nothing run: no worker
        # for the queue adapters; the in-process backends' threads are stopped first)
        b.stop_recovery()
        queue = f"window-{time.time_ns()}"
        tid = f"window-task-{time.time_ns()}"
        b.store.create_task(tid, TaskOptions(queue=queue), time.time())
        b.store.add_jobs(tid, "j", ['{"fn":"m:a"}'] * 100, time.time())
        # Then the queue is owed 8 tickets, not 64 or 100
        assert len(b.store.release(queue, time.time()).tickets) == 8
        b.store.delete(tid)
    finally:
        b.close()


@pytest.mark.parametrize("url", [*DISPATCH_OPTION_URLS, "eager?{opt}"])
def test_go_on_option_sets_how_far_a_worker_goes_on(url: str, tmp_path: Path) -> None:
    for n in (0, 5):
        b = connect(url.format(tmp=tmp_path, opt=f"go_on={n}"))
        try:
            assert b.runner.go_on_jobs == n
        finally:
            b.close()


def test_go_on_defaults_to_32_and_refuses_a_negative_count() -> None:
    b = connect("memory")
    try:
        assert b.runner.go_on_jobs == 32
    finally:
        b.close()
    with pytest.raises(ConfigurationError, match=r"go_on=-1 .* must be an integer from 0"):
        connect("memory?go_on=-1")


def test_a_window_below_two_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"window=1 .* must be an integer from 2"):
        connect("memory?window=1")
