"""Recovery on Redis: ``claim_due`` and the global due index.

``ms:due-tasks`` holds, per task, a lower bound of the earliest due time in the task's own
``due`` set. Each script that adds a due time lowers the entry itself (``ZADD LT``);
``claim_due`` is one script that visits the tasks whose entry has passed, handles their due
rows in due order, sets each visited task's entry to its true earliest due time, then issues
every queue's lost and owed tickets. A bounded sweep drops entries of expired tasks and
repairs entries (a safety net: no writer leaves one too high).
"""

from __future__ import annotations

import time
from typing import Any

from ..model import Dispatch
from .base import RedisBase, _s

SWEEP_INTERVAL = 15.0  # seconds between two repair/GC sweeps of the global indexes
SWEEP_BATCH = 200  # tasks looked at per sweep


class DueIndex(RedisBase):
    def claim_due(self, now: float, limit: int = 1000) -> list[Dispatch]:
        """One script: every due row of the tasks the index names (in due order over all
        of them, as RowStore), then every queue's lost and owed tickets."""
        res = self._qcall("claim", "", now, [max(int(limit), 0), self._lost_message])
        out: list[Dispatch] = []
        i = 0
        while i < len(res):
            tid, queue, ref, n = res[i], res[i + 1], res[i + 2], int(res[i + 3])
            tickets = tuple(int(t) for t in res[i + 4 : i + 4 + n])
            out.append(Dispatch(tid, queue, (ref,) if ref else (), tickets))
            i += 4 + n
        self._maybe_sweep()
        return out

    def _maybe_sweep(self) -> None:
        """Bounded background repair: a slice of the task index per pass puts every task's
        earliest due time back into the due index (should a process have died between
        the two steps of ``_fix_due_index``) and drops index entries of expired tasks."""
        t = time.monotonic()
        if t < self._next_sweep or not self._sweep_lock.acquire(blocking=False):
            return
        try:
            self._next_sweep = t + SWEEP_INTERVAL
            with self._errors():
                batch = self.r.zrange(self._k_tasks, self._sweep_cursor, self._sweep_cursor + SWEEP_BATCH - 1,
                                      withscores=True)
            batch = [(_s(m), sc) for m, sc in batch]
            self._sweep_cursor = 0 if len(batch) < SWEEP_BATCH else self._sweep_cursor + SWEEP_BATCH
            if batch:
                self._sweep(batch)
        finally:
            self._sweep_lock.release()

    def _sweep(self, batch: list[tuple[str, float]]) -> None:
        def build(pipe: Any) -> None:
            for tid, _ in batch:
                k = self.keys(tid)
                pipe.exists(k[0])
                pipe.zrange(k[6], 0, 0, withscores=True)

        res = self._pipe(build)
        gone: list[Any] = []
        due: list[tuple[str, float]] = []
        for i, (tid, score) in enumerate(batch):
            if not int(res[2 * i]):
                gone += [tid, repr(score)]
            elif res[2 * i + 1]:
                due.append((tid, float(res[2 * i + 1][0][1])))

        def build2(pipe: Any) -> None:
            if gone:
                pipe.evalsha(self._scripts.sha["zrem_if"], 1, self._k_tasks, *gone)
            for tid, sc in due:
                pipe.zadd(self._k_due, {tid: repr(sc)}, lt=True)

        if gone or due:
            self._pipe(build2)
