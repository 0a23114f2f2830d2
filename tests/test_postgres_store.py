"""The PostgreSQL store against a real server: what only it has (round trips per transition,
migrations, SKIP LOCKED recovery and retention, LISTEN/NOTIFY waits, connection errors, a
server restart mid-run). Each test has its own table prefix in the session's database
(``postgres_service``). The logic itself is the reference's (RowStore): the conformance suite,
the store suite and the differential test run on it in ``test_conformance_postgres.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from services import require_module

from multistep_core import TaskOptions, TaskState
from multistep_core.errors import BackendConnectionError, ConfigurationError, StoreError
from multistep_core.model import Failure

psycopg: Any = require_module("psycopg")

from multistep_core.postgres import PostgresStore, schema  # noqa: E402

SPEC = '{"fn":"m:a","args":[]}'


@pytest.fixture
def prefix(postgres_service: str) -> Iterator[str]:
    """A fresh table prefix, its tables dropped afterwards."""
    p = f"mst_{uuid.uuid4().hex[:8]}"
    yield p
    with psycopg.connect(postgres_service, autocommit=True) as conn:
        schema.drop(conn, p)


@pytest.fixture
def store(postgres_service: str, prefix: str) -> Iterator[PostgresStore]:
    s = PostgresStore(postgres_service, prefix=prefix, lease=5.0)
    try:
        yield s
    finally:
        s.close()


def _err(ref: str, attempt: int) -> Failure:
    return Failure(ref=ref, fn="m:a", type="ValueError", message="no", attempt=attempt, at=time.time())


# --- round trips ------------------------------------------------------------------------------


class Syncs:
    """Counts the round trips of this thread's connection at the protocol level: libpq's trace of
    the messages sent, one ``Sync`` per batch the client then waits for."""

    def __init__(self, store: PostgresStore) -> None:
        self.conn = store._conn()
        self.file = tempfile.TemporaryFile("w+")

    def __enter__(self) -> Syncs:
        self.conn.pgconn.trace(self.file.fileno())
        self.conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS | psycopg.pq.Trace.REGRESS_MODE)
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.pgconn.untrace()

    def count(self) -> int:
        self.file.seek(0)
        n = sum(1 for line in self.file if line.startswith("F\t") and line.split("\t")[2].strip() == "Sync")
        self.file.seek(0)
        self.file.truncate()
        return n


def test_round_trips_per_transition(store: PostgresStore) -> None:
    """Every transition is one transaction of two round trips (read + lock, then writes +
    COMMIT), a few of them three; reads one. Counted twice: by the store and on the wire."""
    now = time.time()
    seen: dict[str, int] = {}

    def rt(name: str, call: Callable[[], Any]) -> Any:
        with Syncs(store) as wire:
            before = store.round_trips
            out = call()
            counted = store.round_trips - before
            assert wire.count() == counted, f"{name}: the store counted {counted} exchanges, the wire another number"
        seen[name] = counted
        return out

    # Given a task with 100 jobs, two finalizers and a failure callback
    rt("create_task", lambda: store.create_task("a", TaskOptions(max_retries=1, backoff=0.0), now))
    rt("add_jobs (100 jobs)", lambda: store.add_jobs("a", "j", [SPEC] * 100, now))
    rt("add_jobs (finalizers)", lambda: store.add_jobs("a", "f", [SPEC, SPEC], now))
    rt("seal", lambda: store.seal("a", now))
    for i in range(99):
        assert store.start("a", f"j{i}", now).run
        store.finish("a", f"j{i}", 1, now)
    # When the last job runs, fails once, runs again and succeeds, and the finalizers run
    assert rt("start", lambda: store.start("a", "j99", now)).run
    assert rt("renew", lambda: store.renew("a", "j99", 1, now))
    rt("finish (failed, retry at once)", lambda: store.finish("a", "j99", 1, now, error=_err("j99", 1)))
    assert store.job_states("a")["j99"] == "pending"  # back in line for a ticket
    rt("start (again)", lambda: store.start("a", "j99", now))
    assert rt("finish (last job: f0 next)", lambda: store.finish("a", "j99", 2, now)).refs == ("f0",)
    rt("start (f0)", lambda: store.start("a", "f0", now))
    assert rt("finish (f0: f1 next)", lambda: store.finish("a", "f0", 1, now)).refs == ("f1",)
    rt("start (f1)", lambda: store.start("a", "f1", now))
    rt("finish (f1: task done)", lambda: store.finish("a", "f1", 1, now))
    assert rt("progress", lambda: store.progress("a")).state == TaskState.SUCCEEDED
    rt("failures", lambda: store.failures("a"))
    rt("list_tasks", lambda: store.list_tasks())
    # and a second task: tickets and a batch, a lost worker, a failure, retry, cancel
    store.create_task("b", TaskOptions(queue="qb"), now)
    store.add_jobs("b", "j", [SPEC] * 3, now, 3)
    store.seal("b", now)
    tickets = rt("release", lambda: store.release("qb", now)).tickets
    assert len(tickets) == 3
    first = rt("take", lambda: store.take("qb", tickets[0], now))
    assert (first.run, first.ref, first.batch) == (True, "j0", 3)
    _, s = rt("take_next", lambda: store.take_next("b", "j0", 1, now))
    assert s.run and s.ref == "j1"
    assert store.start("b", "j2", now).run
    rt("claim_due (nothing due)", lambda: store.claim_due(now + 1))
    assert rt("claim_due (j1, j2 due)", lambda: store.claim_due(now + 100))
    a1, a2 = store.start("b", "j1", now + 100).attempt, store.start("b", "j2", now + 100).attempt
    rt("finish (failed for good)", lambda: store.finish("b", "j1", a1, now + 100, error=_err("j1", a1)))
    store.finish("b", "j2", a2, now + 100)
    assert store.progress("b").state == TaskState.FAILED
    rt("retry", lambda: store.retry("b", now + 100))
    rt("cancel", lambda: store.cancel("b", "me", now + 100))
    rt("reject", lambda: store.reject("raw", "why", now))
    rt("delete", lambda: store.delete("b"))

    print("\nround trips per call:\n" + "\n".join(f"  {n:34} {c}" for n, c in seen.items()))
    # Then: two for each transition that reads one task; one or two more where the logic reads
    # again after a write it made (add_jobs: the queue's row; take: the fairest task, then its
    # next job; take_next and delete: the queue's row; retry: the failed jobs; claim_due: lock,
    # then what is due, then every queue's tickets). Measured, as bounds (docs/stores.md).
    bounds = {"progress": 1, "failures": 1, "list_tasks": 1, "reject": 1, "add_jobs (100 jobs)": 3, "take": 4,
              "take_next": 3, "delete": 3, "retry": 3, "claim_due (nothing due)": 5, "claim_due (j1, j2 due)": 6}
    for name, count in seen.items():
        limit = bounds.get(name, 2)
        assert count <= limit, f"{name} took {count} round trips (expected at most {limit}): {seen}"


# --- schema and migrations ----------------------------------------------------------------------


def test_migrations_apply_in_order_and_keep_rows(postgres_service: str, prefix: str) -> None:
    # Given tables at schema version 1 holding a task (written as version 1 wrote it)
    with psycopg.connect(postgres_service, autocommit=True) as conn:
        assert schema.upgrade(conn, prefix, target=1) == (0, 1)
        opts = ('{"policy": "fail", "max_retries": 0, "backoff": 1.0, "backoff_max": 300.0, "max_lost": 3, '
                '"keep_results": false, "retention": 1e9, "queue": "default"}')
        conn.execute(f"INSERT INTO {prefix}_tasks (id, state, options, created_at) VALUES ('old', 'running', %s, %s)",
                     (opts, time.time()))
    # When a store that may not migrate connects, it refuses and says what to run
    with pytest.raises(ConfigurationError, match="multistep db upgrade"):
        PostgresStore(postgres_service, prefix=prefix, upgrade=False)
    # and `multistep db upgrade` migrates
    cmd = [sys.executable, "-m", "multistep_core", "db", "upgrade", postgres_service, "--prefix", prefix]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"schema version 1 -> {schema.LATEST}" in done.stdout
    # Then the old row reads as a task, and what version 2 added (the end notification) works
    s = PostgresStore(postgres_service, prefix=prefix, upgrade=False)
    try:
        p = s.progress("old")
        assert p is not None and p.state == TaskState.RUNNING
        with psycopg.connect(postgres_service, autocommit=True) as listen:
            listen.execute(f"LISTEN {schema.channel(prefix)}")
            assert s.cancel("old", "test", time.time())
            notes = [n.payload for n in listen.notifies(timeout=5, stop_after=1)]
        assert notes == ["old"]
    finally:
        s.close()


def test_migrators_starting_together_migrate_once(postgres_service: str, prefix: str) -> None:
    out: list[tuple[int, int]] = []
    barrier = threading.Barrier(4)

    def upgrade() -> None:
        with psycopg.connect(postgres_service, autocommit=True) as c:
            barrier.wait()
            out.append(schema.upgrade(c, prefix))

    threads = [threading.Thread(target=upgrade) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    n = schema.LATEST
    assert sorted(out) == [(0, n)] + [(n, n)] * 3
    with psycopg.connect(postgres_service, autocommit=True) as conn:
        versions = [r[0] for r in conn.execute(f"SELECT version FROM {prefix}_schema_version ORDER BY version")]
        assert versions == list(range(1, n + 1))


def test_a_newer_schema_is_refused(postgres_service: str, prefix: str) -> None:
    PostgresStore(postgres_service, prefix=prefix).close()
    with psycopg.connect(postgres_service, autocommit=True) as conn:
        conn.execute(f"INSERT INTO {prefix}_schema_version (version) VALUES (%s)", (schema.LATEST + 1,))
    with pytest.raises(StoreError, match="newer than this multistep"):
        PostgresStore(postgres_service, prefix=prefix)


def test_configuration_errors(postgres_service: str) -> None:
    from multistep_core import connect

    with pytest.raises(ConfigurationError, match="prefix"):
        PostgresStore(postgres_service, prefix="1; DROP TABLE x")
    with pytest.raises(ConfigurationError, match="did you mean 'threads'"):
        connect(postgres_service + "?thread=2")
    t0 = time.monotonic()
    with pytest.raises(BackendConnectionError, match=r"cannot reach PostgreSQL at postgresql://u:\*\*\*@127\.0\.0\.1:1/x"):
        PostgresStore("postgresql://u:secret@127.0.0.1:1/x")
    assert time.monotonic() - t0 < 10


def test_text_with_nul_is_kept(store: PostgresStore) -> None:
    """PostgreSQL text cannot hold NUL; specs, who cancelled and refused messages may."""
    now = time.time()
    odd = 'a\x00b\x01c\x01\x02\\x00'
    store.create_task("n", TaskOptions(retention=1e9), now)
    store.add_jobs("n", "j", ['{"fn":"m:a","args":["' + odd + '"]}'], now)
    store.seal("n", now)
    assert store.start("n", "j0", now).spec == '{"fn":"m:a","args":["' + odd + '"]}'
    assert store.cancel("n", odd, now)
    store.reject(odd, odd, now)
    p = store.progress("n")
    assert p is not None and p.cancelled_by == odd
    assert store.rejected(1)[0].raw == odd and store.rejected(1)[0].reason == odd


# --- recovery and retention: SKIP LOCKED ---------------------------------------------------------


def _lost_jobs(store: PostgresStore, tasks: int, jobs: int, now: float) -> set[tuple[str, str]]:
    """``tasks`` tasks whose ``jobs`` jobs all started at ``now`` (leases end at now + lease)."""
    out = set()
    for t in range(tasks):
        tid = f"r{t}"
        store.create_task(tid, TaskOptions(max_lost=5), now)
        store.add_jobs(tid, "j", [SPEC] * jobs, now)
        store.seal(tid, now)
        for j in range(jobs):
            assert store.start(tid, f"j{j}", now).run
        out |= {(tid, f"j{j}") for j in range(jobs)}
    return out


def _states(store: PostgresStore, keys: set[tuple[str, str]]) -> dict[tuple[str, str], str]:
    by_task: dict[str, dict[str, str]] = {}
    for tid, _ in keys:
        if tid not in by_task:
            by_task[tid] = store.job_states(tid)
    return {(tid, ref): by_task[tid][ref] for tid, ref in keys}


def _lost_counts(store: PostgresStore, keys: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
    out = {}
    with store.transaction() as tx:
        for tid, ref in keys:
            row = tx.get_job(tid, ref)
            assert row is not None
            out[(tid, ref)] = row.lost
    return out


def _held(url: str, prefix: str, task_id: str) -> psycopg.Connection[Any]:
    """A connection holding the row lock of one task (as a transition in progress does)."""
    conn = psycopg.connect(url)
    conn.execute(f"SELECT id FROM {prefix}_tasks WHERE id = %s FOR UPDATE", (task_id,))
    return conn


def test_two_recoverers_neither_block_nor_claim_twice(store: PostgresStore, postgres_service: str, prefix: str) -> None:
    # Given 30 tasks of 4 jobs whose workers all died, and a transition in progress on r0
    now = time.time()
    lost = _lost_jobs(store, 30, 4, now)
    held = _held(postgres_service, prefix, "r0")
    stores = [PostgresStore(postgres_service, prefix=prefix, lease=5.0) for _ in range(2)]
    claimed: list[list[tuple[str, str]]] = [[], []]
    barrier = threading.Barrier(2)

    def recover(i: int) -> None:
        barrier.wait()
        for _ in range(200):  # small batches, so that the two passes interleave
            before = _states(stores[i], lost)
            stores[i].claim_due(now + 100, limit=3)
            after = _states(stores[i], lost)
            claimed[i] += [k for k in before if before[k] == "running" and after[k] != "running"]
            if all(v != "running" for k, v in after.items() if k[0] != "r0"):
                return

    try:
        # When two recoverers claim at the same time
        threads = [threading.Thread(target=recover, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        # Then neither waited for the held task, and every other lost job was declared lost once
        # (back in line for a ticket), never twice
        assert not any(t.is_alive() for t in threads), "a recoverer waited for a locked task"
        others = {k for k in lost if k[0] != "r0"}
        assert set(_states(store, others).values()) == {"pending"}
        assert set(_lost_counts(store, others).values()) == {1}, "a job was declared lost by both recoverers"
    finally:
        held.rollback()
        held.close()
    # and once the transition in progress is over, r0's jobs are claimed
    stores[0].claim_due(now + 100)
    assert all(v == "pending" for v in _states(stores[0], {k for k in lost if k[0] == "r0"}).values())
    lost_counts = _lost_counts(store, lost)
    assert set(lost_counts.values()) == {1}, "a job was declared lost twice"
    for s in stores:
        s.close()


def test_retention_deletes_only_ended_tasks_and_skips_locked_ones(store: PostgresStore, postgres_service: str,
                                                                 prefix: str) -> None:
    # Given two ended tasks past their retention, one of them locked by a transaction, and a running task
    now = time.time()
    for tid in ("old1", "old2", "live"):
        store.create_task(tid, TaskOptions(retention=1.0), now)
        store.add_jobs(tid, "j", [SPEC], now)
        store.seal(tid, now)
    assert store.cancel("old1", "t", now) and store.cancel("old2", "t", now)
    held = _held(postgres_service, prefix, "old2")
    try:
        # When recovery runs (it purges expired tasks first)
        done = threading.Event()
        threading.Thread(target=lambda: (store.claim_due(now + 100), done.set()), daemon=True).start()
        # Then it does not wait for the locked task, deletes the free one, keeps the running one
        assert done.wait(10), "the retention delete waited for a locked task"
        with psycopg.connect(postgres_service, autocommit=True) as c:
            left = sorted(r[0] for r in c.execute(f"SELECT id FROM {prefix}_tasks"))
            assert left == ["live", "old2"]
            assert c.execute(f"SELECT count(*) FROM {prefix}_jobs WHERE task_id = 'old1'").fetchone()[0] == 0
    finally:
        held.rollback()
        held.close()
    store.claim_due(now + 100)
    assert store.progress("live") is not None and store.job_states("old2") == {}


# --- waiting: LISTEN/NOTIFY -----------------------------------------------------------------------


def test_wait_is_woken_by_the_end_not_by_polling(postgres_service: str, prefix: str) -> None:
    from multistep_core import connect

    backend = connect(postgres_service, prefix=prefix, lease=5.0)
    backend.stop_recovery()
    other = PostgresStore(postgres_service, prefix=prefix, lease=5.0)  # another client ends the task
    try:
        now = time.time()
        store = backend.store
        store.create_task("w", TaskOptions(), now)
        store.add_jobs("w", "j", [SPEC], now)
        store.seal("w", now)
        assert store.start("w", "j0", now).run
        ended: list[float] = []
        waiter = threading.Thread(target=lambda: (backend.get_task("w").wait(timeout=60, poll=30.0),
                                                  ended.append(time.monotonic())))
        waiter.start()
        # Given the waiter listening for the task (gate: it is registered with the listener)
        deadline = time.monotonic() + 10
        while "w" not in getattr(store._listener, "_waiters", {}):
            assert time.monotonic() < deadline, "the waiter never started listening"
            time.sleep(0.01)
        reads = store.round_trips
        # When another client finishes the task's last job
        other.finish("w", "j0", 1, time.time())
        t0 = time.monotonic()
        waiter.join(20)
        # Then the wait returns at once (its poll interval is 30 s), after one read
        assert ended, "wait did not return"
        assert ended[0] - t0 < 1.0
        assert store.round_trips - reads <= 2
    finally:
        other.close()
        backend.close()


# --- connection errors ----------------------------------------------------------------------------


def test_a_dropped_connection_is_replaced_without_an_error(store: PostgresStore, postgres_service: str) -> None:
    now = time.time()
    store.create_task("c", TaskOptions(), now)
    pid = store._conn().info.backend_pid
    with psycopg.connect(postgres_service, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    store.add_jobs("c", "j", [SPEC], now)  # on a new connection
    assert store._conn().info.backend_pid != pid
    p = store.progress("c")
    assert p is not None and p.total == 1


@pytest.mark.parametrize("when", ["before the commit", "after the commit"])
def test_a_commit_cut_off_is_applied_once(store: PostgresStore, postgres_service: str, when: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection breaks during the exchange that carries COMMIT: before the server ran it
    (the transition is run again), or after (the answer lost: txid_status says it committed,
    and the transition is not run again). Either way the jobs are added once."""
    from multistep_core.postgres import txn

    store.create_task("cut", TaskOptions(), time.time())
    real = txn.PgTxn.exchange
    cut: list[str] = []

    def exchange(self: txn.PgTxn, stmts: Any) -> Any:
        if not stmts or stmts[-1][0] != "COMMIT" or cut:
            return real(self, stmts)
        cut.append(when)
        if when == "before the commit":  # the server goes away first
            with psycopg.connect(postgres_service, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (self.conn.info.backend_pid,))
            return real(self, stmts)
        real(self, stmts)  # committed; then the answer is lost
        self.conn.close()
        raise psycopg.OperationalError("the connection broke before the answer to COMMIT arrived")

    monkeypatch.setattr(txn.PgTxn, "exchange", exchange)
    assert store.add_jobs("cut", "j", [SPEC], time.time()) == ["j0"]
    assert cut == [when]
    p = store.progress("cut")
    assert p is not None and p.total == 1
    assert store.job_states("cut") == {"j0": "pending"}


