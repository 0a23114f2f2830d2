"""multistep on Celery: ``pip install "multistep[celery]"``.

Backend strings (task state lives in the Redis store; Celery only carries messages)::

    celery+redis://127.0.0.1:6379/0                       # Redis broker; state in the same Redis
    celery+amqp://guest:guest@127.0.0.1:5672//            # RabbitMQ broker; state in $MULTISTEP_STORE
    celery+amqp://guest:guest@host:5672//?store=redis://host:6379/1&prefix=myapp
    celery                                                # = celery+redis://127.0.0.1:6379/0
    celery?celery_app=proj.celery:app                     # your own Celery app, its own broker

``MULTISTEP_BACKEND=celery+redis://127.0.0.1:6379/0`` is all an application changes to move
from the embedded backend to Celery; workers are started with::

    multistep --backend celery+redis://127.0.0.1:6379/0 worker myapp.jobs -q default -c 4

How messages travel
    One Celery task, ``multistep.run``, carries every multistep message (a small JSON text) as
    its only argument and hands it to the core's runner, which records the outcome. The task
    is sent and accepted as JSON only (``serializer="json"``; the adapter's own app accepts
    nothing but JSON). A multistep queue ``q`` is the Celery queue ``multistep.celery.q``
    (``queue_prefix``), so multistep never shares a queue with an application's own tasks.
    Counting, retries, fan-in and ordering are the core's: no chord, no Celery retry, no
    result backend is involved.

    Adding jobs publishes them in bulk: one producer (one connection and channel from the
    app's pool) per chunk, each message exactly the protocol-2 task message ``apply_async``
    would send, built directly; on Redis 1000 ``LPUSH``es per pipelined round trip (kombu's
    ``Producer.batch``), on RabbitMQ the frames of a chunk written with one ``sendall``.
    (If the application listens to Celery's publish signals, Celery's own send path is used
    so they fire.) A publish that fails on a pooled connection that had died is sent again
    once on a fresh connection. ``confirm=true`` turns on RabbitMQ publisher confirms.

Your own Celery app
    By default the adapter builds a private Celery app from the backend string. To use an
    app you already have, either call :func:`attach` once where the app is defined::

        app = Celery("proj", broker="redis://127.0.0.1:6379/0")
        multistep_celery.attach(app)          # registers multistep.run on it

    or name it in the backend string (``celery_app=proj.celery:app``). The app's broker is
    used (a backend string that names another broker is an error). ``attach`` changes no
    app-wide setting: the task-level settings below are set on ``multistep.run`` only. Your
    own ``celery -A proj worker -Q multistep.celery.default`` then runs multistep jobs too (it builds
    the multistep backend lazily, once per process, from ``attach(app, "celery+redis://...")``
    or from ``$MULTISTEP_BACKEND``, and starts the core's recovery thread in its main process);
    ``multistep worker`` is the recommended way, since it applies the worker settings below.

Celery settings the adapter relies on (and why)
    On the task (``multistep.run``), always, also on your own app:

    * ``acks_late=True``: the message is acknowledged after the runner returned, so a worker
      that dies mid-job leaves it unacknowledged and the broker delivers it again
      (at-least-once). The runner never raises for a job's failure (it records it); if it
      raises because the store or the broker was unreachable, the task raises Celery's
      ``Reject(requeue=True)`` after a 1 s pause, so the message goes back to its queue
      instead of being dropped.
    * ``reject_on_worker_lost=True``: when a prefork child dies mid-job (SIGKILL, segfault,
      OOM) Celery requeues the message instead of acknowledging it as failed.
    * ``ignore_result=True``: no result backend is needed or written for multistep's
      bookkeeping (task state, results and failures live in the store).
    * ``max_retries=0`` and no ``autoretry_for``: retries are the core's, the same on every
      backend. ``serializer="json"``, ``typing=False``.

    In the app the adapter builds (and in ``multistep worker``):

    * ``worker_prefetch_multiplier=1`` (Celery's default 4): a worker reserves one message
      per pool slot, so a killed worker holds few messages and idle workers get the rest;
      on Redis also ``worker_disable_prefetch=True`` (no reservation beyond free slots).
    * Redis transport options: ``visibility_timeout`` (default 10 s, Celery's is one hour),
      ``unacked_restore_interval=1`` and ``unacked_restore_throttle=1`` (kombu's defaults
      10 s times 10 make the sweep run every 100 s): a message that a killed worker had received
      but not acknowledged goes back to its queue ``visibility_timeout`` + at most 1 s after
      it was delivered. A job still running after ``visibility_timeout`` is delivered once
      more: the copy is skipped by the core (the job is running under a live lease) and
      acknowledged, which also removes the message from kombu's unacknowledged set, so a
      long job costs one extra delivery, not one per period. A dead worker's *running* job
      is brought back by the lease (below), not by this timeout.
      ``unacked_key``, ``unacked_index_key`` and ``unacked_mutex_key`` are
      ``multistep.unacked*`` so the sweep never touches another Celery app's unacknowledged
      messages in the same Redis database (kombu's sweep restores *every* message in its
      ``unacked`` hash older than the timeout, whichever worker holds it). With your own
      app none of this is changed unless you pass the options: lowering the visibility
      timeout of a shared app would re-run your own long tasks.
    * RabbitMQ: unacknowledged messages of a killed worker are redelivered by the server as
      soon as its connection closes (immediately after SIGKILL). ``heartbeat`` (AMQP
      heartbeat, seconds, default 60) detects a frozen worker. RabbitMQ's own
      ``consumer_timeout`` (30 min by default) closes the channel of a delivery unacknowledged
      for longer: raise it on the server for very long jobs (the core skips the duplicate).
    * JSON only (``task_serializer``, ``accept_content``, ``result_accept_content``), no
      result backend, ``task_ignore_result=True``, events off.

Killed workers
    Whatever the broker does, the store holds a lease on every running job, renewed by the
    runner's heartbeat; when a worker is SIGKILLed mid-job or mid-finalizer its lease expires
    (``lease`` seconds, default 30) and the recovery thread of any live ``multistep worker``
    sends the job again. A broker redelivery that arrives while the lease is still valid is
    skipped as a duplicate; the broker's redelivery is what brings back messages the dead
    worker had received but not yet started. Counting is per job ref, so a duplicate message
    (a redelivery, or a ``multistep.run`` message published by hand) counts once and a
    finalizer that succeeded never runs again.

Workers (``multistep worker``)
    ``multistep worker`` runs a Celery worker *in its own process* (``app.Worker(...).start()``),
    so the core's recovery thread runs in the Celery worker's main process. ``-c N`` is the
    pool's concurrency, ``-q`` the multistep queues (Celery queues ``multistep.<q>``).
    ``pool=prefork`` (default): N child processes forked after the job modules were imported;
    each child builds its own multistep backend once (on ``worker_process_init``, never an
    inherited Redis connection) and runs one job at a time. A job that crashes its process
    costs only that child (Celery replaces it and requeues the message; the lease bounds
    how often it is retried: ``max_lost``), CPU-bound jobs run in parallel, and the recovery
    thread in the parent is never disturbed by jobs. ``pool=threads``: N threads in one
    process sharing one backend (lighter; for I/O-bound jobs). The node name is
    ``multistep-<pid>@<host>`` so several workers on one host never collide; gossip, mingle
    and event heartbeats are off (faster start; multistep needs none of them). SIGTERM is
    Celery's warm shutdown (running jobs finish), SIGQUIT its cold shutdown.

Options (query string or keyword arguments): ``store`` (store URL; default: the broker's
Redis for ``celery+redis``, else ``$MULTISTEP_STORE``, else ``redis://127.0.0.1:6379/0``;
``sqlite:///path`` also works), ``prefix`` (store key prefix, ``ms``), ``lease`` (seconds, 30),
``celery_app`` (``package.module:app`` of your own app), ``queue_prefix`` (``multistep.celery.``;
not ``multistep.``, which the Dramatiq adapter uses on RabbitMQ with other queue arguments),
``pool`` (``prefork`` | ``threads`` | ``solo``), ``visibility_timeout`` (Redis, seconds, 10),
``restore_interval`` (Redis, seconds between unacked sweeps, 1), ``heartbeat`` (AMQP, seconds),
``loglevel`` (worker logging, ``INFO``), ``max_tasks_per_child`` (prefork), ``confirm`` (RabbitMQ
publisher confirms: every publish waits for the broker, so a message the broker did not take
raises instead of vanishing with a dying connection; several times slower).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from multistep_core.backend import Backend
from multistep_core.kit import store_from_url
from multistep_core.options import redact_url, reject_unknown
from multistep_core.errors import BackendConnectionError, BackendDriverMissing, ConfigurationError
from multistep_core.queue import Queue

__all__ = ["TASK_NAME", "CeleryQueue", "attach", "backend_from_url", "get_backend", "make_app"]

log = logging.getLogger("multistep.celery")

#: The one Celery task that carries every multistep message.
TASK_NAME = "multistep.run"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
DEFAULT_QUEUE_PREFIX = "multistep.celery."
DEFAULT_VISIBILITY_TIMEOUT = 10.0
DEFAULT_RESTORE_INTERVAL = 1.0
PIP_HINT = 'pip install "multistep[celery]"'
POOLS = ("prefork", "threads", "solo")
KNOWN_OPTIONS = {
    "store", "prefix", "lease", "celery_app", "queue_prefix", "pool", "visibility_timeout",
    "restore_interval", "heartbeat", "loglevel", "max_tasks_per_child", "confirm",
}
CHUNK = 1000  # messages per Redis pipeline flush
REQUEUE_DELAY = 1.0  # seconds before a message whose handling failed (store unreachable) is requeued
#: Task-level settings of ``multistep.run`` (see the module documentation for why).
TASK_OPTIONS: dict[str, Any] = {
    "acks_late": True,
    "acks_on_failure_or_timeout": True,
    "reject_on_worker_lost": True,
    "ignore_result": True,
    "store_errors_even_if_ignored": False,
    "track_started": False,
    "max_retries": 0,
    "serializer": "json",
    "typing": False,
}




def _require_celery() -> Any:
    try:
        import celery
        import kombu  # noqa: F401
    except ImportError as exc:
        raise BackendDriverMissing(
            f"the 'celery' backend needs packages that are not installed ({exc.name or 'celery'}); "
            f"install them with: {PIP_HINT}"
        ) from exc
    return celery


def broker_url(url: str) -> tuple[str | None, str | None]:
    """``celery+redis://h/0`` -> ``("redis", "redis://h/0")``; bare ``celery`` -> ``(None, None)``
    (the local Redis, or the broker of ``celery_app``)."""
    if "://" not in url:
        if url != "celery":
            raise ConfigurationError(f"not a celery backend string: {url!r}")
        return None, None
    scheme, _, rest = url.partition("://")
    head, _, kind = scheme.partition("+")
    if head != "celery" or kind not in ("redis", "rediss", "amqp", "amqps", "pyamqp"):
        raise ConfigurationError(
            f"celery backend strings look like celery+redis://host:6379/0 or "
            f"celery+amqp://user:pass@host:5672// (not {redact_url(url)!r})"
        )
    return ("amqp" if kind in ("amqp", "amqps", "pyamqp") else "redis"), f"{kind}://{rest}"


def _kind_of(broker: str) -> str:
    scheme = broker.split("://", 1)[0].split("+")[0]
    if scheme in ("redis", "rediss", "unix", "sentinel"):
        return "redis"
    if scheme in ("amqp", "amqps", "pyamqp"):
        return "amqp"
    raise ConfigurationError(f"the multistep Celery adapter supports Redis and RabbitMQ brokers, not {redact_url(broker)!r}")




# -- the one task and the per-process backend ------------------------------------------
class _State:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.backend: Backend | None = None
        self.pid: int | None = None
        #: how to build this process's backend: (url, options) of the queue that set it
        self.spec: tuple[str, dict[str, Any]] | None = None
        self.default_app: Any = None
        self.in_multistep_worker = False
        self.recovery: Any = None


_state = _State()


def set_backend(backend: Backend) -> None:
    """Make ``backend`` the one this process's ``multistep.run`` uses."""
    with _state.lock:
        _state.backend = backend
        _state.pid = os.getpid()


