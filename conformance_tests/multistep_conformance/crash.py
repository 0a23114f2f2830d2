"""Crash points, end to end: a worker kills itself at one step boundary, and the task still
ends, with every count exact (CONTRACT.md "Crash points", docs/reliability.md).

Each test starts the backend's workers with one point armed (``MULTISTEP_CRASH``, see
:mod:`multistep_core.faults`; ``MULTISTEP_CRASH_ONCE`` makes the first process of the fleet
to reach the point the only one that dies there), runs a task, waits for the marker file the
dying process writes, starts unarmed workers in place of the ones that exited, and checks
against the journal the jobs write: every job ran, the first finalizer started after the
last job, each finalizer that was not itself killed ran once, in order, and the task ended
within :attr:`CrashTests.crash_bound` seconds of the crash (the lease and the queue's own
redelivery delay decide what a backend needs).

A backend names the points whose promise it does not keep yet in ``crash_xfail``: those
tests are strict expected failures there (they fail the run the day they pass).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import pytest

from multistep_core import Progress, Task, TaskState

from . import jobs
from .harness import DEFAULT_TIMEOUT, Harness, Journal, eventually, group_pids

LOST_MESSAGE = "lost-message hole: closed by the ticket ledger"
N_JOBS = 6
FINS = ("fin0", "fin1")


def record_timing(harness: Harness, what: str, **figures: object) -> None:
    """Append one JSON line of measured figures to ``$MULTISTEP_RELIABILITY_LOG`` (if set):
    docs/reliability.md quotes these."""
    path = os.environ.get("MULTISTEP_RELIABILITY_LOG")
    if path:
        line = json.dumps({"backend": harness.backend_string, "what": what, "at": time.time(), **figures})
        with open(path, "a") as f:
            f.write(line + "\n")


def wait_restarting(
    harness: Harness, tasks: list[Task], n_workers: int, timeout: float, what: str
) -> list[Progress]:
    """Wait until every task ended, starting an unarmed worker in place of each one that exited
    meanwhile (as a process supervisor would). On timeout, fail with what is stuck."""
    deadline = time.monotonic() + timeout
    while True:
        harness.restart_dead(n_workers)
        ps = [t.progress() for t in tasks]
        if all(p.state.terminal for p in ps):
            return ps
        if time.monotonic() > deadline:
            stuck = []
            for t, p in zip(tasks, ps, strict=True):
                if not p.state.terminal:
                    states = harness.backend.store.job_states(t.id)
                    open_refs = {r: s for r, s in states.items() if s not in ("succeeded", "failed")}
                    stuck.append(f"{t.id}: {p.state.value} pending={p.pending} running={p.running} {open_refs}")
            raise AssertionError(
                f"{what}: not every task ended within {timeout:.0f}s:\n" + "\n".join(stuck[:20])
                + f"\n{harness.worker_logs()}"
            )
        time.sleep(0.1)


def xfail_if_lost_message(exc: AssertionError, *, queue_loses: bool) -> None:
    """Turn a :func:`wait_restarting` failure into an expected failure when it is the known
    lost-message hole (``queue_loses``: a queue that can lose a message it handed over, RQ):
    only refs that are ``pending`` with nothing running. Any other failure stands."""
    text = str(exc)
    if queue_loses and "'pending'" in text and "'running'" not in text and " running=0 " in text:
        pytest.xfail(f"{LOST_MESSAGE}: {text[:400]}")


def check_journal(journal: Journal, p: Progress, n_jobs: int = N_JOBS, rerun: str | None = None) -> None:
    """Counts exact; every job (``job0``...) ran; the first finalizer (``fin0``, ``fin1``) after the
    last job; finalizers once each (``rerun``: the one killed after its call may have run twice), in order."""
    lines = journal.lines()
    assert p.state == TaskState.SUCCEEDED, p
    assert (p.total, p.succeeded, p.failed, p.pending, p.running) == (n_jobs, n_jobs, 0, 0, 0)
    assert (p.finalizers_done, p.finalizers_total) == (len(FINS), len(FINS))
    missing = [i for i in range(n_jobs) if f"job{i}" not in lines]
    assert not missing, f"jobs that never ran: {missing}"
    last_job = max(i for i, line in enumerate(lines) if line.startswith("job"))
    firsts = [lines.index(f) for f in FINS]
    assert firsts[0] > last_job, f"a finalizer started before the last job ended: {lines}"
    assert firsts == sorted(firsts), f"finalizers out of order: {lines}"
    for f in FINS:
        if f == rerun:
            assert 1 <= lines.count(f) <= 2, lines
        else:
            assert lines.count(f) == 1, f"{f} ran {lines.count(f)} times: {lines}"


#: The crash tests of ``crash_scope = "store"``: test names, and for ``test_crash_point`` its points.
STORE_SCOPE_TESTS = frozenset({
    "test_crash_in_recovery_between_claim_and_enqueue",
    "test_crash_in_add_jobs_between_store_write_and_enqueue",
    "test_crash_in_add_jobs_between_enqueue_batches",
    "test_recover_task_resends_lost_messages_idempotently",
})
STORE_SCOPE_POINTS = frozenset({"job.started", "job.finished", "finalizer.finished"})
#: Every test that ``crash_scope`` governs (the crash and chaos tests of a backend with workers).
CRASH_SCOPED_TESTS = STORE_SCOPE_TESTS | {
    "test_crash_point", "test_killing_one_worker_process_keeps_the_worker_serving",
    "test_chaos_random_kills_leave_every_task_finished",
}


def outside_crash_scope(item: pytest.Item) -> bool:
    """Whether ``item`` is a crash test its class's ``crash_scope`` leaves out."""
    scope = getattr(getattr(item, "cls", None), "crash_scope", "all")
    if scope == "all":
        return False
    if scope not in ("store", "store+chaos"):
        raise pytest.UsageError(f"crash_scope={scope!r} of {item.nodeid}: use 'all', 'store' or 'store+chaos'")
    name = getattr(item, "originalname", item.name)
    if name not in CRASH_SCOPED_TESTS or name in STORE_SCOPE_TESTS:
        return False
    if name == "test_chaos_random_kills_leave_every_task_finished":
        return scope != "store+chaos"
    if name == "test_crash_point":
        return item.callspec.params["point"] not in STORE_SCOPE_POINTS  # type: ignore[attr-defined]
    return True


