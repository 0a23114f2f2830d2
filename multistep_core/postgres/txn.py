"""The row primitives of :class:`~multistep_core.store.RowStore` on PostgreSQL, with few round trips.

One :class:`PgTxn` is one database transaction. What makes it cheap:

* **Statements travel in batches** (psycopg's pipeline mode: one network round trip per batch,
  an *exchange*). ``BEGIN`` waits for the first read; writes wait for the commit, so a transition
  is typically two exchanges: ``BEGIN`` + lock and read the task + read its job, then every write
  + ``COMMIT``.
* **The task's row lock is the transaction's mutex.** The first read of a task (or of one of its
  jobs) is ``SELECT ... FOR UPDATE`` of the task row: every transition of that task waits for the
  one in progress, transitions of other tasks do not. Statements after the lock see what the
  previous holder committed (READ COMMITTED takes a snapshot per statement).
* **Rows are cached for the transaction**: the logic reads a row, changes it, writes it back
  (``put_*``); the write is kept until the commit, and a later read of the same row in the same
  transaction is answered from the cache. Reads of many rows (``jobs``, ``tasks``, ``due``)
  first send the writes kept so far.
* **A hint** (the refs the transition is about, given by the store) lets the first exchange fetch
  the task's lock, the task and those jobs together.

Text a client hands over (specs, who cancelled, refused messages) may hold NUL, which PostgreSQL
text cannot: it is stored escaped (:func:`enc` / :func:`dec`).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..model import JobState, Rejected, TaskOptions, TaskState
from ..store import JobRow, TaskRow, Txn

if TYPE_CHECKING:
    import psycopg

TASK_COLS = (
    "id, state, options, sealed, total, running, succeeded, failed, fin_total, fin_done, "
    "has_callback, created_at, sealed_at, finished_at, cancelled_by, cancelled_at, expires_at, more"
)
JOB_COLS = "ref, spec, state, attempt, fails, lost, due_at, error, result, started_at, finished_at, more"
_ESCAPED = re.compile("\x01([\x01\x02])")

Stmt = tuple[str, tuple[Any, ...]]


def enc(s: str | None) -> str | None:
    """Text PostgreSQL can store: NUL becomes ``\\x01\\x02`` and ``\\x01`` becomes ``\\x01\\x01``."""
    if s is None or ("\x00" not in s and "\x01" not in s):
        return s
    return s.replace("\x01", "\x01\x01").replace("\x00", "\x01\x02")


def dec(s: str | None) -> str | None:
    if s is None or "\x01" not in s:
        return s
    return _ESCAPED.sub(lambda m: "\x00" if m.group(1) == "\x02" else "\x01", s)


def _more_fields(cls: type, columns: str) -> tuple[dataclasses.Field[Any], ...]:
    named = set(columns.split(", "))
    return tuple(f for f in dataclasses.fields(cls) if f.name not in named)


# Fields of the rows that have no column of their own (JobRow.extra, and whatever RowStore's rows
# gain later): kept in the ``more`` column as JSON, so a new field needs no new code here.
_TASK_MORE = _more_fields(TaskRow, TASK_COLS)
_JOB_MORE = _more_fields(JobRow, "ref, " + JOB_COLS)


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING


def more(row: Any, fields: tuple[dataclasses.Field[Any], ...]) -> str | None:
    """The JSON of a row's fields without a column, when any differs from its default."""
    d = {f.name: getattr(row, f.name) for f in fields if getattr(row, f.name) != _default(f)}
    return json.dumps(d) if d else None


def _known(text: str | None, fields: tuple[dataclasses.Field[Any], ...]) -> dict[str, Any]:
    if not text:
        return {}
    names = {f.name for f in fields}
    return {k: v for k, v in json.loads(text).items() if k in names}


