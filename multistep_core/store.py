"""The store protocol: task state and its atomic transitions.

A store keeps every task's state and moves it from one state to the next, one atomic
call per transition. It decides; it never runs code and never talks to a queue: each
transition returns a :class:`~multistep_core.model.Dispatch` naming the messages the
caller must enqueue next.

Two ways to write a store:

* subclass :class:`RowStore` and implement the row primitives of :class:`Txn` inside a
  transaction (what the memory and SQLite stores do; all the lifecycle logic is then
  inherited, and it is the reference for every other store), or
* subclass :class:`Store` and implement each transition natively (the Redis store runs
  each one as a single Lua script).

Either way the conformance suite (``multistep_conformance``) is the judge.
"""

from __future__ import annotations

import contextlib
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import InvalidJob, InvalidTransition, TaskExists, TaskNotFound
from .model import (
    CALLBACK,
    FINALIZER,
    JOB,
    NOTHING,
    Dispatch,
    Failure,
    JobState,
    Policy,
    Progress,
    Rejected,
    Start,
    TaskOptions,
    TaskState,
    parse_ref,
    retries_value,
)

DEFAULT_LEASE = 30.0
DONE_JOB_STATES = (JobState.SUCCEEDED, JobState.FAILED)


class Store(ABC):
    """Task state with atomic transitions. Every method is one transition or one read.

    ``lease`` is how long (seconds) a started job may go without a heartbeat before its
    worker is presumed dead and the job is handed out again; it is also the grace period
    after which a follow-up message (next finalizer, retry, callback) that was never
    started is sent again.
    """

    lease: float = DEFAULT_LEASE

    # -- writing ---------------------------------------------------------------------
    @abstractmethod
    def create_task(self, task_id: str, options: TaskOptions, now: float) -> None:
        """Create an open task. Raise :class:`TaskExists` if the id is taken."""

    @abstractmethod
    def add_jobs(self, task_id: str, kind: str, specs: Sequence[str], now: float) -> list[str]:
        """Append jobs (``kind="j"``) or finalizers (``"f"``), or set the failure callback
        (``"x"``, one spec). Return the new refs. Raise :class:`InvalidTransition` once
        the task has left ``running``."""

    @abstractmethod
    def seal(self, task_id: str, now: float) -> Dispatch:
        """open → running; finalize at once if every job has already ended."""

    @abstractmethod
    def start(self, task_id: str, ref: str, now: float) -> Start:
        """Claim one delivery: say whether it may run and, if so, take a lease on it."""

    @abstractmethod
    def renew(self, task_id: str, ref: str, attempt: int, now: float) -> bool:
        """Extend the lease of a running attempt. False if the attempt is no longer current."""

    @abstractmethod
    def finish(
        self,
        task_id: str,
        ref: str,
        attempt: int,
        now: float,
        *,
        result: str | None = None,
        error: Failure | None = None,
    ) -> Dispatch:
        """Record one attempt's outcome (``error`` None means success; ``result`` is JSON
        text) and decide what comes next. A job that already ended is left alone."""

    @abstractmethod
    def guard(self, task_id: str, refs: Sequence[str], now: float) -> int:
        """Give each pending ref without a due time one, a lease from now, so that recovery
        sends it again if nobody starts it (a worker that received several refs in one
        message and died before reaching them). Returns how many refs it guarded."""

    def start_packed(self, task_id: str, refs: Sequence[str], now: float) -> Start:
        """:meth:`guard` the other refs of a message carrying several, then :meth:`start` its
        first; a store may send both in one round trip."""
        self.guard(task_id, refs[1:], now)
        return self.start(task_id, refs[0], now)

    def finish_then_start(
        self,
        task_id: str,
        ref: str,
        attempt: int,
        now: float,
        next_ref: str,
        *,
        result: str | None = None,
        error: Failure | None = None,
    ) -> tuple[Dispatch, Start]:
        """:meth:`finish` of ``ref``, then :meth:`start` of ``next_ref`` of the same task (a
        worker running a message that carries several refs). Two transitions, in this order;
        a store may send them in one round trip."""
        d = self.finish(task_id, ref, attempt, now, result=result, error=error)
        return d, self.start(task_id, next_ref, now)

    @abstractmethod
    def cancel(self, task_id: str, by: str, now: float) -> bool:
        """Cancel a task that has not succeeded. False if it was already over."""

    @abstractmethod
    def retry(self, task_id: str, now: float) -> Dispatch:
        """failed → running (or finalizing): reset the failed jobs and resend them."""

    @abstractmethod
    def claim_due(self, now: float, limit: int = 1000) -> list[Dispatch]:
        """Recovery: hand out again what is due (expired leases, retries whose backoff has
        passed, follow-ups never started). Each returned ref is claimed for one lease."""

    @abstractmethod
    def delete(self, task_id: str) -> bool:
        """Remove a task and everything it recorded."""

    @abstractmethod
    def reject(self, raw: str, reason: str, now: float) -> None:
        """Keep a refused message and the reason, so nothing is lost silently."""

    # -- reading ---------------------------------------------------------------------
    @abstractmethod
    def progress(self, task_id: str) -> Progress | None: ...

    @abstractmethod
    def failures(self, task_id: str) -> list[Failure]: ...

    @abstractmethod
    def results(self, task_id: str) -> dict[str, Any]: ...

    @abstractmethod
    def list_tasks(self, state: TaskState | None = None, limit: int = 1000) -> list[Progress]: ...

    @abstractmethod
    def rejected(self, limit: int = 100) -> list[Rejected]: ...

    def job_states(self, task_id: str) -> dict[str, str]:
        """Every ref of the task and its job state (for inspection and tests)."""
        raise NotImplementedError

    def waiting(self, task_id: str) -> Dispatch:
        """The refs the task waits for that no worker holds (``multistep recover``); built
        from :meth:`progress` and :meth:`job_states` (multistep_core/resend.py)."""
        from .resend import waiting_refs

        return waiting_refs(self, task_id)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


