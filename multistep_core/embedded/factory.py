"""Factories of the backends whose jobs run on threads of the calling process: ``memory``,
``eager``, ``sqlite`` and ``redis`` (state in Redis, jobs in this process).

Every option is checked like an adapter's (:func:`multistep_core.kit.check_options`): an
unknown name gets a "did you mean", a value that is not usable a :class:`ConfigurationError`
naming the option, the value and what it must be (``lease=abc``, ``lease=-1``, ``threads=0``).
"""

from __future__ import annotations

from typing import Any

from .. import kit
from ..backend import Backend
from ..options import sqlite_path
from ..store import DEFAULT_LEASE
from .memory import MemoryStore
from .sqlite import SQLiteStore
from .threads import EagerQueue, ThreadQueue

DEFAULT_THREADS = 4

_THREADS = kit.integer(DEFAULT_THREADS, minimum=1, maximum=1024)
_LEASE = kit.seconds(DEFAULT_LEASE)
MEMORY_OPTIONS = {"threads": _THREADS, "lease": _LEASE, "window": kit.WINDOW, "go_on": kit.GO_ON}
EAGER_OPTIONS = {"lease": _LEASE, "window": kit.WINDOW, "go_on": kit.GO_ON}
SQLITE_OPTIONS = MEMORY_OPTIONS
REDIS_OPTIONS = {**MEMORY_OPTIONS, "prefix": kit.text("ms", empty=False, what="a key prefix")}
#: ``redis+cluster://``: also how many replicas acknowledge each write (``WAIT``), and for how long
#: a transition retries while a slot fails over
REDIS_CLUSTER_OPTIONS = {
    **REDIS_OPTIONS,
    "wait": kit.integer(0, minimum=0, maximum=64),
    "wait_timeout": kit.integer(500, minimum=0),
    "retry_for": kit.seconds(30.0, zero=True),
}


def memory_backend(url: str = "memory", **options: Any) -> Backend:
    """``memory``: state in memory, jobs on ``threads`` threads of this process."""
    opts = kit.check_options("memory", options, MEMORY_OPTIONS)
    return Backend(MemoryStore(lease=opts["lease"], window=opts["window"]), ThreadQueue(opts["threads"]), name="memory",
                   go_on=opts["go_on"])


def eager_backend(url: str = "eager", **options: Any) -> Backend:
    """``eager``: state in memory, every job run inline when added. For unit tests."""
    opts = kit.check_options("eager", options, EAGER_OPTIONS)
    return Backend(MemoryStore(lease=opts["lease"], window=opts["window"]), EagerQueue(), name="eager", eager=True,
                   go_on=opts["go_on"])


def sqlite_backend(url: str = "sqlite", **options: Any) -> Backend:
    """``sqlite:///path.db``: durable state in a SQLite file, jobs on threads of this process."""
    opts = kit.check_options("sqlite", options, SQLITE_OPTIONS)
    store = SQLiteStore(sqlite_path(url), lease=opts["lease"], window=opts["window"])
    return Backend(store, ThreadQueue(opts["threads"]), name="sqlite", go_on=opts["go_on"])


def redis_backend(url: str = "redis", **options: Any) -> Backend:
    """``redis://host:6379/0``: state in Redis (one Lua script per transition), jobs on
    ``threads`` threads of this process (``redis`` alone: the local default)."""
    from ..redis import DEFAULT_URL

    if url.startswith("redis+cluster://"):
        return redis_cluster_backend(url, **options)
    opts = kit.check_options("redis", options, REDIS_OPTIONS)
    # the Redis store, checked at connect (reachable, database exists, not evicting)
    store = kit.store_from_url(url if "://" in url else DEFAULT_URL, prefix=opts["prefix"], lease=opts["lease"],
                               window=opts["window"])
    return Backend(store, ThreadQueue(opts["threads"]), name="redis", go_on=opts["go_on"])


def redis_cluster_backend(url: str, **options: Any) -> Backend:
    """``redis+cluster://host:7000,host:7001/``: state on a Redis Cluster (a queue per hash slot,
    one Lua script per transition; docs/stores.md), jobs on ``threads`` threads of this process.
    ``wait=N``: each write waits until N replicas have it (at most ``wait_timeout`` ms)."""
    opts = kit.check_options("redis+cluster", options, REDIS_CLUSTER_OPTIONS)
    store = kit.store_from_url(url, prefix=opts["prefix"], lease=opts["lease"], window=opts["window"], wait=opts["wait"],
                               wait_timeout=opts["wait_timeout"], retry_for=opts["retry_for"])
    return Backend(store, ThreadQueue(opts["threads"]), name="redis+cluster", go_on=opts["go_on"])
