"""What every benchmark job and callback does, on every queue: the same Redis calls.

A job: one round trip (a non-transactional pipeline) with ``INCR`` of the job counter and
``ZADD GT`` of its end time (so the key holds the latest end, for the fan-in latency).
A callback/finalizer: records its start time and the counter it saw, once.

The Redis used for these marks is ``$FANIN_REDIS`` (the benchmark sets it for the workers).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

COUNT = "fanin:count"
LAST_END = "fanin:last_end"  # zset, member "t", score = latest job end (time.time())
CALLBACK = "fanin:cb"  # hash: start, seen, calls

_local = threading.local()


def client() -> Any:
    r = getattr(_local, "r", None)
    if r is None or getattr(_local, "pid", None) != os.getpid():
        import redis

        r = redis.Redis.from_url(os.environ.get("FANIN_REDIS", "redis://127.0.0.1:6379/10"))
        _local.r = r
        _local.pid = os.getpid()
    return r


def work(i: int = 0) -> None:
    """The no-op job: one Redis INCR (with the end time, in the same round trip)."""
    p = client().pipeline(transaction=False)
    p.incr(COUNT)
    p.zadd(LAST_END, {"t": time.time()}, gt=True)
    p.execute()


def callback(*_args: Any, **_kw: Any) -> None:
    """The fan-in callback / finalizer: record when it started and what it saw."""
    start = time.time()
    r = client()
    seen = r.get(COUNT)
    p = r.pipeline(transaction=False)
    p.hsetnx(CALLBACK, "start", repr(start))
    p.hsetnx(CALLBACK, "seen", seen or b"0")
    p.hincrby(CALLBACK, "calls", 1)
    p.execute()
