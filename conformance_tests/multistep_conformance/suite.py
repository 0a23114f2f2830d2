"""The behavioural part of the suite: what every backend must do, end to end.

Subclass :class:`BackendTests` and say which backend to test::

    class TestMyBackend(BackendTests):
        backend_string = "mypkg.backend:factory"

Each test names the contract rule it checks (docs/contract.md in the repository: its
"Lifecycle", "Guarantees under real faults" and "Input rules"). Outcomes are read from
the journal the jobs write and from the store, not only from the API under test.
"""

from __future__ import annotations

import datetime
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import ClassVar

import pytest

from multistep_core import (
    InvalidJob,
    InvalidTaskId,
    InvalidTransition,
    Task,
    TaskExists,
    TaskNotFound,
    TaskState,
    WaitTimeout,
)
from multistep_core.model import JOB, encode_message, encode_ticket

from . import jobs
from .chaos import ChaosTests
from .crash import CrashTests
from .fair_suite import FairShareTests
from .harness import DEFAULT_TIMEOUT, Harness, Journal, eventually
from .nested_suite import NestedTests
from .store_suite import has_job_states

T = DEFAULT_TIMEOUT


def _closure_job() -> Callable[[], None]:
    def inner() -> None: ...

    return inner


def unregistered(path: str) -> None:
    """A plain function nobody registered."""