def get_backend() -> Backend:
    """This process's backend, built once per process: in a prefork child (whose pid differs
    from the process that set or built the backend) a new one is built from the same string
    and options, with the same Celery app, so no Redis or broker connection is shared across
    a fork."""
    b = _state.backend
    if b is not None and _state.pid == os.getpid():
        return b
    with _state.lock:
        if _state.backend is not None and _state.pid == os.getpid():
            return _state.backend
        if _state.spec is not None:
            url, opts = _state.spec
            backend = backend_from_url(url, **opts)
        else:
            from multistep_core import connect

            backend = connect()
            if not isinstance(backend.queue, CeleryQueue):
                raise ConfigurationError(
                    f"this Celery worker runs multistep jobs, but the configured backend is {backend.name!r}; "
                    "call multistep_celery.attach(app, 'celery+redis://...') or set MULTISTEP_BACKEND"
                )
        _state.backend = backend
        _state.pid = os.getpid()
        return backend


def run(*args: Any, **kwargs: Any) -> None:
    """The body of ``multistep.run``: hand one message to the runner, which records every
    outcome itself (failures, retries, refusals) and never raises for a bad message, so
    returning means "acknowledge". Anything but exactly one positional argument (a message
    made by hand with other arguments) is passed on as JSON text the runner refuses and records."""
    if len(args) == 1 and not kwargs:
        body: Any = args[0]
    else:
        body = json.dumps({"args": list(args), "kwargs": kwargs}, default=repr)
    try:
        get_backend().runner.handle(body)
    except Exception as exc:
        # Only infrastructure fails here (the store or the broker unreachable): the runner
        # records every job's own failure. Put the message back instead of dropping it (a
        # job that never got its lease would have nothing else to bring it back), after a
        # pause so an outage is not a hot loop.
        from celery.exceptions import Reject

        log.error("multistep could not handle %.200r (%s: %s); requeueing it in %.0f s",
                  body, type(exc).__name__, exc, REQUEUE_DELAY)
        time.sleep(REQUEUE_DELAY)
        raise Reject(f"{type(exc).__name__}: {exc}", requeue=True) from exc