class CrashTests:
    """Mixed into :class:`~multistep_conformance.BackendTests`: one test per crash point."""

    workers: ClassVar[int]
    #: Seconds from the crash to the task's end. Covers the core's lease (recovery) and the
    #: queue's redelivery of an unacknowledged message (Celery's visibility timeout on Redis,
    #: Dramatiq's heartbeat on Redis: 10 s each by default).
    crash_bound: ClassVar[float] = 40.0
    #: ``"all"``: every crash test. ``"store"``: only those where a crash meets a store
    #: transition (a job's start and finish, a recovery pass, a client's add_jobs, an operator's
    #: recover), for a second store under a queue whose own class runs them all: the other
    #: points and the chaos test exercise the queue's side, which the store does not change.
    #: ``"store+chaos"``: those and the chaos test (random kills: a store's recovery under
    #: stress). The plugin deselects the rest; they are not reported as skipped.
    crash_scope: ClassVar[str] = "all"
    #: Crash points this backend does not survive yet: strict expected failures.
    crash_xfail: ClassVar[frozenset[str]] = frozenset()
    #: The queue can lose a message a worker process took when that process is SIGKILLed
    #: (RQ's intermediate queue; kombu's Redis transport between its BRPOP and its unacked
    #: record). A crash or chaos test that ends with only such a loss (refs pending, nothing
    #: running) is an expected failure there, until the ticket ledger re-sends lost messages.
    queue_may_lose: ClassVar[bool] = False

    def _need_workers(self, harness: Harness) -> None:
        if not harness.external:
            pytest.skip("capability: separate worker processes (this backend runs jobs in-process)")

    def _crash(
        self,
        request: pytest.FixtureRequest,
        harness: Harness,
        journal: Journal,
        point: str,
        build: Callable[[], Task],
        *,
        also: str = "",
    ) -> tuple[Task, Progress]:
        self._need_workers(harness)
        if point in self.crash_xfail:
            request.applymarker(pytest.mark.xfail(strict=True, reason=LOST_MESSAGE))
        n = max(len(harness.procs), self.workers)
        markers = Path(journal.dir) / f"crash-{uuid.uuid4().hex[:6]}"
        markers.mkdir()
        env = {"MULTISTEP_CRASH": f"{also},{point}" if also else point, "MULTISTEP_CRASH_ONCE": str(markers)}
        harness.replace_workers(env, n)
        task = build()
        eventually((markers / point).exists, timeout=DEFAULT_TIMEOUT, what=f"a worker to die at {point}")
        crashed = time.monotonic()
        try:
            (p,) = wait_restarting(harness, [task], n, self.crash_bound, f"after a crash at {point}")
        except AssertionError as exc:
            if point not in self.crash_xfail:
                xfail_if_lost_message(exc, queue_loses=self.queue_may_lose)
            raise
        record_timing(harness, "crash", point=point, seconds=round(time.monotonic() - crashed, 3))
        return task, p

    def _standard_task(self, harness: Harness, journal: Journal, per_message: int = 1) -> Task:
        with harness.task() as task:
            task.add_jobs(jobs.record, [(journal.path, f"job{i}", 0.05) for i in range(N_JOBS)], per_message=per_message)
            for f in FINS:
                task.add_finalization_job(jobs.record, journal.path, f)
        return task

    def _check(self, journal: Journal, p: Progress, n_jobs: int = N_JOBS, rerun: str | None = None) -> None:
        check_journal(journal, p, n_jobs, rerun)

    # -- a worker dies ----------------------------------------------------------------
    @pytest.mark.parametrize(
        ("point", "per_message", "rerun"),
        [
            ("message.received", 1, None),
            ("job.started", 1, None),
            ("job.called", 1, None),
            ("job.finished", 1, None),
            ("message.handled", 1, None),
            ("packed.between", 3, None),
            ("finalizer.started", 1, None),
            ("finalizer.called", 1, "fin0"),
            ("finalizer.finished", 1, None),
        ],
    )
    def test_crash_point(
        self, request: pytest.FixtureRequest, harness: Harness, journal: Journal, point: str, per_message: int,
        rerun: str | None,
    ) -> None:
        # Given workers that die the first time one of them reaches the point
        # When a task runs through it and the dead worker is replaced
        _, p = self._crash(request, harness, journal, point, lambda: self._standard_task(harness, journal, per_message))
        # Then the task ended within the bound, counts exact, finalizers once after the last job
        self._check(journal, p, rerun=rerun)

    def test_crash_in_recovery_between_claim_and_enqueue(
        self, request: pytest.FixtureRequest, harness: Harness, journal: Journal
    ) -> None:
        # Given a worker that dies at a job's start (its lease then expires), and a recovery pass
        # that dies after claiming that lease and before enqueuing the job again
        _, p = self._crash(
            request, harness, journal, "recovery.claimed", lambda: self._standard_task(harness, journal),
            also="job.started",
        )
        # Then a later pass claims it again and the task ends
        self._check(journal, p)

    # -- a client dies while adding jobs ----------------------------------------------
    def _client_crash(self, harness: Harness, journal: Journal, point: str, n: int, chunk: int) -> Task:
        self._need_workers(harness)
        markers = Path(journal.dir) / f"crash-{uuid.uuid4().hex[:6]}"
        markers.mkdir()
        tid = f"conf-crash-{uuid.uuid4().hex[:10]}"
        env = dict(os.environ, MULTISTEP_CRASH=point, MULTISTEP_CRASH_ONCE=str(markers))
        cmd = [sys.executable, "-m", "multistep_conformance.crash_client", harness.worker_url, harness.queue, tid,
               journal.path, str(n), str(chunk)]
        out = subprocess.run(cmd, env=env, capture_output=True, timeout=120)
        assert out.returncode == -9 and (markers / point).exists(), (out.returncode, out.stderr.decode()[-2000:])
        task = harness.backend.get_task(tid)
        for f in FINS:  # the operator (here: the test) completes the task the dead client built
            task.add_finalization_job(jobs.record, journal.path, f)
        task.seal()
        return task

    def test_crash_in_add_jobs_between_store_write_and_enqueue(self, harness: Harness, journal: Journal) -> None:
        # Given a client killed after add_jobs wrote its jobs to the store and before it enqueued them
        task = self._client_crash(harness, journal, "add_jobs.written", 4, 4)
        crashed = time.monotonic()
        # Then the jobs the store holds run anyway, within the bound
        (p,) = wait_restarting(harness, [task], self.workers, self.crash_bound, "after a crash in add_jobs")
        record_timing(harness, "crash", point="add_jobs.written", seconds=round(time.monotonic() - crashed, 3))
        self._check(journal, p, n_jobs=4)

    def test_crash_in_add_jobs_between_enqueue_batches(self, harness: Harness, journal: Journal) -> None:
        # Given a client adding 6 jobs in chunks of 2 (a store write, then the tickets it owes the
        # queue in bulk enqueues of 2), killed after its first bulk enqueue. (The first chunk's
        # write owes no ticket when the queue's ledger already holds enough, e.g. tickets an
        # earlier test's crash left: then the first enqueue, and the kill, come after a later chunk.
        # Workers going on leave tickets that find no work once the backlog is gone, and a ledger
        # holding six owes this client nothing at all: so first let the workers drain it.)
        reader = getattr(harness.backend.store, "queue_state", None)
        if reader is not None:
            eventually(lambda: not getattr(reader(harness.queue), "tickets", None), timeout=DEFAULT_TIMEOUT,
                       what="the queue's ledger to drain (leftover tickets taken, lost ones re-sent and taken)")
        task = self._client_crash(harness, journal, "add_jobs.between_batches", 6, 2)
        written = task.progress().total
        assert written in (2, 4, 6), written
        crashed = time.monotonic()
        # Then the task holds the chunks written before the kill, and each of them runs once
        (p,) = wait_restarting(harness, [task], self.workers, self.crash_bound, "after a crash between batches")
        record_timing(harness, "crash", point="add_jobs.between_batches", seconds=round(time.monotonic() - crashed, 3))
        self._check(journal, p, n_jobs=written)

    # -- an operator re-sends what a task waits for ------------------------------------
    def test_recover_task_resends_lost_messages_idempotently(self, harness: Harness, journal: Journal) -> None:
        # Given a task whose job messages were lost (jobs in the store, nothing enqueued)
        task = harness.task()
        specs = [json.dumps({"fn": "conformance.record", "args": [journal.path, f"job{i}"]}) for i in range(4)]
        harness.backend.store.add_jobs(task.id, "j", specs, time.time())
        for f in FINS:
            task.add_finalization_job(jobs.record, journal.path, f)
        task.seal()
        # When an operator runs recover_task (`multistep recover ID`) twice
        first = harness.backend.recover_task(task.id)
        again = harness.backend.recover_task(task.id)
        # Then the lost jobs were sent: each one no worker held yet (a worker's recovery pass may
        # have issued the tickets the queue is owed and started some since the seal); the second
        # run sends at most those again, or the finalization job the task waits for by then
        jobs_of_task = {f"j{i}" for i in range(4)}
        assert set(first.refs) <= jobs_of_task, first.refs
        assert set(again.refs) <= jobs_of_task | {f"f{i}" for i in range(len(FINS))}, again.refs
        # And each ran exactly once
        p = self._wait(task, harness)  # type: ignore[attr-defined]
        self._check(journal, p, n_jobs=4)
        assert [journal.count(f"job{i}") for i in range(4)] == [1] * 4
        # And once the task ended there is nothing to send
        assert harness.backend.recover_task(task.id).refs == ()

    # -- one process of a worker dies ---------------------------------------------------
    def test_killing_one_worker_process_keeps_the_worker_serving(self, harness: Harness, journal: Journal) -> None:
        self._need_workers(harness)
        # Given one worker (its main process and the processes it runs jobs in)
        harness.replace_workers(None, 1)
        main = harness.procs[0]
        harness.wait_ready()  # every process of the worker is up once it served a task
        before = set(group_pids(main.pid)) - {main.pid}
        if not before:
            pytest.skip("this worker runs jobs in its main process only (no process to lose alone)")
        # When one of its job processes is SIGKILLed
        os.kill(min(before), signal.SIGKILL)
        # Then the worker does not exit: it starts a process in place of the dead one
        eventually(lambda: set(group_pids(main.pid)) - {main.pid} - before, timeout=30, what="a replacement process")
        assert main.poll() is None, f"the worker exited ({main.returncode})\n{harness.worker_logs()}"
        # And it keeps serving: a task on this worker alone finishes
        with harness.task() as task:
            task.add_jobs(jobs.record, [(journal.path, f"job{i}") for i in range(6)])
            for f in FINS:
                task.add_finalization_job(jobs.record, journal.path, f)
        p = self._wait(task, harness)  # type: ignore[attr-defined]
        self._check(journal, p)
        assert main.poll() is None
        harness.restart_dead(self.workers)