def _pg_ctl() -> list[str]:
    exe = shutil.which("pg_ctlcluster")
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if exe is None or not versions or os.geteuid() != 0:
        from conftest import CI

        why = "restarting the server needs pg_ctlcluster, a cluster in /etc/postgresql and root"
        if CI:
            pytest.fail(why + " (CI is set)", pytrace=False)
        pytest.skip(why)
    return [exe, "--skip-systemctl-redirect", versions[-1], "main"]


@pytest.mark.usefixtures("redis_service")
def test_tasks_resume_after_the_database_server_restarts(postgres_service: str, prefix: str, tmp_path: Path) -> None:
    """RQ workers (separate processes) with their task state in PostgreSQL; the server restarts
    while jobs are running: every connection breaks, workers reconnect and the task ends exact."""
    require_module("rq")
    from multistep_conformance import Harness, Journal, eventually, jobs
    from services import REDIS_ADDR

    ctl = _pg_ctl()
    h = Harness(f"rq+redis://{REDIS_ADDR}/8?store={postgres_service}&prefix={prefix}", lease=5.0)
    try:
        journal = Journal(tmp_path)
        gate = journal.flag("gate")
        n = 24
        # Given a task of 24 jobs (the first ones block on a gate) and a finalizer
        with h.task() as task:
            for i in range(n):
                task.add_job(jobs.block, journal.path, f"j{i}", gate)
            task.add_finalization_job(jobs.record, journal.path, "fin")
        eventually(lambda: len(journal.starting("j")) >= 2, 60, "jobs running")
        # When the database server restarts while they run
        subprocess.run([*ctl, "restart"], check=True, timeout=120, capture_output=True)
        Path(gate).touch()
        # Then the task ends succeeded, each job counted once, the finalizer run once
        p = task.wait(timeout=120)
        assert p.state == TaskState.SUCCEEDED, (p, h.worker_logs())
        assert (p.succeeded, p.failed) == (n, 0)
        assert journal.count("fin") == 1
        # (the workers' connections broke: they said so, and went on)
        assert "retrying" in "".join(f.read_text(errors="replace") for f in h.logdir.glob("worker-*.log"))
        assert {line.split(":")[0] for line in journal.lines() if line.endswith(":done")} == {f"j{i}" for i in range(n)}
        # and a task created after the restart runs too (the client reconnected as well)
        with h.task() as after:
            after.add_job(jobs.record, journal.path, "after")
        assert after.wait(timeout=60).state == TaskState.SUCCEEDED
    finally:
        h.stop()


