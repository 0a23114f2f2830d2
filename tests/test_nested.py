"""Nested tasks beyond the shared suite: the docs' example as written, the CLI, SQLite migration."""

from __future__ import annotations

import contextlib
import io
import json
import re
import sqlite3
from pathlib import Path

from click.testing import CliRunner

from multistep_core import TaskState, connect, job
from multistep_core.cli import cli
from multistep_core.embedded.sqlite import SQLiteStore

DOC = Path(__file__).resolve().parent.parent / "docs" / "nested.md"


@job(name="tests.nested.noop")
def _noop(c: int, i: int) -> None:
    pass


def _blocks(text: str) -> list[str]:
    return re.findall(r"```(?:python)?\n(.*?)```", text, flags=re.S)


def test_the_docs_example_runs_as_written_and_prints_what_the_page_says() -> None:
    code, expected = _blocks(DOC.read_text())[:2]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(DOC), "exec"), {"__name__": "docs_nested_example"})
    got = out.getvalue().splitlines()
    want = expected.strip().splitlines()
    assert sorted(got) == sorted(want)
    assert got[-2:] == want[-2:]  # the site's finalizer after every blog's, then the state


def test_cli_ls_lists_top_level_tasks_and_show_draws_the_tree(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 't.db'}"
    b = connect(url)
    with b.create_task("site") as site:
        with site.add_subtask("site.blog-a") as a:
            a.add_subtask("site.blog-a.posts", parent_on_failure="ignore").seal()
        site.add_subtask("site.blog-b").seal()
    assert site.wait(timeout=20).state == TaskState.SUCCEEDED
    b.close()
    run = CliRunner()
    top = json.loads(run.invoke(cli, ["-b", url, "ls", "--json"], catch_exceptions=False).stdout)
    assert [t["task_id"] for t in top] == ["site"]
    every = json.loads(run.invoke(cli, ["-b", url, "ls", "--all", "--json"], catch_exceptions=False).stdout)
    assert {t["task_id"] for t in every} == {"site", "site.blog-a", "site.blog-a.posts", "site.blog-b"}
    tree = json.loads(run.invoke(cli, ["-b", url, "show", "site", "--tree", "--json"], catch_exceptions=False).stdout)
    assert [c["task_id"] for c in tree["children"]] == ["site.blog-a", "site.blog-b"]
    assert tree["children"][0]["children"][0]["on_failure"] == "ignore"
    wide = CliRunner(env={"COLUMNS": "200"})
    text = wide.invoke(cli, ["-b", url, "show", "site", "--tree"], catch_exceptions=False).stdout
    assert "j0 site.blog-a" in text and "j0 site.blog-a.posts" in text and "on failure: ignore" in text


def test_a_sqlite_file_from_before_nesting_gets_the_nest_column(tmp_path: Path) -> None:
    path = str(tmp_path / "old.db")
    store = SQLiteStore(path)
    store.close()
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE ms_tasks DROP COLUMN nest")  # what a file made before nested tasks has
    db.close()
    b = connect(f"sqlite:///{path}")
    with b.create_task("after") as t:
        t.add_subtask("after.c").seal()
    assert t.wait(timeout=20).state == TaskState.SUCCEEDED
    assert b.get_task("after.c").progress().parent == "after"
    b.close()


def test_tickets_issued_with_an_inlined_finalizer_go_out_at_once() -> None:
    """A job's finish that starts its task's finalizer (run inline by the same worker) and issues
    tickets for other tasks' waiting jobs in the same transition: the tickets are sent at once,
    not dropped until recovery re-sends them two leases later (a tree with 100 finalizing
    subtasks waited a minute per stall)."""
    b = connect("memory?threads=8&lease=30")
    try:
        with b.create_task() as root:
            for c in range(100):  # more finalizers than the window (64) of tickets
                with root.add_subtask() as sub:
                    sub.add_jobs(_noop, [(c, i) for i in range(10)])
                    sub.add_finalization_job(_noop, c, -1)
        assert root.wait(timeout=20).state == TaskState.SUCCEEDED  # the lost tickets took 60 s
    finally:
        b.close()