def register_task(app: Any) -> Any:
    """Register ``multistep.run`` on ``app`` (idempotent) and return the task."""
    _require_celery()
    existing = app._tasks.get(TASK_NAME)
    if existing is not None:
        if not getattr(existing, "__multistep__", False):
            raise ConfigurationError(f"the Celery app already has a task named {TASK_NAME!r} that is not multistep's")
        return existing
    task = app.task(name=TASK_NAME, bind=False, shared=False, lazy=False, **TASK_OPTIONS)(run)
    task.__multistep__ = True
    _connect_signals()
    return task


_signals_connected = False


def _connect_signals() -> None:
    global _signals_connected
    if _signals_connected:
        return
    from celery import signals

    def on_process_init(**_: Any) -> None:
        # A prefork child: build its own backend now (not at its first message).
        if _state.spec is not None or _state.backend is not None:
            try:
                get_backend()
            except Exception:  # the first message retries and reports it
                log.exception("building the multistep backend in this worker process failed")

    def on_process_shutdown(**_: Any) -> None:
        b = _state.backend
        if b is not None and _state.pid == os.getpid():
            try:
                b.close()
            except Exception:  # pragma: no cover
                pass

    def on_worker_ready(sender: Any = None, **_: Any) -> None:
        # A plain `celery worker` of an attached app: run the core's recovery in its main process.
        if _state.in_multistep_worker or _state.recovery is not None:
            return
        app = getattr(sender, "app", None)
        if app is None or TASK_NAME not in app.tasks:
            return
        try:
            from multistep_core.runner import Recovery

            _state.recovery = Recovery(get_backend()).start()
        except Exception:
            log.exception("could not start the multistep recovery thread in this Celery worker")

    signals.worker_process_init.connect(on_process_init, weak=False)
    signals.worker_process_shutdown.connect(on_process_shutdown, weak=False)
    signals.worker_ready.connect(on_worker_ready, weak=False)
    _signals_connected = True


