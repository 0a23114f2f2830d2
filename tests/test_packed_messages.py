"""Tickets and batches: a queue message is a ticket for the next job of a queue (its size never
depends on the task's), ``add_jobs(..., per_message=k)`` lets the worker holding a ticket run
up to k jobs of one task (one store round trip per job), a worker that finished a ticket's job
goes on with the queue's fairest job without a ticket, a worker that dies mid-batch leaves
the jobs it did not reach waiting for any other worker, and follow-ups run in the worker
thread that decided them. Each test runs on the memory store and on the Redis store."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from services import REDIS_ADDR, require_module

from multistep_core import InvalidJob, TaskState, connect, job
from multistep_core.backend import Backend
from multistep_core.model import MAX_PER_MESSAGE, Dispatch, decode, decode_message, encode_message, encode_ticket
from multistep_core.queue import Queue
from multistep_core.store import Store

SEEN: list[tuple[str, int]] = []
DIE_AT: set[int] = set()


class Died(BaseException):
    """A worker process dying mid-job (SIGKILL): nothing in the runner catches it."""


@job(name="packtest.note")
def note(i: int) -> None:
    if i in DIE_AT:
        DIE_AT.discard(i)
        raise Died(i)
    SEEN.append(("job", i))


@job(name="packtest.boom")
def boom(i: int) -> None:
    raise RuntimeError(f"boom {i}")


@job(name="packtest.final")
def final(tag: str) -> None:
    SEEN.append(("final", 0 if tag == "a" else 1))


# -- messages ------------------------------------------------------------------------------


def test_encode_message_is_the_json_it_always_was() -> None:
    for tid in ("a", "blog-42", "x@y:z.1_2"):
        for ref in ("j0", "f3", "x0", "j1234567"):
            assert encode_message(tid, ref) == json.dumps({"v": 1, "task": tid, "ref": ref}, separators=(",", ":"))
            assert decode_message(encode_message(tid, ref)) == (tid, ref)


def test_ticket_round_trip() -> None:
    raw = encode_ticket("q.2", 17)
    assert raw == '{"v":1,"queue":"q.2","ticket":17}'
    m = decode(raw)
    assert (m.is_ticket, m.queue, m.ticket) == (True, "q.2", 17)
    with pytest.raises(ValueError, match="ticket"):
        decode_message(raw)


@pytest.mark.parametrize(
    "raw",
    [
        '{"v":1,"task":"t","refs":["j0","j1"]}',  # the packed messages of old: refused, never run
        '{"v":1,"queue":"q","ticket":0}',
        '{"v":1,"queue":"q","ticket":true}',
        '{"v":1,"queue":"q","ticket":1.5}',
        '{"v":1,"queue":"no spaces","ticket":1}',
        '{"v":1,"queue":"q"}',
        '{"v":1,"queue":"q","ticket":1,"task":"t"}',
        '{"v":1,"queue":"q","ticket":1,"fn":"os:system"}',
    ],
)
def test_bad_tickets_are_refused(raw: str) -> None:
    with pytest.raises(ValueError):
        decode(raw)


# -- a backend whose queue the test delivers by hand, on each store -------------------------


class _Manual(Queue):
    """Keeps messages; the test delivers them by hand."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def enqueue(self, queue: str, messages: list[str]) -> None:  # type: ignore[override]
        self.sent.extend(messages)

    def take_all(self) -> list[str]:
        out, self.sent = self.sent, []
        return out


def _redis_store() -> Store:
    redis: Any = require_module("redis")
    from multistep_core.redis import RedisStore

    url = f"redis://{REDIS_ADDR}/12"
    try:
        redis.Redis.from_url(url).ping()
    except Exception:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"no Redis at {REDIS_ADDR}")
    return RedisStore(url, prefix=f"packtest-{uuid.uuid4().hex[:8]}", lease=5.0)


@pytest.fixture(params=["memory", "redis"])
def manual(request: pytest.FixtureRequest) -> Iterator[tuple[Backend, _Manual]]:
    if request.param == "memory":
        base = connect("memory", lease=5.0)
        base.stop_recovery()
        store = base.store
    else:
        store = _redis_store()
    q = _Manual()
    SEEN.clear()
    DIE_AT.clear()
    backend = Backend(store, q, name="manual")
    # per_message on its own: a worker going on would run every job from the first ticket
    backend.runner.go_on_jobs = 0 if request.node.get_closest_marker("going_on") is None else 32
    try:
        yield backend, q
    finally:
        r = getattr(store, "r", None)
        if r is not None:
            for key in list(r.scan_iter(match=f"{store.prefix}:*")):  # type: ignore[attr-defined]
                r.delete(key)
        store.close()


def _deliver(backend: Backend, q: _Manual) -> list[str]:
    """Deliver every message until the queue is empty; the outcomes."""
    out = []
    while q.sent:
        out.extend(backend.runner.handle(m) for m in q.take_all())
    return out


# -- batches -------------------------------------------------------------------------------


