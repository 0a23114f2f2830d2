"""LISTEN/NOTIFY: ``Task.wait`` woken by the server when a task ends, not by polling.

The schema's trigger (migration 2) sends a task's id on the channel ``<prefix>_ended`` when
the task becomes succeeded, failed or cancelled, or is deleted. One :class:`Listener` per
store (started by the first wait) holds a connection that LISTENs on it, in a daemon thread,
and wakes the waiters of that id. When its connection breaks it reconnects with backoff and
wakes every waiter (a notification may have been missed meanwhile; waiters read again).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg

log = logging.getLogger("multistep.postgres")

READY_TIMEOUT = 5.0  # seconds a waiter waits for the listening connection before it polls


class Listener:
    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], channel: str) -> None:
        self._connect = connect
        self.channel = channel
        self._lock = threading.Lock()
        self._waiters: dict[str, set[threading.Event]] = {}
        self._listening = threading.Event()
        self._stop = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._thread = threading.Thread(target=self._loop, name="multistep-pg-listen", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def watch(self, task_id: str) -> Iterator[threading.Event | None]:
        """An event set when ``task_id`` may have ended, registered while the block runs; None if
        the listening connection is not up (then nothing wakes the caller early)."""
        if not self._listening.wait(READY_TIMEOUT):
            yield None
            return
        event = threading.Event()
        with self._lock:
            self._waiters.setdefault(task_id, set()).add(event)
        try:
            yield event
        finally:
            with self._lock:
                events = self._waiters.get(task_id)
                if events is not None:
                    events.discard(event)
                    if not events:
                        del self._waiters[task_id]

    def _wake(self, task_id: str | None) -> None:
        with self._lock:
            if task_id is None:
                events = [e for es in self._waiters.values() for e in es]
            else:
                events = list(self._waiters.get(task_id, ()))
        for e in events:
            e.set()

    def _loop(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            try:
                conn = self._connect()
                self._conn = conn
                conn.execute(f'LISTEN "{self.channel}"')
                self._listening.set()
                self._wake(None)  # anything sent while nobody listened: let every waiter read again
                delay = 0.1
                while not self._stop.is_set():
                    for note in conn.notifies(timeout=1.0):
                        self._wake(note.payload)
            except psycopg.Error as exc:
                if self._stop.is_set():
                    break
                self._listening.clear()
                self._wake(None)
                log.warning("PostgreSQL listener: %s; reconnecting in %.1fs", exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
            finally:
                conn_, self._conn = self._conn, None
                if conn_ is not None:
                    with contextlib.suppress(Exception):
                        conn_.close()

    def stop(self) -> None:
        self._stop.set()
        self._wake(None)
        self._thread.join(timeout=3)