def task_from(r: Sequence[Any]) -> TaskRow:
    return TaskRow(
        id=r[0], state=TaskState(r[1]), options=TaskOptions.from_dict(json.loads(r[2])), sealed=r[3],
        total=r[4], running=r[5], succeeded=r[6], failed=r[7], fin_total=r[8], fin_done=r[9],
        has_callback=r[10], created_at=r[11], sealed_at=r[12], finished_at=r[13],
        cancelled_by=dec(r[14]), cancelled_at=r[15], expires_at=r[16], **_known(r[17], _TASK_MORE),
    )


def _task_values(t: TaskRow) -> tuple[Any, ...]:
    return (
        t.id, t.state.value, json.dumps(t.options.to_dict()), t.sealed, t.total, t.running, t.succeeded,
        t.failed, t.fin_total, t.fin_done, t.has_callback, t.created_at, t.sealed_at, t.finished_at,
        enc(t.cancelled_by), t.cancelled_at, t.expires_at, more(t, _TASK_MORE),
    )


def job_from(r: Sequence[Any]) -> JobRow:
    return JobRow(
        ref=r[0], spec=dec(r[1]) or "", state=JobState(r[2]), attempt=r[3], fails=r[4], lost=r[5], due_at=r[6],
        error=json.loads(r[7]) if r[7] else None, result=r[8], started_at=r[9], finished_at=r[10],
        **_known(r[11], _JOB_MORE),
    )


def _queue_row() -> Any:
    """The reference's scheduling row class (imported when a queue row is first read)."""
    return importlib.import_module("multistep_core.fairshare").QueueRow


