"""RQ worker processes of multistep.

``multistep worker -c 1`` runs one RQ worker in its own main thread (beside the core's
Recovery thread). ``-c N`` (N > 1) starts N processes ``python -m multistep_rq``
and supervises them; each builds the backend once from ``$MULTISTEP_RQ_SPEC``, imports the
job modules and runs one RQ worker in its main thread (RQ installs signal handlers, so
``work()`` must run there).

:class:`MultistepJob` is the RQ job class these workers use: it runs only
``multistep_rq.job.run`` and never imports a function or calls a callback that an RQ job
on the queue names (a job forged with plain rq APIs naming ``os.system`` is refused and
recorded in the store's rejected list, like any other forged message).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from rq.job import Job

from .job import JOB_PATH, get_backend, run, set_backend

if TYPE_CHECKING:
    from multistep_core.backend import Backend

log = logging.getLogger("multistep.rq")


def _refuse(job: Job, why: str) -> Callable[..., None]:
    def refused(*args: Any, **kwargs: Any) -> None:
        try:
            raw = json.dumps(
                {"rq_job": job.id, "func": job.func_name, "args": list(args), "kwargs": kwargs}, default=repr
            )
        except Exception:  # pragma: no cover - default=repr makes this unlikely
            raw = f"rq job {job.id} calling {job.func_name!r}"
        log.warning("refused RQ job %s: %s", job.id, why)
        get_backend().store.reject(raw, f"refused: {why}", time.time())

    return refused


class MultistepJob(Job):
    """An RQ job that can only call ``multistep_rq.job.run``."""

    @property
    def func(self) -> Callable[..., Any] | None:
        name = self.func_name
        if name == JOB_PATH and self.instance is None:
            return run
        return _refuse(
            self,
            f"RQ job names {name!r}; multistep RQ workers run only {JOB_PATH} "
            "(which runs only registered @job functions)",
        )

    # Callbacks name functions to import; ours never set any, so none is ever called.
    @property
    def success_callback(self) -> None:
        return None

    @property
    def failure_callback(self) -> None:
        return None

    @property
    def stopped_callback(self) -> None:
        return None


def _sqlite_fork_guard(backend: Backend) -> None:
    """SQLite connections must not cross a fork: give each RQ work horse its own."""
    from multistep_core.embedded.sqlite import SQLiteStore

    store = backend.store
    if not isinstance(store, SQLiteStore):
        return
    keep: list[Any] = []

    def after_in_child() -> None:
        keep.append(store._local)  # never closed in the child (the parent still uses it)
        store._local = threading.local()

    os.register_at_fork(after_in_child=after_in_child)


def serve(backend: Backend, queues: Sequence[str]) -> int:
    """Run one RQ worker for ``queues`` (multistep names) in this thread, which must be the
    main thread, until SIGTERM/SIGINT (RQ's warm shutdown: the current job finishes; a
    second signal more than 1 s later kills it). Returns the exit code."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("an RQ worker must run in the main thread (it installs signal handlers)")
    from rq import SimpleWorker, Worker

    q = backend.queue
    set_backend(backend)
    cls = SimpleWorker if q.worker_class == "simple" else Worker  # type: ignore[attr-defined]
    if cls is Worker:
        _sqlite_fork_guard(backend)
    worker = cls(
        [q.rq_queue(name) for name in queues],  # type: ignore[attr-defined]
        connection=q.redis,  # type: ignore[attr-defined]
        serializer=q.serializer,  # type: ignore[attr-defined]
        job_class=MultistepJob,
        default_result_ttl=0,
        maintenance_interval=q.maintenance_interval,  # type: ignore[attr-defined]
        log_job_description=False,
    )
    worker.log_result_lifespan = False
    q.ping()  # type: ignore[attr-defined]
    worker.work(burst=False, logging_level=q.log_level, with_scheduler=False)  # type: ignore[attr-defined]
    return 0


def _watch_parent(pid: int) -> None:
    """Stop gracefully when the supervising ``multistep worker`` process is gone (e.g. it
    alone was SIGKILLed) instead of consuming forever as an orphan."""
    if pid <= 0:
        return

    def loop() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != pid:
                log.warning("multistep worker process %d is gone; stopping this RQ worker", pid)
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=loop, name="multistep-parent-watch", daemon=True).start()


def main() -> int:
    """Entry point of one worker process started by ``multistep worker -c N``."""
    from . import ENV_SPEC, backend_from_spec

    try:
        spec = json.loads(os.environ[ENV_SPEC])
    except KeyError:
        print(f"multistep_rq.worker is started by `multistep worker` (${ENV_SPEC} is not set)", file=sys.stderr)
        return 2
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in spec.get("modules", []):
        importlib.import_module(name)
    backend = backend_from_spec(spec)
    _watch_parent(int(spec.get("supervisor") or 0))
    try:
        return serve(backend, spec.get("queues") or ["default"])
    finally:
        backend.close()
