"""What a task is waiting for, and sending it again: behind ``Backend.recover_task`` and
``multistep recover ID``.

A task waits for the refs that are ``pending`` (nobody holds a lease on them) and that its
state wants run: its jobs while it is open or running, the next finalizer while it is
finalizing, the failure callback once it failed. Sending a message for each again is always
safe: every multistep message is idempotent (a ref that is running, finished, or not in turn
is skipped by ``start`` and counted once). A ``running`` ref is left to the core's recovery,
which re-sends it when its lease expires; a ``retry_wait`` ref is sent when its backoff ends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import TaskNotFound
from .model import CALLBACK, FINALIZER, JOB, Dispatch, JobState, TaskState

if TYPE_CHECKING:
    from .store import Store


def waiting_refs(store: Store, task_id: str) -> Dispatch:
    """The refs ``task_id`` waits for that no worker holds, as one :class:`Dispatch` (empty
    when the task has ended or everything it waits for is running). Raises TaskNotFound."""
    p = store.progress(task_id)
    if p is None:
        raise TaskNotFound(f"no task with id {task_id!r}")
    states = store.job_states(task_id)
    pending = {ref for ref, state in states.items() if state == JobState.PENDING.value}
    if p.state in (TaskState.OPEN, TaskState.RUNNING):
        # the first window of pending jobs, by ref (a job message starts its job if it is still
        # pending and its task under its caps); the rest follow by the tickets the queue is owed
        refs = sorted((r for r in pending if r[0] == JOB), key=lambda r: int(r[1:]))[: store.window]
    elif p.state == TaskState.FINALIZING:
        refs = [r for r in (f"{FINALIZER}{p.finalizers_done}",) if r in pending]
    elif p.state == TaskState.FAILED:
        refs = [r for r in (f"{CALLBACK}0",) if r in pending]
    else:
        refs = []
    return Dispatch(task_id, p.options.queue, tuple(refs))
