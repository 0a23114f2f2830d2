"""The Redis store against a real Redis (DB 12), and against the reference RowStore.

The differential test drives MemoryStore (RowStore logic, the reference) and RedisStore
with the same seeded random operations and asserts identical answers and identical
progress/failures/results/job_states after every step.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from multistep_core import connect
from multistep_core.embedded.memory import MemoryStore
from multistep_core.errors import BackendConnectionError
from multistep_core.model import Dispatch, Failure, Policy, TaskOptions, TaskState
from multistep_core.store import Store

redis = pytest.importorskip("redis")

URL = "redis://127.0.0.1:6379/12"


@pytest.fixture
def rstore(redis_service: None) -> Iterator[Any]:
    from multistep_core.redis import RedisStore

    s = RedisStore(URL, lease=5.0, prefix=f"mst{os.getpid()}")
    s.r.flushdb()
    try:
        yield s
    finally:
        s.r.flushdb()
        s.close()


# --- differential test ------------------------------------------------------------------

LEASE = 5.0
IDS = ["a", "b", "c", "d:1"]


def _outcome(fn: Callable[[], Any]) -> Any:
    try:
        return ("ok", fn())
    except Exception as exc:  # compared by type and message
        return ("raised", type(exc).__name__, str(exc))


def _norm_claims(ds: list[Dispatch]) -> list[tuple[str, str, tuple[str, ...]]]:
    return sorted((d.task_id, d.queue, d.refs) for d in ds)


def _snapshot(s: Store, tid: str) -> Any:
    return (
        _outcome(lambda: s.progress(tid)),
        _outcome(lambda: s.failures(tid)),
        _outcome(lambda: s.results(tid)),
        _outcome(lambda: s.job_states(tid)),
    )


class _Driver:
    def __init__(self, seed: int, mem: MemoryStore, red: Any) -> None:
        self.rng = random.Random(seed)
        self.mem = mem
        self.red = red
        self.now = time.time() - 1000.0
        self.refs: dict[str, list[str]] = {}  # refs added per task id (may be stale)
        self.attempts: dict[tuple[str, str], int] = {}
        self.running: set[tuple[str, str]] = set()
        self.sent: dict[str, set[str]] = {}
        self.log: list[str] = []

    def tick(self, lo: float = 0.001, hi: float = 0.7) -> float:
        self.now += self.rng.uniform(lo, hi)
        return self.now

    def both(self, name: str, call: Callable[[Store], Any], norm: Callable[[Any], Any] = lambda x: x) -> Any:
        a = _outcome(lambda: norm(call(self.mem)))
        b = _outcome(lambda: norm(call(self.red)))
        self.log.append(f"{name} -> {a!r}")
        assert a == b, "\n".join([*self.log[-25:], f"memory: {a!r}", f"redis:  {b!r}"])
        return a

    def spec(self) -> str:
        d: dict[str, Any] = {"fn": self.rng.choice(["m:a", "m:b"]), "args": [self.rng.randint(0, 9)]}
        if self.rng.random() < 0.25:
            d["retries"] = self.rng.randint(0, 2)
        return json.dumps(d)

    def pick_ref(self, tid: str, want: str = "") -> str:
        rng = self.rng
        if want == "sent" and self.sent.get(tid) and rng.random() < 0.7:
            return rng.choice(sorted(self.sent[tid]))
        if want == "running" and rng.random() < 0.8:
            live = [ref for (t, ref) in self.running if t == tid]
            if live:
                return rng.choice(sorted(live))
        refs = self.refs.get(tid) or []
        if not refs or rng.random() < 0.04:
            return rng.choice(["j0", "j7", "f0", "f3", "x0", "x1"])
        return rng.choice(refs)

    def note(self, r: Any) -> Any:
        """Remember the refs a transition asked to send: workers start those next."""
        if r[0] == "ok":
            ds = r[1] if isinstance(r[1], list) else [r[1]]
            for d in ds:
                if isinstance(d, Dispatch) and d.refs:
                    self.sent.setdefault(d.task_id, set()).update(d.refs)
        return r

    def pick_tid(self) -> str:
        live = [t for t in IDS if t in self.refs]
        if live and self.rng.random() < 0.9:
            return self.rng.choice(live)
        return self.rng.choice(IDS)

    def step(self) -> None:
        rng = self.rng
        tid = self.pick_tid()
        op = rng.choices(
            ["create", "add", "seal", "start", "renew", "finish", "cancel", "retry", "claim", "delete"],
            weights=[3, 8, 4, 24, 4, 28, 1.5, 4, 8, 1],
        )[0]
        dead = [t for t in IDS if t not in self.refs]
        if dead and len(dead) > 1 and rng.random() < 0.5:  # keep about three tasks alive
            tid, op = rng.choice(dead), "create"
        now = self.tick()
        if op == "create":
            opts = TaskOptions(
                policy=rng.choice(list(Policy)),
                max_retries=rng.choice([0, 0, 1, 2]),
                backoff=rng.choice([0.0, 0.5, 3.0]),
                backoff_max=rng.choice([1.0, 300.0]),
                max_lost=rng.choice([0, 1, 2]),
                keep_results=rng.random() < 0.5,
                queue=rng.choice(["default", "q2"]),
            )
            r = self.both(f"create {tid} {opts}", lambda s: s.create_task(tid, opts, now))
            if r[0] == "ok":
                self.refs[tid] = []
                self.sent.pop(tid, None)
        elif op == "add":
            kind = rng.choices(["j", "f", "x"], weights=[6, 2, 1])[0]
            specs = [self.spec() for _ in range(1 if kind == "x" else rng.randint(0, 4))]
            r = self.both(f"add {tid} {kind} {len(specs)}", lambda s: s.add_jobs(tid, kind, specs, now))
            if r[0] == "ok":
                known = self.refs.setdefault(tid, [])
                known.extend(x for x in r[1] if x not in known)
                if kind == "j":
                    self.sent.setdefault(tid, set()).update(r[1])
        elif op == "seal":
            self.note(self.both(f"seal {tid}", lambda s: s.seal(tid, now)))
        elif op == "start":
            ref = self.pick_ref(tid, "sent")
            r = self.both(f"start {tid} {ref}", lambda s: s.start(tid, ref, now))
            if r[0] == "ok" and r[1].run:
                self.attempts[(tid, ref)] = r[1].attempt
                self.running.add((tid, ref))
                self.sent.get(tid, set()).discard(ref)
        elif op == "renew":
            ref = self.pick_ref(tid, "running")
            att = self.attempts.get((tid, ref), 1) - rng.choice([0, 0, 1])
            self.both(f"renew {tid} {ref} {att}", lambda s: s.renew(tid, ref, att, now))
        elif op == "finish":
            ref = self.pick_ref(tid, "running")
            att = self.attempts.get((tid, ref), 0) - rng.choice([0, 0, 0, 0, 1])
            self.running.discard((tid, ref))
            if rng.random() < 0.4:
                err = Failure(
                    ref=ref, fn="m:a", type=rng.choice(["ValueError", "ValueError", "ValueError", "WorkerLost"]),
                    message=f"boom {rng.randint(0, 99)}", traceback="tb", attempt=att, at=now,
                )
                self.note(self.both(f"finish {tid} {ref} {att} error", lambda s: s.finish(tid, ref, att, now, error=err)))
            else:
                res = json.dumps({"v": rng.randint(0, 9)}) if rng.random() < 0.8 else None
                self.note(self.both(f"finish {tid} {ref} {att} ok", lambda s: s.finish(tid, ref, att, now, result=res)))
        elif op == "cancel":
            self.both(f"cancel {tid}", lambda s: s.cancel(tid, "tester@host", now))
        elif op == "retry":
            self.note(self.both(f"retry {tid}", lambda s: s.retry(tid, now)))
        elif op == "claim":
            # mostly far enough ahead that some leases and backoffs have expired
            later = self.tick(0.0, 12.0) if rng.random() < 0.7 else now
            r = self.both(f"claim {later - now:.2f}s", lambda s: s.claim_due(later, 10_000), _norm_claims)
            if r[0] == "ok":
                for t, _q, refs in r[1]:
                    self.sent.setdefault(t, set()).update(refs)
        elif op == "delete":
            self.both(f"delete {tid}", lambda s: s.delete(tid))
            self.refs.pop(tid, None)
        # Every operation but claim_due touches one task: compare that one (claim_due: all).
        for t in IDS if op == "claim" else [tid]:
            a, b = _snapshot(self.mem, t), _snapshot(self.red, t)
            assert a == b, "\n".join([*self.log[-25:], f"state of {t}:", f"memory: {a!r}", f"redis:  {b!r}"])


@pytest.mark.parametrize("block", range(6))
def test_differential_against_rowstore(rstore: Any, block: int) -> None:
    for seed in range(block * 15, block * 15 + 15):
        rstore.r.flushdb()
        mem = MemoryStore(lease=LEASE)
        d = _Driver(seed, mem, rstore)
        for _ in range(75):
            d.step()
        # a final sweep with every lease and backoff expired must agree too
        later = d.now + 1000.0
        d.both("claim final", lambda s, t=later: s.claim_due(t, 10_000), _norm_claims)
        d.both("list", lambda s: s.list_tasks(None, 100))
        for st in TaskState:
            d.both(f"list {st}", lambda s, st=st: s.list_tasks(st, 100))


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
            rstore._evalsha(pipe, "start", "run", [repr(now), "5.0", "j", j, f"j{j}"])
            rstore._evalsha(pipe, "finish", "run", [repr(now), "5.0", "j", j, f"j{j}", 1, "0", "", "", ""])
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
    """start, finish and renew are one network round trip each (pipelined commands count once)."""
    rstore.create_task("rt", TaskOptions(), time.time())
    rstore.add_jobs("rt", "j", [SPEC] * 2, time.time())
    rstore.seal("rt", time.time())
    calls: list[str] = []
    conn_cls = rstore.r.connection_pool.connection_class
    sent: list[int] = []
    orig_send = conn_cls.send_packed_command

    def send(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(1)
        return orig_send(self, command, check_health)

    conn_cls.send_packed_command = send
    try:
        for name, fn in [
            ("start", lambda: rstore.start("rt", "j0", time.time())),
            ("renew", lambda: rstore.renew("rt", "j0", 1, time.time())),
            ("finish", lambda: rstore.finish("rt", "j0", 1, time.time())),
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
    assert rstore.start("x", "j1", now).run
    assert rstore.claim_due(now + 1) == []
    assert b"x" in rstore.r.zrange(f"{rstore.prefix}:due-tasks", 0, -1)
    # the lease expired: the job is lost for good (max_lost=0) and the task fails
    assert rstore.claim_due(now + 10) == []
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
