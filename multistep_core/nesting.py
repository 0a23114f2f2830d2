"""Nested tasks in the reference store: a child task is one step (one job slot) of its parent.

The slot is a job row of the parent whose spec names the child
(``{"subtask":"<child id>","on_failure":"fail"}``). It never goes through a ticket or a worker:
it is ``running`` from the moment the child is created, holds no lease (recovery never touches
it), and ends **inside the same transaction** as the child's own last transition (the child
succeeded, failed, or was cancelled). That is the whole exactly-once argument at the boundary:
there is no moment at which the child has ended and its parent has not counted it, and a
duplicate of the child's last finalizer finds the slot ended already.

:class:`~multistep_core.store.RowStore` calls in here from a few hooks: a task that ends is
noted on the transaction (``_Queues.ended``) and :func:`settle` ends the slots of those with a
parent at the end of the transition, which may end the parent in turn (up the tree, in the same
transaction). Cancel cascades down (:func:`cancel_children`), retry resumes failed children
(:func:`retry_slots`), delete removes the tree (:func:`delete_tree`). docs/nested.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING, Any

from .errors import InvalidJob, InvalidTransition, TaskExists
from .model import JOB, NOTHING, Dispatch, Failure, JobState, Progress, TaskOptions, TaskState
from .rows import JobRow, TaskRow

if TYPE_CHECKING:
    from .store import RowStore, Txn, _Queues


class OnFailure(str, Enum):
    """What a child's failure (or cancellation) does to its step in the parent."""

    FAIL = "fail"  # the step fails for good; the parent's policy decides (default)
    IGNORE = "ignore"  # the step counts as succeeded
    CONTINUE = "continue"  # the step is failed but never fails the parent; its finalizers see it

    def __str__(self) -> str:
        return self.value


_SLOT_HEAD = '{"subtask":'


def slot_spec(child_id: str, on_failure: OnFailure) -> str:
    return json.dumps({"subtask": child_id, "on_failure": on_failure.value}, separators=(",", ":"))


def is_slot(spec: str) -> bool:
    """Whether a stored spec is a subtask's slot (never a function to call)."""
    return spec.startswith(_SLOT_HEAD)


def slot_of(spec: str) -> tuple[str, OnFailure]:
    d = json.loads(spec)
    return d["subtask"], OnFailure(d.get("on_failure", "fail"))


# -- writing ---------------------------------------------------------------------------
def new_slot(store: RowStore, tx: Txn, qs: _Queues, parent: TaskRow, spec: str, now: float) -> JobRow:
    """Add the slot of a new child to ``parent``: a step running from now, never queued."""
    ref = f"{JOB}{parent.total}"
    if parent.next_job == parent.total:
        parent.next_job += 1  # nothing of the task waits in sequence: the line skips its place
    else:
        qs(parent.options.queue).waiting += 1  # the line walks over it later, as over a taken job
    parent.total += 1
    parent.running += 1
    row = JobRow(ref=ref, spec=spec, state=JobState.RUNNING, attempt=1, started_at=now)
    tx.put_job(parent.id, row)
    return row


def settle(store: RowStore, tx: Txn, qs: _Queues, task: TaskRow, d: Dispatch, now: float) -> Dispatch:
    """End the slots of every task with a parent that ended in this transaction (and so on up
    the tree); return ``d`` (of ``task``) with what the parents' steps asked for in ``also``."""
    if not qs.ended:
        return d
    extra: list[Dispatch] = []
    i = 0
    while i < len(qs.ended):
        child = qs.ended[i]
        i += 1
        if child.parent is None:
            continue
        part = _end_slot(store, tx, qs, child, now)
        if part:
            extra.append(part)
    qs.ended.clear()
    if not extra:
        return d
    return Dispatch(task.id, task.options.queue, d.refs, d.tickets, d.also + tuple(extra))


def _end_slot(store: RowStore, tx: Txn, qs: _Queues, child: TaskRow, now: float) -> Dispatch:
    assert child.parent is not None
    parent = tx.get_task(child.parent)
    slot = tx.get_job(child.parent, child.parent_ref) if parent is not None else None
    if parent is None or slot is None or slot.state != JobState.RUNNING:
        return NOTHING  # counted already (a duplicate, a retried child): exactly once
    _, on_failure = slot_of(slot.spec)
    parent.running -= 1
    slot.finished_at = now
    slot.due_at = None
    tickets = qs(parent.options.queue).unpark(now)  # a ticket parked on the parent's cap
    d = NOTHING
    if child.state == TaskState.SUCCEEDED or on_failure == OnFailure.IGNORE:
        slot.state = JobState.SUCCEEDED
        slot.error = None
        tx.put_job(parent.id, slot)
        parent.succeeded += 1
        _drop_walk(store, qs, parent)
        d = store._advance(tx, qs, parent, now)
    else:
        slot.state = JobState.FAILED
        slot.error = _failure(child, slot, now).to_dict()
        tx.put_job(parent.id, slot)
        if on_failure == OnFailure.CONTINUE:
            parent.failed += 1
            parent.tolerated += 1
            _drop_walk(store, qs, parent)
            d = store._advance(tx, qs, parent, now)
        else:
            parent.failed += 1
            _drop_walk(store, qs, parent)
            parent.failed -= 1  # (_ended_for_good counts it)
            d = store._ended_for_good(tx, qs, parent, JOB, now)
    tx.put_task(parent)
    if tickets:
        d = Dispatch(parent.id, parent.options.queue, d.refs, d.tickets + tickets, d.also)
    return d