def attach(app: Any, backend: str | None = None, **options: Any) -> Any:
    """Use your own Celery ``app`` for multistep: register ``multistep.run`` on it and make it
    the app every Celery backend of this process publishes through. ``backend`` (a backend
    string such as ``"celery+redis://127.0.0.1:6379/0"``, or ``"celery"`` for the app's own
    broker) and ``options`` say how worker processes of this app build their multistep
    backend; without them they use ``$MULTISTEP_BACKEND`` / the project's config.
    Returns the Celery task. No app-wide setting is changed."""
    task = register_task(app)
    with _state.lock:
        _state.default_app = app
        if backend is not None:
            _state.spec = (backend.partition("?")[0], {**_query(backend), **options, "celery_app": app})
    return task


def _query(url: str) -> dict[str, Any]:
    from multistep_core.options import split_options

    return split_options(url)[1]


def _load_app(target: Any) -> Any:
    if not isinstance(target, str):
        return target
    module, sep, attr = target.partition(":")
    if not sep:
        module, _, attr = target.rpartition(".")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigurationError(f"celery_app={target!r}: cannot import it ({exc}); give 'package.module:app'") from None
    if not hasattr(obj, "send_task") or not hasattr(obj, "conf"):
        raise ConfigurationError(f"celery_app={target!r} is not a Celery app")
    return obj


