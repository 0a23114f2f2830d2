"""The reference store: task state as rows, and every transition's logic, once.

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
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

from . import nesting
from .errors import InvalidJob, InvalidTransition, TaskExists, TaskNotFound
from .fairshare import DEFAULT_WINDOW, TICKET_TIMEOUT_LEASES, QueueRow
from .history import failure_history, retried_failure, retry_refused, with_history
from .listing import TaskPage, TaskQuery, page_of
from .model import (
    CALLBACK,
    FINALIZER,
    JOB,
    NOTHING,
    Dispatch,
    Failure,
    JobState,
    Policy,
    Rejected,
    Start,
    TaskOptions,
    TaskState,
    parse_ref,
    retries_value,
)
from .protocol import DEFAULT_LEASE as DEFAULT_LEASE
from .protocol import Store as Store
from .protocol import SupportsWaitChanged as SupportsWaitChanged
from .row_reads import RowReads
from .rows import JobRow as JobRow
from .rows import TaskRow as TaskRow

DONE_JOB_STATES = (JobState.SUCCEEDED, JobState.FAILED)


class Txn(ABC):
    """Row access inside one transaction. Rows returned may be live objects or copies:
    the logic always writes a changed row back with ``put_task`` / ``put_job`` / ``put_queue``."""

    @abstractmethod
    def get_task(self, task_id: str) -> TaskRow | None: ...

    @abstractmethod
    def put_task(self, row: TaskRow, *, new: bool = False) -> None:
        """Write a task row (``new``: it did not exist; a store may use a plain insert)."""

    @abstractmethod
    def get_job(self, task_id: str, ref: str) -> JobRow | None: ...

    @abstractmethod
    def put_job(self, task_id: str, row: JobRow) -> None: ...

    @abstractmethod
    def put_jobs_new(self, task_id: str, rows: Sequence[JobRow]) -> None: ...

    @abstractmethod
    def jobs(self, task_id: str, states: Sequence[JobState] | None = None) -> list[JobRow]: ...

    @abstractmethod
    def due(self, now: float, limit: int) -> list[tuple[str, str]]:
        """(task_id, ref) of rows whose ``due_at`` is set and ≤ now, earliest first."""

    @abstractmethod
    def tasks(self, state: TaskState | None, limit: int) -> list[TaskRow]:
        """Task rows (of one state, or all), newest first."""

    @abstractmethod
    def delete_task(self, task_id: str) -> bool: ...

    @abstractmethod
    def get_queue(self, name: str) -> QueueRow | None:
        """The scheduling row of a queue (:mod:`multistep_core.fairshare`), if any."""

    @abstractmethod
    def put_queue(self, row: QueueRow) -> None: ...

    @abstractmethod
    def queues(self) -> list[str]:
        """Names of every queue with a scheduling row."""

    @abstractmethod
    def add_rejected(self, item: Rejected) -> None: ...

    @abstractmethod
    def list_rejected(self, limit: int) -> list[Rejected]:
        """The newest ``limit`` rejected messages, newest first."""

    @abstractmethod
    def purge_expired(self, now: float) -> None: ...

    def page(self, query: TaskQuery, now: float) -> TaskPage:
        """One page of tasks not expired at ``now``. This default reads every task row."""
        rows = self.tasks(query.state, 2**62)
        return page_of(query, [r.progress() for r in rows if r.expires_at is None or r.expires_at > now])


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


class _Queues:
    """The queue rows one transaction touches, loaded once and written back at the end."""

    def __init__(self, tx: Txn) -> None:
        self.tx = tx
        self.rows: dict[str, QueueRow] = {}
        self.ended: list[TaskRow] = []  # tasks that ended in this transaction (nesting.settle)

    def __call__(self, name: str) -> QueueRow:
        q = self.rows.get(name)
        if q is None:
            q = self.tx.get_queue(name) or QueueRow(name=name)
            self.rows[name] = q
        return q

    def save(self) -> None:
        for q in self.rows.values():
            self.tx.put_queue(q)


class RowStore(RowReads, Store):
    """A store built from row primitives; all lifecycle logic lives here, once."""

    def __init__(self, *, lease: float = DEFAULT_LEASE, window: int = DEFAULT_WINDOW) -> None:
        self.lease = float(lease)
        self.window = int(window)

    @property
    def ticket_timeout(self) -> float:
        return self.lease * TICKET_TIMEOUT_LEASES

    @abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[Txn]:
        """A context in which reads and writes are atomic and isolated."""

    @contextlib.contextmanager
    def _txq(self) -> Iterator[tuple[Txn, _Queues]]:
        with self.transaction() as tx:
            qs = _Queues(tx)
            yield tx, qs
            qs.save()

    # -- helpers ---------------------------------------------------------------------
    def _task(self, tx: Txn, task_id: str, now: float | None = None) -> TaskRow:
        row = tx.get_task(task_id)
        if row is None or (row.expires_at is not None and now is not None and row.expires_at <= now):
            raise TaskNotFound(f"no task with id {task_id!r}")
        return row

    def _tickets(self, task: TaskRow, tickets: tuple[int, ...], refs: tuple[str, ...] = ()) -> Dispatch:
        if not tickets and not refs:
            return NOTHING
        return Dispatch(task.id, task.options.queue, refs, tickets)

    def _wait(self, qs: _Queues, task: TaskRow, refs: Sequence[str] = ()) -> None:
        """``refs`` go back in line (or, with none, the task's new jobs start waiting)."""
        task.requeue.extend(refs)
        q = qs(task.options.queue)
        q.waiting += len(refs)
        if task.waiting > 0 and task.state in (TaskState.OPEN, TaskState.RUNNING):
            o = task.options
            key = task.group_key
            g = q.group(key, o.weight if not o.group else 1.0, o.group_max_concurrency)
            q.join(key, g, task.id, task.vt)

    def _unschedule(self, qs: _Queues, task: TaskRow) -> None:
        """The task ended (or was cancelled): its waiting jobs leave the line at once."""
        q = qs(task.options.queue)
        q.waiting -= task.waiting
        vt = q.leave(task.group_key, task.id)
        if vt is not None:
            task.vt = vt

    def _job_ended(self, qs: _Queues, task: TaskRow, now: float) -> tuple[int, ...]:
        """A running job of ``task`` ended: free its place under the caps."""
        task.running -= 1
        q = qs(task.options.queue)
        g = q.groups.get(task.group_key)
        if g is not None:
            g.running -= 1
            q.forget_if_idle(task.group_key)
        return q.unpark(now)

    def _next_row(self, tx: Txn, qs: _Queues, task: TaskRow) -> JobRow | None:
        """The task's next waiting job that is still pending (refs in line first)."""
        q = qs(task.options.queue)
        while task.requeue or task.next_job < task.total:
            if task.requeue:
                ref = task.requeue.pop(0)
            else:
                ref = f"j{task.next_job}"
                task.next_job += 1
            q.waiting -= 1
            row = tx.get_job(task.id, ref)
            if row is not None and row.state == JobState.PENDING:
                return row
        return None

    def _start_row(self, tx: Txn, qs: _Queues, task: TaskRow, row: JobRow, now: float) -> Start:
        task.running += 1
        g = qs(task.options.queue).groups.get(task.group_key)
        if g is not None:
            g.running += 1
        row.state = JobState.RUNNING
        row.attempt += 1
        row.due_at = now + self.lease
        row.started_at = now
        tx.put_job(task.id, row)
        return Start(
            True, spec=row.spec, attempt=row.attempt, keep_results=task.options.keep_results,
            task_id=task.id, ref=row.ref, batch=task.per_message,
        )

    def _after_take(self, qs: _Queues, task: TaskRow) -> None:
        if task.waiting <= 0:
            vt = qs(task.options.queue).leave(task.group_key, task.id)
            if vt is not None:
                task.vt = vt

    def _finish_task(self, qs: _Queues, task: TaskRow, state: TaskState, now: float) -> None:
        if task.state in (TaskState.OPEN, TaskState.RUNNING):
            self._unschedule(qs, task)
        task.state = state
        task.finished_at = now
        task.expires_at = now + task.options.retention if task.parent is None else None  # a tree expires whole
        qs.ended.append(task)

    def _follow(self, tx: Txn, qs: _Queues, task: TaskRow, ref: str, now: float) -> Dispatch:
        row = tx.get_job(task.id, ref)
        if row is None:  # pragma: no cover - guarded by callers
            return NOTHING
        row.state = JobState.PENDING
        if ref[0] == JOB:  # back in line for a ticket
            row.due_at = None
            tx.put_job(task.id, row)
            self._wait(qs, task, [ref])
            return self._tickets(task, qs(task.options.queue).top_up(self.window, now))
        row.due_at = now + self.lease
        tx.put_job(task.id, row)
        return Dispatch(task.id, task.options.queue, (ref,))

    def _fail(self, tx: Txn, qs: _Queues, task: TaskRow, now: float) -> Dispatch:
        self._finish_task(qs, task, TaskState.FAILED, now)
        if task.has_callback:
            cb = tx.get_job(task.id, "x0")
            if cb is not None:
                cb.fails = 0
                cb.lost = 0
                cb.error = None
                tx.put_job(task.id, cb)
                return self._follow(tx, qs, task, "x0", now)
        return NOTHING

    def _advance(self, tx: Txn, qs: _Queues, task: TaskRow, now: float) -> Dispatch:
        if task.state != TaskState.RUNNING or task.succeeded + task.failed < task.total:
            return NOTHING
        if task.options.policy == Policy.FAIL and task.failed > task.tolerated:
            return self._fail(tx, qs, task, now)
        if task.fin_done < task.fin_total:
            # Every job has ended: what is left in line is stale (a job that succeeded after its
            # lease was declared lost and it was put back in line), and must not stay counted.
            self._unschedule(qs, task)
            task.requeue.clear()
            task.next_job = task.total
            task.state = TaskState.FINALIZING
            return self._follow(tx, qs, task, f"f{task.fin_done}", now)
        self._finish_task(qs, task, TaskState.SUCCEEDED, now)
        return NOTHING

    def _ended_for_good(self, tx: Txn, qs: _Queues, task: TaskRow, kind: str, now: float) -> Dispatch:
        """A job or finalizer has failed with no retry left."""
        if kind == JOB:
            task.failed += 1
            if task.state in (TaskState.OPEN, TaskState.RUNNING) and task.options.policy == Policy.FAIL_FAST:
                return self._fail(tx, qs, task, now)
            return self._advance(tx, qs, task, now)
        if kind == FINALIZER and task.state == TaskState.FINALIZING:
            return self._fail(tx, qs, task, now)
        return NOTHING

    # -- transitions -----------------------------------------------------------------
    def create_task(self, task_id: str, options: TaskOptions, now: float) -> None:
        with self.transaction() as tx:
            old = tx.get_task(task_id)
            if old is not None:
                if old.expires_at is not None and old.expires_at <= now:
                    nesting.delete_tree(tx, task_id)
                else:
                    raise TaskExists(f"a task with id {task_id!r} already exists ({old.state.value})")
            tx.put_task(TaskRow(id=task_id, options=options, created_at=now), new=True)

    def add_jobs(
        self, task_id: str, kind: str, specs: Sequence[str], now: float, per_message: int = 1
    ) -> list[str]:
        with self._txq() as (tx, qs):
            task = self._task(tx, task_id, now)
            if kind == CALLBACK:
                if task.state.terminal:
                    raise InvalidTransition(f"task {task_id!r} is {task.state.value}; too late for a failure callback")
                (spec,) = specs
                tx.put_job(task_id, JobRow(ref="x0", spec=spec))
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
                task.per_message = max(task.per_message, int(per_message))
            elif kind == FINALIZER:
                first = task.fin_total
                task.fin_total += len(specs)
            else:
                raise InvalidJob(f"unknown job kind {kind!r} (expected j, f or x)")
            rows = [JobRow(ref=f"{kind}{first + i}", spec=s) for i, s in enumerate(specs)]
            tx.put_jobs_new(task_id, rows)
            if kind == JOB and specs:
                qs(task.options.queue).waiting += len(specs)
                self._wait(qs, task)
            tx.put_task(task)
            return [r.ref for r in rows]

    def release(self, queue: str, now: float) -> Dispatch:
        with self._txq() as (_tx, qs):
            q = qs(queue)
            tickets = q.expired_tickets(now, self.ticket_timeout) + q.top_up(self.window, now)
            return Dispatch("", queue, (), tickets) if tickets else NOTHING

    def seal(self, task_id: str, now: float) -> Dispatch:
        with self._txq() as (tx, qs):
            task = self._task(tx, task_id, now)
            if task.state.terminal:
                return NOTHING
            if task.sealed:
                raise InvalidTransition(f"task {task_id!r} is already sealed")
            task.sealed = True
            task.sealed_at = now
            task.state = TaskState.RUNNING
            d = self._advance(tx, qs, task, now)
            tx.put_task(task)
            return nesting.settle(self, tx, qs, task, d, now)

    def take(self, queue: str, ticket: int, now: float) -> Start:
        with self._txq() as (tx, qs):
            q = qs(queue)
            if q.tickets.pop(ticket, None) is None:
                return Start(False, "stale-ticket")
            st = self._take_fairest(tx, qs, q, now)
            if st is not None:
                return st
            if q.waiting > 0:
                q.parked += 1  # only capped work: owed back when a running job ends
                return Start(False, "capped")
            return Start(False, "no-work")

    def _take_fairest(self, tx: Txn, qs: _Queues, q: QueueRow, now: float) -> Start | None:
        """Start the next job of the fairest task of ``q`` under its caps; None if none may start."""
        for _key, g in q.order():
            for task_id in sorted(g.tasks, key=lambda t, vts=g.tasks: (vts[t], t)):  # type: ignore[misc]
                task = tx.get_task(task_id)
                if task is None or task.state not in (TaskState.OPEN, TaskState.RUNNING):
                    g.tasks.pop(task_id, None)  # pragma: no cover - ended tasks leave the line
                    continue
                cap = task.options.max_concurrency
                if cap > 0 and task.running >= cap:
                    continue
                row = self._next_row(tx, qs, task)
                if row is None:
                    self._after_take(qs, task)
                    tx.put_task(task)
                    continue
                q.charge(g, task_id, task.options.weight)
                st = self._start_row(tx, qs, task, row, now)
                self._after_take(qs, task)
                tx.put_task(task)
                return st
        return None

    def take_next(
        self,
        task_id: str,
        ref: str,
        attempt: int,
        now: float,
        *,
        result: str | None = None,
        error: Failure | None = None,
        go_on: bool = False,
    ) -> tuple[Dispatch, Start]:
        with self._txq() as (tx, qs):
            d = self._finish(tx, qs, task_id, ref, attempt, now, result, error)
            task = tx.get_task(task_id)
            if go_on and task is not None:  # the job a ticket of the queue would start, without one
                st = self._take_fairest(tx, qs, qs(task.options.queue), now)
                return d, st if st is not None else Start(False, "no-work")
            if task is None or task.state not in (TaskState.OPEN, TaskState.RUNNING):
                return d, Start(False, "batch-done")
            cap = task.options.max_concurrency
            g = qs(task.options.queue).groups.get(task.group_key)
            if (cap > 0 and task.running >= cap) or (g is not None and 0 < g.limit <= g.running) or g is None:
                return d, Start(False, "batch-done")
            if task.id not in g.tasks:
                return d, Start(False, "batch-done")
            row = self._next_row(tx, qs, task)
            if row is None:
                self._after_take(qs, task)
                tx.put_task(task)
                return d, Start(False, "batch-done")
            qs(task.options.queue).charge(g, task.id, task.options.weight)
            st = self._start_row(tx, qs, task, row, now)
            self._after_take(qs, task)
            tx.put_task(task)
            return d, st

    def start(self, task_id: str, ref: str, now: float) -> Start:
        kind, index = parse_ref(ref)
        with self._txq() as (tx, qs):
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
                # A message naming the job itself (not a ticket): it may run if it is pending
                # and its task under its caps; its place in line is skipped when reached.
                if task.state not in (TaskState.OPEN, TaskState.RUNNING):
                    return Start(False, f"task-{task.state.value}")
                g = qs(task.options.queue).groups.get(task.group_key)
                cap = task.options.max_concurrency
                if (cap > 0 and task.running >= cap) or (g is not None and 0 < g.limit <= g.running):
                    return Start(False, "capped")
                st = self._start_row(tx, qs, task, row, now)
                tx.put_task(task)
                return st
            if kind == FINALIZER:
                if task.state != TaskState.FINALIZING or index != task.fin_done:
                    return Start(False, f"task-{task.state.value}")
            elif task.state != TaskState.FAILED:
                return Start(False, f"task-{task.state.value}")
            row.state = JobState.RUNNING
            row.attempt += 1
            row.due_at = now + self.lease
            row.started_at = now
            tx.put_job(task_id, row)
            return Start(True, spec=row.spec, attempt=row.attempt, keep_results=task.options.keep_results,
                         task_id=task_id, ref=ref)

    def renew(self, task_id: str, ref: str, attempt: int, now: float) -> bool:
        with self.transaction() as tx:
            row = tx.get_job(task_id, ref)
            if row is None or row.state != JobState.RUNNING or row.attempt != attempt:
                return False
            if nesting.is_slot(row.spec):
                return False  # a subtask's step holds no lease
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
        with self._txq() as (tx, qs):
            return self._finish(tx, qs, task_id, ref, attempt, now, result, error)

    def _finish(
        self,
        tx: Txn,
        qs: _Queues,
        task_id: str,
        ref: str,
        attempt: int,
        now: float,
        result: str | None,
        error: Failure | None,
    ) -> Dispatch:
        kind, index = parse_ref(ref)
        task = tx.get_task(task_id)
        row = tx.get_job(task_id, ref) if task is not None else None
        if task is None or row is None or row.state in DONE_JOB_STATES:
            return NOTHING  # gone, or a duplicate: counted once already
        if error is not None and (row.state != JobState.RUNNING or row.attempt != attempt):
            return NOTHING  # a stale attempt's failure; the current attempt decides
        if kind == JOB and nesting.is_slot(row.spec):
            return NOTHING  # a subtask's step ends only with the subtask (nesting.settle)
        if kind == FINALIZER and (task.state != TaskState.FINALIZING or index != task.fin_done):
            return NOTHING  # a finalizer's outcome counts only in its turn
        if kind == CALLBACK and task.state != TaskState.FAILED:
            return NOTHING
        unparked: tuple[int, ...] = ()
        if kind == JOB and row.state == JobState.RUNNING:
            unparked = self._job_ended(qs, task, now)
        d = self._record(tx, qs, task, row, kind, index, now, result, error)
        tx.put_task(task)
        d = self._merge(task, d, unparked + qs(task.options.queue).top_up(self.window, now))
        return nesting.settle(self, tx, qs, task, d, now)

    def _merge(self, task: TaskRow, d: Dispatch, tickets: tuple[int, ...]) -> Dispatch:
        if not tickets:
            return d
        return Dispatch(task.id, task.options.queue, d.refs, d.tickets + tickets, d.also)

    def _record(
        self,
        tx: Txn,
        qs: _Queues,
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
            row.error = failure_history(row.error)  # what retry() resumed from: failures() shows it resolved
            row.result = result if task.options.keep_results else None
            tx.put_job(task.id, row)
            if kind == JOB:
                task.succeeded += 1
                return self._advance(tx, qs, task, now)
            if kind == FINALIZER and task.state == TaskState.FINALIZING and index == task.fin_done:
                task.fin_done += 1
                if task.fin_done < task.fin_total:
                    return self._follow(tx, qs, task, f"f{task.fin_done}", now)
                self._finish_task(qs, task, TaskState.SUCCEEDED, now)
            return NOTHING
        row.error = with_history(error.to_dict(), row.error)
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
                return self._follow(tx, qs, task, row.ref, now)
            return NOTHING  # claim_due puts it back in line when the backoff has passed
        if error.type == "WorkerLost" and not lost_out:
            tx.put_job(task.id, row)
            return self._follow(tx, qs, task, row.ref, now)
        row.state = JobState.FAILED
        row.finished_at = now
        row.due_at = None
        tx.put_job(task.id, row)
        return self._ended_for_good(tx, qs, task, kind, now)

    def cancel(self, task_id: str, by: str, now: float) -> bool:
        return self.cancel_and_dispatch(task_id, by, now)[0]

    def cancel_and_dispatch(self, task_id: str, by: str, now: float) -> tuple[bool, Dispatch]:
        with self._txq() as (tx, qs):
            task = self._task(tx, task_id, now)
            if task.state in (TaskState.SUCCEEDED, TaskState.CANCELLED):
                return False, NOTHING
            self._finish_task(qs, task, TaskState.CANCELLED, now)
            task.cancelled_by = by
            task.cancelled_at = now
            tx.put_task(task)
            nesting.cancel_children(self, tx, qs, task, by, now)
            return True, nesting.settle(self, tx, qs, task, NOTHING, now)

    def retry(self, task_id: str, now: float) -> Dispatch:
        with self._txq() as (tx, qs):
            task = self._task(tx, task_id, now)
            if task.state != TaskState.FAILED:
                raise retry_refused(task_id, task.state.value)
            d = self._retry_row(tx, qs, task, now)
            nesting.reopen_slot(tx, task)
            return nesting.settle(self, tx, qs, task, d, now)

    def _retry_row(self, tx: Txn, qs: _Queues, task: TaskRow, now: float) -> Dispatch:
        """failed -> running inside a transaction (a failed parent also retries its failed children)."""
        task_id = task.id
        task.finished_at = None
        task.expires_at = None
        refs: list[str] = []
        again = 0
        fin_failed = None
        slots: list[JobRow] = []
        for row in tx.jobs(task_id, [JobState.FAILED, JobState.PENDING, JobState.RETRY_WAIT]):
            kind, _ = parse_ref(row.ref)
            if kind == CALLBACK:
                continue
            if kind == JOB and nesting.is_slot(row.spec):
                slots.append(row)  # a failed subtask: retried below, never queued
                continue
            if kind == FINALIZER:
                if row.state == JobState.FAILED:
                    fin_failed = row
                continue
            if row.state == JobState.FAILED:
                task.failed -= 1
            row.error = retried_failure(row) if row.state == JobState.FAILED else failure_history(row.error)
            row.state = JobState.PENDING
            row.fails = row.lost = 0
            row.finished_at = None
            row.due_at = None
            tx.put_job(task_id, row)
            again += 1
            if row.ref not in task.requeue and int(row.ref[1:]) < task.next_job:
                refs.append(row.ref)  # taken before: back in line (the rest still is)
        refs.sort(key=lambda r: int(r[1:]))
        resumed, nested = nesting.retry_slots(self, tx, qs, task, slots, now)
        again += resumed
        if fin_failed is not None and not again:
            fin_failed.fails = fin_failed.lost = 0
            fin_failed.error = retried_failure(fin_failed)
            fin_failed.finished_at = None
            tx.put_job(task_id, fin_failed)
            task.state = TaskState.FINALIZING
            d = self._follow(tx, qs, task, fin_failed.ref, now)
            tx.put_task(task)
            return d
        task.state = TaskState.RUNNING if task.sealed else TaskState.OPEN
        qs(task.options.queue).waiting += task.total - task.next_job + len(task.requeue)
        self._wait(qs, task, refs)
        d = self._advance(tx, qs, task, now)
        tx.put_task(task)
        d = self._merge(task, d, qs(task.options.queue).top_up(self.window, now))
        if nested:
            d = Dispatch(task.id, task.options.queue, d.refs, d.tickets, d.also + tuple(nested))
        return d

    def claim_due(self, now: float, limit: int = 1000) -> list[Dispatch]:
        out: list[Dispatch] = []
        with self._txq() as (tx, qs):
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
                    unparked: tuple[int, ...] = ()
                    if kind == JOB:
                        unparked = self._job_ended(qs, task, now)
                    row.lost += 1
                    if not wanted:
                        row.state = JobState.PENDING
                        row.due_at = None
                        tx.put_job(task_id, row)
                        tx.put_task(task)
                        if unparked:
                            out.append(self._tickets(task, unparked))
                        continue
                    err = worker_lost_failure(ref, _spec_fn(row.spec), row.attempt, now, self.lease)
                    d = self._merge(task, self._record(tx, qs, task, row, kind, index, now, None, err), unparked)
                    tx.put_task(task)
                    if d:
                        out.append(d)
                    continue
                if not wanted:
                    row.due_at = None
                    tx.put_job(task_id, row)
                    continue
                d = self._follow(tx, qs, task, ref, now)
                tx.put_task(task)
                if d:
                    out.append(d)
            if qs.ended:  # a job failed for good ended its task: end its step in the parent
                out.extend(nesting.settle(self, tx, qs, TaskRow(id="", options=TaskOptions()), NOTHING, now).also)
            for name in sorted(set(tx.queues()) | set(qs.rows)):
                q = qs(name)
                tickets = q.expired_tickets(now, self.ticket_timeout) + q.top_up(self.window, now)
                if tickets:
                    out.append(Dispatch("", name, (), tickets))
        return out

    def delete(self, task_id: str) -> bool:
        with self._txq() as (tx, qs):
            task = tx.get_task(task_id)
            if task is not None and task.parent is not None and tx.get_task(task.parent) is not None:
                if task.state in (TaskState.OPEN, TaskState.RUNNING, TaskState.FINALIZING):
                    raise InvalidTransition(
                        f"task {task_id!r} is a running subtask of {task.parent!r}: cancel it, "
                        "or delete the whole tree from its root"
                    )
            self._unschedule_tree(tx, qs, task)
            return nesting.delete_tree(tx, task_id)

    def _unschedule_tree(self, tx: Txn, qs: _Queues, task: TaskRow | None) -> None:
        if task is None:
            return
        if task.state in (TaskState.OPEN, TaskState.RUNNING):
            self._unschedule(qs, task)
        if task.running > 0:
            # Its running jobs will never report back: free their places under the group's
            # cap, and owe back the tickets parked on them (the next top-up issues them).
            q = qs(task.options.queue)
            g = q.groups.get(task.group_key)
            if g is not None:
                g.running -= task.running
                q.forget_if_idle(task.group_key)
            q.parked = max(0, q.parked - task.running)
        for child_id in task.children:
            self._unschedule_tree(tx, qs, tx.get_task(child_id))

    def reject(self, raw: str, reason: str, now: float) -> None:
        with self.transaction() as tx:
            tx.add_rejected(Rejected(raw=raw[:4096], reason=reason, at=now))

    def add_subtask(self, parent_id: str, child_id: str, options: TaskOptions, on_failure: str, now: float) -> str:
        with self._txq() as (tx, qs):
            return nesting.add_subtask(self, tx, qs, parent_id, child_id, options, on_failure, now)