def test_a_ticket_runs_up_to_per_message_jobs_and_the_finalizers_inline(manual: tuple[Backend, _Manual]) -> None:
    backend, q = manual
    with backend.create_task("pack-1") as task:
        task.add_jobs(note, range(10), per_message=4)
        task.add_finalization_job(final, "a")
        task.add_finalization_job(final, "b")
    tickets = list(q.sent)
    assert len(tickets) == 10 and all(decode(m).is_ticket for m in tickets)  # one per waiting job
    out = _deliver(backend, q)
    # three tickets ran 4 + 4 + 2 jobs; the other seven found no work; the finalizers ran in the
    # thread that finished the last job: nothing was enqueued for them
    assert out[:3] == ["succeeded"] * 3 and out[3:] == ["skipped:no-work"] * 7
    assert task.progress().state == TaskState.SUCCEEDED
    assert sorted(i for k, i in SEEN if k == "job") == list(range(10))
    assert [x for x in SEEN if x[0] == "final"] == [("final", 0), ("final", 1)]
    # a redelivered ticket counts nothing twice
    assert backend.runner.handle(tickets[0]) == "skipped:stale-ticket"
    assert task.progress().succeeded == 10


def test_a_batch_with_failures_records_each_job(manual: tuple[Backend, _Manual]) -> None:
    backend, q = manual
    with backend.create_task("pack-2", policy="continue") as task:
        task.add_jobs(boom, range(3), per_message=3)
    out = _deliver(backend, q)
    assert out[0] == "failed" and set(out[1:]) == {"skipped:no-work"}
    p = task.progress()
    assert (p.failed, p.succeeded, p.state) == (3, 0, TaskState.SUCCEEDED)
    assert sorted(f.ref for f in task.failures()) == ["j0", "j1", "j2"]


def test_a_worker_dying_mid_batch_leaves_the_rest_to_others(manual: tuple[Backend, _Manual]) -> None:
    # Given a task of 8 jobs, 8 per ticket, and a worker that dies running the third
    backend, q = manual
    DIE_AT.add(2)
    with backend.create_task("pack-3") as task:
        task.add_jobs(note, range(8), per_message=8)
    tickets = q.take_all()
    with pytest.raises(Died):
        backend.runner.handle(tickets[0])
    # Then the jobs it did not reach wait in the store: the next ticket (any worker) runs them
    p = task.progress()
    assert (p.succeeded, p.running, p.pending) == (2, 1, 5)
    assert backend.runner.handle(tickets[1]) == "succeeded"
    assert task.progress().succeeded == 7
    # And the job it died in comes back after its lease, through a ticket
    assert [backend.runner.handle(t) for t in tickets[2:]] == ["skipped:no-work"] * 6
    store = backend.store
    ds = store.claim_due(time.time() + 3 * store.lease)
    assert [d.tickets for d in ds if d.task_id == "pack-3"] and not any(d.refs for d in ds)
    for d in ds:
        backend.dispatch(d)
    _deliver(backend, q)
    assert task.progress().state == TaskState.SUCCEEDED
    assert sorted(i for k, i in SEEN if k == "job") == list(range(8))


def test_ticket_size_does_not_depend_on_the_task(manual: tuple[Backend, _Manual]) -> None:
    backend, q = manual
    sizes = {}
    for n in (1, 5000):
        with backend.create_task(f"size-{n}") as task:
            task.add_jobs(note, range(n), per_message=64)
        msgs = q.take_all()
        assert len(msgs) <= 64  # the window: never one message per job
        sizes[n] = max(len(m) for m in msgs)
        backend.store.delete(f"size-{n}")
    assert sizes[5000] - sizes[1] <= 2  # a ticket number of two more digits, at most


def test_take_next_is_one_call_and_stops_at_the_batch_end(manual: tuple[Backend, _Manual]) -> None:
    backend, q = manual
    store = backend.store
    with backend.create_task("ftos-1") as task:
        task.add_jobs(note, [1, 2, 3], per_message=2)
    ticket = decode(q.take_all()[0])
    s0 = store.take(ticket.queue, ticket.ticket, time.time())
    assert (s0.run, s0.task_id, s0.ref, s0.batch) == (True, "ftos-1", "j0", 2)
    d, s1 = store.take_next("ftos-1", "j0", s0.attempt, time.time())
    assert d == Dispatch() and (s1.run, s1.ref, s1.attempt) == (True, "j1", 1)
    d, s2 = store.take_next("ftos-1", "j1", s1.attempt, time.time())
    assert (s2.run, s2.ref) == (True, "j2")
    d, s3 = store.take_next("ftos-1", "j2", s2.attempt, time.time())
    assert not s3.run and s3.reason == "batch-done"
    assert set(store.job_states("ftos-1").values()) == {"succeeded"}
    assert task.progress().state == TaskState.SUCCEEDED


def test_per_message_is_validated(manual: tuple[Backend, _Manual]) -> None:
    backend, _ = manual
    with backend.create_task("pack-4") as task:
        for bad in (0, MAX_PER_MESSAGE + 1, 2.0, True):
            with pytest.raises(InvalidJob, match="per_message"):
                task.add_jobs(note, [1], per_message=bad)  # type: ignore[arg-type]