# ---------------------------------------------------------------------------------------
# RowStore: the reference logic over row primitives
# ---------------------------------------------------------------------------------------


@dataclass
class TaskRow:
    id: str
    options: TaskOptions
    state: TaskState = TaskState.OPEN
    sealed: bool = False
    total: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    fin_total: int = 0
    fin_done: int = 0
    has_callback: bool = False
    created_at: float = 0.0
    sealed_at: float | None = None
    finished_at: float | None = None
    cancelled_by: str | None = None
    cancelled_at: float | None = None
    expires_at: float | None = None

    def progress(self) -> Progress:
        return Progress(
            task_id=self.id,
            state=self.state,
            total=self.total,
            pending=self.total - self.running - self.succeeded - self.failed,
            running=self.running,
            succeeded=self.succeeded,
            failed=self.failed,
            finalizers_total=self.fin_total,
            finalizers_done=self.fin_done,
            created_at=self.created_at,
            sealed_at=self.sealed_at,
            finished_at=self.finished_at,
            cancelled_by=self.cancelled_by,
            cancelled_at=self.cancelled_at,
            options=self.options,
        )


@dataclass
class JobRow:
    ref: str
    spec: str
    state: JobState = JobState.PENDING
    attempt: int = 0  # deliveries started
    fails: int = 0  # attempts that raised
    lost: int = 0  # attempts whose worker vanished (lease expired)
    due_at: float | None = None  # lease expiry, retry time, or follow-up grace
    error: dict[str, Any] | None = None
    result: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Txn(ABC):
    """Row access inside one transaction. Rows returned may be live objects or copies:
    the logic always writes a changed row back with ``put_task`` / ``put_job``."""

    @abstractmethod
    def get_task(self, task_id: str) -> TaskRow | None: ...

    @abstractmethod
    def put_task(self, row: TaskRow, *, new: bool = False) -> None: ...

    @abstractmethod
    def get_job(self, task_id: str, ref: str) -> JobRow | None: ...

    @abstractmethod
    def put_job(self, task_id: str, row: JobRow, *, new: bool = False) -> None: ...

    @abstractmethod
    def put_jobs_new(self, task_id: str, rows: Sequence[JobRow]) -> None: ...

    @abstractmethod
    def jobs(self, task_id: str, states: Sequence[JobState] | None = None) -> list[JobRow]: ...

    @abstractmethod
    def due(self, now: float, limit: int) -> list[tuple[str, str]]:
        """(task_id, ref) of rows whose ``due_at`` is set and ≤ now."""

    @abstractmethod
    def tasks(self, state: TaskState | None, limit: int) -> list[TaskRow]: ...

    @abstractmethod
    def delete_task(self, task_id: str) -> bool: ...

    @abstractmethod
    def add_rejected(self, item: Rejected) -> None: ...

    @abstractmethod
    def list_rejected(self, limit: int) -> list[Rejected]: ...

    @abstractmethod
    def purge_expired(self, now: float) -> None: ...


