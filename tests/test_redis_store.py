"""The Redis store against a real Redis (DB 12): what only Redis has (concurrent scripts,
round trips, memory per job, expiry, the due index, the capped rejected list, connection
errors). Each test gets its own key prefix, removed afterwards (the DB is never flushed: other
tests use it at the same time).

Its logic is checked against the reference RowStore by the shipped differential test,
adopted in ``test_conformance_redis.py`` (``multistep_conformance.differential``).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from services import REDIS_ADDR

from multistep_core import connect
from multistep_core.errors import BackendConnectionError
from multistep_core.model import Dispatch, Policy, TaskOptions, TaskState

redis = pytest.importorskip("redis")

URL = f"redis://{REDIS_ADDR}/12"


def _drop(client: Any, prefix: str) -> None:
    for key in list(client.scan_iter(match=f"{prefix}:*", count=1000)):
        client.delete(key)


@pytest.fixture
def rstore(redis_service: None) -> Iterator[Any]:
    from multistep_core.redis import RedisStore

    s = RedisStore(URL, lease=5.0, prefix=f"mst{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield s
    finally:
        _drop(s.r, s.prefix)
        s.close()


# --- focused tests -------------------------------------------------------------------------

SPEC = '{"fn":"m:a","args":[]}'


def test_concurrent_last_jobs_dispatch_f0_exactly_once(rstore: Any) -> None:
    n_tasks, n_jobs = 200, 4
    now = time.time()
    for t in range(n_tasks):
        tid = f"c{t}"
        rstore.create_task(tid, TaskOptions(), now)
        rstore.add_jobs(tid, "j", [SPEC] * n_jobs, now)
        rstore.add_jobs(tid, "f", [SPEC], now)
        rstore.seal(tid, now)
        for j in range(n_jobs):
            assert rstore.start(tid, f"j{j}", now).run
    work = [(f"c{t}", f"j{j}") for t in range(n_tasks) for j in range(n_jobs)]
    work += work  # every completion delivered twice
    random.Random(7).shuffle(work)
    f0: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker(part: list[tuple[str, str]]) -> None:
        from multistep_core.redis import RedisStore

        s = RedisStore(URL, lease=5.0, prefix=rstore.prefix)  # own connection per thread
        barrier.wait()
        for tid, ref in part:
            d = s.finish(tid, ref, 1, time.time())
            if d:
                with lock:
                    f0.extend(f"{d.task_id}/{r}" for r in d.refs)
        s.close()

    threads = [threading.Thread(target=worker, args=(work[i::8],)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(f0) == sorted(f"c{t}/f0" for t in range(n_tasks))
    for t in range(n_tasks):
        p = rstore.progress(f"c{t}")
        assert p.state == TaskState.FINALIZING and p.succeeded == n_jobs and p.running == 0


def test_concurrent_takes_start_each_job_once(rstore: Any) -> None:
    """Eight connections take the tickets of one queue at once: every job of every task starts
    exactly once, a capped task never runs more than its cap, and no ticket starts two jobs."""
    now = time.time()
    for t, cap in enumerate([0, 2, 0, 1]):
        rstore.create_task(f"t{t}", TaskOptions(max_concurrency=cap, weight=1.0 + t), now)
        rstore.add_jobs(f"t{t}", "j", [SPEC] * 25, now)
        rstore.seal(f"t{t}", now)
    tickets = list(rstore.release("default", now).tickets)
    assert len(tickets) == 64  # the window
    started: list[tuple[str, str]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker() -> None:
        from multistep_core.redis import RedisStore

        s = RedisStore(URL, lease=5.0, prefix=rstore.prefix)
        barrier.wait()
        while True:
            with lock:
                if not tickets:
                    break
                ticket = tickets.pop()
            st = s.take("default", ticket, time.time())
            if st.run:
                with lock:
                    started.append((st.task_id, st.ref))
                d = s.finish(st.task_id, st.ref, st.attempt, time.time())
                with lock:
                    tickets.extend(d.tickets)
        s.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(started) == len(set(started)) == 100
    assert all(rstore.progress(f"t{t}").state == TaskState.SUCCEEDED for t in range(4))
    q = rstore.queue_state("default")
    assert (q.waiting, q.groups) == (0, {})


def _add_timed(rstore: Any, tid: str, n: int) -> float:
    rstore.create_task(tid, TaskOptions(), time.time())
    specs = [json.dumps({"fn": "bench:work", "args": [i]}, separators=(",", ":")) for i in range(n)]
    t0 = time.perf_counter()
    refs = rstore.add_jobs(tid, "j", specs, time.time())
    dt = time.perf_counter() - t0
    assert len(refs) == n and refs[-1] == f"j{n - 1}"
    return dt


def test_100k_add_timing_and_pending_memory(rstore: Any) -> None:
    n = 100_000
    dt = _add_timed(rstore, "big", n)
    pending = rstore.memory_usage("big")
    print(f"\nadd_jobs: {n} jobs in {dt:.2f}s = {n / dt:,.0f} jobs/s")
    print(f"pending: {pending:,} bytes for {n} jobs = {pending / n:.1f} bytes/job")
    p = rstore.progress("big")
    assert p.total == n and p.pending == n


def test_finished_jobs_cost_a_bit(rstore: Any) -> None:
    n = 10_000
    _add_timed(rstore, "run", n)
    pending = rstore.memory_usage("run")
    rstore.seal("run", time.time())
    r = rstore.r
    keys = rstore.keys("run")
    half = n // 2
    # start + finish every job (pipelined here only to keep the test short)
    mid = 0
    for i in range(0, n, 1000):
        pipe = r.pipeline(transaction=False)
        now = time.time()
        for j in range(i, min(n, i + 1000)):
            rstore._evalsha(pipe, "start", "run", now, ["j", j, f"j{j}"])
            rstore._evalsha(pipe, "finish", "run", now, ["j", j, f"j{j}", 1, "0", "", "", ""])
        pipe.execute()
        if i + 1000 == half:
            mid = rstore.memory_usage("run")
    p = rstore.progress("run")
    assert p.state == TaskState.SUCCEEDED and p.succeeded == n
    done = rstore.memory_usage("run")
    print(f"\n{n} jobs: pending {pending / n:.1f} B/job; half done {mid / n:.1f} B/job; "
          f"all done {done / n:.2f} B/job; keys left: {[k for k in keys if r.exists(k)]}")
    assert done / n <= 100
    assert 0 < r.pttl(keys[0]) <= 7 * 24 * 3600 * 1000


def test_single_round_trips(rstore: Any) -> None:
    """Every transition a job goes through is one network round trip (pipelined commands count
    once): per job with per_message=1, take + finish; with per_message=k, take_next per job."""
    rstore.create_task("rt", TaskOptions(), time.time())
    rstore.add_jobs("rt", "j", [SPEC] * 4, time.time(), 2)
    rstore.seal("rt", time.time())
    calls: list[str] = []
    conn_cls = rstore.r.connection_pool.connection_class
    sent: list[int] = []
    orig_send = conn_cls.send_packed_command

    def send(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(1)
        return orig_send(self, command, check_health)

    conn_cls.send_packed_command = send
    rstore._next_sweep = time.monotonic() + 3600  # claim_due's repair sweep (every 15 s) is not per job
    try:
        for name, fn in [
            ("release", lambda: rstore.release("default", time.time())),
            ("take", lambda: rstore.take("default", 1, time.time())),
            ("renew", lambda: rstore.renew("rt", "j0", 1, time.time())),
            ("take_next", lambda: rstore.take_next("rt", "j0", 1, time.time())),
            ("finish", lambda: rstore.finish("rt", "j1", 1, time.time())),
            ("start", lambda: rstore.start("rt", "j3", time.time())),
            ("claim_due", lambda: rstore.claim_due(time.time())),
        ]:
            sent.clear()
            fn()
            calls.append(f"{name}={len(sent)}")
            assert len(sent) == 1, calls
    finally:
        conn_cls.send_packed_command = orig_send
    print("\nround trips:", ", ".join(calls))


def test_expiry_after_retention(rstore: Any) -> None:
    now = time.time()
    rstore.create_task("ttl", TaskOptions(retention=0.3), now)
    rstore.add_jobs("ttl", "j", [SPEC], now)
    rstore.seal("ttl", now)
    rstore.cancel("ttl", "me", now)
    assert rstore.r.pttl(rstore.keys("ttl")[0]) > 0
    # a late finish on the cancelled task writes keys that expire with the rest
    rstore.finish("ttl", "j0", 0, time.time())
    assert all(rstore.r.pttl(k) > 0 for k in rstore.keys("ttl") if rstore.r.exists(k))
    time.sleep(0.5)
    assert rstore.progress("ttl") is None
    assert not any(rstore.r.exists(k) for k in rstore.keys("ttl"))
    assert [p.task_id for p in rstore.list_tasks()] == []
    assert rstore.r.zcard(f"{rstore.prefix}:tasks") == 0  # pruned
    rstore.create_task("ttl", TaskOptions(), time.time())  # the id is free again


def test_claim_due_uses_the_due_index(rstore: Any) -> None:
    now = time.time()
    for tid in ("x", "y"):
        rstore.create_task(tid, TaskOptions(max_lost=0, policy=Policy.FAIL_FAST), now)
        rstore.add_jobs(tid, "j", [SPEC] * 3, now)
        rstore.seal(tid, now)
    assert rstore.release("default", now).tickets == (1, 2, 3, 4, 5, 6)
    assert rstore.start("x", "j1", now).run
    assert rstore.claim_due(now + 1) == []
    assert b"x" in rstore.r.zrange(f"{rstore.prefix}:due-tasks", 0, -1)
    # the lease expired: the job is lost for good (max_lost=0) and the task fails; the queue's
    # tickets, taken by no worker for two leases, are sent again
    assert rstore.claim_due(now + 10) == [Dispatch("", "default", (), (1, 2, 3, 4, 5, 6))]
    assert rstore.progress("x").state == TaskState.FAILED
    assert [f.type for f in rstore.failures("x")] == ["WorkerLost"]
    assert rstore.r.zcard(f"{rstore.prefix}:due-tasks") == 0


def test_rejected_is_capped(rstore: Any) -> None:
    from multistep_core.redis import RedisStore

    s = RedisStore(URL, max_rejected=5, client=rstore.r, prefix=rstore.prefix)
    for i in range(8):
        s.reject(f"raw{i}" + "x" * 5000, f"reason {i}", float(i))
    got = s.rejected(100)
    assert [r.reason for r in got] == [f"reason {i}" for i in (7, 6, 5, 4, 3)]
    assert len(got[0].raw) == 4096 and got[0].at == 7.0


def test_connection_error_names_the_url() -> None:
    from multistep_core.redis import RedisStore

    with pytest.raises(BackendConnectionError, match=r"127\.0\.0\.1:1/0"):
        RedisStore("redis://127.0.0.1:1/0")
    with pytest.raises(BackendConnectionError) as info:
        RedisStore("redis://u:secret@127.0.0.1:1/0")
    assert "secret" not in str(info.value) and "u:***@127.0.0.1:1" in str(info.value)


def test_connect_alias(redis_service: None) -> None:
    backend = connect(URL + "?threads=2&lease=7")
    try:
        assert backend.name == "redis" and backend.store.lease == 7.0
    finally:
        backend.close()
    with pytest.raises(Exception, match="unknown option 'bogus'"):
        connect(URL, bogus=1)
