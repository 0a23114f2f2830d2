"""The rows of the reference store: a task and a job, as :class:`~multistep_core.store.RowStore`
reads and writes them through a :class:`~multistep_core.store.Txn` (a leaf: the store logic and
the nesting logic both build rows, and neither imports the other's module for it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .fairshare import solo_group
from .model import JobState, Progress, TaskOptions, TaskState


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
    # dispatch (docs/fairness.md): jobs j0..j<next_job-1> have been taken once; ``requeue``
    # holds refs back in line (a lost lease, a retry); ``vt`` the task's virtual time
    next_job: int = 0
    requeue: list[str] = field(default_factory=list)
    per_message: int = 1
    vt: float = 0.0
    # nesting (docs/nested.md): the parent and this task's step (slot) in it, the tree's root,
    # the children in creation order, failed steps that do not fail the task (on_failure=continue)
    parent: str | None = None
    parent_ref: str = ""
    root: str = ""
    children: list[str] = field(default_factory=list)
    tolerated: int = 0

    @property
    def waiting(self) -> int:
        """Jobs waiting for a ticket."""
        return self.total - self.next_job + len(self.requeue)

    @property
    def group_key(self) -> str:
        return self.options.group or solo_group(self.root or self.id)  # a tree shares one share

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
            parent=self.parent,
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
