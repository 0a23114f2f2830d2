"""The Redis store's plumbing: connection, script loading, key names, pipelines, errors.

:class:`RedisBase` is what :class:`~multistep_core.redis.store.RedisStore`'s transitions,
its due index (:mod:`.index`) and its reads (:mod:`.reads`) are built on.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..errors import BackendConnectionError, ConfigurationError, StoreError, TaskNotFound
from ..fairshare import DEFAULT_WINDOW
from ..model import NOTHING, Dispatch
from ..options import redact_url
from ..store import DEFAULT_LEASE, Store, worker_lost_failure
from .scripts import Scripts, explain

DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PREFIX = "ms"
MAX_REJECTED = 1000


def _s(v: Any) -> Any:
    """bytes → str (the store works with clients that decode responses or not)."""
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, list):
        return [_s(x) for x in v]
    return v


def redis_driver(what: str) -> Any:
    """The redis-py module, or :class:`BackendDriverMissing` naming ``what`` needs it."""
    try:
        import redis
    except ImportError as exc:  # pragma: no cover - depends on the environment
        from ..errors import BackendDriverMissing

        raise BackendDriverMissing(
            f'{what} needs the redis package; install it with: pip install "multistep[redis]"'
        ) from exc
    return redis


def check_prefix(prefix: object) -> str:
    """A user's key prefix: non-empty, without braces (they would pick the keys' hash slot)."""
    if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
        raise ConfigurationError(f"redis key prefix {prefix!r} must be a non-empty string without braces")
    return prefix


class RedisBase(Store):
    """Connection, scripts and keys of one Redis store (``prefix`` namespaces its keys)."""

    #: a user's prefix holds no braces; the cluster store's per-queue shards (cluster.py) use
    #: ``<prefix>:{<queue>}`` so that every key of a queue hashes to the queue's slot
    _hash_tagged_prefix = False

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        prefix: str = DEFAULT_PREFIX,
        lease: float = DEFAULT_LEASE,
        client: Any = None,
        max_rejected: int = MAX_REJECTED,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        redis = redis_driver("the redis store")
        if not self._hash_tagged_prefix:
            check_prefix(prefix)
        elif not isinstance(prefix, str) or not prefix:  # pragma: no cover - built by the cluster router
            raise ConfigurationError(f"redis key prefix {prefix!r} must be a non-empty string")
        self.lease = float(lease)
        self.window = int(window)
        self.prefix = prefix
        self.url = url
        self.max_rejected = int(max_rejected)
        self._redis = redis
        self._conn_errors: tuple[type[BaseException], ...] = (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
        )
        self._noscript = redis.exceptions.NoScriptError
        if client is None:
            try:
                client = redis.Redis.from_url(url)
            except ValueError as exc:
                raise ConfigurationError(f"bad Redis URL {redact_url(url)!r}: {exc}") from None
        else:
            kw = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {}) or {}
            if url == DEFAULT_URL and "host" in kw:
                self.url = f"redis://{kw.get('host')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"
        self.r = client
        self._where = redact_url(self.url)
        self._lost_message = worker_lost_failure("j0", "?", 0, 0.0, self.lease).message
        self._k_tasks = f"{prefix}:tasks"
        self._k_due = f"{prefix}:due-tasks"
        self._k_rejected = f"{prefix}:rejected"
        self._k_queues = f"{prefix}:queues"
        self._scripts = Scripts()
        self._sweep_lock = threading.Lock()
        self._next_sweep = 0.0
        self._sweep_cursor = 0
        with self._errors():
            self._load_scripts()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except self._conn_errors as exc:
            raise BackendConnectionError(f"cannot reach Redis at {self._where}: {exc}") from exc

    def _load_scripts(self) -> None:
        self._scripts.load(self.r)

    def keys(self, task_id: str) -> list[str]:
        """The nine keys of one task, in the order the scripts expect."""
        base = f"{self.prefix}:{{{task_id}}}:"
        return [base + k for k in ("meta", "spec", "rows", "done", "err", "res", "due", "line", "kids")]

    def queue_keys(self, queue: str) -> list[str]:
        """The keys of one queue's scheduling state (lua/fair.lua; groups have keys of their own)."""
        base = f"{self.prefix}:{{{queue}}}:"
        return [base + k for k in ("q", "q-tickets", "q-resends", "q-groups")]

    def _argv(self, now: float, name: str, args: Sequence[Any]) -> list[Any]:
        """ARGV of a store script: now, lease, prefix, window, the task id or queue, the rest."""
        return [repr(now), repr(self.lease), self.prefix, self.window, name, *args]

    def _call(self, name: str, task_id: str, now: float, args: Sequence[Any]) -> Any:
        """One task script on the keys of ``task_id``, in its own round trip."""
        return self._pipe(lambda pipe: self._evalsha(pipe, name, task_id, now, args))[0]

    def _qcall(self, name: str, queue: str, now: float, args: Sequence[Any]) -> Any:
        """One queue script (``take``, ``release``, ``claim``: ``queue`` may be empty)."""
        keys = [self._k_due, self._k_queues, *(self.queue_keys(queue) if queue else ())]
        return self._script(name, keys, self._argv(now, queue, args))

    def _script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return self._pipe(lambda pipe: pipe.evalsha(self._scripts.sha[name], len(keys), *keys, *args))[0]

    def _pipe(self, build: Any, *, transaction: bool = False) -> list[Any]:
        """Run a pipeline built by ``build(pipe)``; reload the scripts once if Redis lost them."""
        with self._errors():
            for again in (True, False):
                pipe = self.r.pipeline(transaction=transaction)
                build(pipe)
                try:
                    return [_s(x) for x in pipe.execute()]
                except self._noscript:
                    if not again:
                        raise
                    self._load_scripts()
                except self._redis.exceptions.ResponseError as exc:
                    if not again or "NOSCRIPT" not in str(exc):
                        raise StoreError(f"Redis at {self._where} refused a store script: {explain(str(exc))}") from exc
                    self._load_scripts()
        raise AssertionError("unreachable")  # pragma: no cover

    def _evalsha(self, pipe: Any, name: str, task_id: str, now: float, args: Sequence[Any]) -> None:
        keys = [*self.keys(task_id), self._k_due, self._k_queues]
        pipe.evalsha(self._scripts.sha[name], len(keys), *keys, *self._argv(now, task_id, args))

    @staticmethod
    def _dispatch(task_id: str, res: list[Any]) -> Dispatch:
        """A dispatch reply ``{status, queue, ref or '', ticket...}``, then maybe ``+`` and the
        dispatches of other tasks the script moved (a subtask's end advanced its parent)."""
        from .nested import split_extras, with_extras

        res, extras = split_extras(res, 3)
        ref, tickets = res[2], tuple(int(t) for t in res[3:])
        if not ref and not tickets:
            return with_extras(task_id, NOTHING, res[1], extras)
        return with_extras(task_id, Dispatch(task_id, res[1], (ref,) if ref else (), tickets), res[1], extras)

    @staticmethod
    def _not_found(task_id: str) -> TaskNotFound:
        return TaskNotFound(f"no task with id {task_id!r}")

    def close(self) -> None:
        try:
            self.r.close()
        except Exception:  # pragma: no cover - closing must not raise
            pass
