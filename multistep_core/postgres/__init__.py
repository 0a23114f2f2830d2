"""PostgreSQL store: durable task state, shared by every worker, with no Redis at all.

``postgresql://user@host:5432/db`` as a backend of its own (jobs on threads of the calling
process, like ``sqlite://``), or ``store=postgresql://...`` for any queue adapter
(``celery+amqp://...?store=postgresql://db.internal/multistep``). Needs psycopg 3:
``pip install "multistep[postgres]"``.

It is :class:`~multistep_core.store.RowStore` over PostgreSQL rows: the lifecycle logic is
the reference's own, each transition one transaction that locks only its task's row.
Modules: :mod:`.store` (connections, retries, waiting), :mod:`.txn` (the row primitives and
their statements), :mod:`.schema` (tables and migrations, ``multistep db upgrade``),
:mod:`.notify` (LISTEN/NOTIFY for ``Task.wait``), :mod:`.factory` (the backend).
``docs/stores.md`` has the setup, the durability and the figures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .store import DEFAULT_URL, PostgresStore

__all__ = ["DEFAULT_URL", "PostgresStore"]


def __getattr__(name: str) -> Any:
    """psycopg is imported when the store is first used, not with the package (``multistep db``
    lives here too, and the core runs without psycopg). The backend factory is
    :func:`multistep_core.postgres.factory.postgres_backend`."""
    if name in ("DEFAULT_URL", "PostgresStore"):
        from . import store

        return getattr(store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
