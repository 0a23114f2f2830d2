"""What the Redis Cluster store adds to the single-server store (multistep_core/redis/cluster.py):
a queue's keys in one slot, the task → queue index, the nested-task restriction, the WAIT
option, the URL and its errors. On the session's real cluster (``redis_cluster`` fixture)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator

import pytest
from services import require_module

from multistep_core import TaskOptions
from multistep_core.errors import ConfigurationError, TaskExists, TaskNotFound

require_module("redis")

SPEC = '{"fn":"m:a","args":[]}'


@pytest.fixture
def store(redis_cluster: str) -> Iterator[object]:
    from multistep_core.redis.cluster import RedisClusterStore

    prefix = f"mst{uuid.uuid4().hex[:8]}"
    s = RedisClusterStore(redis_cluster + "/", prefix=prefix, lease=5.0)
    try:
        yield s
    finally:
        for key in list(s.r.scan_iter(match=f"{prefix}:*", count=1000)):
            s.r.delete(key)
        s.close()


def test_every_key_of_a_queue_is_in_the_queue_slot(store) -> None:  # type: ignore[no-untyped-def]
    now = time.time()
    for q in ("default", "q.2", "Q_3-x"):
        store.create_task(f"t-{q}", TaskOptions(queue=q), now)
        store.add_jobs(f"t-{q}", "j", [SPEC] * 3, now)
        store.release(q, now)
        store.seal(f"t-{q}", now)
        d = store.release(q, now)
        start = store.take(q, (d.tickets or (1,))[0], now)
        assert start.run, start
        store.finish(f"t-{q}", start.ref, start.attempt, now, result="1")
        keys = [k.decode() for k in store.r.scan_iter(match=f"{store.prefix}:{{{q}}}:*")]
        assert len(keys) >= 6, keys  # task keys, queue keys, due and task indexes
        slots = {store.r.keyslot(k) for k in keys}
        assert slots == {store.r.keyslot(q)}, (q, keys)


def test_an_id_is_one_task_over_all_queues(store) -> None:  # type: ignore[no-untyped-def]
    now = time.time()
    store.create_task("same", TaskOptions(queue="a"), now)
    with pytest.raises(TaskExists, match="already exists"):
        store.create_task("same", TaskOptions(queue="b"), now)
    assert store.progress("same").options.queue == "a"
    assert store.delete("same")
    store.create_task("same", TaskOptions(queue="b"), now)  # the id is free again, on another queue
    assert store.progress("same").options.queue == "b"


def test_a_process_that_remembered_the_old_queue_finds_the_task_again(store, redis_cluster) -> None:  # type: ignore[no-untyped-def]
    from multistep_core.redis.cluster import RedisClusterStore

    other = RedisClusterStore(redis_cluster + "/", prefix=store.prefix, lease=5.0)
    try:
        now = time.time()
        store.create_task("moved", TaskOptions(queue="a"), now)
        assert other.progress("moved").options.queue == "a"  # remembered: queue a
        store.delete("moved")
        store.create_task("moved", TaskOptions(queue="b"), now)
        assert other.progress("moved").options.queue == "b"
        assert other.add_jobs("moved", "j", [SPEC], now) == ["j0"]
    finally:
        other.close()


def test_a_subtask_must_be_on_its_parent_queue(store) -> None:  # type: ignore[no-untyped-def]
    now = time.time()
    store.create_task("root", TaskOptions(queue="a"), now)
    with pytest.raises(ConfigurationError, match=r"'b'.*'a'.*inherits 'a'"):
        store.add_subtask("root", "kid", TaskOptions(queue="b"), "fail", now)
    assert store.progress("kid") is None
    ref = store.add_subtask("root", "kid", TaskOptions(queue="a"), "fail", now)
    assert ref == "j0"
    assert store.progress("kid").parent == "root"
    with pytest.raises(TaskNotFound):
        store.add_subtask("no-such-root", "kid2", TaskOptions(queue="a"), "fail", now)


def test_lists_and_pages_merge_the_queues(store) -> None:  # type: ignore[no-untyped-def]
    from multistep_core.listing import TaskQuery

    t0 = time.time()
    for i in range(12):
        store.create_task(f"p{i:02d}", TaskOptions(queue=f"q{i % 3}"), t0 + i)
    assert [p.task_id for p in store.list_tasks(limit=5)] == ["p11", "p10", "p09", "p08", "p07"]
    page = store.page_tasks(TaskQuery(offset=3, limit=4))
    assert [p.task_id for p in page.items] == ["p08", "p07", "p06", "p05"]
    assert page.total == 12 and page.has_more
    page = store.page_tasks(TaskQuery(newest_first=False, offset=10, limit=4))
    assert [p.task_id for p in page.items] == ["p10", "p11"] and not page.has_more
    page = store.page_tasks(TaskQuery(ids=("p03", "p04", "nope")))
    assert [p.task_id for p in page.items] == ["p04", "p03"]


def test_wait_counts_the_replicas_that_acknowledged(redis_cluster: str, caplog: pytest.LogCaptureFixture) -> None:
    from multistep_core.redis.cluster import RedisClusterStore

    prefix = f"msw{uuid.uuid4().hex[:8]}"
    one = RedisClusterStore(redis_cluster + "/?wait=1&wait_timeout=2000", prefix=prefix, lease=5.0)
    three = RedisClusterStore(redis_cluster + "/", prefix=prefix, lease=5.0, wait=3, wait_timeout=50)
    try:
        now = time.time()
        one.create_task("w1", TaskOptions(), now)
        one.add_jobs("w1", "j", [SPEC], now)
        assert one.progress("w1").total == 1
        assert one.unacknowledged == 0  # each primary has one replica, in sync
        with caplog.at_level(logging.WARNING, logger="multistep.redis.cluster"):
            three.create_task("w3", TaskOptions(), now)  # three replicas asked for, one exists
        # three writes, each WAITed: the queue in the registry, the id in the index, the create script
        assert three.unacknowledged == 3
        assert "acknowledged by 1 replica(s)" in caplog.text and "not 3" in caplog.text
        assert three.progress("w3") is not None  # the write stands on the primary
    finally:
        for key in list(one.r.scan_iter(match=f"{prefix}:*")):
            one.r.delete(key)
        one.close()
        three.close()


@pytest.mark.parametrize(("url", "message"), [
    ("redis+cluster://", "names no node"),
    ("redis+cluster://127.0.0.1:notaport", "is not host:port"),
    ("redis+cluster://127.0.0.1:7000/3", "database 0 only"),
    ("redis+cluster://127.0.0.1:7000/?wiat=1", "unknown option.*'wiat'.*wait, wait_timeout, retry_for"),
    ("redis+cluster://127.0.0.1:7000/?wait=-1", "wait='-1'.*0 or more"),
])
def test_bad_cluster_urls_say_what_is_wrong(url: str, message: str) -> None:
    from multistep_core.redis.cluster import RedisClusterStore

    with pytest.raises(ConfigurationError, match=message):
        RedisClusterStore(url)


def test_backend_options_are_checked() -> None:
    from multistep_core import connect

    with pytest.raises(ConfigurationError, match="wait"):
        connect("redis+cluster://127.0.0.1:7000/?wait=x")
    with pytest.raises(ConfigurationError, match="did you mean 'wait_timeout'"):
        connect("redis+cluster://127.0.0.1:7000/?wait_timout=5")


def test_a_single_server_is_not_taken_for_a_cluster(redis_service: None) -> None:
    from services import REDIS_ADDR

    from multistep_core.redis.cluster import RedisClusterStore

    with pytest.raises(ConfigurationError, match=r"not a usable Redis Cluster.*redis://"):
        RedisClusterStore(f"redis+cluster://{REDIS_ADDR}/")


def test_the_store_option_of_an_adapter_takes_the_cluster_and_its_options(redis_cluster: str) -> None:
    from multistep_core.kit import store_from_url
    from multistep_core.options import split_options

    # as an adapter's backend string carries it: '&' of the store's own query written %26
    _, opts = split_options(f"rq+redis://127.0.0.1:6379/9?store={redis_cluster}/?wait=1%26wait_timeout=700&prefix=x")
    s = store_from_url(opts["store"], prefix=f"mso{uuid.uuid4().hex[:6]}", lease=5.0)
    try:
        assert (type(s).__name__, s.wait, s.wait_timeout) == ("RedisClusterStore", 1, 700)
    finally:
        s.close()


def test_a_task_whose_index_entry_was_lost_is_found_and_indexed_again(store, redis_cluster) -> None:  # type: ignore[no-untyped-def]
    from multistep_core.redis.cluster import RedisClusterStore

    now = time.time()
    store.create_task("lost-entry", TaskOptions(queue="qx"), now)
    store.r.hdel(store.bucket_key("lost-entry"), "lost-entry")  # as a failover may lose it
    fresh = RedisClusterStore(redis_cluster + "/", prefix=store.prefix, lease=5.0)  # remembers nothing
    try:
        assert fresh.progress("lost-entry").options.queue == "qx"
        assert store.r.hget(store.bucket_key("lost-entry"), "lost-entry") == b"qx"
        assert fresh.progress("never-made") is None
    finally:
        fresh.close()


def test_scripts_forgotten_by_every_primary_are_loaded_again(store) -> None:  # type: ignore[no-untyped-def]
    now = time.time()
    store.create_task("before", TaskOptions(queue="qa"), now)
    store.r.script_flush()  # every primary forgets them, as a promoted replica may not have them
    assert not any(store.r.script_exists(store._scripts.sha["create"]))
    for q in ("qa", "qb", "qc"):  # queues whose slots are on different primaries, most likely
        store.create_task(f"after-{q}", TaskOptions(queue=q), now)
        assert store.add_jobs(f"after-{q}", "j", [SPEC], now) == ["j0"]
    exists = store.r.script_exists(store._scripts.sha["create"])
    assert exists and all(exists)  # on every primary again, from one reload


@pytest.mark.usefixtures("redis_service", "rabbitmq_service")
@pytest.mark.parametrize("template", [
    "rq+redis://{redis}/9?store={cluster}/&prefix=msadapt",
    "celery+amqp://guest:guest@127.0.0.1:5672//?store={cluster}/&prefix=msadapt",
    "dramatiq+redis://{redis}/9?store={cluster}/?wait=1%26wait_timeout=300&prefix=msadapt",
])
def test_every_adapter_takes_the_cluster_as_its_store(redis_cluster: str, template: str) -> None:
    from services import REDIS_ADDR

    from multistep_core import connect

    require_module(template.split("+")[0])
    backend = connect(template.format(redis=REDIS_ADDR, cluster=redis_cluster))
    try:
        store = backend.store
        assert type(store).__name__ == "RedisClusterStore"
        assert (store.prefix, store.wait, store.wait_timeout) == (
            ("msadapt", 1, 300) if "wait=1" in template else ("msadapt", 0, 500))
    finally:
        backend.close()


def test_a_start_through_a_remembered_queue_follows_a_task_made_again_elsewhere(store, redis_cluster) -> None:  # type: ignore[no-untyped-def]
    from multistep_core.redis.cluster import RedisClusterStore

    other = RedisClusterStore(redis_cluster + "/", prefix=store.prefix, lease=5.0)
    try:
        now = time.time()
        store.create_task("again", TaskOptions(queue="a"), now)
        assert other.queue_of("again") == "a"  # remembered
        store.delete("again")
        store.create_task("again", TaskOptions(queue="b"), now)
        store.add_jobs("again", "f", [SPEC], now)
        store.seal("again", now)  # no jobs: the finalizer is due at once, started by its ref
        st = other.start("again", "f0", now)
        assert st.run and st.task_id == "again", st
    finally:
        other.close()


def test_a_job_taken_by_ticket_finishes_on_its_queue_whatever_was_remembered(store, redis_cluster) -> None:  # type: ignore[no-untyped-def]
    from multistep_core.redis.cluster import RedisClusterStore

    other = RedisClusterStore(redis_cluster + "/", prefix=store.prefix, lease=5.0)
    try:
        now = time.time()
        store.create_task("again2", TaskOptions(queue="a"), now)
        assert other.queue_of("again2") == "a"  # remembered
        store.delete("again2")
        store.create_task("again2", TaskOptions(queue="b"), now)
        store.add_jobs("again2", "j", [SPEC, SPEC], now, per_message=2)
        d = store.release("b", now)
        st = other.take("b", d.tickets[0], now)
        assert st.run and st.task_id == "again2"
        _, nxt = other.take_next("again2", st.ref, st.attempt, now, result="1")
        assert nxt.run and nxt.ref == "j1", nxt
        assert store.progress("again2").succeeded == 1
    finally:
        other.close()
