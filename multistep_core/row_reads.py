"""The reads of the reference store (:class:`~multistep_core.store.RowStore`): each one
transaction of row primitives, no state changed."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

from . import nesting
from .fairshare import QueueRow
from .listing import JobDetail, TaskPage, TaskQuery, clip
from .model import Failure, JobState, Progress, Rejected, TaskState

if TYPE_CHECKING:
    from .store import RowStore, Txn


class RowReads:
    """Mixed into :class:`~multistep_core.store.RowStore`."""

    def transaction(self) -> contextlib.AbstractContextManager[Txn]:
        raise NotImplementedError  # RowStore's subclasses give it

    # -- reads -----------------------------------------------------------------------
    def progress(self, task_id: str) -> Progress | None:
        with self.transaction() as tx:
            row = tx.get_task(task_id)
            if row is None or (row.expires_at is not None and row.expires_at <= time.time()):
                return None
            return replace(row).progress()

    def failures(self, task_id: str) -> list[Failure]:
        with self.transaction() as tx:
            rows = tx.jobs(task_id, [JobState.FAILED, JobState.SUCCEEDED])
        out = [Failure.from_dict(r.error) if r.state == JobState.FAILED else replace(Failure.from_dict(r.error), resolved=True)
               for r in rows if r.error]
        out.sort(key=lambda f: (f.ref[0] != "j", f.ref[0], int(f.ref[1:])))
        return out

    def results(self, task_id: str) -> dict[str, Any]:
        with self.transaction() as tx:
            return nesting.results_in(cast("RowStore", self), tx, task_id)

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

    def page_tasks(self, query: TaskQuery) -> TaskPage:
        with self.transaction() as tx:
            return tx.page(query, time.time())

    def job_details(self, task_id: str, refs: Sequence[str]) -> dict[str, JobDetail]:
        with self.transaction() as tx:
            rows = [tx.get_job(task_id, ref) for ref in clip(refs)]
            return {r.ref: JobDetail(r.ref, r.state.value, r.spec, r.attempt) for r in rows if r is not None}
    def tree(self, task_id: str) -> nesting.TaskTree | None:
        with self.transaction() as tx:
            return nesting.tree_in(tx, task_id)

    def queue_state(self, queue: str) -> QueueRow | None:
        """The scheduling row of ``queue`` (for inspection: ``multistep show``, tests)."""
        with self.transaction() as tx:
            return tx.get_queue(queue)
