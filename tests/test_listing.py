"""Store.page_tasks and Store.job_details: every store's page equals the reference answer
(filter, sort and slice of every task), on the memory, SQLite and Redis stores."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from services import REDIS_ADDR

from multistep_core.listing import InvalidQuery, TaskQuery, page_of
from multistep_core.model import Failure, JobSpec, TaskOptions, TaskState
from multistep_core.store import Store

SPEC = JobSpec("tests.fn", ["<b>arg</b>", 7]).to_json()


def _fill(store: Store, n: int) -> None:
    """``n`` tasks in every state, created one second apart, ids with mixed case."""
    t0 = time.time() - 2 * n
    for i in range(n):
        tid = f"{'Blog' if i % 3 == 0 else 'shop'}-{i:04d}"
        now = t0 + i
        store.create_task(tid, TaskOptions(retention=3600.0), now)
        kind = i % 5
        if kind == 0:
            continue  # open
        store.add_jobs(tid, "j", [SPEC], now)
        store.seal(tid, now)
        if kind == 2:
            store.cancel(tid, "test", now)
        elif kind in (3, 4):
            st = store.start(tid, "j0", now)
            err = Failure("j0", "tests.fn", "ValueError", "boom") if kind == 3 else None
            store.finish(tid, "j0", st.attempt, now, error=err)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "memory":
        from multistep_core.embedded.memory import MemoryStore

        s: Store = MemoryStore()
    elif request.param == "sqlite":
        from multistep_core.embedded.sqlite import SQLiteStore

        s = SQLiteStore(str(tmp_path / "t.db"))
    else:
        request.getfixturevalue("redis_service")
        from multistep_core.redis import RedisStore

        s = RedisStore(f"redis://{REDIS_ADDR}/9", prefix=f"mslist{uuid.uuid4().hex[:6]}")
    try:
        _fill(s, 230)
        yield s
    finally:
        if request.param == "redis":
            for t in s.list_tasks(limit=10**6):
                s.delete(t.task_id)
        s.close()


QUERIES = [
    TaskQuery(),
    TaskQuery(offset=50, limit=50),
    TaskQuery(offset=220, limit=50),
    TaskQuery(newest_first=False, offset=10, limit=7),
    TaskQuery(state=TaskState.FAILED),
    TaskQuery(state=TaskState.FAILED, offset=40, limit=5),
    TaskQuery(state=TaskState.OPEN, newest_first=False, limit=3),
    TaskQuery(search="blog"),
    TaskQuery(search="BLOG-01", newest_first=False),
    TaskQuery(search="blog", state=TaskState.CANCELLED, offset=3, limit=4),
    TaskQuery(search="no-such"),
    TaskQuery(search="%_"),
    TaskQuery(ids=("shop-0001", "Blog-0003", "missing"), limit=10),
]


@pytest.mark.parametrize("query", QUERIES, ids=repr)
def test_page_equals_the_reference(store: Store, query: TaskQuery) -> None:
    # Given every task, read the slow way
    everything = store.list_tasks(limit=10**6)
    expected = page_of(query, everything)
    # When the store answers the query natively
    page = store.page_tasks(query)
    # Then the same tasks come back in the same order, with the same flags
    assert [p.task_id for p in page.items] == [p.task_id for p in expected.items]
    assert page.items == expected.items
    assert page.has_more == expected.has_more
    assert page.total in (expected.total, None)
    if query.state is None:  # an unfiltered or searched page always knows its total
        assert page.total == expected.total


def test_job_details_give_state_and_arguments(store: Store) -> None:
    details = store.job_details("shop-0004", ["j0", "j1", "f0", "j0"])  # succeeded; j1, f0 do not exist
    assert list(details) == ["j0"] and details["j0"].state == "succeeded"
    failed = store.job_details("Blog-0003", ["j0"])["j0"]
    assert failed.state == "failed" and failed.fn == "tests.fn" and failed.args == ["<b>arg</b>", 7]
    pending = store.job_details("shop-0001", ["j0"])["j0"]
    assert pending.state == "pending" and pending.args == ["<b>arg</b>", 7] and pending.attempt == 0
    assert store.job_details("no-such-task", ["j0"]) == {}


@pytest.mark.parametrize(
    "kwargs, field",
    [({"limit": 0}, "limit"), ({"offset": -1}, "offset"), ({"state": "nope"}, "state"), ({"search": "x" * 200}, "search")],
)
def test_bad_query_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidQuery, match=field):
        TaskQuery(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("store", ["redis"], indirect=True)
def test_redis_state_walk_from_python_gives_the_same_pages(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a Redis Cluster client the state walk runs from Python (page_walk.lua reads keys it
    cannot declare): the pages are the same."""
    from multistep_core.redis import pages

    scripted = [store.page_tasks(q) for q in QUERIES if q.state is not None]
    monkeypatch.setattr(pages, "_cluster", lambda s: True)
    walked = [store.page_tasks(q) for q in QUERIES if q.state is not None]
    assert [(p.items, p.has_more) for p in walked] == [(p.items, p.has_more) for p in scripted]


def test_sqlite_pages_do_not_wait_for_the_write_lock(tmp_path: Path) -> None:
    """A dashboard reading pages of a busy SQLite store runs beside a writer's transaction."""
    import sqlite3
    import threading

    from multistep_core.embedded.sqlite import SQLiteStore

    store = SQLiteStore(str(tmp_path / "busy.db"))
    _fill(store, 20)
    writer = sqlite3.connect(store.path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # a worker mid-transition holds the write lock
    pages: list[int] = []
    reader = threading.Thread(target=lambda: pages.append(len(store.page_tasks(TaskQuery(limit=5)).items)))
    try:
        reader.start()
        reader.join(timeout=30)  # an IMMEDIATE read would wait for the lock (busy_timeout 60 s)
        assert pages == [5]
    finally:
        writer.execute("ROLLBACK")
        reader.join()
        writer.close()
        store.close()
