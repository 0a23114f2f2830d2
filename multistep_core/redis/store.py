"""RedisStore: task state in Redis, each transition one Lua script.

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
from ..model import CALLBACK, NOTHING, Dispatch, Failure, Start, TaskOptions, parse_ref
from .base import _s
from .index import DueIndex
from .reads import RedisReads

ADD_CHUNK = 2000  # specs per add_jobs script call (several calls share one MULTI)


class RedisStore(RedisReads, DueIndex):
    """Task state in Redis; each transition is one Lua script (one round trip)."""

    # -- writing -----------------------------------------------------------------------
    def create_task(self, task_id: str, options: TaskOptions, now: float) -> None:
        res = self._call("create", task_id, now, self._option_args(options))
        if res[0] == "exists":
            raise TaskExists(f"a task with id {task_id!r} already exists ({res[1]})")
        with self._errors():
            self.r.zadd(self._k_tasks, {task_id: repr(now)})

    @staticmethod
    def _option_args(options: TaskOptions) -> list[Any]:
        o = options
        return [
            "opts", json.dumps(o.to_dict(), separators=(",", ":")),
            "policy", o.policy.value,
            "max_retries", str(int(o.max_retries)),
            "backoff", repr(o.backoff),
            "backoff_max", repr(o.backoff_max),
            "max_lost", str(int(o.max_lost)),
            "keep", "1" if o.keep_results else "0",
            "retention", repr(o.retention),
            "queue", o.queue,
            "group", o.group,
            "weight", repr(float(o.weight)),
            "maxc", str(int(o.max_concurrency)),
            "gmaxc", str(int(o.group_max_concurrency)),
        ]

    def add_jobs(
        self, task_id: str, kind: str, specs: Sequence[str], now: float, per_message: int = 1
    ) -> list[str]:
        specs = list(specs)
        chunks = [specs[i : i + ADD_CHUNK] for i in range(0, len(specs), ADD_CHUNK)] or [[]]
        if kind == CALLBACK:
            chunks = [specs]
        head = [kind, int(per_message)]
        if len(chunks) == 1:
            results = [self._call("add", task_id, now, [*head, *chunks[0]])]
        else:
            # All chunks in one MULTI: atomic like one call, no single command too big.
            def build(pipe: Any) -> None:
                for c in chunks:
                    self._evalsha(pipe, "add", task_id, now, [*head, *c])

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

    def release(self, queue: str, now: float) -> Dispatch:
        tickets = self._qcall("release", queue, now, [])
        return Dispatch("", queue, (), tuple(int(t) for t in tickets)) if tickets else NOTHING

    def seal(self, task_id: str, now: float) -> Dispatch:
        res = self._call("seal", task_id, now, [])
        if res[0] == "notfound":
            raise self._not_found(task_id)
        if res[0] == "sealed":
            raise InvalidTransition(f"task {task_id!r} is already sealed")
        return self._dispatch(task_id, res)

    @staticmethod
    def _start(res: list[Any]) -> Start:
        """A start reply ``{run, reason, spec, attempt, keep, task, ref, batch}``."""
        if int(res[0]) != 1:
            return Start(False, res[1])
        return Start(True, spec=res[2], attempt=int(res[3]), keep_results=res[4] == "1", task_id=res[5],
                     ref=res[6], batch=int(res[7]))

    def start(self, task_id: str, ref: str, now: float) -> Start:
        kind, index = parse_ref(ref)
        return self._start(self._call("start", task_id, now, [kind, index, ref]))

    def take(self, queue: str, ticket: int, now: float) -> Start:
        return self._start(self._qcall("take", queue, now, [int(ticket)]))

    def renew(self, task_id: str, ref: str, attempt: int, now: float) -> bool:
        k = self.keys(task_id)
        ok = self._script("renew", [k[2], k[6], k[1]], [repr(now), repr(self.lease), ref, attempt])
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
        res = self._call("finish", task_id, now, self._finish_args(ref, attempt, result, error))
        return self._dispatch(task_id, res)

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
        args = [*self._finish_args(ref, attempt, result, error), "1" if go_on else "0"]
        res = self._call("take_next", task_id, now, args)
        cut = res.index("S", 3)  # after status, queue (which may be "S") and ref
        start = res[cut + 1 :]
        start = start[: 8 if int(start[0]) == 1 else 2]
        extras = res[cut + 1 + len(start) :]
        return self._dispatch(task_id, res[:cut] + extras), self._start(start)

    @staticmethod
    def _finish_args(ref: str, attempt: int, result: str | None, error: Failure | None) -> list[Any]:
        kind, index = parse_ref(ref)
        err = json.dumps(error.to_dict(), separators=(",", ":")) if error is not None else ""
        return [
            kind, index, ref, attempt,
            "0" if result is None else "1", result or "", err, error.type if error is not None else "",
        ]

    def cancel(self, task_id: str, by: str, now: float) -> bool:
        return self.cancel_and_dispatch(task_id, by, now)[0]

    def cancel_and_dispatch(self, task_id: str, by: str, now: float) -> tuple[bool, Dispatch]:
        from .nested import split_extras, with_extras

        res = self._call("cancel", task_id, now, [by])
        if res[0] == "notfound":
            raise self._not_found(task_id)
        res, extras = split_extras(res, 2)
        return int(res[1]) == 1, with_extras(task_id, NOTHING, res[2] if len(res) > 2 else "default", extras)

    def add_subtask(self, parent_id: str, child_id: str, options: TaskOptions, on_failure: str, now: float) -> str:
        from ..nesting import OnFailure, slot_spec

        try:
            mode = OnFailure(on_failure)
        except ValueError:
            raise InvalidJob(f"on_failure must be one of fail, ignore, continue; not {on_failure!r}") from None
        res = self._call("subtask", parent_id, now, [child_id, slot_spec(child_id, mode), *self._option_args(options)])
        if res[0] == "notfound":
            raise self._not_found(parent_id)
        if res[0] == "closed":
            raise InvalidTransition(
                f"task {parent_id!r} is {res[1]}; subtasks can be added only while it is open or running"
            )
        if res[0] == "exists":
            raise TaskExists(f"a task with id {child_id!r} already exists ({res[1]})")
        with self._errors():
            self.r.zadd(self._k_tasks, {child_id: repr(now)})
        return str(res[1])

    def tree(self, task_id: str) -> Any:
        from .nested import tree

        return tree(self, task_id)

    def retry(self, task_id: str, now: float) -> Dispatch:
        res = self._call("retry", task_id, now, [])
        if res[0] == "notfound":
            raise self._not_found(task_id)
        if res[0] == "notfailed":
            raise retry_refused(task_id, str(_s(res[1])))
        return self._dispatch(task_id, res)

    def delete(self, task_id: str) -> bool:
        res = self._call("delete", task_id, 0.0, [])
        if isinstance(res, list):
            raise InvalidTransition(
                f"task {task_id!r} is a running subtask of {res[1]!r}: cancel it, or delete the whole tree from its root"
            )
        return bool(int(res))

    def reject(self, raw: str, reason: str, now: float) -> None:
        item = json.dumps({"raw": raw[:4096], "reason": reason, "at": now}, separators=(",", ":"))

        def build(pipe: Any) -> None:
            pipe.lpush(self._k_rejected, item)
            pipe.ltrim(self._k_rejected, 0, self.max_rejected - 1)

        self._pipe(build, transaction=True)
