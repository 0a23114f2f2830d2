"""In-memory store: the reference :class:`~multistep_core.store.RowStore`.

One lock guards everything, so every transition is atomic. State is lost when the
process exits; use :class:`~multistep_core.embedded.sqlite.SQLiteStore` to keep it.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import replace

from ..fairshare import DEFAULT_WINDOW, QueueRow
from ..model import JobState, Rejected, TaskState
from ..nesting import delete_tree
from ..store import DEFAULT_LEASE, JobRow, RowStore, TaskRow, Txn


class _MemoryTxn(Txn):
    def __init__(self, store: MemoryStore) -> None:
        self.s = store

    def get_task(self, task_id: str) -> TaskRow | None:
        return self.s._tasks.get(task_id)

    def put_task(self, row: TaskRow, *, new: bool = False) -> None:
        if new:
            self.s._jobs[row.id] = {}
        self.s._tasks[row.id] = row

    def get_job(self, task_id: str, ref: str) -> JobRow | None:
        jobs = self.s._jobs.get(task_id)
        return None if jobs is None else jobs.get(ref)

    def put_job(self, task_id: str, row: JobRow) -> None:
        self.s._jobs[task_id][row.ref] = row
        key = (task_id, row.ref)
        if row.due_at is None:
            self.s._due.pop(key, None)
        else:
            self.s._due[key] = row.due_at

    def put_jobs_new(self, task_id: str, rows: Sequence[JobRow]) -> None:
        jobs = self.s._jobs[task_id]
        for r in rows:
            jobs[r.ref] = r

    def jobs(self, task_id: str, states: Sequence[JobState] | None = None) -> list[JobRow]:
        rows = self.s._jobs.get(task_id, {}).values()
        if states is None:
            return list(rows)
        wanted = set(states)
        return [r for r in rows if r.state in wanted]

    def due(self, now: float, limit: int) -> list[tuple[str, str]]:
        hits = [k for k, t in self.s._due.items() if t <= now]
        hits.sort(key=lambda k: self.s._due[k])
        return hits[:limit]

    def tasks(self, state: TaskState | None, limit: int) -> list[TaskRow]:
        rows = [replace(t) for t in self.s._tasks.values() if state is None or t.state == state]
        rows.sort(key=lambda t: t.created_at, reverse=True)
        return rows[:limit]

    def delete_task(self, task_id: str) -> bool:
        found = self.s._tasks.pop(task_id, None) is not None
        for ref in self.s._jobs.pop(task_id, {}):
            self.s._due.pop((task_id, ref), None)
        return found

    def get_queue(self, name: str) -> QueueRow | None:
        return self.s._queues.get(name)

    def put_queue(self, row: QueueRow) -> None:
        self.s._queues[row.name] = row

    def queues(self) -> list[str]:
        return list(self.s._queues)

    def add_rejected(self, item: Rejected) -> None:
        self.s._rejected.append(item)

    def list_rejected(self, limit: int) -> list[Rejected]:
        return list(self.s._rejected)[-limit:][::-1]

    def purge_expired(self, now: float) -> None:
        for tid in [t.id for t in self.s._tasks.values() if t.expires_at is not None and t.expires_at <= now]:
            delete_tree(self, tid)  # a subtask never expires alone: it goes with its root


class MemoryStore(RowStore):
    """Task state in this process's memory. ``memory://`` in a backend string."""

    def __init__(self, *, lease: float = DEFAULT_LEASE, window: int = DEFAULT_WINDOW, max_rejected: int = 1000) -> None:
        super().__init__(lease=lease, window=window)
        self._queues: dict[str, QueueRow] = {}
        self._lock = threading.RLock()
        self._tasks: dict[str, TaskRow] = {}
        self._jobs: dict[str, dict[str, JobRow]] = {}
        self._due: dict[tuple[str, str], float] = {}
        self._rejected: deque[Rejected] = deque(maxlen=max_rejected)
        self._txn = _MemoryTxn(self)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Txn]:
        with self._lock:
            yield self._txn
