"""CeleryQueue: multistep messages as ``multistep.run`` task messages of a Celery app.

Publishing builds exactly the protocol-2 message ``apply_async`` would send, in bulk (see
docs/adapters/celery.md, "Bulk publish"); Celery's own send path is used when the application
listens to its publish signals.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from multistep_core import kit
from multistep_core.errors import BackendConnectionError, ConfigurationError
from multistep_core.options import redact_url
from multistep_core.queue import Queue

from .app import APPS, DEFAULT_QUEUE_PREFIX, close_connections, kind_of, require_celery
from .kombu_patches import batch_errors, coalesced_writes, reuse_redis_client
from .task import TASK_NAME, register_task

if TYPE_CHECKING:
    from multistep_core.backend import Backend
    from multistep_core.runner import Runner

log = logging.getLogger("multistep.celery")

CHUNK = 1000  # messages per Redis pipeline flush / per coalesced RabbitMQ write
#: The options of the queue itself (the backend string takes these, the app's, and :data:`kit.STORE_OPTIONS`).
QUEUE_OPTIONS: dict[str, kit.Option] = {
    "queue_prefix": kit.text(DEFAULT_QUEUE_PREFIX),
    "pool": kit.choice("prefork", "prefork", "threads", "solo"),
    "loglevel": kit.log_level("INFO"),
    "max_tasks_per_child": kit.integer(None, minimum=0, what="an integer >= 0 (0: no limit)"),
}
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


class _StaleConnection(BackendConnectionError):
    """Publishing failed on a pooled connection that had been established (caught inside)."""


class CeleryQueue(Queue):
    """Carries multistep messages as ``multistep.run`` tasks of a Celery app. ``own_app``: the
    adapter built the app (its connections are closed with the last queue using it)."""

    def __init__(self, app: Any, *, spec: tuple[str, dict[str, Any]] | None = None, own_app: bool = True,
                 worker_transport_options: dict[str, Any] | None = None, **options: Any) -> None:
        require_celery()
        opts = kit.check_options("celery", options, QUEUE_OPTIONS)
        self.app = app
        self.own_app = own_app
        self.spec = spec
        self.queue_prefix: str = opts["queue_prefix"]
        self.pool: str = opts["pool"]
        self.loglevel: str = opts["loglevel"]
        self.max_tasks_per_child: int | None = opts["max_tasks_per_child"] or None
        self.worker_transport_options = worker_transport_options or {}
        self.broker = str(app.conf.broker_write_url or app.conf.broker_url or "")
        self.kind = kind_of(self.broker) if self.broker else "redis"
        self.where = redact_url(self.broker) or "the Celery app's default broker"
        self.task = register_task(app)
        self._conn_errors, self._channel_errors = self._driver_errors()
        self._declared: set[tuple[str, int]] = set()
        self._origin = f"multistep-{os.getpid()}@{socket.gethostname()}"
        self._backend: Backend | None = None
        self._closed = False
        if own_app:
            APPS.hold(app)

    def bind(self, runner: Runner) -> None:
        self._backend = runner.backend

    # -- helpers -----------------------------------------------------------------------
    def _driver_errors(self) -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
        from kombu.exceptions import OperationalError

        errs: list[type[BaseException]] = [OperationalError, OSError]
        channel: list[type[BaseException]] = []
        try:
            errs += kit.redis_errors()
        except ImportError:  # pragma: no cover
            pass
        try:
            import amqp

            errs += [amqp.exceptions.ConnectionError, amqp.exceptions.RecoverableConnectionError]
            channel.append(amqp.exceptions.ChannelError)  # refused: access, a queue's arguments, ...
        except ImportError:  # pragma: no cover
            pass
        return tuple(errs), tuple(channel)

    def _reaching(self) -> AbstractContextManager[None]:
        return kit.reaching(f"the Celery {self.kind} broker", self.broker or "(the app's default)", self._conn_errors)

    def cq(self, queue: str) -> str:
        """The Celery queue that carries the multistep queue ``queue``."""
        return f"{self.queue_prefix}{queue}"

    def ping(self) -> None:
        """Fail fast with :class:`BackendConnectionError` when the broker is unreachable or
        refuses the login: one quick connection from the app, with short timeouts."""
        t = kit.PROBE_TIMEOUT
        errors = (*self._conn_errors, *self._channel_errors)
        with kit.reaching(f"the Celery {self.kind} broker", self.broker or "(the app's default)", errors):
            with self.app.connection_for_write(connect_timeout=t) as conn:
                conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=t)

    def probe(self) -> None:
        """The connect-time check: :meth:`ping`, and on a Redis broker redis-py can reach
        directly, :func:`kit.probe_redis` (which also warns about an evicting Redis)."""
        if self.kind == "redis" and self.broker.startswith(("redis://", "rediss://", "unix://")):
            kit.probe_redis(self.broker, "the Celery redis broker")
        else:
            self.ping()

    def _unreachable(self, why: str) -> BackendConnectionError:
        return BackendConnectionError(f"cannot reach the Celery {self.kind} broker at {self.where}: {why}")

    def _refused(self, exc: BaseException, queue: str) -> Exception:
        if type(exc).__name__ == "PreconditionFailed":  # amqp: the queue exists with other arguments
            return ConfigurationError(
                f"the RabbitMQ queue {self.cq(queue)!r} exists with other arguments ({exc}); another program "
                "declared it: set queue_prefix= to give multistep's Celery queues other names"
            )
        return BackendConnectionError(
            f"the Celery {self.kind} broker at {self.where} refused {self.cq(queue)!r}: {kit.reason(exc)}"
        )

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
                    raise self._unreachable(str(stale)) from None
                log.warning("publishing to %s failed on a pooled connection (%s); sending again", self.where, stale)
            except self._channel_errors as exc:
                raise self._refused(exc, queue) from None
            except self._conn_errors as exc:
                raise self._unreachable(kit.reason(exc)) from None

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
        qname = self.cq(queue)
        cqueue = app.amqp.queues[qname]  # created (direct exchange, durable) if missing
        celery_path = bool(signals.before_task_publish.receivers or signals.after_task_publish.receivers)
        with app.producer_or_acquire() as producer:
            if self.kind == "redis":
                reuse_redis_client(producer.channel)
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
                        batch = coalesced_writes(producer.channel) if many and not self._confirms() else None
                    with batch if batch is not None else contextlib.nullcontext():
                        for body in chunk:
                            publish(producer, qname, body)
            except (*self._conn_errors, *batch_errors()) as exc:
                self._declared.clear()
                try:
                    producer.connection.collect()  # drop the broken transport; the pool reconnects
                except Exception:  # pragma: no cover
                    pass
                raise _StaleConnection(kit.reason(exc)) from exc

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
        with self._reaching():
            self.app.send_task(TASK_NAME, args=(body,), queue=self.cq(queue), serializer="json", ignore_result=True)

    def purge(self, queue: str) -> int:
        qname = self.cq(queue)
        try:
            with self._reaching(), self.app.connection_for_write() as conn:
                bound = self.app.amqp.queues[qname](conn.default_channel)
                bound.declare()
                return int(bound.purge() or 0)
        except self._channel_errors as exc:
            raise self._refused(exc, queue) from None

    # -- workers -----------------------------------------------------------------------
    def run_worker(self, modules: Sequence[str], queues: Sequence[str], concurrency: int) -> int:
        """Run a Celery worker in this process until SIGTERM (warm shutdown) or SIGINT; return
        its exit code (see :func:`multistep_celery.worker.run_worker`)."""
        from .worker import run_worker

        return run_worker(self, self._backend, queues, concurrency)

    def close(self) -> None:
        """Close the broker connections of the adapter's own app once no queue of this
        process uses it any more (a user's app is left alone)."""
        if not self.own_app or self._closed:
            return
        self._closed = True
        if APPS.release(self.app):
            try:
                close_connections(self.app)
            except Exception:  # pragma: no cover - closing must not raise
                log.debug("closing the Celery connections failed", exc_info=True)
