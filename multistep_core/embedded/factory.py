"""Factories for the embedded backends (``memory``, ``eager``, ``sqlite``)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from ..backend import Backend
from ..config import reject_unknown
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


def sqlite_path(url: str) -> str:
    """``sqlite:///rel.db`` → ``rel.db``; ``sqlite:////abs.db`` → ``/abs.db``; ``sqlite`` or
    ``sqlite://`` → ``multistep.db``; ``sqlite:///:memory:`` → ``:memory:``."""
    if "://" not in url:
        return "multistep.db"
    path = urlsplit(url).path
    if path.startswith("/"):
        path = path[1:]
    return path or "multistep.db"


def sqlite_backend(url: str = "sqlite", *, threads: int = DEFAULT_THREADS, lease: float = DEFAULT_LEASE, **opts: Any) -> Backend:
    """``sqlite:///path.db``: durable state in a SQLite file, jobs on threads of this process."""
    reject_unknown(opts, {"threads", "lease"}, "sqlite")
    return Backend(SQLiteStore(sqlite_path(url), lease=lease), ThreadQueue(threads), name="sqlite")
