"""Recovery on Redis: ``claim_due`` and the global due index.

``ms:due-tasks`` holds, per task, a lower bound of the earliest due time in the task's own
``due`` set. Each transition that adds a due time lowers the entry in the same round trip
(``ZADD LT``); ``claim_due`` visits tasks whose entry has passed, runs the claim script on
each, and raises the entry to the task's true earliest due time. A bounded sweep repairs
entries a crashed process left too high and drops entries of expired tasks.
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
        out: list[Dispatch] = []
        if limit > 0:
            with self._errors():
                tids = _s(self.r.zrangebyscore(self._k_due, "-inf", repr(now), start=0, num=limit))
            remaining = limit
            fix: list[tuple[str, str | None]] = []
            for tid in tids:
                if remaining <= 0:
                    break
                res = self._call("claim", tid, [repr(now), repr(self.lease), remaining, self._lost_message])
                if res[0] == "gone":
                    fix.append((tid, None))
                    continue
                queue, processed, nxt = res[1], int(res[2]), res[3]
                remaining -= processed
                out.extend(Dispatch(tid, queue, (ref,)) for ref in res[4:])
                fix.append((tid, nxt or None))
            self._fix_due_index(fix)
        self._maybe_sweep()
        return out

    def _fix_due_index(self, fix: list[tuple[str, str | None]]) -> None:
        """Raise each visited task's entry to its true earliest due (or drop it), then read
        the task's due set again: a due time added meanwhile, whose writer lowered the
        entry before our raise, is put back. Any due added after that re-read comes with
        its writer's own ``ZADD LT``."""
        if not fix:
            return

        def build(pipe: Any) -> None:
            for tid, nxt in fix:
                if nxt is None:
                    pipe.zrem(self._k_due, tid)
                else:
                    pipe.zadd(self._k_due, {tid: nxt})
            for tid, _ in fix:
                pipe.zrange(self.keys(tid)[6], 0, 0, withscores=True)

        res = self._pipe(build)
        lower = []
        for (tid, nxt), cur in zip(fix, res[len(fix) :], strict=True):
            if cur:
                score = float(cur[0][1])
                if nxt is None or score < float(nxt):
                    lower.append((tid, score))
        if lower:

            def build2(pipe: Any) -> None:
                for tid, score in lower:
                    pipe.zadd(self._k_due, {tid: repr(score)}, lt=True)

            self._pipe(build2)

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