class Sql:
    """The statements of one table prefix."""

    def __init__(self, p: str) -> None:
        self.lock_task = f"SELECT {TASK_COLS} FROM {p}_tasks WHERE id = %s FOR UPDATE"
        self.get_task = f"SELECT {TASK_COLS} FROM {p}_tasks WHERE id = %s"
        self.get_jobs = f"SELECT {JOB_COLS} FROM {p}_jobs WHERE task_id = %s AND ref = ANY(%s)"
        # ... and the finalizers a finish or seal may send next, when it may (the task's last jobs
        # are ending, or it is finalizing): the transition then needs no read of its own for them.
        # (one array of refs, so that it is an index lookup per ref, not a scan of the task's jobs)
        self.get_jobs_and_next = (
            f"SELECT {JOB_COLS} FROM {p}_jobs WHERE task_id = %s AND ref = ANY(%s::text[] || ARRAY("
            f"SELECT 'f' || (fin_done + k) FROM {p}_tasks, (VALUES (0), (1)) AS next(k) WHERE id = %s "
            f"AND fin_done + k < fin_total AND (state = 'finalizing' OR succeeded + failed + 1 >= total)))"
        )
        self.insert_task = f"INSERT INTO {p}_tasks ({TASK_COLS}) VALUES ({', '.join(['%s'] * 18)})"
        sets = ", ".join(f"{c} = %s" for c in TASK_COLS.split(", ")[1:])
        self.update_task = f"UPDATE {p}_tasks SET {sets} WHERE id = %s"
        job_sets = ", ".join(f"{c} = %s" for c in JOB_COLS.split(", ")[2:])
        self.update_job = f"UPDATE {p}_jobs SET {job_sets} WHERE task_id = %s AND ref = %s"
        self.upsert_job = (
            f"INSERT INTO {p}_jobs (task_id, {JOB_COLS}) VALUES ({', '.join(['%s'] * 13)}) "
            f"ON CONFLICT (task_id, ref) DO UPDATE SET spec = EXCLUDED.spec, "
            + ", ".join(f"{c} = EXCLUDED.{c}" for c in JOB_COLS.split(", ")[2:])
        )
        self.insert_jobs = (
            f"INSERT INTO {p}_jobs (task_id, ref, spec, state, more) "
            f"SELECT %s, r, s, 'pending', m FROM unnest(%s::text[], %s::text[], %s::text[]) AS u(r, s, m)"
        )
        self.jobs_all = f"SELECT {JOB_COLS} FROM {p}_jobs WHERE task_id = %s ORDER BY ref"
        self.jobs_in = f"SELECT {JOB_COLS} FROM {p}_jobs WHERE task_id = %s AND state IN ({{states}}) ORDER BY ref"
        # Recovery: lock the tasks that have something due, earliest first, skipping those another
        # transaction holds (a worker mid-transition, another recoverer): they are taken on a later
        # pass, and the LIMIT counts only tasks this pass could lock.
        self.lock_due = (
            f"SELECT t.id FROM {p}_tasks t JOIN (SELECT task_id, min(due_at) AS first FROM {p}_jobs "
            f"WHERE due_at IS NOT NULL AND due_at <= %s GROUP BY task_id) d ON d.task_id = t.id "
            f"ORDER BY d.first, t.id LIMIT %s FOR UPDATE OF t SKIP LOCKED"
        )
        self.due_jobs = (
            f"SELECT task_id, {JOB_COLS} FROM {p}_jobs WHERE task_id = ANY(%s) AND due_at IS NOT NULL "
            f"AND due_at <= %s ORDER BY due_at, task_id, ref LIMIT %s"
        )
        self.tasks_in = f"SELECT {TASK_COLS} FROM {p}_tasks WHERE id = ANY(%s)"
        self.tasks_all = f"SELECT {TASK_COLS} FROM {p}_tasks ORDER BY created_at DESC LIMIT %s"
        self.tasks_state = f"SELECT {TASK_COLS} FROM {p}_tasks WHERE state = %s ORDER BY created_at DESC LIMIT %s"
        self.delete_jobs = f"DELETE FROM {p}_jobs WHERE task_id = %s"
        self.delete_task = f"DELETE FROM {p}_tasks WHERE id = %s"
        self.add_rejected = f"INSERT INTO {p}_rejected (raw, reason, at) VALUES (%s, %s, %s)"
        self.cap_rejected = f"DELETE FROM {p}_rejected WHERE id <= (SELECT max(id) FROM {p}_rejected) - %s"
        self.rejected = f"SELECT raw, reason, at FROM {p}_rejected ORDER BY id DESC LIMIT %s"
        # Queue rows (the dispatch redesign's scheduling rows): a transition that reads one locks
        # it; a row not there yet is made first (empty data: none yet), so that two transitions
        # creating it at once take turns instead of one overwriting the other.
        self.lock_queue = f"INSERT INTO {p}_queues (name, data) VALUES (%s, '') ON CONFLICT (name) DO NOTHING"
        self.lock_queue_read = f"SELECT data FROM {p}_queues WHERE name = %s FOR UPDATE"
        # ... and the queue row of a task, before the task's own row: every transition that takes
        # both then takes them in one order (queue, task), so that none waits for the other
        self.lock_task_queue = (
            f"SELECT name, data FROM {p}_queues WHERE name = "
            f"(SELECT options::json->>'queue' FROM {p}_tasks WHERE id = %s) FOR UPDATE"
        )
        self.get_queue = f"SELECT data FROM {p}_queues WHERE name = %s"
        self.put_queue = (
            f"INSERT INTO {p}_queues (name, data) VALUES (%s, %s) ON CONFLICT (name) DO UPDATE SET data = EXCLUDED.data"
        )
        self.queue_names = f"SELECT name FROM {p}_queues WHERE data <> '' ORDER BY name"
        # Retention: only ended tasks have an expiry, and a task some transaction holds is left
        # for the next pass: the delete never waits for (nor blocks) a running task.
        # A subtask never expires alone: it goes with its tree's root (its "root" is in ``more``).
        self.purge = (
            f"WITH gone AS (DELETE FROM {p}_tasks WHERE id IN (SELECT id FROM {p}_tasks "
            f"WHERE expires_at IS NOT NULL AND expires_at <= %s LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING id), "
            f"kids AS (DELETE FROM {p}_tasks WHERE more IS NOT NULL AND more LIKE '%%\"root\"%%' "
            f"AND (more::jsonb ->> 'root') IN (SELECT id FROM gone) RETURNING id) "
            f"DELETE FROM {p}_jobs WHERE task_id IN (SELECT id FROM gone UNION ALL SELECT id FROM kids)"
        )


