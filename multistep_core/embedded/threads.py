"""In-process queues: a pool of worker threads, or inline (eager) execution."""

from __future__ import annotations

import logging
import queue as _q
import threading
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import ConfigurationError, InvalidTransition
from ..queue import Queue

if TYPE_CHECKING:
    from ..runner import Runner

log = logging.getLogger("multistep.embedded")
_STOP = object()


class ThreadQueue(Queue):
    """Runs jobs on ``threads`` worker threads of this process (started on first use).

    Queue names are kept for compatibility with the other backends but share one pool.
    """

    in_process = True

    def __init__(self, threads: int = 4) -> None:
        if threads < 1:
            raise ConfigurationError(f"threads must be at least 1, not {threads!r}")
        self.threads = threads
        self._q: _q.SimpleQueue[object] = _q.SimpleQueue()
        self._runner: Runner | None = None
        self._workers: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def bind(self, runner: Runner) -> None:
        self._runner = runner

    def _ensure_started(self) -> None:
        if self._workers:
            return
        with self._lock:
            if self._workers or self._closed:
                return
            for i in range(self.threads):
                t = threading.Thread(target=self._work, name=f"multistep-worker-{i}", daemon=True)
                t.start()
                self._workers.append(t)

    def enqueue(self, queue: str, messages: Sequence[str]) -> None:
        if self._closed:
            raise InvalidTransition("this backend is closed; connect() again to add work")
        self._ensure_started()
        for m in messages:
            self._q.put(m)

    def pending(self) -> int:
        return self._q.qsize()

    def _work(self) -> None:
        assert self._runner is not None
        while True:
            item = self._q.get()
            if item is _STOP:
                return
            try:
                self._runner.handle(item)
            except Exception:  # the store failed: the recovery pass resends what is due
                log.exception("handling %r failed", item)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers, self._workers = self._workers, []
        for _ in workers:
            self._q.put(_STOP)
        for t in workers:
            if t is not threading.current_thread():
                t.join(timeout=10)


class EagerQueue(Queue):
    """Runs each job inline, in the caller's thread, the moment it is enqueued.

    For users' own unit tests: ``connect("eager")``. Retries happen at once (no backoff)."""

    in_process = True

    def __init__(self) -> None:
        self._runner: Runner | None = None
        self._local = threading.local()

    def bind(self, runner: Runner) -> None:
        self._runner = runner

    def enqueue(self, queue: str, messages: Sequence[str]) -> None:
        assert self._runner is not None, "EagerQueue used before a backend bound it"
        # A job's finish enqueues the next ticket: run it after this message, not inside it
        # (nesting one call per job would exhaust the stack on a task of a few hundred jobs).
        local = self._local
        pending: deque[str] | None = getattr(local, "pending", None)
        if pending is not None:
            pending.extend(messages)
            return
        local.pending = pending = deque(messages)
        try:
            while pending:
                self._runner.handle(pending.popleft())
        finally:
            local.pending = None
