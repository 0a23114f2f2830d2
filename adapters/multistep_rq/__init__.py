"""multistep on RQ: ``pip install "multistep[rq]"``.

Backend strings (task state lives in the Redis store; RQ only carries messages)::

    rq+redis://127.0.0.1:6379/0                       # RQ queues and task state in the same Redis
    rq+redis://:secret@redis.internal:6379/2?worker_class=fork
    rq+redis://127.0.0.1:6379/0?store=redis://state-host:6379/1&prefix=myapp
    rq                                                # = rq+redis://127.0.0.1:6379/0

``MULTISTEP_BACKEND=rq+redis://127.0.0.1:6379/0`` is all an application changes to move from
the embedded backend to RQ; workers are started with::

    multistep --backend rq+redis://127.0.0.1:6379/0 worker myapp.jobs -q default -c 4

How messages travel
    One RQ job function, ``multistep_rq.job.run`` (a dotted path: RQ cannot import
    ``module:function``), carries every multistep message (a small JSON text) as its only
    argument and hands it to the core's runner, which records the outcome. RQ's
    ``JSONSerializer`` is used on both sides, so nothing on the queue is pickled.
    The multistep queue ``q`` (a task's ``queue`` option) is the RQ queue ``multistep:q``
    (``queue_prefix``), i.e. the Redis list ``rq:queue:multistep:q``, so multistep never
    shares a queue with an application's own RQ jobs. Bulk enqueue uses
    ``Queue.enqueue_many`` (one MULTI/EXEC round trip per chunk of up to 2000 messages).

RQ settings the adapter relies on (and why)
    * ``result_ttl=0`` on every job (and ``default_result_ttl=0`` in the workers): a job
      that succeeded is deleted at once with its result stream and registry entries, so
      finished RQ jobs never pile up in Redis (task results live in the store).
    * ``failure_ttl`` (default 3600 s, RQ's own default is one year): an RQ job fails only
      when the store itself was unreachable (the runner records every job failure and
      never raises); such records expire after an hour. The core re-sends the job anyway.
    * No RQ retries (``Retry`` is never used), no RQ scheduler, no ``depends_on``: retries,
      backoff and fan-in are the core's, identical on every backend.
    * ``job_timeout=-1`` (no RQ time limit) unless you set ``job_timeout=`` (seconds): the
      core's lease heartbeat keeps long jobs alive; RQ's limit would kill them.
    * Workers use ``multistep_rq.worker.MultistepJob``, a job class that runs only
      ``multistep_rq.job.run`` and never imports a function or a callback an RQ job names:
      an RQ job forged with plain rq APIs naming ``os.system`` is refused and recorded in
      ``multistep rejected``.

Workers (``multistep worker``)
    ``worker_class=simple`` (default) runs jobs in the worker process itself (RQ's
    ``SimpleWorker``): the backend is built and the job modules are imported once per
    process, there is no ``fork()`` per job (about twice RQ's forking throughput on short
    jobs) and no fork of a process that runs threads (the core's recovery and lease
    heartbeat threads). ``worker_class=fork`` uses RQ's forking ``Worker``: each job runs
    in a fresh "work horse" forked from a worker process that has already built the backend
    and imported the job modules, so nothing is rebuilt per job; choose it for jobs that
    leak memory or may crash the interpreter.
    ``-c 1`` runs one RQ worker in the ``multistep worker`` process, in its main thread
    (RQ installs signal handlers), beside the core's Recovery thread. ``-c N`` starts N
    worker processes (``python -m multistep_rq``), each running one RQ worker in its main
    thread with a backend built once from the same backend string, and supervises them:
    SIGTERM/SIGINT is forwarded (RQ's warm shutdown: running jobs finish; a second signal
    more than 1 s later kills them), a process that dies is restarted, and the Recovery
    thread runs in the supervising process. A worker process whose supervisor disappears
    stops by itself.

Killed workers
    RQ never runs a job again whose worker died: it marks it "abandoned" (failed) one to
    several minutes later. multistep does not depend on that: the store holds a lease on
    every running job, renewed by the runner's heartbeat; when a worker is SIGKILLed mid-job
    or mid-finalizer its lease expires (``lease`` seconds, default 30) and the Recovery
    thread of any live ``multistep worker`` sends the job again. Counting is per job ref,
    so a duplicate RQ job (a re-sent message, or an RQ job made by hand with the same body)
    counts once and a finalizer that succeeded never runs again. With ``worker_class=simple``
    RQ records a live job running longer than 420 s as abandoned in its own registries; that
    is bookkeeping only (the lease, not RQ, decides whether a multistep job is alive).

Options (query string or keyword arguments): ``store`` (store URL; default: the same Redis;
``sqlite:///path`` also works), ``prefix`` (store key prefix, ``ms``), ``lease`` (seconds,
30), ``worker_class`` (``simple`` | ``fork``), ``queue_prefix`` (``multistep:``),
``job_timeout`` (seconds, -1 = none), ``failure_ttl`` (seconds, 3600),
``maintenance_interval`` (seconds between RQ's registry clean-ups in a worker, 600),
``log_level`` (RQ worker logging, ``INFO``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from multistep_core.backend import Backend
from multistep_core.kit import store_from_url
from multistep_core.options import redact_url, reject_unknown
from multistep_core.errors import BackendConnectionError, BackendDriverMissing, ConfigurationError
from multistep_core.queue import Queue

from .job import JOB_PATH

__all__ = ["JOB_PATH", "RQQueue", "backend_from_url"]

log = logging.getLogger("multistep.rq")

#: Environment variable through which ``multistep worker -c N`` hands the backend to its worker processes.
ENV_SPEC = "MULTISTEP_RQ_SPEC"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
DEFAULT_QUEUE_PREFIX = "multistep:"
DEFAULT_FAILURE_TTL = 3600
DEFAULT_JOB_TIMEOUT = -1
DEFAULT_MAINTENANCE_INTERVAL = 600
PIP_HINT = 'pip install "multistep[rq]"'
WORKER_CLASSES = ("simple", "fork")
KNOWN_OPTIONS = {
    "store", "prefix", "lease", "worker_class", "queue_prefix", "job_timeout", "failure_ttl",
    "maintenance_interval", "log_level",
}
CHUNK = 2000




def _missing(exc: ImportError) -> BackendDriverMissing:
    return BackendDriverMissing(
        f"the 'rq' backend needs packages that are not installed ({exc.name or 'rq'}); install them with: {PIP_HINT}"
    )


def broker_url(url: str) -> str:
    """``rq+redis://h:6379/0`` -> ``redis://h:6379/0``; ``rq`` -> the local Redis."""
    if "://" not in url:
        if url != "rq":
            raise ConfigurationError(f"not an rq backend string: {url!r}")
        return DEFAULT_REDIS
    scheme, _, rest = url.partition("://")
    head, _, kind = scheme.partition("+")
    if head != "rq" or kind not in ("redis", "rediss", "unix"):
        raise ConfigurationError(
            f"rq backend strings look like rq+redis://host:6379/0 (or rq+rediss://, rq+unix://), not {redact_url(url)!r}"
        )
    return f"{kind}://{rest}"




