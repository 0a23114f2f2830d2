"""The PostgreSQL store's schema, created and migrated by the library.

Every table of a store is named after its prefix (``ms`` unless the backend string says
``prefix=``): ``ms_tasks``, ``ms_jobs``, ``ms_rejected`` and ``ms_schema_version`` (one row per
migration applied). :data:`MIGRATIONS` is the schema's history; :func:`upgrade` applies the
ones a database has not seen, in one transaction under an advisory lock (so any number of
workers starting at once migrate it once). ``multistep db upgrade`` runs it by hand; a store
runs it when it connects unless it was made with ``upgrade=False``.

A migration is only ever appended, never edited: a database remembers which it has.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import ConfigurationError, StoreError

_PREFIX = re.compile(r"^[a-z_][a-z0-9_]{0,39}$")

#: The schema's history: version n is ``MIGRATIONS[n - 1]``; ``{p}`` is the table prefix.
MIGRATIONS: tuple[str, ...] = (
    # 1: tasks, their jobs keyed (task_id, ref), refused messages. Ids and refs sort as Python
    # strings do (COLLATE "C"), so rows due at the same instant are claimed in (task, ref) order.
    """
    CREATE TABLE {p}_tasks (
        id text COLLATE "C" PRIMARY KEY,
        state text NOT NULL,
        options text NOT NULL,
        sealed boolean NOT NULL DEFAULT false,
        total integer NOT NULL DEFAULT 0,
        running integer NOT NULL DEFAULT 0,
        succeeded integer NOT NULL DEFAULT 0,
        failed integer NOT NULL DEFAULT 0,
        fin_total integer NOT NULL DEFAULT 0,
        fin_done integer NOT NULL DEFAULT 0,
        has_callback boolean NOT NULL DEFAULT false,
        created_at double precision NOT NULL,
        sealed_at double precision,
        finished_at double precision,
        cancelled_by text,
        cancelled_at double precision,
        expires_at double precision
    );
    CREATE INDEX {p}_tasks_state ON {p}_tasks (state, created_at);
    CREATE INDEX {p}_tasks_expiry ON {p}_tasks (expires_at) WHERE expires_at IS NOT NULL;
    CREATE TABLE {p}_jobs (
        task_id text COLLATE "C" NOT NULL,
        ref text COLLATE "C" NOT NULL,
        spec text NOT NULL,
        state text NOT NULL,
        attempt integer NOT NULL DEFAULT 0,
        fails integer NOT NULL DEFAULT 0,
        lost integer NOT NULL DEFAULT 0,
        due_at double precision,
        error text,
        result text,
        started_at double precision,
        finished_at double precision,
        PRIMARY KEY (task_id, ref)
    );
    CREATE INDEX {p}_jobs_due ON {p}_jobs (due_at) WHERE due_at IS NOT NULL;
    CREATE TABLE {p}_rejected (
        id bigserial PRIMARY KEY,
        raw text NOT NULL,
        reason text NOT NULL,
        at double precision NOT NULL
    );
    """,
    # 2: a task that ends (or is deleted) notifies the channel {p}_ended with its id, so that
    # Task.wait() wakes at once instead of polling.
    """
    CREATE FUNCTION {p}_notify_ended() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            PERFORM pg_notify(TG_ARGV[0], OLD.id);
            RETURN OLD;
        END IF;
        PERFORM pg_notify(TG_ARGV[0], NEW.id);
        RETURN NEW;
    END $$;
    CREATE TRIGGER {p}_ended AFTER UPDATE OF state ON {p}_tasks FOR EACH ROW
        WHEN (NEW.state IN ('succeeded', 'failed', 'cancelled') AND NEW.state IS DISTINCT FROM OLD.state)
        EXECUTE FUNCTION {p}_notify_ended('{p}_ended');
    CREATE TRIGGER {p}_deleted AFTER DELETE ON {p}_tasks FOR EACH ROW
        EXECUTE FUNCTION {p}_notify_ended('{p}_ended');
    """,
    # 3: a task's jobs that did not succeed, by state (failures, retry), without reading those that
    # did (most of them, once a task is done).
    """
    CREATE INDEX {p}_jobs_open ON {p}_jobs (task_id, state) WHERE state <> 'succeeded';
    """,
    # 4: whatever else a task or job row holds (fields RowStore's rows gain later, kept as JSON
    # without a migration of their own), and one scheduling row per queue (a JSON document).
    """
    ALTER TABLE {p}_tasks ADD COLUMN more text;
    ALTER TABLE {p}_jobs ADD COLUMN more text;
    CREATE TABLE {p}_queues (name text COLLATE "C" PRIMARY KEY, data text NOT NULL);
    """,
)
LATEST = len(MIGRATIONS)


def check_prefix(prefix: str) -> str:
    """The prefix as it names tables: lower case, ``-`` and ``.`` as ``_`` (``msconf-1`` ->
    ``msconf_1``); an error unless it is then letters, digits and ``_`` (40 at most)."""
    if isinstance(prefix, str):
        prefix = prefix.lower().replace("-", "_").replace(".", "_")
    if not isinstance(prefix, str) or not _PREFIX.match(prefix):
        raise ConfigurationError(
            f"the PostgreSQL store's prefix names its tables, so it must be letters, digits, _ or - "
            f"(not starting with a digit, at most 40), e.g. prefix=ms; not {prefix!r}"
        )
    return prefix


def channel(prefix: str) -> str:
    """The LISTEN/NOTIFY channel on which a task's id is sent when it ends."""
    return f"{prefix}_ended"


def version(conn: Any, prefix: str) -> int:
    """The schema version of the database (0: no schema yet). ``conn`` is in autocommit."""
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{prefix}_schema_version",)).fetchone()
    if not row or not row[0]:
        return 0
    got = conn.execute(f"SELECT coalesce(max(version), 0) FROM {prefix}_schema_version").fetchone()
    return int(got[0]) if got else 0


def upgrade(conn: Any, prefix: str, target: int | None = None) -> tuple[int, int]:
    """Apply the migrations the database lacks, up to ``target`` (default: all), in one
    transaction; return (version before, version after). ``conn`` is in autocommit."""
    prefix = check_prefix(prefix)
    target = LATEST if target is None else target
    if not 0 <= target <= LATEST:
        raise ConfigurationError(f"schema version {target} does not exist; this multistep knows 1 to {LATEST}")
    with conn.transaction():
        # One migrator at a time per prefix (the lock ends with the transaction).
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"multistep schema {prefix}",))
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {prefix}_schema_version "
            "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        before = version(conn, prefix)
        if before > LATEST:
            raise newer_schema(prefix, before)
        for v in range(before + 1, target + 1):
            conn.execute(MIGRATIONS[v - 1].replace("{p}", prefix), prepare=False)
            conn.execute(f"INSERT INTO {prefix}_schema_version (version) VALUES (%s)", (v,))
    return before, max(before, target)


def newer_schema(prefix: str, found: int) -> StoreError:
    return StoreError(
        f"the PostgreSQL tables {prefix}_* have schema version {found}, newer than this multistep knows "
        f"({LATEST}): upgrade multistep on this machine (a newer version migrated the database)"
    )


def drop(conn: Any, prefix: str) -> None:
    """Remove every table (and function) of a prefix: its tasks are gone for good."""
    prefix = check_prefix(prefix)
    with conn.transaction():
        for table in ("tasks", "jobs", "rejected", "queues", "schema_version"):
            conn.execute(f"DROP TABLE IF EXISTS {prefix}_{table}")
        conn.execute(f"DROP FUNCTION IF EXISTS {prefix}_notify_ended()")