class BackendTests(FairShareTests, NestedTests, CrashTests, ChaosTests):
    """The contract, end to end. Override ``backend_string`` (or the fixture of that name)."""

    backend_string: ClassVar[str | None] = None
    workers: ClassVar[int] = 2

    @pytest.fixture(scope="class")
    @classmethod
    def harness(cls, request: pytest.FixtureRequest) -> Iterator[Harness]:
        url = cls.backend_string or request.config.getoption("--multistep-backend")
        h = Harness(url, workers=cls.workers)
        try:
            yield h
        finally:
            h.stop()

    @pytest.fixture
    def journal(self, tmp_path_factory: pytest.TempPathFactory) -> Journal:
        return Journal(tmp_path_factory.mktemp("journal"))

    def _wait(self, task, harness: Harness, timeout: float = T):  # type: ignore[no-untyped-def]
        try:
            return task.wait(timeout=timeout)
        except WaitTimeout as exc:
            raise AssertionError(f"{exc}\n{harness.worker_logs() if harness.external else ''}") from exc

    def _settle(self, harness: Harness, task: Task) -> None:
        """Return once nothing of ``task`` runs or will be sent again, so that the journal is final
        and a check that something did NOT happen is exact, never a sleep that passes by luck:
        no row of it is running (each run that started has finished, and its journal line is
        written), and a recovery pass from far in the future finds nothing of it due (no lease,
        retry or follow-up left to resend). Any later delivery must pass the store's ``start``,
        which refuses it (checked exactly by ``StoreTests``)."""

        def idle() -> bool:
            if has_job_states(harness.backend.store):
                return "running" not in harness.backend.store.job_states(task.id).values()
            return task.progress().running == 0

        eventually(idle, what=f"no running job or finalizer in {task.id}")
        claimed = harness.backend.store.claim_due(time.time() + 1000 * harness.lease)
        for d in claimed:  # what is due elsewhere goes out, as a recovery pass would send it
            harness.backend.dispatch(d)
        assert [r for d in claimed if d.task_id == task.id for r in d.refs] == [], "still due"

    # -- lifecycle -------------------------------------------------------------------
    def test_finalizers_run_once_in_order_after_all_jobs(self, harness: Harness, journal: Journal) -> None:
        # Given a task of 30 jobs and three finalizers
        with harness.task() as task:
            for i in range(30):
                task.add_job(jobs.record, journal.path, f"job{i}")
            for k in range(3):
                task.add_finalization_job(jobs.record, journal.path, f"fin{k}")
        # When it runs to the end
        p = self._wait(task, harness)
        # Then every job ran once, then the finalizers once each, in order
        lines = journal.lines()
        assert p.state == TaskState.SUCCEEDED
        assert sorted(line for line in lines if line.startswith("job")) == sorted(f"job{i}" for i in range(30))
        assert [line for line in lines if line.startswith("fin")] == ["fin0", "fin1", "fin2"]
        assert lines.index("fin0") == 30, "a finalizer started before every job had ended"
        assert (p.total, p.succeeded, p.failed, p.pending, p.running) == (30, 30, 0, 0, 0)
        assert (p.finalizers_done, p.finalizers_total) == (3, 3)
        assert p.fraction == 1.0 and p.finished_at is not None and p.sealed_at is not None

    def test_no_finalization_before_seal(self, harness: Harness, journal: Journal) -> None:
        # Given an open task whose jobs have all finished
        task = harness.task()
        for i in range(5):
            task.add_job(jobs.record, journal.path, f"job{i}")
        task.add_finalization_job(jobs.record, journal.path, "fin")
        eventually(lambda: task.progress().succeeded == 5, what="the jobs of the open task")
        self._settle(harness, task)  # nothing runs or is due: a wrong finalizer would be running or due
        # Then nothing finalizes while it is open
        assert task.progress().state == TaskState.OPEN
        assert journal.count("fin") == 0
        # When it is sealed, it finalizes
        task.seal()
        assert self._wait(task, harness).state == TaskState.SUCCEEDED
        assert journal.count("fin") == 1

    def test_empty_task_succeeds_or_finalizes_at_once(self, harness: Harness, journal: Journal) -> None:
        with harness.task() as bare:
            pass
        assert bare.progress().state == TaskState.SUCCEEDED
        with harness.task() as only_finalizers:
            only_finalizers.add_finalization_job(jobs.record, journal.path, "f0")
            only_finalizers.add_finalization_job(jobs.record, journal.path, "f1")
        assert self._wait(only_finalizers, harness).state == TaskState.SUCCEEDED
        assert journal.lines() == ["f0", "f1"]

    def test_jobs_added_from_a_running_job_are_waited_for(self, harness: Harness, journal: Journal) -> None:
        # Given a job that adds five more jobs to its own task
        with harness.task() as task:
            task.add_job(jobs.spawn, journal.path, "parent", 5)
            task.add_finalization_job(jobs.snapshot, journal.path, "fin")
        p = self._wait(task, harness)
        # Then the finalizer ran after all six and saw them
        assert p.state == TaskState.SUCCEEDED and p.total == 6 and p.succeeded == 6
        lines = journal.lines()
        assert sorted(line for line in lines if line.startswith("parent.")) == [f"parent.{i}" for i in range(5)]
        seen = json.loads(lines[-1].split("=", 1)[1])
        assert lines[-1].startswith("fin=") and seen["total"] == 6 and seen["succeeded"] == 6

    def test_adding_to_a_finished_task_is_an_error(self, harness: Harness, journal: Journal) -> None:
        with harness.task() as task:
            task.add_job(jobs.record, journal.path, "only")
        self._wait(task, harness)
        with pytest.raises(InvalidTransition, match="succeeded"):
            task.add_job(jobs.record, journal.path, "late")
        with pytest.raises(InvalidTransition):
            task.add_finalization_job(jobs.record, journal.path, "late-fin")
        assert task.progress().total == 1

    def test_context_manager_cancels_when_the_block_raises(self, harness: Harness, journal: Journal) -> None:
        with pytest.raises(KeyError), harness.task() as task:
            task.add_finalization_job(jobs.record, journal.path, "fin")
            raise KeyError("bad input file")
        p = task.progress()
        assert p.state == TaskState.CANCELLED
        assert p.cancelled_by and "KeyError" in p.cancelled_by and p.cancelled_at is not None
        self._settle(harness, task)
        assert journal.count("fin") == 0

    # -- failure policies ------------------------------------------------------------
    def test_policy_fail_stops_before_finalizers_and_records_the_failure(self, harness: Harness, journal: Journal) -> None:
        # Given a task with one job that always fails and a failure callback
        task2 = harness.task()
        task2.set_failure_callback(jobs.record, journal.path, "callback")
        for i in range(5):
            task2.add_job(jobs.record, journal.path, f"ok{i}")
        bad = task2.add_job(jobs.always_fail, journal.path, "bad")
        task2.add_finalization_job(jobs.record, journal.path, "fin")
        task2.seal()
        # When every job has ended
        p = self._wait(task2, harness)
        # Then the task failed, no finalizer ran, the callback ran once, the failure is readable
        assert p.state == TaskState.FAILED and (p.succeeded, p.failed) == (5, 1)
        eventually(lambda: journal.count("callback") == 1, what="the failure callback")
        assert journal.count("fin") == 0
        (failure,) = task2.failures()
        assert failure.ref == bad and failure.type == "ValueError" and "boom bad" in failure.message
        assert "always_fail" in failure.traceback and failure.fn == "conformance.always_fail"
        self._settle(harness, task2)
        assert journal.count("callback") == 1 and journal.count("fin") == 0

    def test_policy_continue_runs_finalizers_that_see_failures(self, harness: Harness, journal: Journal) -> None:
        with harness.task(policy="continue") as task:
            for i in range(4):
                task.add_job(jobs.record, journal.path, f"ok{i}")
            task.add_job(jobs.always_fail, journal.path, "bad")
            task.add_finalization_job(jobs.snapshot, journal.path, "fin")
        p = self._wait(task, harness)
        assert p.state == TaskState.SUCCEEDED and p.failed == 1
        seen = json.loads(journal.starting("fin=")[0].split("=", 1)[1])
        assert seen["failed"] == 1 and seen["failures"] == ["j4"] and seen["succeeded"] == 4

    def test_policy_fail_fast_fails_at_the_first_failure_and_skips_the_rest(
        self, harness: Harness, journal: Journal
    ) -> None:
        # Given a job that fails once the task is built, followed by many slow ones
        gate = journal.flag("built")
        with harness.task(policy="fail_fast") as task:
            task.add_job(jobs.always_fail, journal.path, "bad", 0.0, gate)
            task.add_jobs(jobs.record, [(journal.path, f"slow{i}", 0.05) for i in range(60)])
            task.add_finalization_job(jobs.record, journal.path, "fin")
        open(gate, "w").close()
        # Then the task fails without waiting for them, and most never start
        p = self._wait(task, harness, timeout=30)
        assert p.state == TaskState.FAILED
        assert p.failed == 1
        self._settle(harness, task)  # the jobs that had started have ended; the rest never will start
        ran = len(journal.starting("slow"))
        assert ran < 60, "fail_fast did not skip the jobs that had not started"
        assert journal.count("fin") == 0
        assert task.progress().succeeded == ran

    # -- retries ---------------------------------------------------------------------
    def test_per_job_retries_with_backoff(self, harness: Harness, journal: Journal) -> None:
        # Given a job that fails twice and a task allowing two retries, 0.3 s backoff
        with harness.task(max_retries=2, backoff=0.3) as task:
            task.add_job(jobs.fail_until, journal.path, "flaky", 2)
            task.add_finalization_job(jobs.record, journal.path, "fin")
        p = self._wait(task, harness)
        # Then it ran three times, waiting at least the backoff (doubling) in between
        assert p.state == TaskState.SUCCEEDED and p.succeeded == 1 and p.failed == 0
        runs = journal.starting("flaky:attempt:")
        assert [r.split(":")[2] for r in runs] == ["1", "2", "3"]
        t = [float(r.split(":")[3]) for r in runs]
        assert t[1] - t[0] >= 0.25 and t[2] - t[1] >= 0.5, f"backoff not respected: {t}"
        assert journal.count("fin") == 1

    def test_retries_exhausted_fails_with_the_last_error(self, harness: Harness, journal: Journal) -> None:
        with harness.task(max_retries=1, backoff=0) as task:
            task.add_job(jobs.fail_until, journal.path, "flaky", 5)
        p = self._wait(task, harness)
        assert p.state == TaskState.FAILED
        assert len(journal.starting("flaky:attempt:")) == 2
        (failure,) = task.failures()
        assert failure.attempt == 2 and "attempt 2" in failure.message

    def test_retry_after_job_failure_resumes_without_rerunning_succeeded_work(
        self, harness: Harness, journal: Journal
    ) -> None:
        flag = journal.flag("job-ok")
        with harness.task() as task:
            for i in range(3):
                task.add_job(jobs.record, journal.path, f"ok{i}")
            task.add_job(jobs.fail_unless_file, journal.path, "picky", flag)
            task.add_finalization_job(jobs.record, journal.path, "fin")
        assert self._wait(task, harness).state == TaskState.FAILED
        # When the cause is fixed and the task retried
        open(flag, "w").close()
        task.retry()
        p = self._wait(task, harness)
        # Then only the failed job ran again, and the finalizer ran once
        assert p.state == TaskState.SUCCEEDED and (p.succeeded, p.failed) == (4, 0)
        assert [journal.count(f"ok{i}") for i in range(3)] == [1, 1, 1]
        assert journal.count("picky:run") == 2 and journal.count("fin") == 1
        # and the failure it resumed from is kept, marked resolved by the later attempt
        [kept] = task.failures()
        assert (kept.ref, kept.type, kept.resolved) == ("j3", "ValueError", True) and "boom picky" in kept.message
        with pytest.raises(InvalidTransition):
            task.retry()

    def test_retry_after_finalizer_failure_does_not_rerun_earlier_finalizers(
        self, harness: Harness, journal: Journal
    ) -> None:
        flag = journal.flag("fin-ok")
        with harness.task() as task:
            task.add_job(jobs.record, journal.path, "job")
            task.add_finalization_job(jobs.record, journal.path, "fin0")
            task.add_finalization_job(jobs.fail_unless_file, journal.path, "fin1", flag)
            task.add_finalization_job(jobs.record, journal.path, "fin2")
        p = self._wait(task, harness)
        assert p.state == TaskState.FAILED and p.finalizers_done == 1
        assert [f.ref for f in task.failures()] == ["f1"]
        open(flag, "w").close()
        task.retry()
        p = self._wait(task, harness)
        assert p.state == TaskState.SUCCEEDED and p.finalizers_done == 3
        assert journal.count("job") == 1 and journal.count("fin0") == 1
        assert journal.count("fin1:run") == 2 and journal.count("fin2") == 1
        order = [line for line in journal.lines() if line.startswith("fin")]
        assert order == ["fin0", "fin1:run", "fin1:run", "fin1:ok", "fin2"]
        assert [(f.ref, f.resolved) for f in task.failures()] == [("f1", True)]  # the history is kept

    # -- cancel ----------------------------------------------------------------------
    def test_cancel_skips_unstarted_jobs_and_records_who(self, harness: Harness, journal: Journal) -> None:
        with harness.task() as task:
            for i in range(80):
                task.add_job(jobs.record, journal.path, f"slow{i}", 0.05)
            task.add_finalization_job(jobs.record, journal.path, "fin")
        eventually(lambda: journal.lines(), what="the first job")
        assert task.cancel(by="conformance suite") is True
        p = task.progress()
        assert p.state == TaskState.CANCELLED and p.cancelled_by == "conformance suite"
        self._settle(harness, task)
        ran = len(journal.lines())
        assert ran < 80 and journal.count("fin") == 0
        assert task.progress().state == TaskState.CANCELLED
        assert task.cancel() is False
        # and a cancelled task is final: retry refuses it, saying what to do
        with pytest.raises(InvalidTransition, match="is cancelled; only a failed task can be retried: a cancelled "
                                                    "task is final; create a new task to run its jobs again"):
            task.retry()

    # -- delivery guarantees ----------------------------------------------------------
    def test_duplicate_deliveries_are_counted_once(self, harness: Harness, journal: Journal) -> None:
        # Given a task whose every job message is published three more times by hand
        task = harness.task()
        refs = [task.add_job(jobs.record, journal.path, f"job{i}", 0.01) for i in range(10)]
        for ref in refs:
            for _ in range(3):
                harness.publish_raw(encode_message(task.id, ref))
        for ticket in range(1, 30):  # and tickets of its queue, issued or not (any copy is harmless)
            harness.publish_raw(encode_ticket(harness.queue, ticket))
        task.add_finalization_job(jobs.record, journal.path, "fin")
        task.seal()
        p = self._wait(task, harness)
        # And, after it ended, every job and the finalizer published again
        for ref in [*refs, "f0"]:
            harness.publish_raw(encode_message(task.id, ref))
        drain = harness.task()
        drain.add_job(jobs.record, journal.path, "drained")
        drain.seal()
        self._wait(drain, harness)
        self._settle(harness, task)
        # Then each ran once and progress never passed 100 %
        assert p.state == TaskState.SUCCEEDED
        assert [journal.count(f"job{i}") for i in range(10)] == [1] * 10
        assert journal.count("fin") == 1
        p = task.progress()
        assert (p.total, p.succeeded, p.failed, p.fraction) == (10, 10, 0, 1.0)

    def test_concurrent_last_completions_finalize_exactly_once(self, harness: Harness, journal: Journal) -> None:
        # Given 12 tasks whose jobs all finish at about the same moment on every worker
        tasks = []
        for t in range(12):
            with harness.task() as task:
                task.add_jobs(jobs.record, [(journal.path, f"t{t}.j{i}") for i in range(25)])
                task.add_finalization_job(jobs.record, journal.path, f"fin{t}")
            tasks.append(task)
        for task in tasks:
            assert self._wait(task, harness).state == TaskState.SUCCEEDED
        for task in tasks:
            self._settle(harness, task)
        # Then each finalizer started exactly once
        assert [journal.count(f"fin{t}") for t in range(12)] == [1] * 12
        assert len(journal.lines()) == 12 * 26

    def test_results_are_kept_for_finalizers_when_asked(self, harness: Harness, journal: Journal) -> None:
        with harness.task(keep_results=True) as task:
            for n in range(10):
                task.add_job(jobs.square, journal.path, n)
            task.add_finalization_job(jobs.snapshot, journal.path, "fin")
        assert self._wait(task, harness).state == TaskState.SUCCEEDED
        seen = json.loads(journal.starting("fin=")[0].split("=", 1)[1])
        assert seen["results_sum"] == sum(n * n for n in range(10)) and seen["results_count"] == 10
        assert task.results() == {f"j{n}": n * n for n in range(10)}
        with harness.task() as plain:
            plain.add_job(jobs.square, journal.path, 3)
        self._wait(plain, harness)
        assert plain.results() == {}

    # -- bad input -------------------------------------------------------------------
    def test_bad_arguments_are_refused_before_anything_is_enqueued(self, harness: Harness, journal: Journal) -> None:
        task = harness.task()
        with pytest.raises(InvalidJob, match=r"argument 1 .*set"):
            task.add_job(jobs.record, journal.path, {1, 2})
        with pytest.raises(InvalidJob, match=r"argument 'seconds'.*datetime|argument 'seconds'.*not JSON"):
            task.add_job(jobs.record, journal.path, "x", seconds=datetime.datetime.now())
        with pytest.raises(InvalidJob, match="lambda"):
            task.add_job(lambda: None)
        with pytest.raises(InvalidJob, match=r"closure|nested"):
            task.add_job(_closure_job())
        with pytest.raises(InvalidJob, match="not a registered job"):
            task.add_job(unregistered, journal.path)
        with pytest.raises(InvalidJob, match="function"):
            task.add_job(jobs.echo, jobs.echo)
        with pytest.raises(InvalidJob, match="nan"):
            task.add_job(jobs.echo, float("nan"))
        with pytest.raises(InvalidJob, match="no job is registered"):
            task.add_job("os:system", "touch /tmp/x")
        # Nothing was added; the task still works
        assert task.progress().total == 0
        task.add_job(jobs.record, journal.path, "fine")
        task.seal()
        assert self._wait(task, harness).state == TaskState.SUCCEEDED
        assert journal.lines() == ["fine"]

    def test_task_ids_are_validated_and_never_reused(self, harness: Harness, journal: Journal) -> None:
        for bad in ["", "it's", "a b", "x" * 129, "{slot}", "-lead", "ünï", "a/b"]:
            with pytest.raises(InvalidTaskId):
                harness.task(bad)
        tid = f"conf-dup-{uuid.uuid4().hex[:8]}"
        with harness.task(tid) as first:
            first.add_job(jobs.record, journal.path, "first")
        self._wait(first, harness)
        with pytest.raises(TaskExists):
            harness.task(tid)
        p = first.progress()
        assert p.state == TaskState.SUCCEEDED and p.total == 1  # the old task is intact
        with pytest.raises(TaskNotFound):
            harness.backend.get_task(f"conf-missing-{uuid.uuid4().hex[:8]}")

    def test_forged_and_orphan_messages_are_refused_and_recorded(self, harness: Harness, journal: Journal) -> None:
        canary = journal.flag("pwned")
        forged = json.dumps({"fn": "os:system", "args": [f"touch {canary}"]})
        orphan = encode_message(f"conf-gone-{uuid.uuid4().hex[:8]}", "j0")
        harness.publish_raw(forged)
        harness.publish_raw(orphan)
        harness.publish_raw("not json at all")

        def recorded() -> bool:
            raws = {r.raw: r.reason for r in harness.backend.rejected(200)}
            return forged in raws and orphan in raws and "not json at all" in raws

        eventually(recorded, what="the refused messages to be recorded")
        reasons = {r.raw: r.reason for r in harness.backend.rejected(200)}
        assert "unexpected field" in reasons[forged] and "'fn'" in reasons[forged]
        assert "no task" in reasons[orphan]
        assert "not JSON" in reasons["not json at all"]
        assert not os.path.exists(canary)

    def test_stored_specs_naming_unregistered_or_undecodable_functions_fail_readably(
        self, harness: Harness, journal: Journal
    ) -> None:
        # Given specs written straight into the store, as a bug or an intruder might
        canary = journal.flag("pwned")
        task = harness.task(policy="continue")
        store = harness.backend.store
        refs = store.add_jobs(
            task.id, JOB, [json.dumps({"fn": "os:system", "args": [f"touch {canary}"]}), "{not json"], time.time()
        )
        harness.backend.dispatch(store.release(harness.queue, time.time()))
        task.seal()
        p = self._wait(task, harness)
        # Then both failed with a reason, nothing ran, nothing is stuck
        assert p.state == TaskState.SUCCEEDED and p.failed == 2
        by_ref = {f.ref: f for f in task.failures()}
        assert by_ref[refs[0]].type == "UnregisteredJob" and "os:system" in by_ref[refs[0]].message
        assert by_ref[refs[1]].type == "InvalidJobSpec"
        assert not os.path.exists(canary)

    # -- reading and housekeeping -----------------------------------------------------
    def test_wait_times_out_and_list_and_delete(self, harness: Harness, journal: Journal) -> None:
        task = harness.task()
        with pytest.raises(WaitTimeout, match="open"):
            task.wait(timeout=0.2)
        assert task.id in {p.task_id for p in harness.backend.list_tasks(state="open")}
        assert task.id not in {p.task_id for p in harness.backend.list_tasks(state="succeeded")}
        assert harness.backend.get_task(task.id) == task
        assert task.delete() is True
        with pytest.raises(TaskNotFound):
            task.progress()

    def test_finished_tasks_expire_after_their_retention(self, harness: Harness, journal: Journal) -> None:
        with harness.task(retention=1.0) as task:
            task.add_job(jobs.record, journal.path, "x")
        self._wait(task, harness)
        assert task.progress().state == TaskState.SUCCEEDED
        eventually(lambda: harness.backend.store.progress(task.id) is None, timeout=10, what="expiry")

    # -- worker faults (backends with separate worker processes) ----------------------
    def _need_workers(self, harness: Harness) -> None:
        reason = harness.no_separate_workers()
        if reason:
            pytest.skip(reason)

    def _kill_worker_running(self, harness: Harness, journal: Journal, label: str, gate: str) -> None:
        """Wait until ``label`` (a :func:`jobs.block`) started, SIGKILL its worker, open the gate
        so a new run can finish, and start a replacement worker."""
        start = eventually(lambda: journal.starting(f"{label}:start:1:"), what=f"{label} to start")
        harness.kill_worker_of(int(start[0].rsplit(":", 1)[1]))
        open(gate, "w").close()
        harness.start_worker()

    def test_worker_killed_mid_job_leaves_nothing_stuck(self, harness: Harness, journal: Journal) -> None:
        self._need_workers(harness)
        gate = journal.flag("gate")
        with harness.task() as task:
            for i in range(4):
                task.add_job(jobs.record, journal.path, f"job{i}")
            task.add_job(jobs.block, journal.path, "victim", gate)
            task.add_finalization_job(jobs.record, journal.path, "fin")
        # When its worker is SIGKILLed mid-job and the cause goes away
        self._kill_worker_running(harness, journal, "victim", gate)
        # Then the job runs again elsewhere and the task finishes, finalizing once
        p = self._wait(task, harness)
        assert p.state == TaskState.SUCCEEDED and p.succeeded == 5
        assert len(journal.starting("victim:start:")) >= 2
        assert journal.count("fin") == 1

    def test_worker_killed_mid_packed_message_leaves_nothing_stuck(self, harness: Harness, journal: Journal) -> None:
        self._need_workers(harness)
        # Given eight jobs sent in one message, the first of them blocking its worker
        gate = journal.flag("gate")
        with harness.task() as task:
            items = [(journal.path, "victim", gate)] + [(journal.path, f"rest{i}", None) for i in range(7)]
            task.add_jobs(jobs.block_or_record, items, per_message=8)
            task.add_finalization_job(jobs.record, journal.path, "fin")
        # When its worker is SIGKILLed before it reached the other seven (a queue may not
        # redeliver the message: RQ does not)
        self._kill_worker_running(harness, journal, "victim", gate)
        # Then every job of the message runs and the task finishes
        p = self._wait(task, harness)
        assert p.state == TaskState.SUCCEEDED and p.succeeded == 8
        assert all(journal.count(f"rest{i}") >= 1 for i in range(7))
        assert journal.count("fin") == 1

    def test_worker_killed_mid_finalizer_leaves_nothing_stuck(self, harness: Harness, journal: Journal) -> None:
        self._need_workers(harness)
        gate = journal.flag("gate")
        with harness.task() as task:
            task.add_job(jobs.record, journal.path, "job")
            task.add_finalization_job(jobs.block, journal.path, "fin0", gate)
            task.add_finalization_job(jobs.record, journal.path, "fin1")
        self._kill_worker_running(harness, journal, "fin0", gate)
        p = self._wait(task, harness)
        assert p.state == TaskState.SUCCEEDED and p.finalizers_done == 2
        assert len(journal.starting("fin0:start:")) >= 2
        assert journal.count("fin0:done") >= 1 and journal.count("fin1") == 1
        assert journal.count("job") == 1
