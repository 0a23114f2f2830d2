"""Fair share between tasks (docs/fairness.md), as the store decides it and end to end.

:class:`FairStoreTests` drives ``take`` / ``release`` / ``finish`` of a store directly, each
test on a queue of its own; :class:`FairShareTests` runs tasks through the real queue and
workers and reads what happened from the journal the jobs write: which job ended before
which, and how many jobs were running at the same moment (never the store's own counters).
Both are mixed into :class:`StoreTests` and :class:`BackendTests`.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any

from multistep_core import Store, Task, TaskOptions, TaskState

from . import jobs
from .harness import Harness, Journal, eventually

SPEC = '{"fn":"conformance.ping","args":[]}'


def _queue() -> str:
    return f"fq-{uuid.uuid4().hex[:10]}"


class _Line:
    """A queue of one store test: tasks on it, and a pool of the tickets it was given."""

    def __init__(self, store: Store, created: list[str]) -> None:
        self.store, self.created, self.name = store, created, _queue()
        self.tickets: list[int] = []
        self.now = time.time()

    def task(self, n: int, **opts: Any) -> str:
        tid = f"fair-{uuid.uuid4().hex[:12]}"
        self.created.append(tid)
        self.store.create_task(tid, TaskOptions(queue=self.name, **opts), self.now)
        self.store.add_jobs(tid, "j", [SPEC] * n, self.now)
        self.store.seal(tid, self.now)
        self.tickets += self.store.release(self.name, self.now).tickets
        return tid

    def take(self) -> Any:
        if not self.tickets:
            self.tickets += self.store.release(self.name, self.now).tickets
        assert self.tickets, "the store issued no ticket although jobs are waiting"
        return self.store.take(self.name, self.tickets.pop(0), self.now)

    def finish(self, s: Any) -> None:
        self.tickets += self.store.finish(s.task_id, s.ref, s.attempt, self.now).tickets

    def run(self, n: int) -> list[str]:
        """Take and finish ``n`` jobs; the task id of each, in order."""
        out = []
        for _ in range(n):
            s = self.take()
            assert s.run, s
            out.append(s.task_id)
            self.finish(s)
        return out


class FairStoreTests:
    """Fair share at the store: the order ``take`` hands jobs out in, caps, tickets."""

    def _line(self, store: Store) -> _Line:
        from .store_suite import _created

        return _Line(store, _created)

    def test_take_alternates_between_tasks_and_a_small_task_is_served_at_once(self, store: Store) -> None:
        line = self._line(store)
        big = line.task(1000)
        assert line.run(5) == [big] * 5
        small = line.task(3)
        # Then the small task is served at the next take, and the two alternate
        order = line.run(6)
        assert order[0] == small and Counter(order) == {small: 3, big: 3}

    def test_weights_split_the_share(self, store: Store) -> None:
        line = self._line(store)
        heavy = line.task(400, weight=3)
        light = line.task(400, weight=1)
        got = Counter(line.run(80))
        assert abs(got[heavy] - 60) <= 1 and got[heavy] + got[light] == 80

    def test_groups_share_first_then_their_tasks(self, store: Store) -> None:
        line = self._line(store)
        tenant = [line.task(100, group="tenant-a") for _ in range(3)]
        alone = line.task(100)
        got = Counter(line.run(60))
        assert abs(got[alone] - 30) <= 1 and sum(got[t] for t in tenant) == 60 - got[alone]
        assert all(abs(got[t] - 10) <= 1 for t in tenant)

    def test_max_concurrency_parks_a_ticket_until_a_job_ends(self, store: Store) -> None:
        line = self._line(store)
        tid = line.task(10, max_concurrency=2)
        first, second = line.take(), line.take()
        assert first.run and second.run
        third = line.take()
        assert (third.run, third.reason) == (False, "capped")
        p = store.progress(tid)
        assert p is not None and p.running == 2
        # When a running job ends, the parked ticket comes back and starts the next job
        line.finish(first)
        again = line.take()
        assert again.run and again.task_id == tid
        assert store.progress(tid).running == 2  # type: ignore[union-attr]

    def test_group_max_concurrency_caps_the_group_over_its_tasks(self, store: Store) -> None:
        line = self._line(store)
        a = line.task(10, group="capped", group_max_concurrency=3)
        b = line.task(10, group="capped", group_max_concurrency=3)
        other = line.task(10)
        started = [line.take() for _ in range(6)]
        by_task = Counter(s.task_id for s in started if s.run)
        assert by_task[a] + by_task[b] == 3 and by_task[other] == 3

    def test_tickets_are_taken_once_and_unknown_ones_skipped(self, store: Store) -> None:
        line = self._line(store)
        line.task(3)
        t = line.tickets.pop(0)
        assert store.take(line.name, t, line.now).run
        assert store.take(line.name, t, line.now).reason == "stale-ticket"  # a duplicate delivery
        assert store.take(line.name, 10**9, line.now).reason == "stale-ticket"  # never issued

    def test_the_broker_holds_at_most_a_window_of_tickets(self, store: Store) -> None:
        line = self._line(store)
        line.task(5000)
        assert len(line.tickets) == store.window
        assert not store.release(line.name, line.now)  # nothing more is owed

    def test_a_lost_ticket_is_sent_again_after_the_ticket_timeout(self, store: Store) -> None:
        line = self._line(store)
        line.task(1)
        (t,) = line.tickets
        timeout = store.lease * 2
        mine = [d for d in store.claim_due(line.now + timeout * 0.5) if d.queue == line.name]
        assert mine == []
        mine = [d for d in store.claim_due(line.now + timeout + 0.01) if d.queue == line.name]
        assert [d.tickets for d in mine] == [(t,)]  # the same ticket: a late original is then a duplicate
        # and the next re-send backs off (twice the timeout)
        later = line.now + timeout + 0.01
        assert not [d for d in store.claim_due(later + timeout * 1.5) if d.queue == line.name]
        assert [d.tickets for d in store.claim_due(later + timeout * 2 + 0.01) if d.queue == line.name] == [(t,)]
        assert store.take(line.name, t, line.now).run

    def test_cancel_frees_the_share_at_once(self, store: Store) -> None:
        line = self._line(store)
        big = line.task(100)
        other = line.task(100)
        store.cancel(big, "fair suite", line.now)
        assert set(line.run(10)) == {other}

    def test_a_job_back_in_line_is_served_before_new_ones(self, store: Store) -> None:
        line = self._line(store)
        tid = line.task(5, max_retries=1, backoff=0.0)
        s = line.take()
        line.tickets += store.finish(tid, s.ref, s.attempt, line.now, error=_err(s.ref, s.attempt)).tickets
        again = line.take()
        assert (again.ref, again.attempt) == (s.ref, 2)


def _err(ref: str, attempt: int) -> Any:
    from multistep_core.model import Failure

    return Failure(ref=ref, fn="conformance.ping", type="RuntimeError", message="no", attempt=attempt, at=time.time())


def _running_at_once(lines: list[str], prefix: str) -> int:
    """The most ``prefix*`` spans (``label:start:t`` / ``label:end:t``) open at one moment."""
    events = []
    for line in lines:
        if not line.startswith(prefix):
            continue
        _, what, t = line.rsplit(":", 2)
        events.append((float(t), 0 if what == "end" else 1))
    most = now = 0
    for _, kind in sorted(events):
        now += 1 if kind else -1
        most = max(most, now)
    return most


def _hold_every_slot(harness: Harness, journal: Journal) -> tuple[str, Task]:
    """Start a task of blocking jobs, one per worker slot, and return once each slot runs one
    (the gate file, and the task: it ends once the gate is created)."""
    gate = journal.flag("slots")
    if harness.external:
        slots = harness.concurrency * max(len(harness.procs), 1)
    else:
        slots = int(getattr(harness.backend.queue, "threads", 0) or 1)
    with harness.task() as blockers:
        blockers.add_jobs(jobs.block, [(journal.path, f"slot{i}", gate) for i in range(slots)])
    eventually(lambda: len(journal.starting("slot")) >= slots, what=f"{slots} blocking jobs to hold every slot")
    return gate, blockers


class FairShareTests:
    """Fair share end to end, judged by the journal."""

    def test_a_small_task_is_not_stuck_behind_a_big_one(self, harness: Harness, journal: Journal) -> None:
        # Given a big task, and a small one created right after it
        with harness.task() as big:
            big.add_jobs(jobs.record, [(journal.path, f"big{i}", 0.01) for i in range(150)])
        with harness.task() as small:
            small.add_jobs(jobs.record, [(journal.path, f"small{i}", 0.01) for i in range(6)])
        assert small.wait(timeout=120).state == TaskState.SUCCEEDED
        assert big.wait(timeout=120).state == TaskState.SUCCEEDED
        # Then the small task ended long before the big one (in a FIFO queue: after all 150)
        lines = journal.lines()
        last_small = max(i for i, line in enumerate(lines) if line.startswith("small"))
        bigs_before = sum(1 for line in lines[:last_small] if line.startswith("big"))
        assert bigs_before <= 60, f"the small task waited for {bigs_before} of the big task's 150 jobs"

    def test_equal_tasks_progress_evenly(self, harness: Harness, journal: Journal) -> None:
        # Given every worker slot held by a blocking job, so that the four tasks below all
        # exist before any of their jobs starts (however slow creating them is on a busy machine)
        gate, blockers = _hold_every_slot(harness, journal)
        tasks = []
        for t in range(4):
            with harness.task() as task:
                task.add_jobs(jobs.record, [(journal.path, f"t{t}.{i}", 0.005) for i in range(40)])
            tasks.append(task)
        open(gate, "w").close()
        # When they run side by side
        for task in tasks:
            assert task.wait(timeout=120).state == TaskState.SUCCEEDED
        assert blockers.wait(timeout=120).state == TaskState.SUCCEEDED
        # Then when the first of them ended, each other one had done at least half its jobs
        lines = [line for line in journal.lines() if line.startswith("t")]
        done_at: dict[int, int] = {}
        first_done = None
        counts = Counter[int]()
        for line in lines:
            t = int(line[1 : line.index(".")])
            counts[t] += 1
            if counts[t] == 40 and first_done is None:
                first_done = t
                done_at = dict(counts)
        assert first_done is not None
        others = {t: done_at.get(t, 0) for t in range(4) if t != first_done}
        assert all(n >= 20 for n in others.values()), f"when task {first_done} ended the others had done {others} of 40"

    def test_a_heavier_task_gets_its_weight_in_share(self, harness: Harness, journal: Journal) -> None:
        with harness.task(weight=3) as heavy:
            heavy.add_jobs(jobs.record, [(journal.path, f"h{i}", 0.005) for i in range(60)])
        with harness.task(weight=1) as light:
            light.add_jobs(jobs.record, [(journal.path, f"l{i}", 0.005) for i in range(60)])
        assert heavy.wait(timeout=120).state == TaskState.SUCCEEDED
        assert light.wait(timeout=120).state == TaskState.SUCCEEDED
        lines = journal.lines()
        last_heavy = max(i for i, line in enumerate(lines) if line.startswith("h"))
        light_before = sum(1 for line in lines[:last_heavy] if line.startswith("l"))
        # ideal 20 (60 / 3); FIFO would give 0 and equal weights about 55
        assert 8 <= light_before <= 34, f"the weight-1 task did {light_before} jobs while the weight-3 task did 60"

    def test_max_concurrency_is_never_exceeded(self, harness: Harness, journal: Journal) -> None:
        with harness.task(max_concurrency=2) as task:
            task.add_jobs(jobs.span, [(journal.path, f"cap{i}", 0.08) for i in range(12)])
        assert task.wait(timeout=120).state == TaskState.SUCCEEDED
        assert _running_at_once(journal.lines(), "cap") == 2

    def test_group_max_concurrency_holds_over_the_group(self, harness: Harness, journal: Journal) -> None:
        group = f"g{uuid.uuid4().hex[:8]}"
        tasks = []
        for t in range(2):
            with harness.task(group=group, group_max_concurrency=2) as task:
                task.add_jobs(jobs.span, [(journal.path, f"grp{t}.{i}", 0.06) for i in range(8)])
            tasks.append(task)
        for task in tasks:
            assert task.wait(timeout=120).state == TaskState.SUCCEEDED
        assert _running_at_once(journal.lines(), "grp") == 2

    def test_cancel_frees_the_share_at_once(self, harness: Harness, journal: Journal) -> None:
        with harness.task() as big:
            big.add_jobs(jobs.record, [(journal.path, f"big{i}", 0.02) for i in range(300)])
        with harness.task() as other:
            other.add_jobs(jobs.record, [(journal.path, f"other{i}", 0.02) for i in range(60)])
        eventually(lambda: journal.starting("other"), what="the other task to start")
        assert big.cancel(by="fair suite")
        jobs.note(journal.path, "CANCELLED")
        assert other.wait(timeout=120).state == TaskState.SUCCEEDED
        lines = journal.lines()
        after = [line for line in lines[lines.index("CANCELLED") :] if line.startswith("big")]
        # only the jobs already running when the cancel came may end after it
        slots = harness.concurrency * max(len(harness.procs), 1) if harness.external else 8
        assert len(after) <= slots, f"{len(after)} jobs of the cancelled task ended after the cancel"

    def test_worker_killed_while_a_capped_task_waits_leaves_nothing_stuck(
        self, harness: Harness, journal: Journal
    ) -> None:
        if not harness.external:
            import pytest

            pytest.skip("capability: separate worker processes (this backend runs jobs in-process)")
        gate = journal.flag("gate")
        # Given a task capped at one running job, whose first job blocks its worker
        with harness.task(max_concurrency=1) as task:
            task.add_job(jobs.block, journal.path, "victim", gate)
            task.add_jobs(jobs.record, [(journal.path, f"next{i}") for i in range(5)])
        start = eventually(lambda: journal.starting("victim:start:1:"), what="victim to start")
        # When that worker is SIGKILLed (the other tickets are parked on the cap)
        harness.kill_worker_of(int(start[0].rsplit(":", 1)[1]))
        open(gate, "w").close()
        harness.start_worker()
        # Then the lease expires, the cap frees, the parked tickets come back, everything runs
        p = task.wait(timeout=120)
        assert p.state == TaskState.SUCCEEDED and p.succeeded == 6
        assert [journal.count(f"next{i}") for i in range(5)] == [1] * 5
