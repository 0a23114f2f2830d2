"""The store protocol: task state and its atomic transitions.

A store keeps every task's state and moves it from one state to the next, one atomic
call per transition. It decides; it never runs code and never talks to a queue: each
transition returns a :class:`~multistep_core.model.Dispatch` naming the messages the
caller must enqueue next.

Two ways to write a store:

* subclass :class:`~multistep_core.store.RowStore` and implement the row primitives of
  :class:`~multistep_core.store.Txn` inside a transaction (what the memory, SQLite and
  PostgreSQL stores do; all the lifecycle logic is then inherited, and it is the reference
  for every other store), or
* subclass :class:`Store` and implement each transition natively (the Redis store runs
  each one as a single Lua script).

Either way the conformance suite (``multistep_conformance``) is the judge. Every name here is
also importable from :mod:`multistep_core.store`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .fairshare import DEFAULT_WINDOW
from .listing import JobDetail, TaskPage, TaskQuery, clip, page_of
from .model import NOTHING, Dispatch, Failure, Progress, Rejected, Start, TaskOptions, TaskState

if TYPE_CHECKING:
    pass

DEFAULT_LEASE = 30.0


class Store(ABC):
    """Task state with atomic transitions. Every method is one transition or one read.

    ``lease`` is how long (seconds) a started job may go without a heartbeat before its
    worker is presumed dead and the job is handed out again; it is also the grace period
    after which a follow-up message (next finalizer, retry, callback) that was never
    started is sent again.
    """

    lease: float = DEFAULT_LEASE
    #: tickets per queue in the broker, at most (docs/fairness.md)
    window: int = DEFAULT_WINDOW

    # -- writing ---------------------------------------------------------------------
    @abstractmethod
    def create_task(self, task_id: str, options: TaskOptions, now: float) -> None:
        """Create an open task. Raise :class:`TaskExists` if the id is taken."""

    @abstractmethod
    def add_jobs(
        self, task_id: str, kind: str, specs: Sequence[str], now: float, per_message: int = 1
    ) -> list[str]:
        """Append jobs (``kind="j"``) or finalizers (``"f"``), or set the failure callback
        (``"x"``, one spec). Return the new refs. Jobs wait for tickets of the task's queue
        (:meth:`release` issues them); ``per_message`` > 1 lets a worker run up to that many
        of the task's jobs on one ticket (the task keeps the largest asked for). Raise
        :class:`InvalidTransition` once the task has left ``running``."""

    @abstractmethod
    def seal(self, task_id: str, now: float) -> Dispatch:
        """open → running; finalize at once if every job has already ended."""

    @abstractmethod
    def start(self, task_id: str, ref: str, now: float) -> Start:
        """Claim the delivery of one ref (a finalizer, the failure callback, or a job named by
        its ref rather than by a ticket): say whether it may run and, if so, take a lease."""

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
    def take(self, queue: str, ticket: int, now: float) -> Start:
        """A worker presents ``ticket`` of ``queue``: consume it and start the next job of the
        fairest task (docs/fairness.md), taking a lease on it. ``Start.task_id``/``ref`` say
        which job; ``run`` is False (with the reason) for an unknown ticket (taken already, a
        duplicate delivery) or when no job may start now."""

    @abstractmethod
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
        """:meth:`finish` of ``ref``, then start the next waiting job of the same task if its
        cap allows (a worker running a task's jobs ``per_message`` at a time), or with
        ``go_on`` the job a ticket of the task's queue would start now, without a ticket (a
        worker going on from one job to the next: docs/fairness.md); never parks. One round
        trip on a store that can."""

    @abstractmethod
    def release(self, queue: str, now: float) -> Dispatch:
        """Issue the tickets ``queue`` is owed (one per waiting job, up to the window) and
        send again the tickets presumed lost. Called after :meth:`add_jobs` and by
        recovery; idempotent."""

    @abstractmethod
    def cancel(self, task_id: str, by: str, now: float) -> bool:
        """Cancel a task that has not succeeded. False if it was already over."""

    def cancel_and_dispatch(self, task_id: str, by: str, now: float) -> tuple[bool, Dispatch]:
        """:meth:`cancel`, and what it asks to send: cancelling a subtask ends its step in the
        parent, which may start the parent's finalizers (docs/nested.md). A store that returns
        nothing here leaves those to recovery (they are registered with a grace period)."""
        return self.cancel(task_id, by, now), NOTHING

    def add_subtask(self, parent_id: str, child_id: str, options: TaskOptions, on_failure: str, now: float) -> str:
        """Create ``child_id`` as one step of ``parent_id`` (docs/nested.md); return that step's
        ref in the parent. Raise :class:`InvalidTransition` once the parent has left running."""
        raise NotImplementedError(f"{type(self).__name__} does not support nested tasks")

    def tree(self, task_id: str) -> Any:
        """The task and its subtasks, to any depth (a :class:`~multistep_core.nesting.TaskTree`),
        or None if there is no such task."""
        raise NotImplementedError(f"{type(self).__name__} does not support nested tasks")

    @abstractmethod
    def retry(self, task_id: str, now: float) -> Dispatch:
        """failed → running (or finalizing): reset the failed jobs and resend them."""

    @abstractmethod
    def claim_due(self, now: float, limit: int = 1000) -> list[Dispatch]:
        """Recovery: hand out again what is due (expired leases, retries whose backoff has
        passed, follow-ups never started, tickets presumed lost). Each returned ref is claimed
        for one lease; jobs go back in line for a ticket."""

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

    def page_tasks(self, query: TaskQuery) -> TaskPage:
        """One page of tasks (:mod:`.listing`). This default reads every task through
        :meth:`list_tasks`; a store overrides it with a read of the page alone."""
        return page_of(query, self.list_tasks(query.state, 2**62))

    def job_details(self, task_id: str, refs: Sequence[str]) -> dict[str, JobDetail]:
        """State and spec of the named jobs of a task (refs it does not have are left out)."""
        states = self.job_states(task_id)
        return {r: JobDetail(r, states[r]) for r in clip(refs) if r in states}

    def waiting(self, task_id: str) -> Dispatch:
        """The refs the task waits for that no worker holds (``multistep recover``); built
        from :meth:`progress` and :meth:`job_states` (multistep_core/resend.py)."""
        from .resend import waiting_refs

        return waiting_refs(self, task_id)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


@runtime_checkable
class SupportsWaitChanged(Protocol):
    """A store that can tell a waiter when a task ends (PostgreSQL's LISTEN/NOTIFY), so that
    ``Task.wait`` sleeps instead of polling."""

    def wait_changed(self, task_id: str, timeout: float) -> None:
        """Return when the task may have ended, or after ``timeout`` seconds."""


# ---------------------------------------------------------------------------------------
# RowStore: the reference logic over row primitives
# ---------------------------------------------------------------------------------------
