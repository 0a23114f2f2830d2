"""Nested tasks on the Redis store (docs/nested.md): the Python side of lua/nest.lua.

The transitions are Lua (``subtask.lua`` and the settle/cascade steps in ``nest.lua``); here are
the reply of a script that also moved other tasks (``+`` then those dispatches), and the reads
that walk a tree (``tree``, the results of subtasks), one task per round trip.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..model import NOTHING, Dispatch
from ..nesting import TaskTree, slot_of

if TYPE_CHECKING:
    from .reads import RedisReads


def split_extras(res: list[Any], start: int) -> tuple[list[Any], tuple[Dispatch, ...]]:
    """``res`` up to the ``+`` marker (searched from ``start``), and the dispatches after it:
    per dispatch task, queue, ref or '', n, then n tickets."""
    try:
        cut = res.index("+", start)
    except ValueError:
        return res, ()
    out: list[Dispatch] = []
    rest = res[cut + 1 :]
    i = 0
    while i < len(rest):
        tid, queue, ref, n = rest[i], rest[i + 1], rest[i + 2], int(rest[i + 3])
        tickets = tuple(int(t) for t in rest[i + 4 : i + 4 + n])
        i += 4 + n
        if ref or tickets:
            out.append(Dispatch(tid, queue, (ref,) if ref else (), tickets))
    return res[:cut], tuple(out)


def with_extras(task_id: str, d: Dispatch, queue: str, extras: tuple[Dispatch, ...]) -> Dispatch:
    if not extras:
        return d
    if d is NOTHING or not d:
        return Dispatch(task_id, queue, (), (), extras)
    return Dispatch(d.task_id, d.queue, d.refs, d.tickets, d.also + extras)


def kids(store: RedisReads, task_id: str) -> list[str]:
    with store._errors():
        return [x.decode() if isinstance(x, bytes) else x for x in store.r.lrange(store.keys(task_id)[8], 0, -1)]


def child_results(store: RedisReads, task_id: str) -> dict[str, Any]:
    """``{step ref: the subtask's results}`` of every succeeded step that is a subtask."""
    out: dict[str, Any] = {}
    ids = kids(store, task_id)
    if not ids:
        return out
    states = store.job_states(task_id)
    for cid in dict.fromkeys(ids):  # (an id deleted and added again is listed twice)
        m = store._meta(cid)
        if m is None or m.get("parent") != task_id:
            continue  # deleted, or the id reused by another task
        ref = m.get("pref", "")
        if states.get(ref) == "succeeded":
            out[ref] = store.results(cid)
    return out


def tree(store: RedisReads, task_id: str, ref: str = "", on_failure: str = "", step: str = "") -> TaskTree | None:
    p = store.progress(task_id)
    if p is None:
        return None
    nodes = []
    ids = kids(store, task_id)
    if ids:
        states = store.job_states(task_id)
        with store._errors():
            specs = store.r.hgetall(store.keys(task_id)[1])
        specs = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                 for k, v in specs.items()}
        for cid in dict.fromkeys(ids):
            m = store._meta(cid)
            if m is None or m.get("parent") != task_id:
                continue  # deleted, or the id reused by another task
            cref = m.get("pref", "")
            mode = slot_of(specs[cref])[1].value if cref in specs else "fail"
            node = tree(store, cid, cref, mode, states.get(cref, ""))
            if node is not None:
                nodes.append(node)
    return TaskTree(p, ref, on_failure, step, tuple(nodes))