def worker_lost_failure(ref: str, fn: str, attempt: int, now: float, lease: float) -> Failure:
    return Failure(
        ref=ref,
        fn=fn,
        type="WorkerLost",
        message=f"the worker running this job stopped answering for {lease:g}s (killed or crashed)",
        attempt=attempt,
        at=now,
    )


def _spec_retries(spec: str) -> int | None:
    try:
        r = json.loads(spec).get("retries")
    except (ValueError, AttributeError):
        return None
    return retries_value(r)


def _spec_fn(spec: str) -> str:
    try:
        fn = json.loads(spec).get("fn")
    except (ValueError, AttributeError):
        return "?"
    return fn if isinstance(fn, str) else "?"


class RowStore(Store):
    """A store built from row primitives; all lifecycle logic lives here, once."""

    def __init__(self, *, lease: float = DEFAULT_LEASE) -> None:
        self.lease = float(lease)

    @abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[Txn]:
        """A context in which reads and writes are atomic and isolated."""

    # -- helpers ---------------------------------------------------------------------
    def _task(self, tx: Txn, task_id: str, now: float | None = None) -> TaskRow:
        row = tx.get_task(task_id)
        if row is None or (row.expires_at is not None and now is not None and row.expires_at <= now):
            raise TaskNotFound(f"no task with id {task_id!r}")
        return row

    def _finish_task(self, task: TaskRow, state: TaskState, now: float) -> None:
        task.state = state
        task.finished_at = now
        task.expires_at = now + task.options.retention

    def _follow(self, tx: Txn, task: TaskRow, ref: str, now: float) -> Dispatch:
        row = tx.get_job(task.id, ref)
        if row is None:  # pragma: no cover - guarded by callers
            return NOTHING
        row.state = JobState.PENDING
        row.due_at = now + self.lease
        tx.put_job(task.id, row)
        return Dispatch(task.id, task.options.queue, (ref,))

    def _fail(self, tx: Txn, task: TaskRow, now: float) -> Dispatch:
        self._finish_task(task, TaskState.FAILED, now)
        if task.has_callback:
            cb = tx.get_job(task.id, "x0")
            if cb is not None:
                cb.fails = 0
                cb.lost = 0
                cb.error = None
                tx.put_job(task.id, cb)
                return self._follow(tx, task, "x0", now)
        return NOTHING

    def _advance(self, tx: Txn, task: TaskRow, now: float) -> Dispatch:
        if task.state != TaskState.RUNNING or task.succeeded + task.failed < task.total:
            return NOTHING
        if task.options.policy == Policy.FAIL and task.failed > 0:
            return self._fail(tx, task, now)
        if task.fin_done < task.fin_total:
            task.state = TaskState.FINALIZING
            return self._follow(tx, task, f"f{task.fin_done}", now)
        self._finish_task(task, TaskState.SUCCEEDED, now)
        return NOTHING

    def _ended_for_good(self, tx: Txn, task: TaskRow, kind: str, now: float) -> Dispatch:
        """A job or finalizer has failed with no retry left."""
        if kind == JOB:
            task.failed += 1
            if task.state in (TaskState.OPEN, TaskState.RUNNING) and task.options.policy == Policy.FAIL_FAST:
                return self._fail(tx, task, now)
            return self._advance(tx, task, now)
        if kind == FINALIZER and task.state == TaskState.FINALIZING:
            return self._fail(tx, task, now)
        return NOTHING

    # -- transitions -----------------------------------------------------------------
    def create_task(self, task_id: str, options: TaskOptions, now: float) -> None:
        with self.transaction() as tx:
            old = tx.get_task(task_id)
            if old is not None:
                if old.expires_at is not None and old.expires_at <= now:
                    tx.delete_task(task_id)
                else:
                    raise TaskExists(f"a task with id {task_id!r} already exists ({old.state.value})")
            tx.put_task(TaskRow(id=task_id, options=options, created_at=now), new=True)

    def add_jobs(self, task_id: str, kind: str, specs: Sequence[str], now: float) -> list[str]:
        with self.transaction() as tx:
            task = self._task(tx, task_id, now)
            if kind == CALLBACK:
                if task.state.terminal:
                    raise InvalidTransition(f"task {task_id!r} is {task.state.value}; too late for a failure callback")
                (spec,) = specs
                old = tx.get_job(task_id, "x0")
                tx.put_job(task_id, JobRow(ref="x0", spec=spec), new=old is None)
                task.has_callback = True
                tx.put_task(task)
                return ["x0"]
            if task.state not in (TaskState.OPEN, TaskState.RUNNING):
                raise InvalidTransition(
                    f"task {task_id!r} is {task.state.value}; jobs and finalizers can be added "
                    "only while it is open or running"
                )
            if kind == JOB:
                first = task.total
                task.total += len(specs)
            elif kind == FINALIZER:
                first = task.fin_total
                task.fin_total += len(specs)
            else:
                raise InvalidJob(f"unknown job kind {kind!r} (expected j, f or x)")
            rows = [JobRow(ref=f"{kind}{first + i}", spec=s) for i, s in enumerate(specs)]
            tx.put_jobs_new(task_id, rows)
            tx.put_task(task)
            return [r.ref for r in rows]

    def seal(self, task_id: str, now: float) -> Dispatch:
        with self.transaction() as tx:
            task = self._task(tx, task_id, now)
            if task.state.terminal:
                return NOTHING
            if task.sealed:
                raise InvalidTransition(f"task {task_id!r} is already sealed")
            task.sealed = True
            task.sealed_at = now
            task.state = TaskState.RUNNING
            d = self._advance(tx, task, now)
            tx.put_task(task)
            return d

    def start(self, task_id: str, ref: str, now: float) -> Start:
        kind, index = parse_ref(ref)
        with self.transaction() as tx:
            task = tx.get_task(task_id)
            if task is None:
                return Start(False, "task-missing")
            row = tx.get_job(task_id, ref)
            if row is None:
                return Start(False, "job-missing")
            if row.state in DONE_JOB_STATES:
                return Start(False, "already-finished")
            if row.state == JobState.RUNNING:
                return Start(False, "already-running")
            if row.state == JobState.RETRY_WAIT:
                return Start(False, "retry-not-due")
            if kind == JOB:
                if task.state not in (TaskState.OPEN, TaskState.RUNNING):
                    return Start(False, f"task-{task.state.value}")
                task.running += 1
                tx.put_task(task)
            elif kind == FINALIZER:
                if task.state != TaskState.FINALIZING or index != task.fin_done:
                    return Start(False, f"task-{task.state.value}")
            elif task.state != TaskState.FAILED:
                return Start(False, f"task-{task.state.value}")
            row.state = JobState.RUNNING
            row.attempt += 1
            row.due_at = now + self.lease
            row.started_at = now
            tx.put_job(task_id, row)
            return Start(True, spec=row.spec, attempt=row.attempt, keep_results=task.options.keep_results)

    def guard(self, task_id: str, refs: Sequence[str], now: float) -> int:
        n = 0
        with self.transaction() as tx:
            for ref in refs:
                row = tx.get_job(task_id, ref)
                if row is not None and row.state == JobState.PENDING and row.due_at is None:
                    row.due_at = now + self.lease
                    tx.put_job(task_id, row)
                    n += 1
        return n

    def renew(self, task_id: str, ref: str, attempt: int, now: float) -> bool:
        with self.transaction() as tx:
            row = tx.get_job(task_id, ref)
            if row is None or row.state != JobState.RUNNING or row.attempt != attempt:
                return False
            row.due_at = now + self.lease
            tx.put_job(task_id, row)
            return True

    def finish(
        self,
        task_id: str,
        ref: str,
        attempt: int,
        now: float,
        *,
        result: str | None = None,
        error: Failure | None = None,
    ) -> Dispatch:
        kind, index = parse_ref(ref)
        with self.transaction() as tx:
            task = tx.get_task(task_id)
            row = tx.get_job(task_id, ref) if task is not None else None
            if task is None or row is None or row.state in DONE_JOB_STATES:
                return NOTHING  # gone, or a duplicate: counted once already
            if error is not None and (row.state != JobState.RUNNING or row.attempt != attempt):
                return NOTHING  # a stale attempt's failure; the current attempt decides
            if kind == FINALIZER and (task.state != TaskState.FINALIZING or index != task.fin_done):
                return NOTHING  # a finalizer's outcome counts only in its turn
            if kind == CALLBACK and task.state != TaskState.FAILED:
                return NOTHING
            if kind == JOB and row.state == JobState.RUNNING:
                task.running -= 1
            d = self._record(tx, task, row, kind, index, now, result, error)
            tx.put_task(task)
            return d

    def _record(
        self,
        tx: Txn,
        task: TaskRow,
        row: JobRow,
        kind: str,
        index: int,
        now: float,
        result: str | None,
        error: Failure | None,
    ) -> Dispatch:
        if error is None:
            row.state = JobState.SUCCEEDED
            row.finished_at = now
            row.due_at = None
            row.error = None
            row.result = result if task.options.keep_results else None
            tx.put_job(task.id, row)
            if kind == JOB:
                task.succeeded += 1
                return self._advance(tx, task, now)
            if kind == FINALIZER and task.state == TaskState.FINALIZING and index == task.fin_done:
                task.fin_done += 1
                if task.fin_done < task.fin_total:
                    return self._follow(tx, task, f"f{task.fin_done}", now)
                self._finish_task(task, TaskState.SUCCEEDED, now)
            return NOTHING
        row.error = error.to_dict()
        if error.type != "WorkerLost":
            row.fails += 1
        retries = _spec_retries(row.spec)
        if retries is None:
            retries = task.options.max_retries
        lost_out = error.type == "WorkerLost" and row.lost > task.options.max_lost
        if not lost_out and error.type != "WorkerLost" and row.fails <= retries:
            delay = task.options.backoff_for(row.fails)
            row.state = JobState.RETRY_WAIT
            row.due_at = now + delay
            tx.put_job(task.id, row)
            if delay <= 0:
                return self._follow(tx, task, row.ref, now)
            return NOTHING  # claim_due sends it when the backoff has passed
        if error.type == "WorkerLost" and not lost_out:
            tx.put_job(task.id, row)
            return self._follow(tx, task, row.ref, now)
        row.state = JobState.FAILED
        row.finished_at = now
        row.due_at = None
        tx.put_job(task.id, row)
        return self._ended_for_good(tx, task, kind, now)

    def cancel(self, task_id: str, by: str, now: float) -> bool:
        with self.transaction() as tx:
            task = self._task(tx, task_id, now)
            if task.state in (TaskState.SUCCEEDED, TaskState.CANCELLED):
                return False
            self._finish_task(task, TaskState.CANCELLED, now)
            task.cancelled_by = by
            task.cancelled_at = now
            tx.put_task(task)
            return True

    def retry(self, task_id: str, now: float) -> Dispatch:
        with self.transaction() as tx:
            task = self._task(tx, task_id, now)
            if task.state != TaskState.FAILED:
                raise InvalidTransition(f"task {task_id!r} is {task.state.value}; only a failed task can be retried")
            task.finished_at = None
            task.expires_at = None
            refs: list[str] = []
            fin_failed = None
            for row in tx.jobs(task_id, [JobState.FAILED, JobState.PENDING, JobState.RETRY_WAIT]):
                kind, _ = parse_ref(row.ref)
                if kind == CALLBACK:
                    continue
                if kind == FINALIZER:
                    if row.state == JobState.FAILED:
                        fin_failed = row
                    continue
                if row.state == JobState.FAILED:
                    task.failed -= 1
                row.state = JobState.PENDING
                row.fails = row.lost = 0
                row.error = None
                row.finished_at = None
                row.due_at = None
                tx.put_job(task_id, row)
                refs.append(row.ref)
            if fin_failed is not None and not refs:
                fin_failed.fails = fin_failed.lost = 0
                fin_failed.error = None
                fin_failed.finished_at = None
                tx.put_job(task_id, fin_failed)
                task.state = TaskState.FINALIZING
                d = self._follow(tx, task, fin_failed.ref, now)
                tx.put_task(task)
                return d
            task.state = TaskState.RUNNING if task.sealed else TaskState.OPEN
            d = self._advance(tx, task, now)
            tx.put_task(task)
            if d:
                return d
            return Dispatch(task_id, task.options.queue, tuple(refs))

    def claim_due(self, now: float, limit: int = 1000) -> list[Dispatch]:
        out: list[Dispatch] = []
        with self.transaction() as tx:
            tx.purge_expired(now)
            for task_id, ref in tx.due(now, limit):
                task = tx.get_task(task_id)
                row = tx.get_job(task_id, ref) if task is not None else None
                if task is None or row is None:
                    continue
                kind, index = parse_ref(ref)
                wanted = (
                    (kind == JOB and task.state in (TaskState.OPEN, TaskState.RUNNING))
                    or (kind == FINALIZER and task.state == TaskState.FINALIZING and index == task.fin_done)
                    or (kind == CALLBACK and task.state == TaskState.FAILED)
                )
                if row.state == JobState.RUNNING:
                    # The worker holding this lease stopped renewing it: presume it dead.
                    if kind == JOB:
                        task.running -= 1
                    row.lost += 1
                    if not wanted:
                        row.state = JobState.PENDING
                        row.due_at = None
                        tx.put_job(task_id, row)
                        tx.put_task(task)
                        continue
                    err = worker_lost_failure(ref, _spec_fn(row.spec), row.attempt, now, self.lease)
                    d = self._record(tx, task, row, kind, index, now, None, err)
                    tx.put_task(task)
                    if d:
                        out.append(d)
                    continue
                if not wanted:
                    row.due_at = None
                    tx.put_job(task_id, row)
                    continue
                out.append(self._follow(tx, task, ref, now))
        return out

    def delete(self, task_id: str) -> bool:
        with self.transaction() as tx:
            return tx.delete_task(task_id)

    def reject(self, raw: str, reason: str, now: float) -> None:
        with self.transaction() as tx:
            tx.add_rejected(Rejected(raw=raw[:4096], reason=reason, at=now))

    # -- reads -----------------------------------------------------------------------
    def progress(self, task_id: str) -> Progress | None:
        with self.transaction() as tx:
            row = tx.get_task(task_id)
            if row is None or (row.expires_at is not None and row.expires_at <= time.time()):
                return None
            return replace(row).progress()

    def failures(self, task_id: str) -> list[Failure]:
        with self.transaction() as tx:
            rows = tx.jobs(task_id, [JobState.FAILED])
        out = [Failure.from_dict(r.error) for r in rows if r.error]
        out.sort(key=lambda f: (f.ref[0] != "j", f.ref[0], int(f.ref[1:])))
        return out

    def results(self, task_id: str) -> dict[str, Any]:
        with self.transaction() as tx:
            rows = tx.jobs(task_id, [JobState.SUCCEEDED])
        return {r.ref: json.loads(r.result) for r in rows if r.result is not None and r.ref[0] == JOB}

    def list_tasks(self, state: TaskState | None = None, limit: int = 1000) -> list[Progress]:
        now = time.time()
        with self.transaction() as tx:
            rows = tx.tasks(state, limit)
        return [r.progress() for r in rows if r.expires_at is None or r.expires_at > now]

    def rejected(self, limit: int = 100) -> list[Rejected]:
        with self.transaction() as tx:
            return tx.list_rejected(limit)

    def job_states(self, task_id: str) -> dict[str, str]:
        with self.transaction() as tx:
            return {r.ref: r.state.value for r in tx.jobs(task_id)}