def _drop_walk(store: RowStore, qs: _Queues, parent: TaskRow) -> None:
    """Every step of ``parent`` has ended but the line never walked over some slots (they count
    as waiting until it does): take them out of the line now, or they would stay counted."""
    if parent.state in (TaskState.OPEN, TaskState.RUNNING) and parent.succeeded + parent.failed >= parent.total:
        if parent.waiting > 0:
            store._unschedule(qs, parent)
            parent.next_job = parent.total
            parent.requeue.clear()


def _failure(child: TaskRow, slot: JobRow, now: float) -> Failure:
    if child.state == TaskState.CANCELLED:
        kind, why = "SubtaskCancelled", f"subtask {child.id!r} was cancelled by {child.cancelled_by}"
    else:
        kind, why = "SubtaskFailed", f"subtask {child.id!r} failed ({child.failed} of {child.total} steps failed)"
    return Failure(ref=slot.ref, fn=f"subtask:{child.id}", type=kind, message=why, attempt=slot.attempt, at=now)


def cancel_children(store: RowStore, tx: Txn, qs: _Queues, task: TaskRow, by: str, now: float) -> None:
    """Cancel cascades down: every child (and theirs) that has not succeeded is cancelled too."""
    for child_id in task.children:
        child = tx.get_task(child_id)
        if child is None or child.state in (TaskState.SUCCEEDED, TaskState.CANCELLED):
            continue
        store._finish_task(qs, child, TaskState.CANCELLED, now)
        child.cancelled_by = f"{by} (cancelled with its parent {task.id!r})"
        child.cancelled_at = now
        tx.put_task(child)
        cancel_children(store, tx, qs, child, by, now)


def retry_slots(
    store: RowStore, tx: Txn, qs: _Queues, task: TaskRow, slots: list[JobRow], now: float
) -> tuple[int, list[Dispatch]]:
    """Retry of a failed parent: each failed slot whose child failed retries that child (which
    retries only its own failed steps and children) and runs again; a child that succeeded
    since (retried on its own) counts as succeeded now. Returns (steps resumed, dispatches)."""
    again = 0
    out: list[Dispatch] = []
    for slot in sorted(slots, key=lambda r: int(r.ref[1:])):
        if slot.state != JobState.FAILED:
            continue
        child_id, on_failure = slot_of(slot.spec)
        child = tx.get_task(child_id)
        if child is None or child.state not in (TaskState.FAILED, TaskState.SUCCEEDED):
            continue  # deleted or cancelled: it stays a failed step
        task.failed -= 1
        if on_failure == OnFailure.CONTINUE:
            task.tolerated -= 1
        slot.error = None
        slot.finished_at = None
        if child.state == TaskState.SUCCEEDED:
            slot.state = JobState.SUCCEEDED
            slot.finished_at = now
            task.succeeded += 1
        else:
            slot.state = JobState.RUNNING
            slot.attempt += 1
            task.running += 1
            again += 1
            d = store._retry_row(tx, qs, child, now)
            if d:
                out.append(d)
        tx.put_job(task.id, slot)
    return again, out


def delete_tree(tx: Txn, task_id: str) -> bool:
    """Delete a task and every task below it."""
    row = tx.get_task(task_id)
    if row is not None:
        for child_id in row.children:
            delete_tree(tx, child_id)
    return tx.delete_task(task_id)


