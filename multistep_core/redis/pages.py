"""Paginated reads of the Redis store: a page of tasks from the task index, a few jobs' details.

A page never reads every task. The task index ``ms:tasks`` (task id → created_at) is sorted
by creation time, so:

* no filter: ``ZREVRANGE`` (or ``ZRANGE``) of the slice, then one ``HGETALL`` per task on the
  page, in one pipeline; the total is ``ZCARD``.
* an id search: ``page_walk.lua`` walks the index inside Redis in slices, lower-casing each id
  and looking for the text, and returns only the page's ids and the number of matches (the
  total); it reads no other key. Then the page's ``HGETALL``\\ s.
* a state filter: the index is walked from the start in growing slices by ``page_walk.lua``,
  which reads each task's ``state`` inside Redis and returns only the matching ids, until the
  page is full; a deep page of a rare state costs a walk that long (a few ms per 5,000 tasks).
  The total is known only when the walk reached the end. On a Redis Cluster client (the script
  reads keys it cannot declare) the walk runs from Python, one pipelined ``HMGET`` per task.

Ids the index names whose task is gone (expired keys) are pruned from the index on the way,
as ``list_tasks`` does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from functools import cache
from typing import Any

from ..listing import JobDetail, TaskPage, TaskQuery, clip, page_of
from ..model import CALLBACK, FINALIZER, JOB, Progress, parse_ref
from .base import RedisBase, _s
from .rows import _STATE_CODE, _progress
from .scripts import lua_file

FIRST_SLICE = 200  # index entries read in the first round trip of a state walk
MAX_SLICE = 5000  # ... growing to this many


def _metas(store: RedisBase, ids: Sequence[str], now: float) -> tuple[list[Progress | None], int]:
    """Progress of each id (None: gone or expired), and how many were gone: those are pruned
    from the index."""
    if not ids:
        return [], 0

    def build(pipe: Any) -> None:
        for tid in ids:
            pipe.hgetall(store.keys(tid)[0])

    out: list[Progress | None] = []
    gone: list[str] = []
    for tid, raw in zip(ids, store._pipe(build), strict=True):
        if not raw:
            gone.append(tid)
            out.append(None)
            continue
        m = {_s(k): _s(v) for k, v in raw.items()}
        if "expires_at" in m and float(m["expires_at"]) <= now:
            out.append(None)
        else:
            out.append(_progress(tid, m))
    if gone:
        with store._errors():
            scores = store.r.zmscore(store._k_tasks, gone)
        pairs: list[Any] = []
        for tid, sc in zip(gone, scores, strict=True):
            if sc is not None:
                pairs += [tid, repr(sc)]
        if pairs:
            store._script("zrem_if", [store._k_tasks], pairs)
    return out, len(gone)


def _index_slice(store: RedisBase, start: int, stop: int, newest_first: bool) -> list[str]:
    with store._errors():
        if newest_first:
            return [_s(m) for m in store.r.zrevrange(store._k_tasks, start, stop)]
        return [_s(m) for m in store.r.zrange(store._k_tasks, start, stop)]


def _walk(store: RedisBase, query: TaskQuery) -> Iterator[list[str]]:
    """The index in slices, in the query's order."""
    start, size = 0, FIRST_SLICE
    while True:
        ids = _index_slice(store, start, start + size - 1, query.newest_first)
        if ids:
            yield ids
        if len(ids) < size:
            return
        start += size
        size = min(size * 4, MAX_SLICE)


def _states(store: RedisBase, ids: Sequence[str]) -> list[str | None]:
    def build(pipe: Any) -> None:
        for tid in ids:
            pipe.hmget(store.keys(tid)[0], "state", "expires_at")

    now = time.time()
    out: list[str | None] = []
    for state, exp in store._pipe(build):
        out.append(None if state is None or (exp is not None and float(exp) <= now) else state)
    return out


def page_tasks(store: RedisBase, query: TaskQuery) -> TaskPage:
    now = time.time()
    if query.ids is not None:
        found = [p for p in _metas(store, list(dict.fromkeys(query.ids)), now)[0] if p is not None]
        return page_of(query, found)
    if query.state is None and query.search is None:
        return _plain_page(store, query, now)
    if query.state is not None and _cluster(store):
        return _python_walk(store, query, now)
    return _scripted_page(store, query, now)


def _cluster(store: RedisBase) -> bool:
    return type(store.r).__name__ == "RedisCluster"


@cache
def _walk_script() -> str:
    return lua_file("page_walk")


