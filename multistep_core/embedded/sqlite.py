"""SQLite store: durable task state in one file, shared by every process on the machine.

Each transition runs in one ``BEGIN IMMEDIATE`` transaction, so concurrent threads and
processes never interleave inside a transition. ``sqlite:///path/to/tasks.db`` in a
backend string (``sqlite://`` alone: ``./multistep.db``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from ..fairshare import DEFAULT_WINDOW, QueueRow
from ..forking import forget_connections_in_children
from ..listing import TaskPage, TaskQuery, like_pattern
from ..model import JobState, Rejected, TaskOptions, TaskState
from ..nesting import delete_tree
from ..store import DEFAULT_LEASE, JobRow, RowStore, TaskRow, Txn

SCHEMA = """
CREATE TABLE IF NOT EXISTS ms_tasks (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    options TEXT NOT NULL,
    sealed INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    running INTEGER NOT NULL DEFAULT 0,
    succeeded INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    fin_total INTEGER NOT NULL DEFAULT 0,
    fin_done INTEGER NOT NULL DEFAULT 0,
    has_callback INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    sealed_at REAL, finished_at REAL, cancelled_by TEXT, cancelled_at REAL, expires_at REAL,
    sched TEXT,
    nest TEXT
);
CREATE TABLE IF NOT EXISTS ms_queues (name TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS ms_tasks_state ON ms_tasks (state, created_at);
-- pages of tasks (listing.py): walk by creation time, skip expired rows, match ids, all in the index
CREATE INDEX IF NOT EXISTS ms_tasks_page ON ms_tasks (created_at, expires_at, id);
CREATE TABLE IF NOT EXISTS ms_jobs (
    task_id TEXT NOT NULL,
    ref TEXT NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    fails INTEGER NOT NULL DEFAULT 0,
    lost INTEGER NOT NULL DEFAULT 0,
    due_at REAL,
    error TEXT,
    result TEXT,
    started_at REAL,
    finished_at REAL,
    PRIMARY KEY (task_id, ref)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ms_jobs_state ON ms_jobs (task_id, state);
CREATE INDEX IF NOT EXISTS ms_jobs_due ON ms_jobs (due_at) WHERE due_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS ms_rejected (
    id INTEGER PRIMARY KEY AUTOINCREMENT, raw TEXT NOT NULL, reason TEXT NOT NULL, at REAL NOT NULL
);
"""

_TASK_COLS = (
    "id, state, options, sealed, total, running, succeeded, failed, fin_total, fin_done, "
    "has_callback, created_at, sealed_at, finished_at, cancelled_by, cancelled_at, expires_at, sched, nest"
)
_JOB_COLS = "ref, spec, state, attempt, fails, lost, due_at, error, result, started_at, finished_at"


def _task_from(r: Sequence[Any]) -> TaskRow:
    return TaskRow(
        id=r[0], state=TaskState(r[1]), options=TaskOptions.from_dict(json.loads(r[2])), sealed=bool(r[3]),
        total=r[4], running=r[5], succeeded=r[6], failed=r[7], fin_total=r[8], fin_done=r[9],
        has_callback=bool(r[10]), created_at=r[11], sealed_at=r[12], finished_at=r[13],
        cancelled_by=r[14], cancelled_at=r[15], expires_at=r[16], **_sched_from(r[17]), **_nest_from(r[18]),
    )


def _nest_from(text: str | None) -> dict[str, Any]:
    d = json.loads(text) if text else {}
    return {"parent": d.get("parent"), "parent_ref": d.get("ref", ""), "root": d.get("root", ""),
            "children": d.get("children", []), "tolerated": d.get("tolerated", 0)}


def _nest_text(t: TaskRow) -> str | None:
    if t.parent is None and not t.children:
        return None
    return json.dumps({"parent": t.parent, "ref": t.parent_ref, "root": t.root, "children": t.children,
                       "tolerated": t.tolerated})


def _sched_from(text: str | None) -> dict[str, Any]:
    d = json.loads(text) if text else {}
    return {"next_job": d.get("next", 0), "requeue": d.get("requeue", []), "per_message": d.get("batch", 1),
            "vt": d.get("vt", 0.0)}


def _sched_text(t: TaskRow) -> str:
    return json.dumps({"next": t.next_job, "requeue": t.requeue, "batch": t.per_message, "vt": t.vt})


def _task_values(t: TaskRow) -> tuple[Any, ...]:
    return (
        t.id, t.state.value, json.dumps(t.options.to_dict()), int(t.sealed), t.total, t.running,
        t.succeeded, t.failed, t.fin_total, t.fin_done, int(t.has_callback), t.created_at,
        t.sealed_at, t.finished_at, t.cancelled_by, t.cancelled_at, t.expires_at, _sched_text(t), _nest_text(t),
    )


def _job_from(r: Sequence[Any]) -> JobRow:
    return JobRow(
        ref=r[0], spec=r[1], state=JobState(r[2]), attempt=r[3], fails=r[4], lost=r[5], due_at=r[6],
        error=json.loads(r[7]) if r[7] else None, result=r[8], started_at=r[9], finished_at=r[10],
    )


def _job_values(task_id: str, j: JobRow) -> tuple[Any, ...]:
    return (
        task_id, j.ref, j.spec, j.state.value, j.attempt, j.fails, j.lost, j.due_at,
        json.dumps(j.error) if j.error else None, j.result, j.started_at, j.finished_at,
    )


class _SQLiteTxn(Txn):
    def __init__(self, db: sqlite3.Connection, max_rejected: int) -> None:
        self.db = db
        self.max_rejected = max_rejected

    def get_task(self, task_id: str) -> TaskRow | None:
        r = self.db.execute(f"SELECT {_TASK_COLS} FROM ms_tasks WHERE id = ?", (task_id,)).fetchone()
        return None if r is None else _task_from(r)

    def put_task(self, row: TaskRow, *, new: bool = False) -> None:
        verb = "INSERT" if new else "REPLACE"
        self.db.execute(f"{verb} INTO ms_tasks ({_TASK_COLS}) VALUES ({','.join('?' * 19)})", _task_values(row))

    def get_job(self, task_id: str, ref: str) -> JobRow | None:
        r = self.db.execute(
            f"SELECT {_JOB_COLS} FROM ms_jobs WHERE task_id = ? AND ref = ?", (task_id, ref)
        ).fetchone()
        return None if r is None else _job_from(r)

    def put_job(self, task_id: str, row: JobRow) -> None:
        self.db.execute(
            f"REPLACE INTO ms_jobs (task_id, {_JOB_COLS}) VALUES ({','.join('?' * 12)})", _job_values(task_id, row)
        )

    def put_jobs_new(self, task_id: str, rows: Sequence[JobRow]) -> None:
        self.db.executemany(
            "INSERT INTO ms_jobs (task_id, ref, spec, state) VALUES (?, ?, ?, 'pending')",
            [(task_id, r.ref, r.spec) for r in rows],
        )

    def jobs(self, task_id: str, states: Sequence[JobState] | None = None) -> list[JobRow]:
        if states is None:
            cur = self.db.execute(f"SELECT {_JOB_COLS} FROM ms_jobs WHERE task_id = ?", (task_id,))
        else:
            marks = ",".join("?" * len(states))
            cur = self.db.execute(
                f"SELECT {_JOB_COLS} FROM ms_jobs WHERE task_id = ? AND state IN ({marks})",
                (task_id, *[s.value for s in states]),
            )
        return [_job_from(r) for r in cur]

    def due(self, now: float, limit: int) -> list[tuple[str, str]]:
        cur = self.db.execute(
            "SELECT task_id, ref FROM ms_jobs WHERE due_at IS NOT NULL AND due_at <= ? ORDER BY due_at LIMIT ?",
            (now, limit),
        )
        return [(r[0], r[1]) for r in cur]

    def tasks(self, state: TaskState | None, limit: int) -> list[TaskRow]:
        if state is None:
            cur = self.db.execute(f"SELECT {_TASK_COLS} FROM ms_tasks ORDER BY created_at DESC LIMIT ?", (limit,))
        else:
            cur = self.db.execute(
                f"SELECT {_TASK_COLS} FROM ms_tasks WHERE state = ? ORDER BY created_at DESC LIMIT ?",
                (state.value, limit),
            )
        return [_task_from(r) for r in cur]

    def page(self, query: TaskQuery, now: float) -> TaskPage:
        """One indexed SELECT for the page (and a COUNT when asked): never every row."""
        where = ["(expires_at IS NULL OR expires_at > ?)"]
        args: list[Any] = [now]
        if query.state is not None:
            where.append("state = ?")
            args.append(query.state.value)
        if query.search is not None:
            where.append("id LIKE ? ESCAPE '\\'")
            args.append(like_pattern(query.search))
        if query.ids is not None:
            where.append(f"id IN ({','.join('?' * len(query.ids))})")
            args.extend(query.ids)
        cond = " AND ".join(where)
        order = "DESC" if query.newest_first else "ASC"
        cur = self.db.execute(
            f"SELECT {_TASK_COLS} FROM ms_tasks WHERE {cond} ORDER BY created_at {order} LIMIT ? OFFSET ?",
            (*args, query.limit + 1, query.offset),
        )
        rows = [_task_from(r) for r in cur]
        total = None
        if query.count:  # without the expiry test (an index count, not a table scan): tasks whose
            # retention ran out count until the store purges them, as Redis's ZCARD does
            rest = " AND ".join(where[1:]) or "1"
            total = int(self.db.execute(f"SELECT COUNT(*) FROM ms_tasks WHERE {rest}", args[1:]).fetchone()[0])
        items = [r.progress() for r in rows[: query.limit]]
        return TaskPage(items, query.offset, query.limit, total, len(rows) > query.limit)

    def delete_task(self, task_id: str) -> bool:
        self.db.execute("DELETE FROM ms_jobs WHERE task_id = ?", (task_id,))
        return self.db.execute("DELETE FROM ms_tasks WHERE id = ?", (task_id,)).rowcount > 0

    def get_queue(self, name: str) -> QueueRow | None:
        r = self.db.execute("SELECT data FROM ms_queues WHERE name = ?", (name,)).fetchone()
        return QueueRow.from_dict(json.loads(r[0])) if r else None

    def put_queue(self, row: QueueRow) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO ms_queues (name, data) VALUES (?, ?)", (row.name, json.dumps(row.to_dict()))
        )

    def queues(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM ms_queues")]

    def add_rejected(self, item: Rejected) -> None:
        self.db.execute("INSERT INTO ms_rejected (raw, reason, at) VALUES (?, ?, ?)", (item.raw, item.reason, item.at))
        self.db.execute(
            "DELETE FROM ms_rejected WHERE id <= (SELECT MAX(id) FROM ms_rejected) - ?", (self.max_rejected,)
        )

    def list_rejected(self, limit: int) -> list[Rejected]:
        cur = self.db.execute("SELECT raw, reason, at FROM ms_rejected ORDER BY id DESC LIMIT ?", (limit,))
        return [Rejected(raw=r[0], reason=r[1], at=r[2]) for r in cur]

    def purge_expired(self, now: float) -> None:
        expired = [
            r[0] for r in self.db.execute("SELECT id FROM ms_tasks WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,))
        ]
        for tid in expired:
            delete_tree(self, tid)  # a subtask never expires alone: it goes with its root


class SQLiteStore(RowStore):
    """Task state in a SQLite file. Safe across threads and processes."""

    def __init__(
        self, path: str = "multistep.db", *, lease: float = DEFAULT_LEASE, window: int = DEFAULT_WINDOW,
        max_rejected: int = 1000,
    ) -> None:
        super().__init__(lease=lease, window=window)
        self.path = path
        self.max_rejected = max_rejected
        self._local = threading.local()
        self._inherited: list[threading.local] = []
        forget_connections_in_children(self)  # a forked child (RQ's work horse) opens its own
        if path != ":memory:":
            parent = os.path.dirname(os.path.abspath(path))
            os.makedirs(parent, exist_ok=True)
        db = self._conn()
        db.executescript(SCHEMA)
        cols = {r[1] for r in db.execute("PRAGMA table_info(ms_tasks)")}
        if "sched" not in cols:  # a file made before fair-share dispatch
            db.execute("ALTER TABLE ms_tasks ADD COLUMN sched TEXT")
        if "nest" not in cols:  # a file made before nested tasks
            db.execute("ALTER TABLE ms_tasks ADD COLUMN nest TEXT")

    def _forget_connections(self) -> None:
        """In a forked child: never use (nor close) a connection of the parent; keep a reference
        so the garbage collector does not close it in the child either."""
        self._inherited.append(self._local)
        self._local = threading.local()

    def _conn(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=60000")
            self._local.db = db
        return db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Txn]:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield _SQLiteTxn(db, self.max_rejected)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        else:
            db.execute("COMMIT")

    def page_tasks(self, query: TaskQuery) -> TaskPage:
        """A read transaction (``BEGIN``, not ``IMMEDIATE``): in WAL mode a dashboard's pages run
        beside the workers' writes instead of queueing for the write lock."""
        db = self._conn()
        db.execute("BEGIN")
        try:
            return _SQLiteTxn(db, self.max_rejected).page(query, time.time())
        finally:
            db.execute("COMMIT")

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