# -- reading ---------------------------------------------------------------------------
def child_results(
    store: RowStore, tx: Txn, task_id: str, rows: list[JobRow]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(slot ref, child's results)`` for each succeeded slot among ``rows`` whose child is still
    there (a subtask deleted after it ended, or an id since reused by another task, has none)."""
    for r in rows:
        if is_slot(r.spec):
            child_id, _ = slot_of(r.spec)
            child = tx.get_task(child_id)
            if child is not None and child.parent == task_id and child.parent_ref == r.ref:
                yield r.ref, results_in(store, tx, child_id)


def results_in(store: RowStore, tx: Txn, task_id: str) -> dict[str, Any]:
    rows = tx.jobs(task_id, [JobState.SUCCEEDED])
    out: dict[str, Any] = {r.ref: json.loads(r.result) for r in rows if r.result is not None and r.ref[0] == JOB}
    out.update(child_results(store, tx, task_id, rows))
    return out


@dataclass(frozen=True)
class TaskTree:
    """A task and its subtasks, read in one store call (``Task.tree()``).

    ``ref`` is the step the task is in its parent (``""`` at the root), ``on_failure`` what its
    failure does there, ``step`` that step's state (``running``, ``succeeded``, ``failed``)."""

    progress: Progress
    ref: str = ""
    on_failure: str = ""
    step: str = ""
    children: tuple[TaskTree, ...] = field(default_factory=tuple)

    @property
    def task_id(self) -> str:
        return self.progress.task_id

    def walk(self) -> Iterator[tuple[int, TaskTree]]:
        """Every node with its depth (0 = this one), parents before children."""
        yield 0, self
        for c in self.children:
            for depth, node in c.walk():
                yield depth + 1, node

    def deep(self) -> Progress:
        """The whole tree rolled up: its jobs (each subtask's slot replaced by the subtask's own
        jobs, to any depth) and every finalizer. State and times are the root's."""
        p = self.progress
        total, running, succeeded, failed = p.total, p.running, p.succeeded, p.failed
        fin_total, fin_done = p.finalizers_total, p.finalizers_done
        for c in self.children:
            total -= 1
            if c.step == JobState.RUNNING.value:
                running -= 1
            elif c.step == JobState.SUCCEEDED.value:
                succeeded -= 1
            elif c.step == JobState.FAILED.value:
                failed -= 1
            d = c.deep()
            total += d.total
            running += d.running
            succeeded += d.succeeded
            failed += d.failed
            fin_total += d.finalizers_total
            fin_done += d.finalizers_done
        return replace(
            p, total=total, running=running, succeeded=succeeded, failed=failed,
            pending=total - running - succeeded - failed, finalizers_total=fin_total, finalizers_done=fin_done,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id, "ref": self.ref, "on_failure": self.on_failure, "step": self.step,
            "progress": self.progress.to_dict(), "children": [c.to_dict() for c in self.children],
        }


def tree_in(tx: Txn, task_id: str, ref: str = "", on_failure: str = "", step: str = "") -> TaskTree | None:
    row = tx.get_task(task_id)
    if row is None:
        return None
    kids = []
    for child_id in dict.fromkeys(row.children):  # (an id deleted and added again is listed twice)
        child = tx.get_task(child_id)
        if child is None or child.parent != task_id:
            continue  # deleted, or the id reused by another task
        slot = tx.get_job(task_id, child.parent_ref)
        if slot is None:
            continue
        _, of = slot_of(slot.spec)
        node = tree_in(tx, child_id, child.parent_ref, of.value, slot.state.value)
        if node is not None:
            kids.append(node)
    return TaskTree(replace(row).progress(), ref, on_failure, step, tuple(kids))


# -- transitions (RowStore delegates here) ---------------------------------------------
def add_subtask(
    store: RowStore, tx: Txn, qs: _Queues, parent_id: str, child_id: str, options: TaskOptions,
    on_failure: str, now: float,
) -> str:
    try:
        mode = OnFailure(on_failure)
    except ValueError:
        raise InvalidJob(f"on_failure must be one of fail, ignore, continue; not {on_failure!r}") from None
    parent = store._task(tx, parent_id, now)
    if parent.state not in (TaskState.OPEN, TaskState.RUNNING):
        raise InvalidTransition(
            f"task {parent_id!r} is {parent.state.value}; subtasks can be added only while it is open or running"
        )
    old = tx.get_task(child_id)
    if old is not None:
        if old.expires_at is not None and old.expires_at <= now:
            delete_tree(tx, child_id)
        else:
            raise TaskExists(f"a task with id {child_id!r} already exists ({old.state.value})")
    slot = new_slot(store, tx, qs, parent, slot_spec(child_id, mode), now)
    parent.children.append(child_id)
    tx.put_task(parent)
    child = TaskRow(
        id=child_id, options=options, created_at=now, parent=parent_id, parent_ref=slot.ref,
        root=parent.root or parent.id,
    )
    tx.put_task(child, new=True)
    return slot.ref


def reopen_slot(tx: Txn, child: TaskRow) -> None:
    """A failed subtask retried on its own: its step in the parent runs again (unless the parent
    is over for good), so its end counts there once more."""
    if child.parent is None:
        return
    parent = tx.get_task(child.parent)
    slot = tx.get_job(child.parent, child.parent_ref) if parent is not None else None
    if parent is None or slot is None or slot.state != JobState.FAILED:
        return
    if parent.state in (TaskState.SUCCEEDED, TaskState.CANCELLED):
        return
    parent.failed -= 1
    if slot_of(slot.spec)[1] == OnFailure.CONTINUE:
        parent.tolerated -= 1
    parent.running += 1
    slot.state = JobState.RUNNING
    slot.attempt += 1
    slot.error = None
    slot.finished_at = None
    tx.put_job(parent.id, slot)
    tx.put_task(parent)
