"""RedisStore: task state in Redis, each transition one Lua script on one task's keys.

The logic of each script is a line-by-line port of :class:`~multistep_core.store.RowStore`
(the reference); the shipped differential test (``multistep_conformance.differential``)
drives both with the same random operations and compares every answer. The key layout is
in the package documentation (:mod:`multistep_core.redis`) and ``lua/lib.lua``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..errors import InvalidJob, InvalidTransition, TaskExists
from ..history import retry_refused
from ..model import CALLBACK, Dispatch, Failure, Start, TaskOptions, parse_ref
from .base import _s
from .index import DueIndex
from .reads import RedisReads

ADD_CHUNK = 2000  # specs per add_jobs script call (several calls share one MULTI)


class RedisStore(RedisReads, DueIndex):
    """Task state in Redis; each transition is one Lua script on one task's keys."""

    # -- writing -----------------------------------------------------------------------
    def create_task(self, task_id: str, options: TaskOptions, now: float) -> None:
        o = options
        args: list[Any] = [
            repr(now), "0",
            "opts", json.dumps(o.to_dict(), separators=(",", ":")),
            "policy", o.policy.value,
            "max_retries", str(int(o.max_retries)),
            "backoff", repr(o.backoff),
            "backoff_max", repr(o.backoff_max),
            "max_lost", str(int(o.max_lost)),
            "keep", "1" if o.keep_results else "0",
            "retention", repr(o.retention),
            "queue", o.queue,
        ]
        res = self._call("create", task_id, args)
        if res[0] == "exists":
            raise TaskExists(f"a task with id {task_id!r} already exists ({res[1]})")
        with self._errors():
            self.r.zadd(self._k_tasks, {task_id: repr(now)})

    def add_jobs(self, task_id: str, kind: str, specs: Sequence[str], now: float) -> list[str]:
        specs = list(specs)
        chunks = [specs[i : i + ADD_CHUNK] for i in range(0, len(specs), ADD_CHUNK)] or [[]]
        if kind == CALLBACK:
            chunks = [specs]
        if len(chunks) == 1:
            results = [self._call("add", task_id, [repr(now), "0", kind, *chunks[0]])]
        else:
            # All chunks in one MULTI: atomic like one call, no single command too big.
            def build(pipe: Any) -> None:
                for c in chunks:
                    self._evalsha(pipe, "add", task_id, [repr(now), "0", kind, *c])

            results = self._pipe(build, transaction=True)
        res = results[0]
        status = res[0]
        if status == "notfound":
            raise self._not_found(task_id)
        if status == "late-callback":
            raise InvalidTransition(f"task {task_id!r} is {res[1]}; too late for a failure callback")
        if status == "unpack":
            raise InvalidJob(f"a failure callback is one job; got {res[1]} specs")
        if status == "closed":
            raise InvalidTransition(
                f"task {task_id!r} is {res[1]}; jobs and finalizers can be added only while it is open or running"
            )
        if status == "kind":
            raise InvalidJob(f"unknown job kind {kind!r} (expected j, f or x)")
        if kind == CALLBACK:
            return ["x0"]
        refs: list[str] = []
        for c, r in zip(chunks, results, strict=True):
            first = int(r[1])
            refs.extend(f"{kind}{first + i}" for i in range(len(c)))
        return refs

    def seal(self, task_id: str, now: float) -> Dispatch:
        def build(pipe: Any) -> None:
            self._evalsha(pipe, "seal", task_id, [repr(now), repr(self.lease)])
            pipe.zadd(self._k_due, {task_id: repr(now + self.lease)}, lt=True)

        res = self._pipe(build)[0]
        if res[0] == "notfound":
            raise self._not_found(task_id)
        if res[0] == "sealed":
            raise InvalidTransition(f"task {task_id!r} is already sealed")
        return self._dispatch(task_id, res)

    def start(self, task_id: str, ref: str, now: float) -> Start:
        kind, index = parse_ref(ref)

        def build(pipe: Any) -> None:
            self._evalsha(pipe, "start", task_id, [repr(now), repr(self.lease), kind, index, ref])
            pipe.zadd(self._k_due, {task_id: repr(now + self.lease)}, lt=True)

        res = self._pipe(build)[0]
        if int(res[0]) != 1:
            return Start(False, res[1])
        return Start(True, spec=res[2], attempt=int(res[3]), keep_results=res[4] == "1")

    def guard(self, task_id: str, refs: Sequence[str], now: float) -> int:
        if not refs:
            return 0

        def build(pipe: Any) -> None:
            self._evalsha(pipe, "guard", task_id, [repr(now), repr(self.lease), *refs])
            pipe.zadd(self._k_due, {task_id: repr(now + self.lease)}, lt=True)

        return int(self._pipe(build)[0])

    def start_packed(self, task_id: str, refs: Sequence[str], now: float) -> Start:
        """The guard of ``refs[1:]`` and the start of ``refs[0]`` in one round trip."""
        kind, index = parse_ref(refs[0])

        def build(pipe: Any) -> None:
            self._evalsha(pipe, "guard", task_id, [repr(now), repr(self.lease), *refs[1:]])
            self._evalsha(pipe, "start", task_id, [repr(now), repr(self.lease), kind, index, refs[0]])
            pipe.zadd(self._k_due, {task_id: repr(now + self.lease)}, lt=True)

        res = self._pipe(build)[1]
        if int(res[0]) != 1:
            return Start(False, res[1])
        return Start(True, spec=res[2], attempt=int(res[3]), keep_results=res[4] == "1")

    def renew(self, task_id: str, ref: str, attempt: int, now: float) -> bool:
        k = self.keys(task_id)
        ok = self._script("renew", [k[2], k[6]], [repr(now), repr(self.lease), ref, attempt])
        return bool(int(ok))

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
        args = self._finish_args(ref, attempt, now, result, error)
        # A success can only add a follow-up due at now + lease; a failure may add a retry
        # due any time from now on. The global index holds a lower bound of each task's
        # earliest due time, so it is lowered in the same round trip.
        bound = now + self.lease if error is None else now

        def build(pipe: Any) -> None:
            self._evalsha(pipe, "finish", task_id, args)
            pipe.zadd(self._k_due, {task_id: repr(bound)}, lt=True)

        return self._dispatch(task_id, self._pipe(build)[0])

    def _finish_args(
        self, ref: str, attempt: int, now: float, result: str | None, error: Failure | None
    ) -> list[Any]:
        kind, index = parse_ref(ref)
        err = json.dumps(error.to_dict(), separators=(",", ":")) if error is not None else ""
        return [
            repr(now), repr(self.lease), kind, index, ref, attempt,
            "0" if result is None else "1", result or "", err, error.type if error is not None else "",
        ]

    def finish_then_start(
        self,
        task_id: str,
        ref: str,
        attempt: int,
        now: float,
        next_ref: str,
        *,
        result: str | None = None,
        error: Failure | None = None,
    ) -> tuple[Dispatch, Start]:
        """The finish script of ``ref`` and the start script of ``next_ref`` (with their due
        index updates) in one pipelined round trip; Redis runs them in this order."""
        args = self._finish_args(ref, attempt, now, result, error)
        bound = now if error is not None else now + self.lease  # covers both scripts' due times
        nkind, nindex = parse_ref(next_ref)

        def build(pipe: Any) -> None:
            self._evalsha(pipe, "finish", task_id, args)
            self._evalsha(pipe, "start", task_id, [repr(now), repr(self.lease), nkind, nindex, next_ref])
            pipe.zadd(self._k_due, {task_id: repr(bound)}, lt=True)

        out = self._pipe(build)
        res = out[1]
        start = (
            Start(True, spec=res[2], attempt=int(res[3]), keep_results=res[4] == "1")
            if int(res[0]) == 1
            else Start(False, res[1])
        )
        return self._dispatch(task_id, out[0]), start

    def cancel(self, task_id: str, by: str, now: float) -> bool:
        res = self._call("cancel", task_id, [repr(now), "0", by])
        if res[0] == "notfound":
            raise self._not_found(task_id)
        return int(res[1]) == 1

    def retry(self, task_id: str, now: float) -> Dispatch:
        def build(pipe: Any) -> None:
            self._evalsha(pipe, "retry", task_id, [repr(now), repr(self.lease)])
            pipe.zadd(self._k_due, {task_id: repr(now + self.lease)}, lt=True)

        res = self._pipe(build)[0]
        if res[0] == "notfound":
            raise self._not_found(task_id)
        if res[0] == "notfailed":
            raise retry_refused(task_id, str(_s(res[1])))
        if res[0] == "D":
            return self._dispatch(task_id, res)
        return Dispatch(task_id, res[1], tuple(res[2:]))


    def delete(self, task_id: str) -> bool:
        keys = self.keys(task_id)

        def build(pipe: Any) -> None:
            pipe.exists(keys[0])
            pipe.delete(*keys)
            pipe.zrem(self._k_tasks, task_id)
            pipe.zrem(self._k_due, task_id)

        return bool(int(self._pipe(build)[0]))

    def reject(self, raw: str, reason: str, now: float) -> None:
        item = json.dumps({"raw": raw[:4096], "reason": reason, "at": now}, separators=(",", ":"))

        def build(pipe: Any) -> None:
            pipe.lpush(self._k_rejected, item)
            pipe.ltrim(self._k_rejected, 0, self.max_rejected - 1)

        self._pipe(build, transaction=True)

    # -- reading -----------------------------------------------------------------------


    # -- inspection --------------------------------------------------------------------

