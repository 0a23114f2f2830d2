"""Reads of the Redis store: progress, failures, results, task lists, rejected messages."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ..fairshare import GroupRow, QueueRow
from ..listing import JobDetail, TaskPage, TaskQuery
from ..model import Failure, Progress, Rejected, TaskState
from .base import RedisBase, _s
from .rows import _STATE_CODE, _progress, rejected_entries


class RedisReads(RedisBase):
    def _meta(self, task_id: str) -> dict[str, str] | None:
        with self._errors():
            m = self.r.hgetall(self.keys(task_id)[0])
        if not m:
            return None
        return {_s(k): _s(v) for k, v in m.items()}

    def progress(self, task_id: str) -> Progress | None:
        m = self._meta(task_id)
        if m is None or ("expires_at" in m and float(m["expires_at"]) <= time.time()):
            return None
        return _progress(task_id, m)

    def failures(self, task_id: str) -> list[Failure]:
        k = self.keys(task_id)
        errs = self._script("failures", [k[2], k[4], k[3]], [])
        pairs = zip(errs[::2], errs[1::2], strict=True)  # (failure JSON, "1" if resolved by a later attempt)
        out = [replace(Failure.from_dict(json.loads(e)), resolved=_s(flag) == "1") for e, flag in pairs]
        out.sort(key=lambda f: (f.ref[0] != "j", f.ref[0], int(f.ref[1:])))
        return out

    def results(self, task_id: str) -> dict[str, Any]:
        from .nested import child_results

        with self._errors():
            m = self.r.hgetall(self.keys(task_id)[5])
        out = {_s(k): json.loads(_s(v)) for k, v in m.items()}
        out.update(child_results(self, task_id))
        return out

    def list_tasks(self, state: TaskState | None = None, limit: int = 1000) -> list[Progress]:
        out: list[Progress] = []
        now = time.time()
        page = max(50, min(limit, 500))
        offset = 0
        while len(out) < limit:
            with self._errors():
                ids = self.r.zrevrange(self._k_tasks, offset, offset + page - 1, withscores=True)
            if not ids:
                break
            offset += len(ids)
            ids = [(_s(m), sc) for m, sc in ids]

            def build(pipe: Any, ids: list[tuple[str, float]] = ids) -> None:
                for tid, _ in ids:
                    pipe.hgetall(self.keys(tid)[0])

            metas = self._pipe(build)
            gone: list[Any] = []
            for (tid, score), raw in zip(ids, metas, strict=True):
                if not raw:
                    gone += [tid, repr(score)]
                    continue
                m = {_s(k): _s(v) for k, v in raw.items()}
                if "expires_at" in m and float(m["expires_at"]) <= now:
                    continue
                if state is not None and m["state"] != state.value:
                    continue
                out.append(_progress(tid, m))
                if len(out) >= limit:
                    break
            if gone:
                self._script("zrem_if", [self._k_tasks], gone)
                offset -= len(gone) // 2
            if len(ids) < page:
                break
        return out

    def rejected(self, limit: int = 100) -> list[Rejected]:
        if limit <= 0:
            return []
        with self._errors():
            return rejected_entries(self.r.lrange(self._k_rejected, 0, limit - 1))

    def job_states(self, task_id: str) -> dict[str, str]:
        k = self.keys(task_id)
        res = self._script("job_states", [k[0], k[2], k[3]], [])
        if not res:
            return {}
        total, fin_total, has_cb = int(res[0]), int(res[1]), int(res[2])
        bm = bytes.fromhex(res[3])
        rows = dict(zip(res[4::2], res[5::2], strict=True))
        out: dict[str, str] = {}
        for i in range(total):
            ref = f"j{i}"
            b = i >> 3
            if b < len(bm) and bm[b] & (0x80 >> (i & 7)):
                out[ref] = "succeeded"
            else:
                v = rows.get(ref)
                out[ref] = _STATE_CODE[v[0]] if v else "pending"
        for i in range(fin_total):
            ref = f"f{i}"
            v = rows.get(ref)
            out[ref] = _STATE_CODE[v[0]] if v else "pending"
        if has_cb:
            v = rows.get("x0")
            out["x0"] = _STATE_CODE[v[0]] if v else "pending"
        return out

    def page_tasks(self, query: TaskQuery) -> TaskPage:
        from .pages import page_tasks  # the task index's slices (pages.py)

        return page_tasks(self, query)

    def job_details(self, task_id: str, refs: Sequence[str]) -> dict[str, JobDetail]:
        from .pages import job_details

        return job_details(self, task_id, refs)

    def memory_usage(self, task_id: str) -> int:
        """Bytes Redis reports for the task's keys (``MEMORY USAGE ... SAMPLES 0``)."""
        total = 0
        with self._errors():
            for k in self.keys(task_id):
                n = self.r.memory_usage(k, samples=0)
                total += int(n or 0)
        return total

    def queue_state(self, queue: str) -> QueueRow | None:
        """The scheduling state of ``queue`` as a :class:`~multistep_core.fairshare.QueueRow`
        (for inspection and tests), or None if the queue has none."""
        kq, kt, kr, kg = self.queue_keys(queue)
        with self._errors():
            pipe = self.r.pipeline(transaction=True)
            pipe.hgetall(kq)
            pipe.zrange(kt, 0, -1, withscores=True)
            pipe.hgetall(kr)
            pipe.zrange(kg, 0, -1)
            head, tickets, resends, _ = pipe.execute()
            if not head:
                return None
            base = f"{self.prefix}:{{{queue}}}:"
            names = sorted(_s(k) for k in self.r.smembers(f"{base}q-gall"))
            pipe = self.r.pipeline(transaction=True)
            for key in names:
                pipe.hgetall(f"{base}q-g:{key}")
                pipe.zrange(f"{base}q-gt:{key}", 0, -1, withscores=True)
            got = pipe.execute()
        h = {_s(k): _s(v) for k, v in head.items()}
        rs = {int(_s(k)): int(_s(v)) for k, v in resends.items()}
        groups: dict[str, GroupRow] = {}
        for i, key in enumerate(names):
            g = {_s(k): _s(v) for k, v in got[2 * i].items()}
            if not g:
                continue
            groups[key] = GroupRow(vt=float(g["vt"]), clock=float(g["clock"]), running=int(g["running"]),
                                   weight=float(g["weight"]), limit=int(g["limit"]),
                                   tasks={_s(t): float(sc) for t, sc in got[2 * i + 1]})
        return QueueRow(
            name=queue, seq=int(h["seq"]), clock=float(h["clock"]), waiting=int(h["waiting"]),
            parked=int(h["parked"]), tickets={int(_s(t)): (float(sc), rs.get(int(_s(t)), 0)) for t, sc in tickets},
            groups=groups,
        )