class RQQueue(Queue):
    """Carries multistep messages as RQ jobs of ``multistep_rq.job.run`` (JSON serializer)."""

    def __init__(
        self,
        url: str,
        *,
        spec: dict[str, Any] | None = None,
        worker_class: str = "simple",
        queue_prefix: str = DEFAULT_QUEUE_PREFIX,
        job_timeout: int = DEFAULT_JOB_TIMEOUT,
        failure_ttl: int = DEFAULT_FAILURE_TTL,
        maintenance_interval: int = DEFAULT_MAINTENANCE_INTERVAL,
        log_level: str = "INFO",
    ) -> None:
        try:
            import redis
            import rq
            from rq.serializers import JSONSerializer
        except ImportError as exc:
            raise _missing(exc) from exc
        if worker_class not in WORKER_CLASSES:
            raise ConfigurationError(f"worker_class must be one of {', '.join(WORKER_CLASSES)}, not {worker_class!r}")
        if not isinstance(queue_prefix, str):
            raise ConfigurationError("queue_prefix must be a string")
        self.url = url
        self.where = redact_url(url)
        self.spec = spec or {}
        self.worker_class = worker_class
        self.queue_prefix = queue_prefix
        self.job_timeout = int(job_timeout)
        if self.job_timeout == 0 or self.job_timeout < -1:
            raise ConfigurationError("job_timeout must be a number of seconds, or -1 for no limit")
        self.failure_ttl = int(failure_ttl)
        if self.failure_ttl <= 0:
            raise ConfigurationError("failure_ttl must be a positive number of seconds")
        self.maintenance_interval = int(maintenance_interval)
        self.log_level = str(log_level).upper()
        self._rq = rq
        self.serializer = JSONSerializer
        self._conn_errors: tuple[type[BaseException], ...] = (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
        )
        try:
            self.redis = redis.Redis.from_url(url)
        except ValueError as exc:
            raise ConfigurationError(f"bad Redis URL {self.where!r}: {exc}") from None
        self._queues: dict[str, Any] = {}
        self._runner: Any = None

    # -- plumbing --------------------------------------------------------------------
    def bind(self, runner: Any) -> None:
        self._runner = runner

    def rq_name(self, queue: str) -> str:
        """The RQ queue that carries the multistep queue ``queue``."""
        return f"{self.queue_prefix}{queue}"

    def rq_queue(self, queue: str) -> Any:
        q = self._queues.get(queue)
        if q is None:
            q = self._rq.Queue(self.rq_name(queue), connection=self.redis, serializer=self.serializer)
            self._queues[queue] = q
        return q

    def _conn_error(self, exc: BaseException) -> BackendConnectionError:
        return BackendConnectionError(f"cannot reach the RQ Redis at {self.where}: {exc}")

    def ping(self) -> None:
        """Fail fast with :class:`BackendConnectionError` when Redis is unreachable."""
        try:
            self.redis.ping()
        except self._conn_errors as exc:
            raise self._conn_error(exc) from None

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
        try:
            for i in range(0, len(messages), CHUNK):
                q.enqueue_many([self._data(m) for m in messages[i : i + CHUNK]])
        except self._conn_errors as exc:
            raise self._conn_error(exc) from None

    def publish_raw(self, queue: str, body: str) -> None:
        """One RQ job carrying ``body``, made with plain ``Queue.enqueue`` as an operator (or
        a bug) re-sending a message by hand would."""
        try:
            self.rq_queue(queue).enqueue(
                JOB_PATH, body, job_timeout=self.job_timeout, result_ttl=0, failure_ttl=self.failure_ttl
            )
        except self._conn_errors as exc:
            raise self._conn_error(exc) from None

    def purge(self, queue: str) -> int:
        """Drop every waiting RQ job of the queue (their job hashes too)."""
        try:
            q = self.rq_queue(queue)
            n = int(q.count)
            q.empty()
            return n
        except self._conn_errors as exc:
            raise self._conn_error(exc) from None

    # -- workers ---------------------------------------------------------------------
    def run_worker(self, modules: Sequence[str], queues: Sequence[str], concurrency: int) -> int:
        """``concurrency`` 1: one RQ worker in this process's main thread. More: that many
        worker processes (``python -m multistep_rq``), supervised by this one."""
        self.ping()
        if self._runner is None:
            raise RuntimeError("RQQueue.run_worker needs a Backend (Backend.run_worker calls it)")
        if int(concurrency) <= 1:
            from .worker import serve

            return serve(self._runner.backend, list(queues))
        return self._supervise(list(modules), list(queues), int(concurrency))

    def _supervise(self, modules: list[str], queues: list[str], n: int) -> int:
        env = dict(os.environ)
        env[ENV_SPEC] = json.dumps({**self.spec, "modules": modules, "queues": queues, "supervisor": os.getpid()})
        env.setdefault("PYTHONUNBUFFERED", "1")
        cmd = [sys.executable, "-m", "multistep_rq"]

        def spawn() -> subprocess.Popen[bytes]:
            return subprocess.Popen(cmd, env=env)

        procs: list[subprocess.Popen[bytes]] = [spawn() for _ in range(n)]
        started = [time.monotonic()] * n
        delay = [1.0] * n
        restart_at: list[float | None] = [None] * n
        stopping = {"sig": 0}

        def forward(signum: int, frame: Any) -> None:
            stopping["sig"] = signum
            for p in procs:
                if p.poll() is None:
                    try:
                        p.send_signal(signum)
                    except ProcessLookupError:
                        pass

        old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
        log.info("multistep worker %d: %d RQ worker processes (%s) on %s", os.getpid(), n, self.worker_class,
                 ", ".join(self.rq_name(q) for q in queues))
        try:
            while True:
                if stopping["sig"]:
                    codes = [p.wait() for p in procs]
                    return max((c for c in codes if c > 0), default=0)
                now = time.monotonic()
                for i, p in enumerate(procs):
                    code = p.poll()
                    if code is None or stopping["sig"]:
                        continue
                    if restart_at[i] is None:
                        lived = now - started[i]
                        delay[i] = 1.0 if lived > 30 else min(delay[i] * 2, 30.0)
                        restart_at[i] = now + (0.2 if lived > 30 else delay[i])
                        log.warning("RQ worker process %d exited with %s; restarting it", p.pid, code)
                    elif now >= restart_at[i]:  # type: ignore[operator]
                        procs[i] = spawn()
                        started[i] = time.monotonic()
                        restart_at[i] = None
                time.sleep(0.2)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            for p in procs:
                if p.poll() is None:  # pragma: no cover - only on an unexpected error above
                    p.kill()

    def close(self) -> None:
        try:
            self.redis.close()
        except Exception:  # pragma: no cover - closing must not raise
            pass