def make_app(broker: str, *, visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT,
             restore_interval: float = DEFAULT_RESTORE_INTERVAL, heartbeat: float | None = None,
             confirm: bool = False) -> Any:
    """The Celery app the adapter builds when you do not bring your own."""
    celery = _require_celery()
    kind = _kind_of(broker)
    app = celery.Celery("multistep", broker=broker, set_as_current=False)
    conf: dict[str, Any] = {
        # $CELERY_BROKER_URL would override broker_url (Celery 5.7 reads the environment first):
        # the backend string must decide, so pin the read and write URLs too.
        "broker_read_url": broker,
        "broker_write_url": broker,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "result_backend": None,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_acks_on_failure_or_timeout": True,
        "task_reject_on_worker_lost": True,
        "task_default_queue": f"{DEFAULT_QUEUE_PREFIX}default",
        "task_create_missing_queues": True,
        "task_send_sent_event": False,
        "worker_send_task_events": False,
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": True,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": transport_options(kind, visibility_timeout, restore_interval, confirm),
    }
    if kind == "redis":
        conf["worker_disable_prefetch"] = True
    if heartbeat is not None and kind == "amqp":
        conf["broker_heartbeat"] = float(heartbeat)
    app.conf.update(conf)
    return app


def transport_options(kind: str, visibility_timeout: float, restore_interval: float, confirm: bool = False) -> dict[str, Any]:
    if kind != "redis":
        return {"confirm_publish": True} if confirm else {}
    return {
        "visibility_timeout": float(visibility_timeout),
        "unacked_restore_interval": float(restore_interval),
        "unacked_restore_throttle": 1,
        "unacked_key": "multistep.unacked",
        "unacked_index_key": "multistep.unacked_index",
        "unacked_mutex_key": "multistep.unacked_mutex",
    }


