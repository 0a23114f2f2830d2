"""Noticing a store that lost its data: a Redis server restarted without persistence (or
flushed) forgets every task, and nothing else would say so: workers go idle, waiters see
"no task".

At connect a Redis store's process reads (or, first of all, writes) an *epoch* key,
``<prefix>:epoch``, a random token that lives as long as the data set. The workers' recovery
loop reads it on every pass; :meth:`Task.progress` reads it when a task is not found. A
changed or missing token means the data set this process knew is gone: the worker logs it
as an error (once per loss) and writes a new token, the waiter raises
:class:`~multistep_core.errors.StoreLost` instead of waiting or saying "no task".

Stores other than Redis keep no epoch (a SQL database does not forget silently).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any

from .errors import StoreLost, TaskNotFound

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger("multistep.epoch")
_watches: weakref.WeakKeyDictionary[Any, EpochWatch] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


class EpochWatch:
    """The epoch a process saw at connect, for one Redis store."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.key = f"{store.prefix}:epoch"
        self.known: bytes | None = None
        self.lost_once = False

    def _read_or_set(self) -> bytes:
        r = self.store.r
        r.set(self.key, os.urandom(8).hex(), nx=True)
        value = r.get(self.key)
        return value if isinstance(value, bytes) else str(value).encode()

    def message(self) -> str:
        return (
            f"the Redis store at {self.store._where} (prefix {self.store.prefix!r}) lost its data since this "
            "process connected: the server restarted without persistence, or was flushed. Every task it held "
            "before is gone and will not finish (its jobs are not run again); tasks created from now on work. "
            "Run Redis with persistence (appendonly yes) for multistep data: docs/reliability.md"
        )

    def check(self) -> bool:
        """True while the data set is the one this process connected to. On a loss, log an
        error, adopt the new data set's epoch, and return False (once per loss)."""
        try:
            r = self.store.r
            if self.known is None:
                self.known = self._read_or_set()
                return True
            value = r.get(self.key)
        except Exception:  # unreachable (or refused) is not lost: the caller's own call reports it
            return True
        if value == self.known:
            return True
        log.error("%s", self.message())
        self.known = self._read_or_set()
        self.lost_once = True
        return False


def watch(store: Store) -> EpochWatch | None:
    """The epoch watch of ``store`` (made, and the epoch read, on first use); None for a store
    that keeps no epoch."""
    from .redis.base import RedisBase

    if not isinstance(store, RedisBase) and not getattr(store, "keeps_epoch", False):
        return None
    with _lock:
        w = _watches.get(store)
        if w is None:
            w = _watches[store] = EpochWatch(store)
    if w.known is None:
        w.check()
    return w


def check(store: Store) -> None:
    """Log (once per loss) if ``store`` lost its data: the workers' recovery loop calls this."""
    w = watch(store)
    if w is not None:
        w.check()


def not_found(store: Store, task_id: str) -> Exception:
    """The error for a task the store does not hold: :class:`StoreLost` when the store lost its
    data since this process connected, else :class:`TaskNotFound`."""
    w = watch(store)
    if w is not None and (not w.check() or w.lost_once):
        return StoreLost(f"task {task_id!r} is gone: {w.message()}")
    return TaskNotFound(f"no task with id {task_id!r}")
