"""The store of a backend: which one (``store=``, else the broker's own Redis) and building it."""

from __future__ import annotations

import os
from typing import Any

from ..errors import BackendDriverMissing, ConfigurationError
from ..fairshare import DEFAULT_WINDOW
from ..options import redact_url, sqlite_path
from .redis_probe import probe_redis


def store_url(adapter: str, kind: str, broker: str, store: str | None) -> str:
    """The store of a backend: ``store=``, else (a Redis broker) the broker's own Redis. Task
    state is never put silently on some other server: other brokers need ``store=`` (or
    ``$MULTISTEP_STORE``)."""
    if store:
        return store
    if kind == "redis":
        return broker
    env = os.environ.get("MULTISTEP_STORE")
    if env:
        return env
    host = redact_url(broker).split("@")[-1].split("/")[0].split(":")[0] or "host"
    raise ConfigurationError(
        f"the {adapter}+{kind} backend needs a store for its task state: add store= to the backend string, "
        f"e.g. {adapter}+{redact_url(broker)}?store=redis://{host}:6379/0 (or store=sqlite:///tasks.db), "
        "or set $MULTISTEP_STORE"
    )


def store_from_url(
    store_url: str, *, prefix: str, lease: float, probe: bool = True, window: int = DEFAULT_WINDOW, **cluster: Any
) -> Any:
    """The store a ``store=`` option names: ``redis://``, ``rediss://``, ``unix://`` (the Redis
    store; checked with :func:`probe_redis` first unless ``probe`` is false, e.g. because it is
    the broker's Redis, checked already), ``redis+cluster://host:port,host:port/`` (the Redis
    Cluster store; its options ``wait``, ``wait_timeout``, ``retry_for`` in its own query, or
    as ``cluster`` keywords), ``sqlite:///path`` (the SQLite store) or ``postgresql://`` (the
    PostgreSQL store; checked as it connects). ``window``: tickets per queue in the broker, at
    most (the ``window=`` option)."""
    window = int(window)
    if store_url.startswith(("redis+cluster://", "redis cluster://")):  # (a query string's '+' reads as a space)
        try:
            from ..redis.cluster import RedisClusterStore
        except ImportError as exc:  # pragma: no cover - redis comes with every adapter's extra
            raise BackendDriverMissing(f'the Redis Cluster store needs redis-py: pip install "multistep[redis]" ({exc})') from exc
        return RedisClusterStore(store_url, prefix=prefix, lease=lease, window=window, **cluster)
    if store_url.startswith(("redis://", "rediss://", "unix://")):
        try:
            from ..redis import RedisStore
        except ImportError as exc:  # pragma: no cover - redis comes with every adapter's extra
            raise BackendDriverMissing(f'the Redis store needs redis-py: pip install "multistep[redis]" ({exc})') from exc
        if probe:
            probe_redis(store_url, "the Redis store")
        return RedisStore(store_url, prefix=prefix, lease=lease, window=window)
    if store_url.startswith("sqlite:"):
        from ..embedded.sqlite import SQLiteStore

        return SQLiteStore(sqlite_path(store_url), lease=lease, window=window)
    if store_url.startswith(("postgresql://", "postgres://")):
        try:
            from ..postgres.store import PostgresStore
        except ImportError as exc:
            raise BackendDriverMissing(
                f'the PostgreSQL store needs psycopg 3: pip install "multistep[postgres]" ({exc})'
            ) from exc
        return PostgresStore(store_url, prefix=prefix, lease=lease, window=window)
    raise ConfigurationError(
        f"store must be a redis://, redis+cluster://, sqlite:/// or postgresql:// URL, not {redact_url(store_url)!r}"
    )