class PgTxn(Txn):
    """One transaction on one connection (see the module documentation).

    ``locking``: a transition (BEGIN, task rows locked on first read); otherwise a read, each
    statement on its own (autocommit), nothing locked. ``hint``: (task id, refs) the transition
    will read first."""

    def __init__(self, store: Any, conn: psycopg.Connection[Any], *, locking: bool,
                 hint: tuple[str, Sequence[str]] | None = None, track: bool = True) -> None:
        self.store = store
        self.sql: Sql = store.sql
        self.conn = conn
        self.locking = locking
        self.hint = hint
        self.track = track  # read the transaction's id in the first batch
        self.began = False  # BEGIN sent
        self.xid: int | None = None  # this transaction's id, to learn a lost commit's outcome
        self.queued: list[Stmt] = []  # statements that go out with the next exchange
        self.tasks_seen: dict[str, TaskRow | None] = {}  # read (and locked) in this transaction
        self.jobs_seen: dict[tuple[str, str], JobRow | None] = {}
        self.specs_seen: dict[tuple[str, str], str] = {}  # spec as stored, to leave it out of updates
        self.task_writes: dict[str, bool] = {}  # task id -> new
        self.job_writes: dict[tuple[str, str], bool] = {}
        self.new_jobs: list[tuple[str, list[str], list[str], list[str | None]]] = []
        self.queues_seen: dict[str, Any] = {}
        self.queue_writes: set[str] = set()
        self.max_rejected: int = store.max_rejected

    # -- exchanges -------------------------------------------------------------------------
    def exchange(self, stmts: Sequence[Stmt]) -> list[psycopg.Cursor[Any]]:
        """Send the queued statements and ``stmts`` in one round trip; the cursors of ``stmts``."""
        head: list[Stmt] = []
        if self.locking and not self.began:
            head = [("BEGIN", ()), ("SELECT txid_current()", ())] if self.track else [("BEGIN", ())]
        batch = [*head, *self.queued, *stmts]
        self.queued = []
        self.store.count_round_trip()
        conn = self.conn
        with conn.pipeline():
            curs = [conn.execute(q, p, prepare=True) if p else conn.execute(q) for q, p in batch]
        if head:
            self.began = True
            if self.track:
                row = curs[1].fetchone()
                self.xid = int(row[0]) if row else None
        return curs[len(batch) - len(stmts):]

    def _lock_and_read(self, task_id: str, refs: Sequence[str]) -> None:
        """One exchange: the task (locked when this is a transition) and the jobs ``refs``."""
        if self.hint is not None and self.hint[0] == task_id and task_id not in self.tasks_seen:
            refs = list(dict.fromkeys([*refs, *self.hint[1]]))
        stmts: list[Stmt] = []
        want_task = task_id not in self.tasks_seen
        queue_first = want_task and self.locking and self.store.queue_rows and not self.tasks_seen
        if queue_first:
            stmts.append((self.sql.lock_task_queue, (task_id,)))
        if want_task:
            stmts.append((self.sql.lock_task if self.locking else self.sql.get_task, (task_id,)))
        refs = [r for r in refs if (task_id, r) not in self.jobs_seen]
        if want_task and self.locking:
            stmts.append((self.sql.get_jobs_and_next, (task_id, refs, task_id)))
        elif refs:
            stmts.append((self.sql.get_jobs, (task_id, refs)))
        if not stmts:
            return
        curs = self.exchange(stmts)
        if queue_first:
            for name, data in curs.pop(0).fetchall():
                self.queues_seen.setdefault(name, _queue_row().from_dict(json.loads(data)) if data else None)
        if want_task:
            r = curs[0].fetchone()
            self.tasks_seen[task_id] = None if r is None else task_from(r)
        if len(stmts) > int(want_task) + int(queue_first):
            for ref in refs:
                self.jobs_seen[(task_id, ref)] = None
            for r in curs[-1].fetchall():
                self._seen_job(task_id, r)

    def _seen_job(self, task_id: str, r: Sequence[Any]) -> JobRow:
        key = (task_id, r[0])
        cached = self.jobs_seen.get(key)
        if cached is not None:  # the live row the logic holds (its writes were flushed already)
            return cached
        row = job_from(r)
        self.jobs_seen[key] = row
        self.specs_seen[key] = row.spec
        return row

    def flush_writes(self) -> list[Stmt]:
        """The statements of every write kept so far (and forget them)."""
        out: list[Stmt] = []
        for tid, new in self.task_writes.items():
            row = self.tasks_seen[tid]
            assert row is not None
            values = _task_values(row)
            out.append((self.sql.insert_task, values) if new else (self.sql.update_task, (*values[1:], tid)))
        for tid, refs, specs, mores in self.new_jobs:
            out.append((self.sql.insert_jobs, (tid, refs, specs, mores)))
        for key, new in self.job_writes.items():
            j = self.jobs_seen[key]
            assert j is not None
            rest = (
                j.state.value, j.attempt, j.fails, j.lost, j.due_at, json.dumps(j.error) if j.error else None,
                j.result, j.started_at, j.finished_at, more(j, _JOB_MORE),
            )
            if not new and self.specs_seen.get(key) == j.spec:
                out.append((self.sql.update_job, (*rest, *key)))
            else:
                out.append((self.sql.upsert_job, (key[0], key[1], enc(j.spec), *rest)))
                self.specs_seen[key] = j.spec
        for name in sorted(self.queue_writes):
            out.append((self.sql.put_queue, (name, json.dumps(self.queues_seen[name].to_dict()))))
        self.task_writes = {}
        self.job_writes = {}
        self.new_jobs = []
        self.queue_writes = set()
        return out

    def _send_writes(self) -> None:
        self.queued.extend(self.flush_writes())

    # -- the primitives --------------------------------------------------------------------
    def get_task(self, task_id: str) -> TaskRow | None:
        if task_id not in self.tasks_seen:
            self._lock_and_read(task_id, [])
        return self.tasks_seen[task_id]

    def put_task(self, row: TaskRow, *, new: bool = False) -> None:
        self.tasks_seen[row.id] = row
        self.task_writes[row.id] = new or self.task_writes.get(row.id, False)

    def get_job(self, task_id: str, ref: str) -> JobRow | None:
        if (task_id, ref) not in self.jobs_seen:
            self._lock_and_read(task_id, [ref])
        return self.jobs_seen[(task_id, ref)]

    def put_job(self, task_id: str, row: JobRow, *, new: bool = False) -> None:
        key = (task_id, row.ref)
        self.jobs_seen[key] = row
        self.job_writes[key] = new or self.job_writes.get(key, False)

    def put_jobs_new(self, task_id: str, rows: Sequence[JobRow]) -> None:
        self.new_jobs.append((task_id, [r.ref for r in rows], [enc(r.spec) or "" for r in rows],
                              [more(r, _JOB_MORE) for r in rows]))
        for r in rows:
            self.jobs_seen[(task_id, r.ref)] = r
            self.specs_seen[(task_id, r.ref)] = r.spec

    def jobs(self, task_id: str, states: Sequence[JobState] | None = None) -> list[JobRow]:
        stmts: list[Stmt] = []
        lock = self.locking and task_id not in self.tasks_seen
        if lock:  # the lock first: the jobs are read after it is taken
            stmts.append((self.sql.lock_task, (task_id,)))
        self._send_writes()
        if states is None:
            stmts.append((self.sql.jobs_all, (task_id,)))
        else:
            # the states written out (they are the JobState names), so that the planner may use the
            # index of the jobs that did not succeed
            listed = ", ".join(f"'{JobState(s).value}'" for s in states) or "NULL"
            stmts.append((self.sql.jobs_in.replace("{states}", listed), (task_id,)))
        curs = self.exchange(stmts)
        if lock:
            r = curs[0].fetchone()
            self.tasks_seen[task_id] = None if r is None else task_from(r)
        return [self._seen_job(task_id, r) for r in curs[-1].fetchall()]

    def due(self, now: float, limit: int) -> list[tuple[str, str]]:
        self._send_writes()
        (cur,) = self.exchange([(self.sql.lock_due, (now, limit))])
        locked = [r[0] for r in cur.fetchall()]
        if not locked:
            return []
        # A second statement, so that the rows are read after the locks were taken.
        tasks, jobs = self.exchange([(self.sql.tasks_in, (locked,)), (self.sql.due_jobs, (locked, now, limit))])
        for r in tasks.fetchall():
            self.tasks_seen.setdefault(r[0], task_from(r))
        out = []
        for r in jobs.fetchall():
            self._seen_job(r[0], r[1:])
            out.append((r[0], r[1]))
        return out

    def tasks(self, state: TaskState | None, limit: int) -> list[TaskRow]:
        self._send_writes()
        if state is None:
            (cur,) = self.exchange([(self.sql.tasks_all, (limit,))])
        else:
            (cur,) = self.exchange([(self.sql.tasks_state, (state.value, limit))])
        return [task_from(r) for r in cur.fetchall()]

    def delete_task(self, task_id: str) -> bool:
        self._send_writes()
        _, cur = self.exchange([(self.sql.delete_jobs, (task_id,)), (self.sql.delete_task, (task_id,))])
        self.tasks_seen[task_id] = None
        for key in [k for k in self.jobs_seen if k[0] == task_id]:
            self.jobs_seen[key] = None
        return cur.rowcount > 0

    def get_queue(self, name: str) -> Any:
        """The scheduling row of a queue (``multistep_core.fairshare.QueueRow``), locked in a
        transition; None if there is none."""
        self.store.queue_rows = True  # from now on, transitions lock their task's queue row first
        if name not in self.queues_seen:
            if self.locking:
                _, cur = self.exchange([(self.sql.lock_queue, (name,)), (self.sql.lock_queue_read, (name,))])
            else:
                (cur,) = self.exchange([(self.sql.get_queue, (name,))])
            r = cur.fetchone()
            self.queues_seen[name] = _queue_row().from_dict(json.loads(r[0])) if r and r[0] else None
        return self.queues_seen[name]

    def put_queue(self, row: Any) -> None:
        self.queues_seen[row.name] = row
        self.queue_writes.add(row.name)

    def queues(self) -> list[str]:
        self._send_writes()
        (cur,) = self.exchange([(self.sql.queue_names, ())])
        return [r[0] for r in cur.fetchall()]

    def add_rejected(self, item: Rejected) -> None:
        self.queued.append((self.sql.add_rejected, (enc(item.raw), enc(item.reason), item.at)))
        self.queued.append((self.sql.cap_rejected, (self.max_rejected,)))

    def list_rejected(self, limit: int) -> list[Rejected]:
        (cur,) = self.exchange([(self.sql.rejected, (limit,))])
        return [Rejected(raw=dec(r[0]) or "", reason=dec(r[1]) or "", at=r[2]) for r in cur.fetchall()]

    def purge_expired(self, now: float) -> None:
        # Goes out with the next exchange (recovery's due scan): no round trip of its own.
        self.queued.append((self.sql.purge, (now, self.store.purge_batch)))

    # -- the end ---------------------------------------------------------------------------
    def commit_statements(self) -> list[Stmt]:
        """What the commit sends: the kept writes, then COMMIT (nothing for a read, or for a
        transition that read nothing and wrote nothing)."""
        writes = [*self.queued, *self.flush_writes()]
        self.queued = []
        if not self.locking:
            return writes
        if not self.began and not writes:
            return []
        return [*writes, ("COMMIT", ())]