# -- the queue ---------------------------------------------------------------------------
class CeleryQueue(Queue):
    """Carries multistep messages as ``multistep.run`` tasks of a Celery app."""

    def __init__(
        self,
        app: Any,
        *,
        spec: tuple[str, dict[str, Any]] | None = None,
        own_app: bool = True,
        queue_prefix: str = DEFAULT_QUEUE_PREFIX,
        pool: str = "prefork",
        loglevel: str = "INFO",
        max_tasks_per_child: int | None = None,
        worker_transport_options: dict[str, Any] | None = None,
    ) -> None:
        _require_celery()
        if pool not in POOLS:
            raise ConfigurationError(f"pool must be one of {', '.join(POOLS)}; not {pool!r}")
        self.app = app
        self.own_app = own_app
        self.spec = spec
        self.queue_prefix = queue_prefix
        self.pool = pool
        self.loglevel = str(loglevel)
        self.max_tasks_per_child = max_tasks_per_child
        self.worker_transport_options = worker_transport_options or {}
        self.broker = str(app.conf.broker_write_url or app.conf.broker_url or "")
        self.kind = _kind_of(self.broker) if self.broker else "redis"
        self.where = redact_url(self.broker) or "the Celery app's default broker"
        self.task = register_task(app)
        self._conn_errors = self._driver_errors()
        self._declared: set[tuple[str, int]] = set()
        self._origin = f"multistep-{os.getpid()}@{socket.gethostname()}"
        self._runner: Any = None
        self._closed = False
        if own_app:
            with _state.lock:
                _app_users[id(app)] = _app_users.get(id(app), 0) + 1

    def bind(self, runner: Any) -> None:
        self._runner = runner

    # -- helpers -----------------------------------------------------------------------
    def _driver_errors(self) -> tuple[type[BaseException], ...]:
        from kombu.exceptions import OperationalError

        errs: list[type[BaseException]] = [OperationalError, OSError]
        try:
            import redis

            errs += [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]
        except ImportError:  # pragma: no cover
            pass
        try:
            import amqp

            errs += [amqp.exceptions.ConnectionError, amqp.exceptions.RecoverableConnectionError]
        except ImportError:  # pragma: no cover
            pass
        return tuple(errs)

    def _conn_error(self, exc: BaseException) -> BackendConnectionError:
        return BackendConnectionError(f"cannot reach the Celery {self.kind} broker at {self.where}: {exc}")

    def cq(self, queue: str) -> str:
        """The Celery queue that carries the multistep queue ``queue``."""
        return f"{self.queue_prefix}{queue}"

    def ping(self) -> None:
        """Fail fast with :class:`BackendConnectionError` when the broker is unreachable."""
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=5)
                if self.kind == "redis":
                    conn.default_channel.client.ping()
        except self._conn_errors as exc:
            raise self._conn_error(exc) from None

    # -- sending -----------------------------------------------------------------------
    def enqueue(self, queue: str, messages: Sequence[str]) -> None:
        if not messages:
            return
        for attempt in (1, 2):
            try:
                self._send(queue, messages)
                return
            except _StaleConnection as stale:
                # A pooled connection that had been open died (broker restart, idle timeout,
                # heartbeat): send again once on a fresh one. Messages may go twice; counting
                # is per job ref.
                if attempt == 2:
                    raise self._conn_error(stale.__cause__ or stale) from None
                log.warning("publishing to %s failed on a pooled connection (%s); sending again", self.where, stale.__cause__)
            except self._conn_errors as exc:
                raise self._conn_error(exc) from None
            except Exception as exc:
                raise self._declare_error(exc, queue) from exc

    def _declare_error(self, exc: Exception, queue: str) -> Exception:
        if type(exc).__name__ == "PreconditionFailed":  # amqp: the queue exists with other arguments
            return ConfigurationError(
                f"the RabbitMQ queue {self.cq(queue)!r} exists with other arguments ({exc}); another program "
                "declared it: set queue_prefix= to "
                "give multistep's Celery queues other names"
            )
        return exc

    def _send(self, queue: str, bodies: Sequence[str]) -> None:
        """Publish every body as one ``multistep.run`` task message (Celery protocol 2, JSON)
        through ONE producer (one connection and channel from the app's pool), the queue
        declared once per channel: on Redis inside kombu's publish batch (one pipelined round
        trip per ``CHUNK`` messages), on RabbitMQ as ``basic.publish`` frames written to the
        socket once per chunk. When an application listens to Celery's
        ``before_task_publish``/``after_task_publish`` signals (tracing, header injection),
        messages go through Celery's own ``send_task_message`` so the signals fire."""
        from celery import signals

        app = self.app
        amqp = app.amqp
        qname = self.cq(queue)
        cqueue = amqp.queues[qname]  # created (direct exchange, durable) if missing
        celery_path = bool(signals.before_task_publish.receivers or signals.after_task_publish.receivers)
        with app.producer_or_acquire() as producer:
            if self.kind == "redis":
                _reuse_redis_client(producer.channel)
            key = (qname, id(producer.channel))
            if key not in self._declared:
                producer.maybe_declare(cqueue)
                self._declared.add(key)
            publish = self._publish_via_celery if celery_path else self._publish_one
            try:
                for i in range(0, len(bodies), CHUNK):
                    chunk = bodies[i : i + CHUNK]
                    many = len(chunk) > 1
                    if self.kind == "redis":
                        batch: Any = producer.batch(max_size=CHUNK * 2) if many and hasattr(producer, "batch") else None
                    else:  # with publisher confirms every publish waits for the broker: write each at once
                        batch = _coalesced_writes(producer.channel) if many and not self._confirms() else None
                    with batch if batch is not None else contextlib.nullcontext():
                        for body in chunk:
                            publish(producer, qname, body)
            except (*self._conn_errors, *_batch_errors()) as exc:
                self._declared.clear()
                try:
                    producer.connection.collect()  # drop the broken transport; the pool reconnects
                except Exception:  # pragma: no cover
                    pass
                raise _StaleConnection(str(exc)) from exc

    def _confirms(self) -> bool:
        return bool((self.app.conf.broker_transport_options or {}).get("confirm_publish"))

    def _publish_one(self, producer: Any, qname: str, body: str) -> None:
        """What ``apply_async`` would send, built directly (no signals, no per-call routing)."""
        tid = str(uuid.uuid4())
        headers = {
            "lang": "py", "task": TASK_NAME, "id": tid, "shadow": None, "eta": None, "expires": None,
            "group": None, "group_index": None, "retries": 0, "timelimit": [None, None],
            "root_id": tid, "parent_id": None, "argsrepr": f"({body!r},)", "kwargsrepr": "{}",
            "origin": self._origin, "ignore_result": True,
        }
        producer.publish(
            [[body], {}, _EMBED], exchange="", routing_key=qname, serializer="json", headers=headers,
            correlation_id=tid, reply_to="", delivery_mode=2, retry=False,
        )

    def _publish_via_celery(self, producer: Any, qname: str, body: str) -> None:
        amqp = self.app.amqp
        tid = str(uuid.uuid4())
        msg = amqp.create_task_message(
            tid, TASK_NAME, (body,), {}, ignore_result=True, argsrepr=f"({body!r},)", kwargsrepr="{}",
            origin=self._origin,
        )
        amqp.send_task_message(producer, TASK_NAME, msg, queue=qname, serializer="json", retry=False, declare=[])

    def publish_raw(self, queue: str, body: str) -> None:
        """Send ``body`` as the argument of ``multistep.run`` to the real queue, one message,
        the way an operator would by hand (``app.send_task``)."""
        try:
            self.app.send_task(TASK_NAME, args=(body,), queue=self.cq(queue), serializer="json", ignore_result=True)
        except self._conn_errors as exc:
            raise self._conn_error(exc) from None

    def purge(self, queue: str) -> int:
        qname = self.cq(queue)
        try:
            with self.app.connection_for_write() as conn:
                cqueue = self.app.amqp.queues[qname]
                bound = cqueue(conn.default_channel)
                bound.declare()
                return int(bound.purge() or 0)
        except self._conn_errors as exc:
            raise self._conn_error(exc) from None
        except Exception as exc:
            raise self._declare_error(exc, queue) from exc

    # -- workers -----------------------------------------------------------------------
    def run_worker(self, modules: Sequence[str], queues: Sequence[str], concurrency: int) -> int:
        """Run a Celery worker in this process (its main process is this one, so the core's
        recovery thread started by ``Backend.run_worker`` runs beside Celery's consumer)
        until SIGTERM (warm shutdown) or SIGINT; return its exit code."""
        self.ping()
        app = self.app
        if self._runner is not None:
            set_backend(self._runner.backend)
        with _state.lock:
            _state.in_multistep_worker = True
            if self.spec is not None:
                _state.spec = self.spec
        settings: dict[str, Any] = {"worker_prefetch_multiplier": 1}
        if self.kind == "redis":
            settings["worker_disable_prefetch"] = True
        if self.worker_transport_options:
            opts = dict(app.conf.broker_transport_options or {})
            opts.update(self.worker_transport_options)
            settings["broker_transport_options"] = opts
        app.conf.update(settings)
        cqueues = [self.cq(q) for q in queues] or [self.cq("default")]
        for q in cqueues:
            app.amqp.queues[q]  # declares the Celery queue object
        kwargs: dict[str, Any] = {
            "hostname": f"multistep-{os.getpid()}@{socket.gethostname()}",
            "pool_cls": self.pool,
            "concurrency": max(1, int(concurrency)),
            "queues": cqueues,
            "loglevel": self.loglevel,
            "without_gossip": True,
            "without_mingle": True,
            "without_heartbeat": True,
            "optimization": "fair",
        }
        if self.max_tasks_per_child:
            kwargs["max_tasks_per_child"] = int(self.max_tasks_per_child)
        worker = app.Worker(**kwargs)
        worker.start()
        return int(getattr(worker, "exitcode", 0) or 0)

    def close(self) -> None:
        """Close the broker connections of the adapter's own app once no backend of this
        process uses it any more (a user's app is left alone)."""
        if not self.own_app or self._closed:
            return
        self._closed = True
        with _state.lock:
            _app_users[id(self.app)] = _app_users.get(id(self.app), 1) - 1
            if _app_users[id(self.app)] > 0:
                return
            del _app_users[id(self.app)]
            for key, app in list(_apps.items()):
                if app is self.app:
                    del _apps[key]
        try:
            from kombu import pools

            conn = self.app.connection_for_write()
            for group in (pools.producers, pools.connections):
                pool = group.pop(conn, None)
                if pool is not None:
                    pool.force_close_all()
            self.app._pool = None
            self.app.amqp._producer_pool = None
        except Exception:  # pragma: no cover - closing must not raise
            log.debug("closing the Celery connections failed", exc_info=True)


