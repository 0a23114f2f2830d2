"""RQ worker processes of multistep.

``multistep worker -c 1`` runs one RQ worker in its own main thread (beside the core's
Recovery thread). ``-c N`` (N > 1) starts N processes ``python -m multistep_rq`` under the
kit's :class:`~multistep_core.kit.Supervisor`; each builds the backend once from
``$MULTISTEP_RQ_SPEC``, imports the job modules and runs one RQ worker in its main thread
(RQ installs signal handlers, so ``work()`` must run there).

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
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from rq.job import Job

from multistep_core.errors import ConfigurationError
from multistep_core.kit import watch_parent

from .job import JOB_PATH, PROCESS, run
from .queue import RQQueue

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
        PROCESS.get().store.reject(raw, f"refused: {why}", time.time())

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


def serve(queue: RQQueue, backend: Backend, queues: Sequence[str]) -> int:
    """Run one RQ worker for ``queues`` (multistep names) in this thread, which must be the
    main thread, until SIGTERM/SIGINT (RQ's warm shutdown: the current job finishes; a
    second signal more than 1 s later kills it). Returns the exit code."""
    if threading.current_thread() is not threading.main_thread():
        raise ConfigurationError("an RQ worker must run in the main thread (it installs signal handlers)")
    from rq import SimpleWorker, Worker

    PROCESS.set(backend)
    cls = SimpleWorker if queue.worker_class == "simple" else Worker
    worker = cls(
        [queue.rq_queue(name) for name in queues],
        connection=queue.redis,
        serializer=queue.serializer,
        job_class=MultistepJob,
        default_result_ttl=0,
        maintenance_interval=queue.maintenance_interval,
        log_job_description=False,
    )
    worker.log_result_lifespan = False
    queue.ping()
    worker.work(burst=False, logging_level=queue.log_level, with_scheduler=False)
    return 0


def main() -> int:
    """Entry point of one worker process started by ``multistep worker -c N``."""
    try:
        spec = PROCESS.env_spec()
    except ConfigurationError as exc:
        print(exc, file=sys.stderr)
        return 2
    if spec is None:
        print(f"multistep_rq.worker is started by `multistep worker` (${PROCESS.env_var} is not set)", file=sys.stderr)
        return 2
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in spec.get("modules", []):
        importlib.import_module(name)
    backend = PROCESS.get()
    queue = backend.queue
    if not isinstance(queue, RQQueue):  # pragma: no cover - the spec is always an rq one
        raise ConfigurationError(f"${PROCESS.env_var} names a {backend.name} backend, not an rq one")
    watch_parent()
    try:
        return serve(queue, backend, spec.get("queues") or ["default"])
    finally:
        PROCESS.close()
