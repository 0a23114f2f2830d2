"""Factories of the backends whose jobs run on threads of the calling process: ``memory``,
``eager``, ``sqlite`` and ``redis`` (state in Redis, jobs in this process)."""

from __future__ import annotations

from typing import Any

from ..backend import Backend
from ..options import reject_unknown, sqlite_path
from ..store import DEFAULT_LEASE
from .memory import MemoryStore
from .sqlite import SQLiteStore
from .threads import EagerQueue, ThreadQueue

DEFAULT_THREADS = 4


def memory_backend(url: str = "memory", *, threads: int = DEFAULT_THREADS, lease: float = DEFAULT_LEASE, **opts: Any) -> Backend:
    """``memory``: state in memory, jobs on ``threads`` threads of this process."""
    reject_unknown(opts, {"threads", "lease"}, "memory")
    return Backend(MemoryStore(lease=lease), ThreadQueue(threads), name="memory")


def eager_backend(url: str = "eager", *, lease: float = DEFAULT_LEASE, **opts: Any) -> Backend:
    """``eager``: state in memory, every job run inline when added. For unit tests."""
    reject_unknown(opts, {"lease"}, "eager")
    return Backend(MemoryStore(lease=lease), EagerQueue(), name="eager", eager=True)


def sqlite_backend(url: str = "sqlite", *, threads: int = DEFAULT_THREADS, lease: float = DEFAULT_LEASE, **opts: Any) -> Backend:
    """``sqlite:///path.db``: durable state in a SQLite file, jobs on threads of this process."""
    reject_unknown(opts, {"threads", "lease"}, "sqlite")
    return Backend(SQLiteStore(sqlite_path(url), lease=lease), ThreadQueue(threads), name="sqlite")


def redis_backend(url: str = "redis", *, threads: int = DEFAULT_THREADS, lease: float = DEFAULT_LEASE,
                  prefix: str = "ms", **opts: Any) -> Backend:
    """``redis://host:6379/0``: state in Redis (one Lua script per transition), jobs on
    ``threads`` threads of this process (``redis`` alone: the local default)."""
    from ..kit import store_from_url  # the Redis store, checked at connect (reachable, not evicting)
    from ..redis import DEFAULT_URL

    reject_unknown(opts, {"threads", "lease", "prefix"}, "redis")
    store = store_from_url(url if "://" in url else DEFAULT_URL, prefix=str(prefix), lease=lease)
    return Backend(store, ThreadQueue(int(threads)), name="redis")
