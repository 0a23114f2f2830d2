"""The adapter kit: what every queue adapter needs besides its queue library.

A queue adapter (``multistep_rq``, ``multistep_celery``, ``multistep_dramatiq``, or a third
party's) builds a :class:`~multistep_core.backend.Backend` from a store and a
:class:`~multistep_core.queue.Queue`. This module holds the parts they share, so that each
adapter is only its transport:

* :func:`store_from_url`: the store a ``store=`` option names.
"""

from __future__ import annotations

from typing import Any

from .errors import BackendDriverMissing, ConfigurationError
from .options import redact_url, sqlite_path


def store_from_url(store_url: str, *, prefix: str, lease: float) -> Any:
    """The store a ``store=`` option names: ``redis://``, ``rediss://``, ``unix://`` (the Redis
    store) or ``sqlite:///path`` (the SQLite store)."""
    if store_url.startswith(("redis://", "rediss://", "unix://")):
        try:
            from .redis import RedisStore
        except ImportError as exc:  # pragma: no cover - redis comes with every adapter's extra
            raise BackendDriverMissing(f'the Redis store needs redis-py: pip install "multistep[redis]" ({exc})') from exc
        return RedisStore(store_url, prefix=prefix, lease=lease)
    if store_url.startswith("sqlite:"):
        from .embedded.sqlite import SQLiteStore

        return SQLiteStore(sqlite_path(store_url), lease=lease)
    raise ConfigurationError(f"store must be a redis:// or sqlite:/// URL, not {redact_url(store_url)!r}")
