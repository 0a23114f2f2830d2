"""``multistep db``: the PostgreSQL store's schema, by hand.

    multistep db upgrade postgresql://db.internal/multistep      # create or migrate the tables
    multistep -b "celery+amqp://...?store=postgresql://db/ms" db upgrade   # the backend's store
    multistep db status postgresql://db.internal/multistep       # the version it has

A store creates and migrates its tables itself when it connects, unless the backend string
says ``upgrade=false`` (for deployments where only a migration step may change the schema).
psycopg is imported only when a command runs.
"""

from __future__ import annotations

from typing import Any

import click

from ..errors import BackendConnectionError, BackendDriverMissing, ConfigurationError
from ..options import redact_url, split_options

SCHEMES = ("postgresql://", "postgres://")


def database(url: str | None, backend_arg: str | None, prefix: str | None) -> tuple[str, str]:
    """(database URL, table prefix): ``url`` if given, else the backend's own (a ``postgresql://``
    backend, or one whose ``store=`` is PostgreSQL)."""
    if url is None:
        from ..config import resolve

        backend, file_opts, _ = resolve(backend_arg)
        base, opts = split_options(backend)
        opts = {**file_opts, **opts}
        store = base if base.startswith(SCHEMES) else str(opts.get("store") or "")
        if not store.startswith(SCHEMES):
            raise ConfigurationError(
                f"the backend {redact_url(backend)!r} keeps no state in PostgreSQL; give the database: "
                "multistep db upgrade postgresql://user@host:5432/dbname"
            )
        url, prefix = store, prefix or opts.get("prefix")
    base, opts = split_options(url)
    if not base.startswith(SCHEMES):
        raise ConfigurationError(f"not a PostgreSQL URL: {redact_url(url)!r} (postgresql://user@host:5432/dbname)")
    return base, str(prefix or opts.get("prefix") or "ms")


def _connect(url: str) -> Any:
    try:
        import psycopg
    except ImportError as exc:
        raise BackendDriverMissing(f'the PostgreSQL store needs psycopg 3: pip install "multistep[postgres]" ({exc})') from exc
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise BackendConnectionError(f"cannot reach PostgreSQL at {redact_url(url)}: {' '.join(str(exc).split())}") from None


@click.group()
def db() -> None:
    """The PostgreSQL store's tables: create, migrate, show the schema version."""


_url = click.argument("url", required=False, metavar="[URL]")
_prefix = click.option("--prefix", default=None, help="Table prefix (default: the URL's prefix=, else ms).")


@db.command()
@_url
@_prefix
@click.option("--to", "target", type=click.IntRange(1), default=None, help="Stop at this schema version.")
@click.pass_context
def upgrade(ctx: click.Context, url: str | None, prefix: str | None, target: int | None) -> None:
    """Create the tables, or apply the migrations they lack (safe to run while workers run:
    one migrator at a time, in one transaction)."""
    from . import schema

    url, prefix = database(url, getattr(ctx.find_root().obj, "backend_arg", None), prefix)
    prefix = schema.check_prefix(prefix)
    conn = _connect(url)
    try:
        before, after = schema.upgrade(conn, prefix, target)
    finally:
        conn.close()
    where = f"{redact_url(url)} (tables {prefix}_*)"
    if before == after:
        click.echo(f"{where}: schema version {after}, nothing to do")
    else:
        click.echo(f"{where}: schema version {before} -> {after}")


@db.command()
@_url
@_prefix
@click.pass_context
def status(ctx: click.Context, url: str | None, prefix: str | None) -> None:
    """The schema version the tables have, and the one this multistep needs."""
    from . import schema

    url, prefix = database(url, getattr(ctx.find_root().obj, "backend_arg", None), prefix)
    prefix = schema.check_prefix(prefix)
    conn = _connect(url)
    try:
        found = schema.version(conn, prefix)
    finally:
        conn.close()
    state = "up to date" if found == schema.LATEST else ("newer than this multistep" if found > schema.LATEST
                                                          else "run: multistep db upgrade")
    click.echo(f"{redact_url(url)} (tables {prefix}_*): schema version {found}, this multistep needs {schema.LATEST} ({state})")
