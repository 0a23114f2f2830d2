"""The PostgreSQL store: :class:`~multistep_core.store.RowStore` over PostgreSQL rows.

The lifecycle logic is RowStore's own (no second copy to drift); this module supplies the
transaction, its connection, and what a server store needs around it:

* one connection per thread (and a forked child opens its own; the parent's are never used
  nor closed there);
* each transition in one transaction that locks only its task's row (:mod:`.txn`);
* **connection errors are retried, not fatal**: a transition that fails because the server
  went away (restart, failover, network) is run again on a new connection, with backoff, for
  up to ``retry_for`` seconds. When the commit itself was cut off, the transaction's id tells
  whether it committed (``txid_status``): a committed transition is not run twice;
* reads (progress, failures, ``ls``) lock nothing and run in autocommit;
* :meth:`PostgresStore.wait_changed`: ``Task.wait`` sleeps until the server NOTIFYs that the
  task ended (:mod:`.notify`), instead of polling.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors

from ..errors import BackendConnectionError, ConfigurationError, StoreError, TaskExists
from ..fairshare import DEFAULT_WINDOW
from ..forking import forget_connections_in_children
from ..model import Dispatch, Failure, Progress, Rejected, Start, TaskState
from ..options import redact_url
from ..store import DEFAULT_LEASE, RowStore, Txn
from . import schema
from .txn import PgTxn, Sql

log = logging.getLogger("multistep.postgres")
T = TypeVar("T")

DEFAULT_URL = "postgresql://127.0.0.1:5432/multistep"
CONNECT_TIMEOUT = 5  # seconds, per connection attempt


class _Retry(Exception):
    """The transaction did not commit (its connection broke): run the transition again."""


class _Local(threading.local):
    conn: psycopg.Connection[Any] | None = None
    txn: PgTxn | None = None  # the open transaction (a nested transition joins it)
    active: bool = False  # inside a retried call
    locking: bool = True
    track: bool = True  # learn the transaction's id, to settle a commit cut off
    hint: tuple[str, Sequence[str]] | None = None


class PostgresStore(RowStore):
    """Task state in PostgreSQL (``postgresql://user@host:5432/db``). Safe across threads,
    processes and machines. ``prefix`` names the tables (``ms_tasks``...); ``upgrade``: create
    or migrate them on connect; ``retry_for``: seconds a transition keeps retrying while the
    server cannot be reached."""

    def __init__(self, url: str = DEFAULT_URL, *, prefix: str = "ms", lease: float = DEFAULT_LEASE,
                 upgrade: bool = True, retry_for: float = 60.0, max_rejected: int = 1000,
                 window: int = DEFAULT_WINDOW) -> None:
        super().__init__(lease=lease, window=window)
        self.url = url
        self.where = redact_url(url)
        self.prefix = schema.check_prefix(prefix)
        self.sql = Sql(self.prefix)
        self.retry_for = float(retry_for)
        self.max_rejected = max_rejected
        self.purge_batch = 1000  # expired tasks deleted per recovery pass, at most
        self.queue_rows = False  # queue scheduling rows in use: lock a task's before the task (txn.py)
        self.round_trips = 0  # exchanges with the server so far (for tests and benchmarks)
        self._count_lock = threading.Lock()
        self._local = _Local()
        self._conns: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()  # every open one, for close()
        self._inherited: list[Any] = []
        self._listener: Any = None
        forget_connections_in_children(self)  # a forked child (RQ's work horse) opens its own
        conn = self._conn()  # reachable now, or a clear error now
        self._check_schema(conn, upgrade)

    # -- connections -----------------------------------------------------------------------
    def connect(self) -> psycopg.Connection[Any]:
        """A new autocommit connection (errors are psycopg's)."""
        conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
        conn.prepare_threshold = 0  # server-side prepared statements from the first use
        self._conns.add(conn)
        return conn

    def _conn(self) -> psycopg.Connection[Any]:
        conn = self._local.conn
        if conn is None or conn.closed:
            try:
                conn = self.connect()
            except psycopg.OperationalError as exc:
                raise BackendConnectionError(f"cannot reach PostgreSQL at {self.where}: {_reason(exc)}") from None
            self._local.conn = conn
        return conn

    def _check_schema(self, conn: psycopg.Connection[Any], upgrade: bool) -> None:
        enc = conn.execute("SHOW server_encoding").fetchone()
        if enc is None or enc[0].upper() not in ("UTF8", "UTF-8"):
            raise ConfigurationError(
                f"the PostgreSQL database at {self.where} has encoding {enc[0] if enc else '?'}; multistep "
                "needs UTF8 (CREATE DATABASE ... ENCODING 'UTF8' TEMPLATE template0)"
            )
        found = schema.version(conn, self.prefix)
        if found > schema.LATEST:
            raise schema.newer_schema(self.prefix, found)
        if found < schema.LATEST:
            if not upgrade:
                raise ConfigurationError(
                    f"the PostgreSQL tables {self.prefix}_* at {self.where} have schema version {found}, this "
                    f"multistep needs {schema.LATEST}: run  multistep db upgrade {self.where}  (or connect with "
                    "upgrade=true)"
                )
            before, after = schema.upgrade(conn, self.prefix)
            if before != after:
                log.info("PostgreSQL tables %s_* at %s: schema version %d -> %d", self.prefix, self.where, before, after)

    def _forget_connections(self) -> None:
        """In a forked child: never use (nor close) a connection of the parent; keep a reference
        to each so the garbage collector does not close it in the child either (closing one sends
        the server the parent's goodbye)."""
        self._inherited.append((self._local, self._listener, list(self._conns)))
        self._local = _Local()
        self._conns = weakref.WeakSet()
        self._listener = None

    def _drop_connection(self) -> None:
        conn, self._local.conn = self._local.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def count_round_trip(self) -> None:
        with self._count_lock:
            self.round_trips += 1

    def close(self) -> None:
        """Close every connection the store opened (each thread's, the listener's)."""
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        self._drop_connection()
        for conn in list(self._conns):
            with contextlib.suppress(Exception):
                conn.close()

    # -- transactions ----------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[Txn]:
        local = self._local
        if local.txn is not None:  # a transition inside another (start_packed): one transaction
            yield local.txn
            return
        txn = PgTxn(self, self._conn(), locking=local.locking, hint=local.hint, track=local.track)
        local.txn = txn
        try:
            yield txn
            self._commit(txn)
        except BaseException:
            self._abort(txn)
            raise
        finally:
            local.txn = None

    def _commit(self, txn: PgTxn) -> None:
        created = [tid for tid, new in txn.task_writes.items() if new]
        stmts = txn.commit_statements()
        if not stmts:
            return
        try:
            txn.exchange(stmts)
        except pg_errors.UniqueViolation as exc:
            if exc.diag.table_name == f"{self.prefix}_tasks" and created:
                raise TaskExists(f"a task with id {created[0]!r} already exists "
                                 "(created at the same moment by another client)") from None
            raise
        except psycopg.OperationalError as exc:
            if txn.xid is None or not self._committed(txn.xid):
                raise _Retry(f"a commit was cut off before it was applied ({_reason(exc)})") from exc
            log.info("the connection broke during a commit that went through (transaction %d)", txn.xid)

    def _committed(self, xid: int) -> bool:
        """Whether transaction ``xid`` committed, asked on a new connection (waiting for the server
        to come back, as a retry would)."""
        self._drop_connection()
        deadline = time.monotonic() + self.retry_for
        delay = 0.05
        while True:
            try:
                conn = self._conn()
                row = conn.execute("SELECT txid_status(%s)", (xid,)).fetchone()
                return bool(row and row[0] == "committed")
            except (psycopg.OperationalError, BackendConnectionError) as exc:
                self._drop_connection()
                if time.monotonic() > deadline:
                    raise BackendConnectionError(
                        f"lost PostgreSQL at {self.where} during a commit, and it did not come back within "
                        f"{self.retry_for:g}s: {_reason(exc)}"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _abort(self, txn: PgTxn) -> None:
        conn = self._local.conn
        if conn is None or conn.closed:
            return
        try:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.execute("ROLLBACK")
        except psycopg.Error:
            self._drop_connection()

    def _run(self, fn: Callable[..., T], *args: Any, locking: bool = True, track: bool = True,
             hint: tuple[str, Sequence[str]] | None = None, **kwargs: Any) -> T:
        """Call a RowStore method (one transaction), again on a new connection while the server
        cannot be reached (at most ``retry_for`` seconds)."""
        local = self._local
        if local.active:  # inside a call already (start_packed -> guard, start): it retries
            return fn(*args, **kwargs)
        deadline: float | None = None
        delay = 0.05
        for attempt in itertools.count(1):
            local.active, local.locking, local.hint, local.track = True, locking, hint, track
            try:
                return fn(*args, **kwargs)
            except (psycopg.OperationalError, _Retry, BackendConnectionError) as exc:
                self._drop_connection()
                now = time.monotonic()
                deadline = deadline if deadline is not None else now + self.retry_for
                if now >= deadline:
                    raise BackendConnectionError(
                        f"cannot reach PostgreSQL at {self.where} (tried for {self.retry_for:g}s): {_reason(exc)}"
                    ) from None
                if attempt == 1:
                    log.warning("PostgreSQL at %s: %s; retrying", self.where, _reason(exc))
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
            except psycopg.Error as exc:
                raise StoreError(f"PostgreSQL at {self.where} refused an operation: {_reason(exc)}") from exc
            finally:
                local.active, local.locking, local.hint, local.track = False, True, None, True
        raise AssertionError("unreachable")  # pragma: no cover

    # -- transitions: RowStore's, each retried, with the refs it reads first as a hint ------
    def create_task(self, *args: Any, **kwargs: Any) -> None:
        return self._run(super().create_task, *args, **kwargs)

    def add_jobs(self, *args: Any, **kwargs: Any) -> list[str]:
        return self._run(super().add_jobs, *args, **kwargs)

    def seal(self, *args: Any, **kwargs: Any) -> Dispatch:
        return self._run(super().seal, *args, **kwargs)

    def start(self, task_id: str, ref: str, *args: Any, **kwargs: Any) -> Start:
        return self._run(super().start, task_id, ref, *args, hint=(task_id, (ref,)), **kwargs)

    def renew(self, task_id: str, ref: str, *args: Any, **kwargs: Any) -> bool:
        return self._run(super().renew, task_id, ref, *args, hint=(task_id, (ref,)), **kwargs)

    def finish(self, task_id: str, ref: str, *args: Any, **kwargs: Any) -> Dispatch:
        return self._run(super().finish, task_id, ref, *args, hint=(task_id, (ref,)), **kwargs)

    def take_next(self, task_id: str, ref: str, *args: Any, **kwargs: Any) -> tuple[Dispatch, Start]:
        return self._run(super().take_next, task_id, ref, *args, hint=(task_id, (ref,)), **kwargs)

    def cancel(self, *args: Any, **kwargs: Any) -> bool:
        return self._run(super().cancel, *args, **kwargs)

    def retry(self, *args: Any, **kwargs: Any) -> Dispatch:
        return self._run(super().retry, *args, **kwargs)

    def claim_due(self, *args: Any, **kwargs: Any) -> list[Dispatch]:
        # Untracked: asking for the transaction's id would make every idle recovery pass a
        # transaction with an id, whose commit waits for the disk. (A claim whose commit was cut
        # off after it went through is claimed again after a lease: a delay, nothing lost.)
        return self._run(super().claim_due, *args, track=False, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> bool:
        return self._run(super().delete, *args, **kwargs)

    def reject(self, *args: Any, **kwargs: Any) -> None:
        return self._run(super().reject, *args, **kwargs)

    def _together(self, task_id: str, refs: Sequence[str], fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Two transitions of one task (the Store's combined calls) in one transaction: half the
        round trips, and nothing can come between them."""

        def both() -> T:
            with self.transaction():
                return fn(*args, **kwargs)

        return self._run(both, hint=(task_id, tuple(refs)))

    # -- reads: nothing locked, autocommit ------------------------------------------------
    def progress(self, task_id: str) -> Progress | None:
        return self._run(super().progress, task_id, locking=False)

    def failures(self, task_id: str) -> list[Failure]:
        return self._run(super().failures, task_id, locking=False)

    def results(self, task_id: str) -> dict[str, Any]:
        return self._run(super().results, task_id, locking=False)

    def list_tasks(self, state: TaskState | None = None, limit: int = 1000) -> list[Progress]:
        return self._run(super().list_tasks, state, limit, locking=False)

    def rejected(self, limit: int = 100) -> list[Rejected]:
        return self._run(super().rejected, limit, locking=False)

    def job_states(self, task_id: str) -> dict[str, str]:
        return self._run(super().job_states, task_id, locking=False)

    def memory_usage(self, task_id: str) -> int:
        """Bytes of the task's rows as stored (``pg_column_size``; indexes and dead row versions
        not counted): the figure the benchmarks set beside Redis's ``MEMORY USAGE``."""
        p = self.prefix

        def read() -> int:
            conn = self._conn()
            row = conn.execute(
                f"SELECT coalesce((SELECT sum(pg_column_size(t.*)) FROM {p}_tasks t WHERE id = %s), 0) + "
                f"coalesce((SELECT sum(pg_column_size(j.*)) FROM {p}_jobs j WHERE task_id = %s), 0)",
                (task_id, task_id),
            ).fetchone()
            return int(row[0]) if row else 0

        return self._run(read, locking=False)

    # -- waiting -----------------------------------------------------------------------------
    def wait_changed(self, task_id: str, timeout: float) -> None:
        """Return when the task may have ended (the server sent its id on the channel), or after
        ``timeout`` seconds. ``Task.wait`` calls it between its reads instead of sleeping."""
        from .notify import Listener

        if self._listener is None:
            with self._count_lock:
                if self._listener is None:
                    self._listener = Listener(self.connect, schema.channel(self.prefix))
        listener = self._listener
        with listener.watch(task_id) as woken:
            if woken is None:  # no listening connection: sleep as a poll would
                time.sleep(timeout)
                return
            # Listening now: look once more, so that an end committed just before is not missed.
            p = self.progress(task_id)
            if p is None or p.state.terminal:
                return
            woken.wait(timeout)


def _retried(name: str) -> Callable[..., Any]:
    def method(self: PostgresStore, *args: Any, **kwargs: Any) -> Any:
        return self._run(getattr(super(PostgresStore, self), name), *args, **kwargs)

    method.__name__ = name
    method.__doc__ = getattr(RowStore, name).__doc__
    return method


# A transition RowStore gains that this class does not name (yet) is retried all the same (as a
# transition: its task rows locked; a new read would only lock more than it needs).
for _name in dir(RowStore):
    if not _name.startswith("_") and _name not in ("transaction", "close") and _name not in vars(PostgresStore) \
            and callable(getattr(RowStore, _name)):
        setattr(PostgresStore, _name, _retried(_name))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, _Retry):
        return str(exc)
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}".rstrip(": ")
