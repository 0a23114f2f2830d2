"""The store-level part of the suite: transitions called directly, no queue, no workers.

Subclass :class:`StoreTests` and provide the backend string (the suite uses its store).
Includes a Hypothesis state machine that drives random sequences of operations against
the store and a plain-dict model of the contract, comparing them after every step.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule

from multistep_core import InvalidTransition, Store, TaskExists, TaskNotFound, TaskOptions, TaskState, connect
from multistep_core.model import Failure, Policy

from .fair_suite import FairStoreTests
from .nested_store_suite import NestedStoreTests

LEASE = 5.0
SPEC = '{"fn":"conformance.ping","args":[]}'


_created: list[str] = []


def has_job_states(store: Store) -> bool:
    """``Store.job_states`` is optional (a capability): ``RowStore`` has it, a native store may not."""
    return type(store).job_states is not Store.job_states


def fresh_id(prefix: str = "st") -> str:
    """A new task id, remembered so the class deletes its tasks when it is done (left behind,
    their leases would be recovered by the workers of later tests)."""
    tid = f"{prefix}-{uuid.uuid4().hex[:12]}"
    _created.append(tid)
    return tid


def err(ref: str, attempt: int) -> Failure:
    return Failure(ref=ref, fn="conformance.ping", type="RuntimeError", message="no", attempt=attempt, at=time.time())


def only(dispatches: list[Any], task_id: str) -> list[str]:
    return sorted(r for d in dispatches if d.task_id == task_id for r in d.refs)


class StoreTests(FairStoreTests, NestedStoreTests):
    """Override ``backend_string`` (or the ``store`` fixture)."""

    backend_string: ClassVar[str | None] = None

    @pytest.fixture(scope="class")
    @classmethod
    def store(cls, request: pytest.FixtureRequest) -> Iterator[Store]:
        url = cls.backend_string or request.config.getoption("--multistep-backend")
        backend = connect(url, lease=LEASE)
        # The tests call transitions themselves: no recovery thread of this process may hand
        # their jobs out (it would issue tickets for them and an in-process queue run them).
        backend.stop_recovery()
        try:
            yield backend.store
        finally:
            while _created:
                backend.store.delete(_created.pop())
            backend.close()

    def _task(self, store: Store, n: int = 1, fins: int = 0, per_message: int = 1, **opts: Any) -> str:
        tid = fresh_id()
        store.create_task(tid, TaskOptions(**opts), time.time())
        if n:
            store.add_jobs(tid, "j", [SPEC] * n, time.time(), per_message)
        if fins:
            store.add_jobs(tid, "f", [SPEC] * fins, time.time())
        return tid

    def test_job_states_name_every_ref(self, store: Store) -> None:
        if not has_job_states(store):
            pytest.skip(f"capability: Store.job_states (not implemented by {type(store).__name__})")
        tid = self._task(store, n=2, fins=1)
        store.start(tid, "j0", time.time())
        assert store.job_states(tid) == {"j0": "running", "j1": "pending", "f0": "pending"}

    def test_duplicate_starts_and_finishes_count_once(self, store: Store) -> None:
        tid = self._task(store, n=2, fins=1)
        store.seal(tid, time.time())
        s = store.start(tid, "j0", time.time())
        assert s.run and s.attempt == 1 and s.spec == SPEC
        assert store.start(tid, "j0", time.time()).reason == "already-running"
        assert not store.finish(tid, "j0", 1, time.time()).refs
        assert store.start(tid, "j0", time.time()).reason == "already-finished"
        assert not store.finish(tid, "j0", 1, time.time())  # a duplicate completion
        p = store.progress(tid)
        assert p is not None and (p.succeeded, p.pending, p.running) == (1, 1, 0)
        store.start(tid, "j1", time.time())
        d = store.finish(tid, "j1", 1, time.time())
        assert d.refs == ("f0",)
        assert not store.finish(tid, "j1", 1, time.time()).refs  # a redelivered last job: no second f0
        p = store.progress(tid)
        assert p is not None and p.state == TaskState.FINALIZING and p.succeeded == 2

    def test_concurrent_last_completions_dispatch_the_finalizer_once(self, store: Store) -> None:
        tasks = [self._task(store, n=8, fins=1) for _ in range(30)]
        for tid in tasks:
            store.seal(tid, time.time())
            for i in range(8):
                assert store.start(tid, f"j{i}", time.time()).run
        got: list[Any] = []
        lock = threading.Lock()
        barrier = threading.Barrier(8)

        def finish_all(i: int) -> None:
            barrier.wait()
            for tid in tasks:
                for _ in range(2):  # every completion delivered twice
                    d = store.finish(tid, f"j{i}", 1, time.time())
                    if d.refs:
                        with lock:
                            got.append(d)

        threads = [threading.Thread(target=finish_all, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(d.task_id for d in got) == sorted(tasks)
        assert all(d.refs == ("f0",) for d in got)

    def test_expired_lease_is_handed_out_again_and_stale_failures_ignored(self, store: Store) -> None:
        tid = self._task(store, n=1)
        store.seal(tid, time.time())
        t0 = time.time()
        assert store.start(tid, "j0", t0).attempt == 1
        assert only(store.claim_due(t0 + 1), tid) == []  # lease still valid
        assert store.renew(tid, "j0", 1, t0 + LEASE * 0.9)
        assert only(store.claim_due(t0 + LEASE * 1.5), tid) == []  # renewed
        assert only(store.claim_due(t0 + LEASE * 2 + 1), tid) == []  # the worker died: j0 back in line
        assert store.job_states(tid)["j0"] == "pending"
        assert not store.renew(tid, "j0", 1, t0 + LEASE * 2 + 1)
        assert store.start(tid, "j0", t0 + LEASE * 2 + 2).attempt == 2
        assert not store.finish(tid, "j0", 1, time.time(), error=err("j0", 1))  # the dead attempt's news
        p = store.progress(tid)
        assert p is not None and p.running == 1 and p.failed == 0
        store.finish(tid, "j0", 2, time.time())
        p = store.progress(tid)
        assert p is not None and p.state == TaskState.SUCCEEDED

    def test_a_job_that_keeps_losing_its_worker_fails_for_good(self, store: Store) -> None:
        tid = self._task(store, n=1, max_lost=1)
        store.seal(tid, time.time())
        now = time.time()
        for round_ in range(2):
            assert store.start(tid, "j0", now).run
            now += LEASE + 1
            assert only(store.claim_due(now), tid) == []
            assert store.job_states(tid)["j0"] == ("pending" if round_ == 0 else "failed")
        p = store.progress(tid)
        assert p is not None and p.state == TaskState.FAILED and p.failed == 1
        (f,) = store.failures(tid)
        assert f.type == "WorkerLost"

    def test_retry_waits_for_its_backoff(self, store: Store) -> None:
        tid = self._task(store, n=1, max_retries=1, backoff=10.0)
        store.seal(tid, time.time())
        now = time.time()
        store.start(tid, "j0", now)
        assert not store.finish(tid, "j0", 1, now, error=err("j0", 1)).refs  # nothing sent yet
        assert store.start(tid, "j0", now + 1).reason == "retry-not-due"
        store.claim_due(now + 5)
        assert store.job_states(tid)["j0"] == "retry_wait"
        store.claim_due(now + 11)
        assert store.job_states(tid)["j0"] == "pending"  # back in line for a ticket
        assert store.start(tid, "j0", now + 11).attempt == 2

    def test_a_follow_up_that_never_started_is_sent_again(self, store: Store) -> None:
        tid = self._task(store, n=0, fins=2)
        now = time.time()
        assert store.seal(tid, now).refs == ("f0",)
        assert store.start(tid, "f1", now).run is False  # out of turn
        assert only(store.claim_due(now + LEASE + 1), tid) == ["f0"]

    def test_jobs_of_a_batch_not_reached_stay_in_line(self, store: Store) -> None:
        # Given a task whose jobs run 4 per ticket, and a worker that runs j0, starts j1 and dies
        q = fresh_id("q")
        tid = self._task(store, n=4, queue=q, per_message=4)
        store.seal(tid, time.time())
        now = time.time()
        t1, *others = store.release(q, now).tickets
        assert len(others) == 3  # one ticket per waiting job (the window is larger)
        s0 = store.take(q, t1, now)
        assert (s0.task_id, s0.ref, s0.batch) == (tid, "j0", 4)
        _, s1 = store.take_next(tid, "j0", s0.attempt, now)
        assert s1.ref == "j1"
        # Then j1 goes back in line when its lease expires, and j2, j3 never left it
        store.claim_due(now + LEASE + 1)
        assert store.job_states(tid) == {"j0": "succeeded", "j1": "pending", "j2": "pending", "j3": "pending"}
        refs = []
        for t in others:  # the tickets still in the queue serve them
            st_ = store.take(q, t, now + LEASE + 2)
            while st_.run:
                refs.append(st_.ref)
                _, st_ = store.take_next(tid, st_.ref, st_.attempt, now + LEASE + 2)
        assert refs == ["j1", "j2", "j3"]  # a job back in line goes first
        p = store.progress(tid)
        assert p is not None and p.state == TaskState.SUCCEEDED

    def test_workers_going_on_past_a_cap_leave_no_ticket_owed(self, store: Store) -> None:
        # Given a task capped at two running jobs, two workers running its first two, and the
        # other six tickets parked on the cap
        q = fresh_id("q")
        tid = self._task(store, n=8, queue=q, max_concurrency=2)
        now = time.time()
        store.seal(tid, now)
        t1, t2, *rest = store.release(q, now).tickets
        running = [store.take(q, t1, now), store.take(q, t2, now)]
        assert [store.take(q, t, now).reason for t in rest] == ["capped"] * 6
        # When each worker goes on from job to job: every end sends a parked ticket back, and that
        # ticket finds the cap taken again by the worker that went on (or, at the end, no work)
        done: list[str] = []
        while running:
            st_ = running.pop(0)
            done.append(st_.ref)
            d, nxt = store.take_next(tid, st_.ref, st_.attempt, now, go_on=True)
            if nxt.run:
                running.append(nxt)
            for t in d.tickets:
                assert store.take(q, t, now).reason in ("capped", "no-work")
        assert sorted(done, key=lambda r: int(r[1:])) == [f"j{i}" for i in range(8)]
        # Then nothing is owed once no job waits: a new task of the queue gets one ticket per job
        # (tickets owed to work that is gone would hold their share of the window, and with no
        # job running would never come back)
        other = self._task(store, n=3, queue=q)
        store.seal(other, now)
        assert len(store.release(q, now).tickets) == 3

    def test_ids_and_transitions_errors(self, store: Store) -> None:
        tid = self._task(store, n=0)
        with pytest.raises(TaskExists):
            store.create_task(tid, TaskOptions(), time.time())
        with pytest.raises(TaskNotFound):
            store.seal(fresh_id("missing"), time.time())
        assert store.start(fresh_id("missing"), "j0", time.time()).reason == "task-missing"
        assert store.start(tid, "j5", time.time()).reason == "job-missing"
        store.seal(tid, time.time())
        with pytest.raises(InvalidTransition):
            store.add_jobs(tid, "j", [SPEC], time.time())
        with pytest.raises(InvalidTransition):
            store.retry(tid, time.time())

    def test_state_machine_matches_the_model(self, store: Store) -> None:
        machine: Any = type("Machine", (StoreMachine,), {"store": store})
        machine.TestCase.settings = settings(
            max_examples=25, stateful_step_count=30, deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        machine.TestCase().runTest()


# ---------------------------------------------------------------------------------------
# The plain model
# ---------------------------------------------------------------------------------------

DONE = ("succeeded", "failed")


@dataclass
class MTask:
    policy: str
    retries: int
    state: str = "open"
    sealed: bool = False
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    n_j: int = 0
    n_f: int = 0
    fin_done: int = 0
    has_cb: bool = False

    def count(self, state: str) -> int:
        return sum(1 for r, j in self.jobs.items() if r[0] == "j" and j["state"] == state)


class StoreMachine(RuleBasedStateMachine):
    store: Store
    tasks = Bundle("tasks")

    @initialize()
    def setup(self) -> None:
        self.model: dict[str, MTask] = {}

    # helpers
    def _fail(self, t: MTask) -> list[str]:
        t.state = "failed"
        if t.has_cb:
            t.jobs["x0"].update(state="pending", fails=0)
            return ["x0"]
        return []

    def _advance(self, t: MTask) -> list[str]:
        if t.state != "running" or t.count("succeeded") + t.count("failed") < t.n_j:
            return []
        if t.policy == "fail" and t.count("failed"):
            return self._fail(t)
        if t.fin_done < t.n_f:
            t.state = "finalizing"
            return [f"f{t.fin_done}"]
        t.state = "succeeded"
        return []

    @rule(target=tasks, policy=st.sampled_from(["fail", "continue", "fail_fast"]), retries=st.integers(0, 1),
          cb=st.booleans())
    def create(self, policy: str, retries: int, cb: bool) -> str:
        tid = fresh_id("sm")
        self.store.create_task(tid, TaskOptions(policy=Policy(policy), max_retries=retries, backoff=0), time.time())
        t = self.model[tid] = MTask(policy, retries)
        if cb:
            self.store.add_jobs(tid, "x", [SPEC], time.time())
            t.has_cb = True
            t.jobs["x0"] = {"state": "pending", "attempt": 0, "fails": 0}
        return tid

    @rule(tid=tasks, kind=st.sampled_from(["j", "f"]), n=st.integers(1, 3))
    def add(self, tid: str, kind: str, n: int) -> None:
        t = self.model[tid]
        if t.state not in ("open", "running"):
            with pytest.raises(InvalidTransition):
                self.store.add_jobs(tid, kind, [SPEC] * n, time.time())
            return
        refs = self.store.add_jobs(tid, kind, [SPEC] * n, time.time())
        first = t.n_j if kind == "j" else t.n_f
        assert refs == [f"{kind}{first + i}" for i in range(n)]
        for r in refs:
            t.jobs[r] = {"state": "pending", "attempt": 0, "fails": 0}
        if kind == "j":
            t.n_j += n
        else:
            t.n_f += n

    @rule(tid=tasks)
    def seal(self, tid: str) -> None:
        t = self.model[tid]
        if t.state in ("succeeded", "failed", "cancelled"):
            assert not self.store.seal(tid, time.time())
            return
        if t.sealed:
            with pytest.raises(InvalidTransition):
                self.store.seal(tid, time.time())
            return
        t.sealed = True
        t.state = "running"
        expected = self._advance(t)
        assert sorted(self.store.seal(tid, time.time()).refs) == sorted(expected)

    def _pick(self, t: MTask, data: st.DataObject) -> str | None:
        if not t.jobs:
            return None
        return str(data.draw(st.sampled_from(sorted(t.jobs))))

    @rule(tid=tasks, data=st.data())
    def start(self, tid: str, data: st.DataObject) -> None:
        t = self.model[tid]
        ref = self._pick(t, data)
        if ref is None:
            return
        j = t.jobs[ref]
        got = self.store.start(tid, ref, time.time())
        if j["state"] in DONE:
            assert got.reason == "already-finished"
            return
        if j["state"] == "running":
            assert got.reason == "already-running"
            return
        kind, idx = ref[0], int(ref[1:])
        ok = (
            (kind == "j" and t.state in ("open", "running"))
            or (kind == "f" and t.state == "finalizing" and idx == t.fin_done)
            or (kind == "x" and t.state == "failed")
        )
        assert got.run == ok, (ref, t.state, got)
        if ok:
            j["state"] = "running"
            j["attempt"] += 1
            assert got.attempt == j["attempt"]

    @rule(tid=tasks, data=st.data(), success=st.booleans(), stale=st.booleans())
    def finish(self, tid: str, data: st.DataObject, success: bool, stale: bool) -> None:
        t = self.model[tid]
        ref = self._pick(t, data)
        if ref is None:
            return
        j = t.jobs[ref]
        attempt = j["attempt"] - (1 if stale else 0)
        got = self.store.finish(tid, ref, attempt, time.time(), error=None if success else err(ref, attempt))
        expected: list[str] = []
        kind, idx = ref[0], int(ref[1:])
        out_of_turn = (kind == "f" and (t.state != "finalizing" or idx != t.fin_done)) or (
            kind == "x" and t.state != "failed"
        )
        if j["state"] in DONE or (not success and (j["state"] != "running" or stale)) or out_of_turn:
            assert not got.refs
            return
        if success:
            j["state"] = "succeeded"
            if kind == "j":
                expected = self._advance(t)
            elif kind == "f" and t.state == "finalizing" and idx == t.fin_done:
                t.fin_done += 1
                if t.fin_done < t.n_f:
                    expected = [f"f{t.fin_done}"]
                else:
                    t.state = "succeeded"
        else:
            j["fails"] += 1
            if j["fails"] <= t.retries:
                j["state"] = "pending"
                expected = [ref] if kind != "j" else []  # a job goes back in line for a ticket
            else:
                j["state"] = "failed"
                if kind == "j":
                    if t.state in ("open", "running") and t.policy == "fail_fast":
                        expected = self._fail(t)
                    else:
                        expected = self._advance(t)
                elif kind == "f" and t.state == "finalizing":
                    expected = self._fail(t)
        assert sorted(got.refs) == sorted(expected), (ref, success, got, expected)

    @rule(tid=tasks)
    def cancel(self, tid: str) -> None:
        t = self.model[tid]
        got = self.store.cancel(tid, "machine", time.time())
        if t.state in ("succeeded", "cancelled"):
            assert got is False
        else:
            assert got is True
            t.state = "cancelled"

    @rule(tid=tasks)
    def retry(self, tid: str) -> None:
        t = self.model[tid]
        if t.state != "failed":
            with pytest.raises(InvalidTransition):
                self.store.retry(tid, time.time())
            return
        refs = []
        fin_failed = None
        for ref, j in t.jobs.items():
            if ref[0] == "f" and j["state"] == "failed":
                fin_failed = ref
            if ref[0] == "j" and j["state"] in ("failed", "pending"):
                j.update(state="pending", fails=0)
                refs.append(ref)
        if fin_failed is not None and not refs:
            t.jobs[fin_failed].update(state="pending", fails=0)
            t.state = "finalizing"
            expected = [fin_failed]
        else:
            t.state = "running" if t.sealed else "open"
            expected = self._advance(t)  # the jobs are back in line for tickets
        assert sorted(self.store.retry(tid, time.time()).refs) == sorted(expected)

    @invariant()
    def matches_model(self) -> None:
        for tid, t in self.model.items():
            p = self.store.progress(tid)
            assert p is not None
            assert p.state.value == t.state, (tid, p.state, t.state)
            counts = (t.n_j, t.count("succeeded"), t.count("failed"), t.count("running"), t.n_f, t.fin_done)
            assert (p.total, p.succeeded, p.failed, p.running, p.finalizers_total, p.finalizers_done) == counts
            assert p.pending == t.n_j - sum(counts[1:4])
            if has_job_states(self.store):  # optional: a capability, as in the differential test
                states = self.store.job_states(tid)
                assert states == {r: j["state"] for r, j in t.jobs.items()}, (states, t.jobs)
