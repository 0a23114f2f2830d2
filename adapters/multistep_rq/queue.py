"""RQQueue: multistep messages as RQ jobs of ``multistep_rq.job.run`` (JSON serializer)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from multistep_core import kit
from multistep_core.errors import ConfigurationError
from multistep_core.options import redact_url
from multistep_core.queue import Queue

from .job import JOB_PATH, PROCESS

if TYPE_CHECKING:
    from multistep_core.backend import Backend
    from multistep_core.runner import Runner

log = logging.getLogger("multistep.rq")

CHUNK = 2000  # messages per enqueue_many (one MULTI/EXEC round trip)
#: The options of the queue itself (the backend string takes these and :data:`kit.STORE_OPTIONS`).
QUEUE_OPTIONS: dict[str, kit.Option] = {
    "worker_class": kit.choice("simple", "simple", "fork"),
    "queue_prefix": kit.text("multistep:"),
    "job_timeout": kit.integer(-1, minimum=1, also=(-1,), what="a number of seconds >= 1, or -1 for no limit"),
    "failure_ttl": kit.integer(3600, minimum=1),
    "maintenance_interval": kit.integer(600, minimum=1),
    "log_level": kit.log_level("INFO"),
}


class RQQueue(Queue):
    """Carries multistep messages as RQ jobs of ``multistep_rq.job.run`` (JSON serializer)."""

    def __init__(self, url: str, *, spec: dict[str, Any] | None = None, **options: Any) -> None:
        try:
            import redis
            import rq
            from rq.serializers import JSONSerializer
        except ImportError as exc:
            raise kit.driver_missing("rq", exc) from exc
        opts = kit.check_options("rq", options, QUEUE_OPTIONS)
        self.url = url
        self.where = redact_url(url)
        self.spec = spec or {}
        self.worker_class: str = opts["worker_class"]
        self.queue_prefix: str = opts["queue_prefix"]
        self.job_timeout: int = opts["job_timeout"]
        self.failure_ttl: int = opts["failure_ttl"]
        self.maintenance_interval: int = opts["maintenance_interval"]
        self.log_level: str = opts["log_level"]
        self._rq = rq
        self.serializer = JSONSerializer
        self._conn_errors = kit.redis_errors()
        try:
            self.redis = redis.Redis.from_url(url)
        except ValueError as exc:
            raise ConfigurationError(f"bad Redis URL {self.where!r}: {exc}") from None
        self._queues: dict[str, Any] = {}
        self._backend: Backend | None = None

    def bind(self, runner: Runner) -> None:
        self._backend = runner.backend

    def rq_name(self, queue: str) -> str:
        """The RQ queue that carries the multistep queue ``queue``."""
        return f"{self.queue_prefix}{queue}"

    def rq_queue(self, queue: str) -> Any:
        q = self._queues.get(queue)
        if q is None:
            q = self._rq.Queue(self.rq_name(queue), connection=self.redis, serializer=self.serializer)
            self._queues[queue] = q
        return q

    def _reaching(self) -> AbstractContextManager[None]:
        return kit.reaching("the RQ Redis", self.url, self._conn_errors)

    def ping(self) -> None:
        """Fail fast with :class:`BackendConnectionError` when Redis is unreachable."""
        with self._reaching():
            self.redis.ping()

    def _data(self, body: str) -> Any:
        return self._rq.Queue.prepare_data(
            JOB_PATH,
            args=(body,),
            timeout=self.job_timeout,
            result_ttl=0,
            failure_ttl=self.failure_ttl,
            description=body,  # what rq info / dashboards show; avoids repr() of the call
        )

    # -- sending ---------------------------------------------------------------------
    def enqueue(self, queue: str, messages: Sequence[str]) -> None:
        """One ``enqueue_many`` (one MULTI/EXEC round trip) per chunk of messages."""
        if not messages:
            return
        q = self.rq_queue(queue)
        with self._reaching():
            for i in range(0, len(messages), CHUNK):
                q.enqueue_many([self._data(m) for m in messages[i : i + CHUNK]])

    def publish_raw(self, queue: str, body: str) -> None:
        """One RQ job carrying ``body``, made with plain ``Queue.enqueue`` as an operator (or
        a bug) re-sending a message by hand would."""
        with self._reaching():
            self.rq_queue(queue).enqueue(
                JOB_PATH, body, job_timeout=self.job_timeout, result_ttl=0, failure_ttl=self.failure_ttl
            )

    def purge(self, queue: str) -> int:
        """Drop every waiting RQ job of the queue (their job hashes too)."""
        with self._reaching():
            q = self.rq_queue(queue)
            n = int(q.count)
            q.empty()
            return n

    # -- workers ---------------------------------------------------------------------
    def run_worker(self, modules: Sequence[str], queues: Sequence[str], concurrency: int) -> int:
        """``concurrency`` 1: one RQ worker in this process's main thread. More: that many
        worker processes (``python -m multistep_rq``), supervised by this one."""
        self.ping()
        if self._backend is None:
            raise ConfigurationError("this RQQueue belongs to no Backend: build it with connect() or backend_from_url()")
        if int(concurrency) <= 1:
            from .worker import serve

            return serve(self, self._backend, list(queues))
        env = {**os.environ, **PROCESS.environ({**self.spec, "modules": list(modules), "queues": list(queues)})}
        env.setdefault("PYTHONUNBUFFERED", "1")
        log.info("multistep worker %d: %d RQ worker processes (%s) on %s", os.getpid(), concurrency,
                 self.worker_class, ", ".join(self.rq_name(q) for q in queues))
        return kit.Supervisor([sys.executable, "-m", "multistep_rq"], int(concurrency), env=env,
                              what="RQ worker process").run()

    def close(self) -> None:
        try:
            self.redis.close()
        except Exception:  # pragma: no cover - closing must not raise
            pass
