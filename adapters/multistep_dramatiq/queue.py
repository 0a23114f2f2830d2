"""DramatiqQueue: multistep messages on a Dramatiq broker (Redis or RabbitMQ)."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import urlencode

from multistep_core import kit
from multistep_core.options import redact_url
from multistep_core.queue import Queue

#: The one Dramatiq actor that carries every multistep message.
ACTOR_NAME = "multistep.run"
DEFAULT_HEARTBEAT = 10.0
WORKER_MAINTENANCE_CHANCE = 1_000_000  # workers run the Redis broker's maintenance on every command
REDIS_CHUNK = 1000
#: The options of the queue itself (the backend string takes these and :data:`kit.STORE_OPTIONS`).
QUEUE_OPTIONS: dict[str, kit.Option] = {
    "heartbeat": kit.seconds(None),
    "maintenance_chance": kit.integer(None, minimum=0, maximum=1_000_000),
    "namespace": kit.text("dramatiq", empty=False),
    "queue_prefix": kit.text("multistep."),
    "processes": kit.integer(1, minimum=1),
    "prefetch": kit.integer(None, minimum=1),
    "worker_timeout": kit.integer(250, minimum=1, what="a number of milliseconds >= 1"),
    "time_limit": kit.seconds(None, zero=True),
    "confirm": kit.flag(False),
}


def _dramatiq() -> Any:
    try:
        import dramatiq
    except ImportError as exc:
        raise kit.driver_missing("dramatiq", exc) from exc
    return dramatiq


class DramatiqQueue(Queue):
    """Carries multistep messages on a Dramatiq broker (Redis or RabbitMQ). ``worker_side``:
    the queue of a worker process (the Redis broker's maintenance runs on every command)."""

    def __init__(self, kind: str, url: str, *, spec: dict[str, Any] | None = None, worker_side: bool = False,
                 **options: Any) -> None:
        opts = kit.check_options("dramatiq", options, QUEUE_OPTIONS)
        self.kind = kind
        self.url = url
        self.where = redact_url(url)
        self.spec = spec or {}
        self.heartbeat: float | None = opts["heartbeat"]
        self.namespace: str = opts["namespace"]
        self.queue_prefix: str = opts["queue_prefix"]
        self.processes: int = opts["processes"]
        self.prefetch: int | None = opts["prefetch"]
        self.worker_timeout: int = opts["worker_timeout"]
        self.time_limit: float | None = opts["time_limit"] or None
        self.confirm: bool = opts["confirm"]
        self.dramatiq = _dramatiq()
        from dramatiq.encoder import JSONEncoder

        self.encoder = JSONEncoder()
        self._conn_errors = self._driver_errors()
        mc = WORKER_MAINTENANCE_CHANCE if worker_side else opts["maintenance_chance"]
        self.broker = self._make_broker(mc)

    # -- broker ----------------------------------------------------------------------
    def _driver_errors(self) -> tuple[type[BaseException], ...]:
        from dramatiq import errors as derrors

        base = getattr(derrors, "BrokerConnectionError", None) or derrors.ConnectionError  # renamed in 2.1
        errs: list[type[BaseException]] = [base, ConnectionRefusedError]
        try:
            errs += kit.redis_errors()
        except ImportError:  # pragma: no cover
            pass
        try:
            import pika

            errs += [pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError]
        except ImportError:  # pragma: no cover
            pass
        return tuple(errs)

    def _make_broker(self, maintenance_chance: int | None) -> Any:
        from dramatiq.middleware import default_middleware

        middleware = [m() for m in default_middleware]  # Retries kept only to honour max_retries=0
        try:
            if self.kind == "redis":
                from dramatiq.brokers import redis as dredis

                redis_broker: Any = dredis.RedisBroker
                return redis_broker(
                    url=self.url,
                    namespace=self.namespace,
                    middleware=middleware,
                    heartbeat_timeout=int((self.heartbeat or DEFAULT_HEARTBEAT) * 1000),
                    maintenance_chance=dredis.DEFAULT_MAINTENANCE_CHANCE if maintenance_chance is None else maintenance_chance,
                )
            from dramatiq.brokers.rabbitmq import RabbitmqBroker

            return RabbitmqBroker(url=self.amqp_url(), middleware=middleware, confirm_delivery=self.confirm)
        except ImportError as exc:
            raise kit.driver_missing("dramatiq", exc) from exc

    def amqp_url(self, **params: Any) -> str:
        """The broker URL with the AMQP ``heartbeat`` (and ``params``) in its query string."""
        if self.heartbeat is not None:
            params.setdefault("heartbeat", int(max(1, self.heartbeat)))
        return self.url + (("&" if "?" in self.url else "?") + urlencode(params) if params else "")

    def dq(self, queue: str) -> str:
        """The Dramatiq queue that carries the multistep queue ``queue``."""
        return f"{self.queue_prefix}{queue}"

    def message(self, queue: str, body: str) -> Any:
        return self.dramatiq.Message(
            queue_name=self.dq(queue), actor_name=ACTOR_NAME, args=(body,), kwargs={}, options={}
        )

    def _reaching(self) -> AbstractContextManager[None]:
        return kit.reaching(f"the Dramatiq {self.kind} broker", self.url, self._conn_errors)

    def ping(self) -> None:
        """Fail fast with :class:`BackendConnectionError` when the broker is unreachable."""
        with self._reaching():
            if self.kind == "redis":
                self.broker.client.ping()
            else:
                _ = self.broker.channel

    def probe(self) -> None:
        """The connect-time check: one quick connection of its own, with short timeouts."""
        if self.kind == "redis":
            kit.probe_redis(self.url, f"the Dramatiq {self.kind} broker")
            return
        import pika

        t = kit.PROBE_TIMEOUT
        params = pika.URLParameters(self.amqp_url(socket_timeout=t, stack_timeout=t + 2, connection_attempts=1))
        with self._reaching():
            pika.BlockingConnection(params).close()

    # -- sending ---------------------------------------------------------------------
    def enqueue(self, queue: str, messages: Sequence[str]) -> None:
        if not messages:
            return
        with self._reaching():
            if self.kind == "redis":
                self._redis_enqueue(queue, messages)
            else:
                self._amqp_enqueue(queue, messages)

    def _redis_enqueue(self, queue: str, bodies: Sequence[str]) -> None:
        """Write exactly what the Redis broker's ``enqueue`` script writes (the message in
        ``ns:Q.msgs`` under a fresh ``redis_message_id``, then that id pushed on ``ns:Q``),
        but one HSET and one RPUSH per chunk of messages, in one MULTI round trip, instead of
        one script call per message. The hash is written before the ids are pushed, so a
        worker never pops an id without its message."""
        broker = self.broker
        name = self.dq(queue)
        list_key = f"{broker.namespace}:{name}"
        hash_key = f"{list_key}.msgs"
        encode = self.encoder.encode
        Message = self.dramatiq.Message
        for i in range(0, len(bodies), REDIS_CHUNK):
            mapping: dict[str, bytes] = {}
            for body in bodies[i : i + REDIS_CHUNK]:
                rid = str(uuid.uuid4())
                m = Message(
                    queue_name=name, actor_name=ACTOR_NAME, args=(body,), kwargs={},
                    options={"redis_message_id": rid},
                )
                mapping[rid] = encode(m.asdict())
            with broker.client.pipeline(transaction=True) as pipe:
                pipe.hset(hash_key, mapping=mapping)
                pipe.rpush(list_key, *mapping)
                pipe.execute()

    def _amqp_enqueue(self, queue: str, bodies: Sequence[str]) -> None:
        import pika

        broker = self.broker
        name = self.dq(queue)
        props = pika.BasicProperties(delivery_mode=2)
        encode = self.encoder.encode
        Message = self.dramatiq.Message
        payloads = [
            encode(Message(queue_name=name, actor_name=ACTOR_NAME, args=(b,), kwargs={}, options={}).asdict())
            for b in bodies
        ]
        sent, attempts = 0, 0
        while sent < len(payloads):
            try:
                broker.declare_queue(name, ensure=True)
                channel = broker.channel
                for i in range(sent, len(payloads)):
                    channel.basic_publish(
                        exchange="", routing_key=name, body=payloads[i], properties=props, mandatory=self.confirm
                    )
                    sent = i + 1
            except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as exc:
                # Reconnect and send the rest (a message may go twice: counting is per job ref).
                del broker.connection
                if isinstance(exc, pika.exceptions.UnroutableError):
                    broker.queues_pending.add(name)
                attempts += 1
                if attempts >= 3:
                    raise

    def publish_raw(self, queue: str, body: str) -> None:
        """Put ``body`` on the real queue as the argument of the multistep actor, one message,
        as a bug or an operator re-sending a message by hand would (on Redis through the
        broker's own enqueue script)."""
        with self._reaching():
            if self.kind == "redis":
                rid = str(uuid.uuid4())
                m = self.message(queue, body).copy(options={"redis_message_id": rid})
                self.broker.do_enqueue(m.queue_name, rid, self.encoder.encode(m.asdict()))
            else:
                self._amqp_enqueue(queue, [body])

    def purge(self, queue: str) -> int:
        name = self.dq(queue)
        with self._reaching():
            if self.kind == "redis":
                n = int(self.broker.client.llen(f"{self.namespace}:{name}"))
                self.broker.flush(name)
                return n
            self.broker.declare_queue(name, ensure=True)
            frame = self.broker.channel.queue_purge(name)
            self.broker.channel.queue_purge(f"{name}.DQ")
            return int(getattr(frame.method, "message_count", 0) or 0)

    # -- workers ---------------------------------------------------------------------
    def run_worker(self, modules: Sequence[str], queues: Sequence[str], concurrency: int) -> int:
        """Run ``processes`` Dramatiq worker processes (``python -m multistep_dramatiq``, each
        one Dramatiq ``Worker`` with the ``concurrency`` threads split among them) under the
        kit's supervisor: SIGTERM/SIGINT forwarded, a dead process replaced."""
        from . import PROCESS

        self.ping()
        threads = max(1, -(-int(concurrency) // self.processes))
        spec = {**self.spec, "modules": list(modules), "queues": [self.dq(q) for q in queues], "threads": threads}
        env = {**os.environ, **PROCESS.environ(spec)}
        env.setdefault("PYTHONUNBUFFERED", "1")
        return kit.Supervisor([sys.executable, "-m", "multistep_dramatiq"], self.processes, env=env,
                              what="Dramatiq worker process").run()

    def close(self) -> None:
        try:
            self.broker.close()
        except Exception:  # pragma: no cover - closing must not raise
            pass