@job(name="packtest.retrying", retries=2)
def retrying(*args: object) -> None:
    pass


@pytest.mark.parametrize("fn", [note, retrying])
def test_add_jobs_stores_what_make_spec_gives(fn: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from multistep_core.registry import make_spec

    base = connect("memory")
    base.stop_recovery()
    backend = Backend(base.store, _Manual(), name="manual")
    seen: list[str] = []
    real = backend.store.add_jobs

    def spy(task_id: str, kind: str, specs: list[str], now: float, per_message: int = 1) -> list[str]:
        seen.extend(specs)
        return real(task_id, kind, specs, now, per_message)

    monkeypatch.setattr(backend.store, "add_jobs", spy)
    items: list[Any] = [1, "x", [1, 2.5, None], (True, {"a": [1, 2]}), {"k": 1.0}, -3, "é\u2028", [[]]]
    with backend.create_task() as task:
        task.add_jobs(fn, items)  # type: ignore[arg-type]
    want = [
        make_spec(fn, tuple(i) if isinstance(i, (list, tuple)) else (i,), {}, getattr(fn, "__multistep_retries__", None))
        .to_json()
        for i in items
    ]
    assert seen == want
    with backend.create_task() as task, pytest.raises(InvalidJob, match=r"argument 1 of packtest\.note"):
        task.add_jobs(note, [(1, {1, 2})])


# -- going on ------------------------------------------------------------------------------


@pytest.mark.going_on
def test_a_worker_goes_on_with_the_queues_jobs_without_tickets(manual: tuple[Backend, _Manual]) -> None:
    backend, q = manual
    with backend.create_task("on-1") as task:
        task.add_jobs(note, range(10))
        task.add_finalization_job(final, "a")
    out = _deliver(backend, q)
    # the first ticket ran all ten jobs, going on from each to the next; the finalizer ran inline
    # after them; the other nine tickets found no work (never more tickets than the window)
    assert out == ["succeeded"] + ["skipped:no-work"] * 9
    assert sorted(i for k, i in SEEN if k == "job") == list(range(10))
    assert SEEN[-1] == ("final", 0) and task.progress().state == TaskState.SUCCEEDED


@pytest.mark.going_on
def test_going_on_takes_the_fairest_tasks_job(manual: tuple[Backend, _Manual]) -> None:
    # Given a big task, and a small one created after it
    backend, q = manual
    with backend.create_task("on-big") as big:
        big.add_jobs(note, range(100, 130))
    with backend.create_task("on-small") as small:
        small.add_jobs(note, range(3))
    # When one worker goes on from the first ticket
    backend.runner.handle(q.take_all()[0])
    order = [i for k, i in SEEN if k == "job"]
    # Then it ran both tasks' jobs, the small task's among the first few (round-robin), not after the big one
    assert sorted(order) == list(range(3)) + list(range(100, 130))
    assert max(order.index(i) for i in range(3)) <= 6
    assert big.progress().state == small.progress().state == TaskState.SUCCEEDED


@pytest.mark.going_on
def test_going_on_is_bounded_by_jobs_and_by_time(manual: tuple[Backend, _Manual]) -> None:
    backend, q = manual
    backend.runner.go_on_jobs = 3
    with backend.create_task("on-2") as task:
        task.add_jobs(note, range(10))
    tickets = q.take_all()
    assert backend.runner.handle(tickets[0]) == "succeeded"
    assert task.progress().succeeded == 4  # its own job, then three more
    backend.runner.go_on_jobs, backend.runner.go_on_seconds = 32, 0.0
    assert backend.runner.handle(tickets[1]) == "succeeded"
    assert task.progress().succeeded == 5  # no time left to go on: one job per ticket
    backend.runner.go_on_seconds = 60.0
    assert backend.runner.handle(tickets[2]) == "succeeded"
    assert task.progress().state == TaskState.SUCCEEDED


@pytest.mark.going_on
def test_a_worker_dying_while_going_on_leaves_the_rest_to_others(manual: tuple[Backend, _Manual]) -> None:
    backend, q = manual
    DIE_AT.add(3)
    with backend.create_task("on-3") as task:
        task.add_jobs(note, range(8))
    tickets = q.take_all()
    with pytest.raises(Died):
        backend.runner.handle(tickets[0])
    p = task.progress()
    assert (p.succeeded, p.running, p.pending) == (3, 1, 4)  # jobs 0-2 done, 3 held by the dead worker
    assert backend.runner.handle(tickets[1]) == "succeeded"  # another worker goes on with the rest
    assert task.progress().succeeded == 7
    store = backend.store
    for d in store.claim_due(time.time() + 3 * store.lease):  # the dead worker's job after its lease
        backend.dispatch(d)
    _deliver(backend, q)
    assert task.progress().state == TaskState.SUCCEEDED
    assert sorted(i for k, i in SEEN if k == "job") == list(range(8))
