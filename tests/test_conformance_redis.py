"""The shared conformance suite against the Redis store (jobs on threads of this process).
Redis DB 11 is this backend's in the project's test run.

``TestRedisAgainstTheReference`` is the differential test: the Lua twin of RowStore driven
side by side with the reference, under a throw-away key prefix of DB 11 (its keys are
removed at the end; nothing is flushed).

The ``DISAGREEMENT`` tests below pin differences the differential test found between the
Redis store and the RowStore reference (MemoryStore). Each asserts that the stores agree
and is an expected failure (strict) until the core makes them agree; the random sequences
do not generate these inputs, so that they keep finding new differences.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from multistep_conformance import BackendTests, DifferentialTests, StoreTests
from multistep_conformance.differential import Pair
from services import REDIS_ADDR

from multistep_core import TaskOptions
from multistep_core.embedded.memory import MemoryStore

URL = f"redis://{REDIS_ADDR}/11"


@pytest.mark.usefixtures("redis_service")
class TestRedisStore(StoreTests):
    backend_string = URL


@pytest.mark.usefixtures("redis_service")
class TestRedisBackend(BackendTests):
    backend_string = URL


@pytest.mark.usefixtures("redis_service")
class TestRedisAgainstTheReference(DifferentialTests):
    backend_string = URL


# --- disagreements the differential test found -------------------------------------------


@pytest.fixture
def pair(redis_service: None) -> Iterator[Pair]:
    """A fresh Redis store (own prefix in DB 11) beside a plain MemoryStore."""
    from multistep_core.redis import RedisStore

    prefix = f"msdiff-{uuid.uuid4().hex[:8]}"
    native = RedisStore(URL, prefix=prefix, lease=5.0)
    p = Pair(native, MemoryStore(lease=5.0))
    try:
        yield p
    finally:
        p.cleanup()
        for key in list(native.r.scan_iter(match=f"{prefix}:*")):
            native.r.delete(key)
        native.close()


def _a_job_fails_once(p: Pair, spec: str) -> str:
    """A task that retries nothing (unless the spec says so) whose one job fails once."""
    a = p.run.tid("a")
    p.do("create_task", task_id=a, options=TaskOptions(max_retries=0, backoff=0.0, retention=1e9))
    p.do("add_jobs", task_id=a, kind="j", specs=[spec])
    p.do("seal", task_id=a)
    p.do("start", task_id=a, ref="j0")
    p.do("finish", task_id=a, ref="j0", attempt=1, outcome="error", error_type="ValueError", message="no")
    return a


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "DISAGREEMENT: a spec whose retries is an infinite number (1e400 overflows; Python's json also "
    "reads Infinity) is no valid count for RowStore (model.retries_value: inf is not a whole number), "
    "but lib.lua's spec_retries takes inf == floor(inf) as a count: Redis retries the job forever"))
@pytest.mark.parametrize("literal", ["1e400", "Infinity"])
def test_disagreement_infinite_spec_retries(pair: Pair, literal: str) -> None:
    _a_job_fails_once(pair, f'{{"fn":"m:a","args":[],"retries":{literal}}}')


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "DISAGREEMENT: a spec holding an escaped lone surrogate anywhere (json.dumps of a str from "
    "os.fsdecode of a non-UTF-8 file name: '\\udcff') is valid JSON for Python but Lua's cjson refuses "
    "the whole spec: Redis ignores the spec's retries (and names fn '?' in WorkerLost failures)"))
def test_disagreement_lone_surrogate_in_a_spec(pair: Pair) -> None:
    _a_job_fails_once(pair, json.dumps({"fn": "m:a", "args": ["report-\udcff.csv"], "retries": 2}))


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "DISAGREEMENT: add_jobs(kind='x') with other than one spec: RowStore unpacks the list and lets a bare "
    "ValueError escape; the Redis store raises InvalidJob ('a failure callback is one job; got 2 specs')"))
@pytest.mark.parametrize("n", [0, 2])
def test_disagreement_callback_with_other_than_one_spec(pair: Pair, n: int) -> None:
    a = pair.run.tid("a")
    pair.do("create_task", task_id=a, options=TaskOptions(retention=1e9))
    pair.do("add_jobs", task_id=a, kind="x", specs=['{"fn":"m:cb"}'] * n)


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "DISAGREEMENT: text that is not valid Unicode (a lone surrogate) passed raw to the store: MemoryStore "
    "keeps it, the Redis (and SQLite) store raise UnicodeEncodeError from their driver"))
def test_disagreement_text_with_a_lone_surrogate(pair: Pair) -> None:
    a = pair.run.tid("a")
    pair.do("create_task", task_id=a, options=TaskOptions(retention=1e9))
    pair.do("cancel", task_id=a, by="ops@host-\udcff")