def test_clients_creating_one_id_at_once_get_one_task(store: PostgresStore, postgres_service: str, prefix: str) -> None:
    from multistep_core.errors import TaskExists

    stores = [PostgresStore(postgres_service, prefix=prefix) for _ in range(6)]
    barrier = threading.Barrier(6)
    out: list[str] = []

    def create(s: PostgresStore) -> None:
        barrier.wait()
        try:
            s.create_task("same", TaskOptions(), time.time())
            out.append("created")
        except TaskExists as exc:
            out.append(str(exc))

    threads = [threading.Thread(target=create, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert out.count("created") == 1, out
    assert all("a task with id 'same' already exists" in o for o in out if o != "created")
    # and close() closes every connection a store opened, whichever thread opened it
    pids = [c.info.backend_pid for s in stores for c in list(s._conns)]
    assert len(pids) >= 6
    for s in stores:
        s.close()
    with psycopg.connect(postgres_service, autocommit=True) as c:
        deadline = time.monotonic() + 10
        while c.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)).fetchone()[0]:
            assert time.monotonic() < deadline, "a closed store's connection is still open"
            time.sleep(0.05)


# --- rows RowStore may grow ------------------------------------------------------------------------


def test_row_fields_without_a_column_are_kept(store: PostgresStore) -> None:
    """Fields RowStore's rows gained after the table was made (the task's place in line,
    its batch size, its virtual time) are kept in the row's JSON column."""
    now = time.time()
    store.create_task("x", TaskOptions(), now)
    with store.transaction() as tx:
        t = tx.get_task("x")
        assert t is not None and (t.next_job, t.requeue, t.per_message, t.vt) == (0, [], 1, 0.0)
        t.next_job, t.requeue, t.per_message, t.vt = 5, ["j3", "j1"], 16, 2.5
        tx.put_task(t)
    with store.transaction() as tx:
        t = tx.get_task("x")
        assert t is not None and (t.next_job, t.requeue, t.per_message, t.vt) == (5, ["j3", "j1"], 16, 2.5)