_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


class _StaleConnection(Exception):
    """Publishing failed on a connection that had been established."""


def _batch_errors() -> tuple[type[BaseException], ...]:
    try:
        from kombu.exceptions import BatchPublishError  # kombu >= 5.7
    except ImportError:  # pragma: no cover
        return ()
    return (BatchPublishError,)


@contextlib.contextmanager
def _coalesced_writes(channel: Any) -> Iterator[None]:
    """py-amqp writes every published message to the socket with its own ``sendall``
    (``transport._write``); collect the frames of a chunk and write them at once (the producer
    holds its connection exclusively, and nothing in the chunk waits for a reply). Frames are
    copied: py-amqp hands over a view of a buffer it reuses."""
    transport: Any = getattr(getattr(channel, "connection", None), "transport", None)
    write = vars(transport).get("_write") if transport is not None else None
    if transport is None or write is None or not callable(write):
        yield
        return
    frames: list[bytes] = []
    transport._write = lambda data: frames.append(bytes(data))
    try:
        yield
    finally:
        transport._write = write
        if frames:
            transport.write(b"".join(frames))


def _reuse_redis_client(channel: Any) -> None:
    """kombu's Redis channel builds a new ``redis.Redis`` client object for every publish (and
    every publish batch), about half of a single message's cost. A producer's channel is used
    by one thread at a time (the producer is held exclusively), so give it one client, on the
    same connection pool, for all its publishes."""
    if channel.__dict__.get("_multistep_client") is not None or not hasattr(channel, "_create_client"):
        return
    client = channel._create_client()

    @contextlib.contextmanager
    def conn_or_acquire(client_: Any = None) -> Iterator[Any]:
        yield client_ or client

    channel.conn_or_acquire = conn_or_acquire
    channel._multistep_client = client