def backend_from_url(
    url: str = "rq",
    *,
    lease: float = 30.0,
    store: str | None = None,
    prefix: str = "ms",
    **opts: Any,
) -> Backend:
    """Build an RQ backend from ``rq+redis://host:6379/0`` (see the module documentation)."""
    reject_unknown(opts, KNOWN_OPTIONS - {"store", "prefix", "lease"}, "rq")
    burl = broker_url(url)
    if store is None:
        store = burl
    spec = {"url": url, "options": {"lease": lease, "store": store, "prefix": prefix, **opts}}
    queue = RQQueue(
        burl,
        spec=spec,
        worker_class=str(opts.get("worker_class", "simple")),
        queue_prefix=opts.get("queue_prefix", DEFAULT_QUEUE_PREFIX),
        job_timeout=int(opts.get("job_timeout", DEFAULT_JOB_TIMEOUT)),
        failure_ttl=int(opts.get("failure_ttl", DEFAULT_FAILURE_TTL)),
        maintenance_interval=int(opts.get("maintenance_interval", DEFAULT_MAINTENANCE_INTERVAL)),
        log_level=str(opts.get("log_level", "INFO")),
    )
    st = store_from_url(str(store), prefix=str(prefix), lease=float(lease))
    return Backend(st, queue, name="rq")


def backend_from_spec(spec: dict[str, Any]) -> Backend:
    """The backend of one worker process, from what ``multistep worker`` handed it."""
    return backend_from_url(spec["url"], **spec.get("options", {}))