class _Queue:
    """A stand-in for the dispatch redesign's scheduling row (name, to_dict, from_dict)."""

    def __init__(self, name: str, seq: int = 0) -> None:
        self.name, self.seq = name, seq

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "seq": self.seq}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> _Queue:
        return cls(d["name"], d["seq"])


def test_queue_rows_are_locked_by_the_transitions_that_change_them(store: PostgresStore, postgres_service: str,
                                                                   prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from multistep_core.postgres import txn

    monkeypatch.setattr(txn, "_queue_row", lambda: _Queue)
    stores = [PostgresStore(postgres_service, prefix=prefix) for _ in range(3)]
    barrier = threading.Barrier(3)

    def bump(s: PostgresStore) -> None:
        barrier.wait()
        for _ in range(30):  # read, add one, write: lost updates would show in the total
            with s.transaction() as tx:
                q = tx.get_queue("q") or _Queue("q")
                q.seq += 1
                tx.put_queue(q)

    with store.transaction() as tx:  # no row yet: none, and no name listed
        assert tx.get_queue("q") is None
    with store.transaction() as tx:
        assert tx.queues() == []
    threads = [threading.Thread(target=bump, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    with store.transaction() as tx:
        q = tx.get_queue("q")
        assert q is not None and q.seq == 90
        assert tx.queues() == ["q"]
    for s in stores:
        s.close()