_apps: dict[tuple[str, float, float, Any, bool], Any] = {}
_app_users: dict[int, int] = {}  # id(app) -> open queues using the adapter's own app


def backend_from_url(
    url: str = "celery",
    *,
    lease: float = 30.0,
    store: str | None = None,
    prefix: str = "ms",
    **opts: Any,
) -> Backend:
    """Build a Celery backend from ``celery+redis://...`` or ``celery+amqp://...``."""
    reject_unknown(opts, KNOWN_OPTIONS - {"store", "prefix", "lease"}, "celery")
    _require_celery()
    kind, burl = broker_url(url)
    app_opt = opts.get("celery_app")
    app = _load_app(app_opt) if app_opt is not None else _state.default_app
    vt = opts.get("visibility_timeout")
    ri = opts.get("restore_interval")
    hb = opts.get("heartbeat")
    worker_transport: dict[str, Any] = {}
    if app is not None:
        own = False
        app_broker = str(app.conf.broker_url or "")
        if burl is not None and app_broker and app_broker.rstrip("/") != burl.rstrip("/"):
            raise ConfigurationError(
                f"the backend string names the broker {redact_url(burl)!r} but the Celery app uses "
                f"{redact_url(app_broker)!r}; use the backend string 'celery' to take the app's broker"
            )
        if burl is not None and not app_broker:
            app.conf.broker_url = burl
        bkind = _kind_of(str(app.conf.broker_url or burl or DEFAULT_REDIS))
        if bkind == "redis" and (vt is not None or ri is not None):
            worker_transport = transport_options(
                "redis",
                DEFAULT_VISIBILITY_TIMEOUT if vt is None else float(vt),
                DEFAULT_RESTORE_INTERVAL if ri is None else float(ri),
            )
            worker_transport = {k: v for k, v in worker_transport.items() if not k.startswith("unacked_") or k in (
                "unacked_restore_interval", "unacked_restore_throttle")}
        if kind is None:
            kind = bkind
            burl = str(app.conf.broker_url or DEFAULT_REDIS)
    else:
        own = True
        if burl is None:
            kind, burl = "redis", DEFAULT_REDIS
        confirm = bool(opts.get("confirm", False))
        key = (burl, float(vt or DEFAULT_VISIBILITY_TIMEOUT), float(ri or DEFAULT_RESTORE_INTERVAL), hb, confirm)
        app = _apps.get(key)
        if app is None:
            app = make_app(
                burl,
                visibility_timeout=key[1],
                restore_interval=key[2],
                heartbeat=None if hb is None else float(hb),
                confirm=confirm,
            )
            _apps[key] = app
    assert kind is not None and burl is not None
    if store is None:
        store = burl if kind == "redis" else os.environ.get("MULTISTEP_STORE") or DEFAULT_REDIS
    spec_opts = {"lease": lease, "store": store, "prefix": prefix, **opts}
    if not own:
        spec_opts["celery_app"] = app
    mtpc = opts.get("max_tasks_per_child")
    queue = CeleryQueue(
        app,
        spec=(url, spec_opts),
        own_app=own,
        queue_prefix=str(opts.get("queue_prefix", DEFAULT_QUEUE_PREFIX)),
        pool=str(opts.get("pool", "prefork")),
        loglevel=str(opts.get("loglevel", "INFO")),
        max_tasks_per_child=None if mtpc in (None, 0) else int(mtpc),
        worker_transport_options=worker_transport,
    )
    st = store_from_url(str(store), prefix=str(prefix), lease=float(lease))
    return Backend(st, queue, name=f"celery+{kind}")