def _run_walk(store: RedisBase, query: TaskQuery, now: float, state: str, need: int,
              to_end: bool) -> tuple[list[str], int, bool]:
    """``page_walk.lua`` over the index, a slice per call, until ``need`` ids (or the end when
    ``to_end``). Returns the ids, how many matched in the slices walked, whether it reached
    the end of the index."""
    script = store.__dict__.get("_page_walk")
    if script is None:
        script = store.__dict__["_page_walk"] = store.r.register_script(_walk_script())
    matched: list[str] = []
    counted = 0
    pos, size = 0, FIRST_SLICE
    needle = (query.search or "").lower()
    while True:
        args = [store.prefix, pos, size, state, int(query.newest_first), repr(now), max(need - len(matched), 0), needle]
        with store._errors():
            res = _s(script(keys=[store._k_tasks], args=args))
        looked, counted = int(res[0]), counted + int(res[1])
        matched += res[2:]
        pos += looked
        if len(matched) >= need and not to_end:
            return matched, counted, False
        if looked < size:  # the end of the index
            return matched, counted, True
        size = min(size * 4, MAX_SLICE)


def _scripted_page(store: RedisBase, query: TaskQuery, now: float) -> TaskPage:
    """A filtered page: ``page_walk.lua`` looks at the index a slice at a time inside Redis and
    returns only the matching ids (a state filter reads each task's state there; a search alone
    reads the index only, and walks it to the end to count the matches)."""
    need = query.offset + query.limit + 1
    state = query.state.value if query.state is not None else ""
    matched, counted, ended = _run_walk(store, query, now, state, need, to_end=not state and query.count)
    page = matched[query.offset : query.offset + query.limit]
    items = [p for p in _metas(store, page, now)[0] if p is not None]
    total = counted if ended and query.count else None
    return TaskPage(items, query.offset, query.limit, total, len(matched) > query.offset + query.limit)


def _python_walk(store: RedisBase, query: TaskQuery, now: float) -> TaskPage:
    """A state filter on a cluster client: candidates from the index (or from a search, which
    reads the index only), each task's state read with a pipelined ``HMGET``."""
    assert query.state is not None
    want = query.state.value
    if query.search is not None:
        hits = _run_walk(store, query, now, "", 2**62, to_end=True)[0]
        slices: Iterator[list[str]] = iter([hits])
    else:
        slices = _walk(store, query)
    matched: list[str] = []
    skipped = 0
    exhausted = True
    for ids in slices:
        for tid, st in zip(ids, _states(store, ids), strict=True):
            if st != want:
                continue
            if skipped < query.offset:
                skipped += 1
                continue
            matched.append(tid)
        if len(matched) > query.limit:
            exhausted = False
            break
    items = [p for p in _metas(store, matched[: query.limit], now)[0] if p is not None]
    total = skipped + len(matched) if exhausted and query.count else None
    return TaskPage(items, query.offset, query.limit, total, len(matched) > query.limit)


def _plain_page(store: RedisBase, query: TaskQuery, now: float) -> TaskPage:
    items: list[Progress] = []
    pos = query.offset
    while len(items) <= query.limit:  # one slice, and more only if some of it had expired
        need = query.limit + 1 - len(items)
        ids = _index_slice(store, pos, pos + need - 1, query.newest_first)
        metas, gone = _metas(store, ids, now)
        items += [p for p in metas if p is not None]
        pos += len(ids) - gone
        if len(ids) < need:
            break
    total = None
    if query.count:
        with store._errors():
            total = int(store.r.zcard(store._k_tasks))
    return TaskPage(items[: query.limit], query.offset, query.limit, total, len(items) > query.limit)


def job_details(store: RedisBase, task_id: str, refs: Sequence[str]) -> dict[str, JobDetail]:
    """State, spec and attempt of each named job, from the task's ``spec``/``rows``/``done`` keys."""
    wanted = []
    for ref in clip(refs):
        try:
            wanted.append((ref, *parse_ref(ref)))
        except ValueError:
            continue
    if not wanted:
        return {}
    k = store.keys(task_id)
    names = [w[0] for w in wanted]

    def build(pipe: Any) -> None:
        pipe.hmget(k[0], "total", "fin_total", "has_cb")
        pipe.hmget(k[1], names)
        pipe.hmget(k[2], names)
        for _, kind, i in wanted:
            pipe.getbit(k[3], i if kind == JOB else 0)

    res = store._pipe(build)
    meta, specs, rows, bits = res[0], res[1], res[2], res[3:]
    if meta[0] is None:
        return {}
    size = {JOB: int(meta[0]), FINALIZER: int(meta[1]), CALLBACK: int(meta[2] or 0)}
    out: dict[str, JobDetail] = {}
    for (ref, kind, i), spec, row, bit in zip(wanted, specs, rows, bits, strict=True):
        if i >= size[kind]:
            continue
        if kind == JOB and int(bit):
            out[ref] = JobDetail(ref, "succeeded", spec)
            continue
        state, attempt = "pending", 0
        if row:
            parts = row.split(",")
            state, attempt = _STATE_CODE.get(parts[0][:1], "pending"), int(parts[1]) if len(parts) > 1 else 0
        out[ref] = JobDetail(ref, state, spec, attempt)
    return out
