"""Messages carrying several job refs (``add_jobs(..., per_message=k)``), finish-then-start in
one store call, and follow-ups run in the worker thread that decided them."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from services import CI, REDIS_ADDR, require_module

from multistep_core import InvalidJob, TaskState, connect, job
from multistep_core.backend import Backend
from multistep_core.model import (
    MAX_REFS_PER_MESSAGE,
    decode_message,
    decode_refs,
    encode_message,
    encode_messages,
)
from multistep_core.queue import Queue

SEEN: list[tuple[str, int]] = []


@job(name="packtest.note")
def note(i: int) -> None:
    SEEN.append(("job", i))


@job(name="packtest.boom")
def boom(i: int) -> None:
    raise RuntimeError(f"boom {i}")


@job(name="packtest.final")
def final(tag: str) -> None:
    SEEN.append(("final", 0 if tag == "a" else 1))


def test_encode_message_is_the_json_it_always_was() -> None:
    for tid in ("a", "blog-42", "x@y:z.1_2"):
        for ref in ("j0", "f3", "x0", "j1234567"):
            assert encode_message(tid, ref) == json.dumps({"v": 1, "task": tid, "ref": ref}, separators=(",", ":"))
            assert encode_messages(tid, [ref]) == [encode_message(tid, ref)]


def test_packed_round_trip_and_chunking() -> None:
    refs = [f"j{i}" for i in range(10)]
    msgs = encode_messages("t1", refs, 4)
    assert len(msgs) == 3
    assert [decode_refs(m) for m in msgs] == [
        ("t1", ("j0", "j1", "j2", "j3")), ("t1", ("j4", "j5", "j6", "j7")), ("t1", ("j8", "j9"))
    ]
    assert decode_refs(encode_message("t1", "f2")) == ("t1", ("f2",))
    with pytest.raises(ValueError, match="expected one"):
        decode_message(msgs[0])


@pytest.mark.parametrize(
    "raw",
    [
        '{"v":1,"task":"t","refs":[]}',
        '{"v":1,"task":"t","refs":"j0"}',
        '{"v":1,"task":"t","refs":["j0","j0"]}',
        '{"v":1,"task":"t","refs":["j0","os:system"]}',
        '{"v":1,"task":"t","ref":"j0","refs":["j1"]}',
        '{"v":1,"task":"t","refs":["j0"],"fn":"os:system"}',
        json.dumps({"v": 1, "task": "t", "refs": [f"j{i}" for i in range(MAX_REFS_PER_MESSAGE + 1)]}),
    ],
)
def test_bad_packed_messages_are_refused(raw: str) -> None:
    with pytest.raises(ValueError):
        decode_refs(raw)


class _Manual(Queue):
    """Keeps messages; the test delivers them by hand."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def enqueue(self, queue: str, messages: list[str]) -> None:  # type: ignore[override]
        self.sent.extend(messages)


def _backend() -> tuple[Backend, _Manual]:
    base = connect("memory")
    store = base.store
    base.stop_recovery()
    q = _Manual()
    return Backend(store, q, name="manual"), q


def test_packed_message_runs_each_job_once_and_finalizer_inline() -> None:
    SEEN.clear()
    backend, q = _backend()
    with backend.create_task("pack-1") as task:
        task.add_jobs(note, range(10), per_message=4)
        task.add_finalization_job(final, "a")
        task.add_finalization_job(final, "b")
    assert len(q.sent) == 3
    first = q.sent[0]
    for m in list(q.sent):
        backend.runner.handle(m)
    # the finalizers ran in the thread that finished the last job: nothing was enqueued for them
    assert len(q.sent) == 3
    assert task.progress().state == TaskState.SUCCEEDED
    assert sorted(i for k, i in SEEN if k == "job") == list(range(10))
    assert [x for x in SEEN if x[0] == "final"] == [("final", 0), ("final", 1)]
    # a redelivered packed message counts nothing twice
    assert backend.runner.handle(first) == "skipped:already-finished"
    assert task.progress().succeeded == 10


def test_packed_message_with_failures_records_each_job() -> None:
    backend, q = _backend()
    with backend.create_task("pack-2", policy="continue") as task:
        task.add_jobs(boom, range(3), per_message=3)
        task.add_jobs(note, range(2), per_message=2)
    out = [backend.runner.handle(m) for m in list(q.sent)]
    assert out == ["failed", "succeeded"]
    p = task.progress()
    assert (p.failed, p.succeeded, p.state) == (3, 2, TaskState.SUCCEEDED)
    assert sorted(f.ref for f in task.failures()) == ["j0", "j1", "j2"]


def test_packed_message_for_a_missing_task_is_rejected_once() -> None:
    backend, _ = _backend()
    raw = encode_messages("no-such-task", ["j0", "j1", "j2"], 3)[0]
    assert backend.runner.handle(raw) == "rejected"
    assert len(backend.rejected()) == 1


def test_per_message_is_validated() -> None:
    backend, _ = _backend()
    with backend.create_task("pack-3") as task:
        for bad in (0, MAX_REFS_PER_MESSAGE + 1, 2.0, True):
            with pytest.raises(InvalidJob, match="per_message"):
                task.add_jobs(note, [1], per_message=bad)  # type: ignore[arg-type]


def test_redis_finish_then_start_matches_two_calls() -> None:
    redis: Any = require_module("redis")
    from multistep_core.model import JOB, TaskOptions
    from multistep_core.redis import RedisStore

    url = f"redis://{REDIS_ADDR}/12"
    try:
        redis.Redis.from_url(url).ping()
    except Exception:
        if CI:
            raise
        pytest.skip(f"no Redis at {REDIS_ADDR}")
    st = RedisStore(url, prefix=f"packtest{os.getpid()}")
    tid = "ftos-1"
    st.create_task(tid, TaskOptions(), 1.0)
    st.add_jobs(tid, JOB, ['{"fn":"packtest.note","args":[1]}'] * 3, 1.0)
    st.seal(tid, 1.0)
    s0 = st.start(tid, "j0", 2.0)
    _, s1 = st.finish_then_start(tid, "j0", s0.attempt, 3.0, "j1")
    assert s1.run and s1.attempt == 1
    _, again = st.finish_then_start(tid, "j1", s1.attempt, 4.0, "j0")  # j0 already done
    assert not again.run and again.reason == "already-finished"
    assert st.job_states(tid)["j0"] == "succeeded" and st.job_states(tid)["j1"] == "succeeded"
    st.delete(tid)
    st.close()


@job(name="packtest.retrying", retries=2)
def retrying(*args: object) -> None:
    pass


@pytest.mark.parametrize("fn", [note, retrying])
def test_add_jobs_stores_what_make_spec_gives(fn: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from multistep_core.registry import make_spec

    backend, _ = _backend()
    seen: list[str] = []
    real = backend.store.add_jobs

    def spy(task_id: str, kind: str, specs: list[str], now: float) -> list[str]:
        seen.extend(specs)
        return real(task_id, kind, specs, now)

    monkeypatch.setattr(backend.store, "add_jobs", spy)
    items = [1, "x", [1, 2.5, None], (True, {"a": [1, 2]}), {"k": 1.0}, -3, "é\u2028", [[]]]
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
