"""multistep on Dramatiq: ``pip install "multistep[dramatiq]"``.

Backend strings (task state lives in the Redis store; Dramatiq only carries messages)::

    dramatiq+redis://127.0.0.1:6379/0                      # Redis broker; state in the same Redis
    dramatiq+amqp://guest:guest@127.0.0.1:5672/            # RabbitMQ broker; state in $MULTISTEP_STORE
    dramatiq+amqp://guest:guest@host:5672/?store=redis://host:6379/1&prefix=myapp
    dramatiq                                               # = dramatiq+redis://127.0.0.1:6379/0

Run workers with ``multistep --backend dramatiq+redis://... worker myapp.jobs -q default -c 8``.
That command starts the Dramatiq CLI (``python -m dramatiq multistep_dramatiq.worker_app myapp.jobs
--processes P --threads T --queues ...``) as its child, in its own process group, and forwards
SIGTERM/SIGINT to it (graceful stop: running jobs finish, prefetched messages go back).
Each Dramatiq worker process builds the same backend from the same string and imports the
same modules; only ``@job`` functions registered by those modules run.

How messages travel
    One Dramatiq actor, ``multistep.run``, carries every multistep message (a small JSON text)
    as its only argument and hands it to the core's runner, which records the outcome; the
    message is acknowledged after that. Messages are JSON on the wire (Dramatiq's JSON encoder
    is used explicitly; a global pickle encoder set by an application is never used).
    A multistep queue ``q`` is the Dramatiq queue ``multistep.q`` (``queue_prefix``), so it
    never shares a queue with an application's own Dramatiq actors.

Dramatiq settings the adapter relies on
    * Retries are the core's (the same policy on every backend): the actor has
      ``max_retries=0``, so Dramatiq never runs a message a second time. The runner never
      raises for a job's failure; only an infrastructure error (the store unreachable)
      escapes, and that message goes to Dramatiq's dead-letter queue, while the core's
      recovery re-sends the job once its lease or dispatch deadline passes.
    * TimeLimit does not kill long jobs: ``time_limit`` is off unless you set ``time_limit=``
      (seconds). The core's lease heartbeat keeps long jobs alive.
    * Prefetch = threads per process (``dramatiq_queue_prefetch``), so one process does not
      hoard messages that idle processes could run, and a killed process holds few.
    * Redis broker: ``heartbeat_timeout`` = ``heartbeat`` seconds (default 10) and
      ``maintenance_chance`` = 1e6 in workers (every fetch runs the broker's maintenance),
      so the unacknowledged messages of a dead worker process go back to the queue about
      ``heartbeat`` seconds after it died (Dramatiq's defaults, 60 s and 0.1 %, make that
      minutes). Every process must use the same ``heartbeat``: a smaller value elsewhere
      could requeue messages of live workers (harmless here, but wasted work). A worker
      stalled longer than ``heartbeat`` (SIGSTOP, a GIL-holding C call) is taken for dead.
    * RabbitMQ: unacknowledged messages of a killed worker are redelivered by the server
      as soon as its connection closes (immediately after SIGKILL). ``heartbeat=`` sets
      the AMQP heartbeat (seconds) used to detect a frozen worker; RabbitMQ's own
      ``consumer_timeout`` (30 min by default) redelivers a message whose job runs longer:
      raise it on the server for very long jobs (the duplicate is skipped by the core while
      the first run holds its lease, but the first run's acknowledgement then fails).
    * ``worker_timeout`` (ms, default 250): how long an idle Redis consumer waits at most
      between polls (Dramatiq's default 1000 ms adds up to a second to every step of a task).

Whatever the broker does, the core keeps the contract: counting is per job ref, so
redeliveries and duplicates count once, and the core's recovery re-sends a killed job after
its lease (``lease`` seconds, default 30) even if the broker never redelivers.

Options (query string or keyword arguments): ``store`` (store URL; default: the broker's
Redis for ``dramatiq+redis``, else ``$MULTISTEP_STORE``, else ``redis://127.0.0.1:6379/0``;
``sqlite:///path`` also works), ``prefix`` (store key prefix, ``ms``), ``lease``,
``heartbeat``, ``maintenance_chance`` (producers; workers always use 1e6),
``namespace`` (Redis broker key namespace, ``dramatiq``), ``queue_prefix`` (``multistep.``),
``processes`` (Dramatiq worker processes per ``multistep worker``, default 1; ``-c`` threads
are split among them), ``prefetch``, ``worker_timeout``, ``time_limit``, ``confirm``
(RabbitMQ publisher confirms: slower, but a failed publish raises).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from multistep_core.backend import Backend
from multistep_core.kit import store_from_url
from multistep_core.options import redact_url, reject_unknown
from multistep_core.errors import BackendConnectionError, BackendDriverMissing, ConfigurationError
from multistep_core.queue import Queue

__all__ = ["ACTOR_NAME", "DramatiqQueue", "backend_from_url"]

#: The one Dramatiq actor that carries every multistep message.
ACTOR_NAME = "multistep.run"
#: Environment variable through which ``multistep worker`` hands the backend to Dramatiq's processes.
ENV_SPEC = "MULTISTEP_DRAMATIQ_SPEC"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
DEFAULT_HEARTBEAT = 10.0
DEFAULT_WORKER_TIMEOUT = 250
WORKER_MAINTENANCE_CHANCE = 1_000_000
PIP_HINT = 'pip install "multistep[dramatiq]"'
KNOWN_OPTIONS = {
    "store", "prefix", "lease", "heartbeat", "maintenance_chance", "namespace", "queue_prefix",
    "processes", "prefetch", "worker_timeout", "time_limit", "confirm",
}
REDIS_CHUNK = 1000




def _require_dramatiq() -> Any:
    try:
        import dramatiq
    except ImportError as exc:
        raise BackendDriverMissing(
            f"the 'dramatiq' backend needs packages that are not installed ({exc.name or 'dramatiq'}); "
            f"install them with: {PIP_HINT}"
        ) from exc
    return dramatiq


def broker_url(url: str) -> tuple[str, str]:
    """``dramatiq+redis://h/0`` -> ``("redis", "redis://h/0")``; ``dramatiq`` -> the local Redis."""
    if "://" not in url:
        if url != "dramatiq":
            raise ConfigurationError(f"not a dramatiq backend string: {url!r}")
        return "redis", DEFAULT_REDIS
    scheme, _, rest = url.partition("://")
    head, _, kind = scheme.partition("+")
    if head != "dramatiq" or kind not in ("redis", "rediss", "unix", "amqp", "amqps"):
        raise ConfigurationError(
            f"dramatiq backend strings look like dramatiq+redis://host:6379/0 or "
            f"dramatiq+amqp://user:pass@host:5672/ (not {redact_url(url)!r})"
        )
    return ("amqp" if kind.startswith("amqp") else "redis"), f"{kind}://{rest}"




class DramatiqQueue(Queue):
    """Carries multistep messages on a Dramatiq broker (Redis or RabbitMQ)."""

    def __init__(
        self,
        kind: str,
        url: str,
        *,
        spec: dict[str, Any] | None = None,
        heartbeat: float | None = None,
        maintenance_chance: int | None = None,
        namespace: str = "dramatiq",
        queue_prefix: str = "multistep.",
        processes: int = 1,
        prefetch: int | None = None,
        worker_timeout: int = DEFAULT_WORKER_TIMEOUT,
        time_limit: float | None = None,
        confirm: bool = False,
    ) -> None:
        self.kind = kind
        self.url = url
        self.where = redact_url(url)
        self.spec = spec or {}
        self.heartbeat = heartbeat
        self.maintenance_chance = maintenance_chance
        self.namespace = namespace
        self.queue_prefix = queue_prefix
        if int(processes) < 1:
            raise ConfigurationError("processes must be at least 1")
        self.processes = int(processes)
        self.prefetch = None if prefetch is None else int(prefetch)
        self.worker_timeout = int(worker_timeout)
        self.time_limit = time_limit
        self.confirm = bool(confirm)
        self.dramatiq = _require_dramatiq()
        from dramatiq.encoder import JSONEncoder

        self.encoder = JSONEncoder()
        self._conn_errors = self._driver_errors()
        self.broker = self._make_broker(maintenance_chance)
        self._ensured: set[str] = set()

    # -- broker ----------------------------------------------------------------------
    def _driver_errors(self) -> tuple[type[BaseException], ...]:
        from dramatiq import errors as derrors

        base = getattr(derrors, "BrokerConnectionError", None) or derrors.ConnectionError  # renamed in 2.1
        errs: list[type[BaseException]] = [base, ConnectionRefusedError]
        try:
            import redis

            errs += [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]
        except ImportError:  # pragma: no cover
            pass
        try:
            import pika

            errs += [pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError]
        except ImportError:  # pragma: no cover
            pass
        return tuple(errs)

    def middleware(self) -> list[Any]:
        """Dramatiq's default middleware, with Retries kept only to honour ``max_retries=0``."""
        from dramatiq.middleware import default_middleware

        return [m() for m in default_middleware]

    def _make_broker(self, maintenance_chance: int | None) -> Any:
        try:
            if self.kind == "redis":
                from dramatiq.brokers.redis import DEFAULT_MAINTENANCE_CHANCE, RedisBroker

                return RedisBroker(  # type: ignore[no-untyped-call]
                    url=self.url,
                    namespace=self.namespace,
                    middleware=self.middleware(),
                    heartbeat_timeout=int((self.heartbeat or DEFAULT_HEARTBEAT) * 1000),
                    maintenance_chance=DEFAULT_MAINTENANCE_CHANCE if maintenance_chance is None else maintenance_chance,
                )
            from dramatiq.brokers.rabbitmq import RabbitmqBroker

            url = self.url
            if self.heartbeat is not None:
                url += ("&" if "?" in url else "?") + urlencode({"heartbeat": int(max(1, self.heartbeat))})
            return RabbitmqBroker(url=url, middleware=self.middleware(), confirm_delivery=self.confirm)
        except ImportError as exc:
            raise BackendDriverMissing(
                f"the 'dramatiq' backend needs packages that are not installed ({exc.name}); "
                f"install them with: {PIP_HINT}"
            ) from exc

    def dq(self, queue: str) -> str:
        """The Dramatiq queue that carries the multistep queue ``queue``."""
        return f"{self.queue_prefix}{queue}"

    def message(self, queue: str, body: str) -> Any:
        return self.dramatiq.Message(
            queue_name=self.dq(queue), actor_name=ACTOR_NAME, args=(body,), kwargs={}, options={}
        )

    def _conn_error(self, exc: BaseException) -> BackendConnectionError:
        return BackendConnectionError(f"cannot reach the Dramatiq {self.kind} broker at {self.where}: {exc}")

    def ping(self) -> None:
        """Fail fast with :class:`BackendConnectionError` when the broker is unreachable."""
        try:
            if self.kind == "redis":
                self.broker.client.ping()
            else:
                _ = self.broker.channel
        except self._conn_errors as exc:
            raise self._conn_error(exc) from None

    # -- sending ---------------------------------------------------------------------
    def enqueue(self, queue: str, messages: Sequence[str]) -> None:
        if not messages:
            return
        try:
            if self.kind == "redis":
                self._redis_enqueue(queue, messages)
            else:
                self._amqp_enqueue(queue, messages)
        except self._conn_errors as exc:
            raise self._conn_error(exc) from None

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
        try:
            if self.kind == "redis":
                rid = str(uuid.uuid4())
                m = self.message(queue, body).copy(options={"redis_message_id": rid})
                self.broker.do_enqueue(m.queue_name, rid, self.encoder.encode(m.asdict()))
            else:
                self._amqp_enqueue(queue, [body])
        except self._conn_errors as exc:
            raise self._conn_error(exc) from None

    def purge(self, queue: str) -> int:
        name = self.dq(queue)
        try:
            if self.kind == "redis":
                n = int(self.broker.client.llen(f"{self.namespace}:{name}"))
                self.broker.flush(name)
                return n
            self.broker.declare_queue(name, ensure=True)
            frame = self.broker.channel.queue_purge(name)
            self.broker.channel.queue_purge(f"{name}.DQ")
            return int(getattr(frame.method, "message_count", 0) or 0)
        except self._conn_errors as exc:
            raise self._conn_error(exc) from None

    # -- workers ---------------------------------------------------------------------
    def run_worker(self, modules: Sequence[str], queues: Sequence[str], concurrency: int) -> int:
        """Run the Dramatiq CLI with ``processes`` processes and ``concurrency`` threads split
        among them, serving ``queues``; forward SIGTERM/SIGINT to it; return its exit code."""
        self.ping()
        threads = max(1, -(-int(concurrency) // self.processes))
        dqueues = [self.dq(q) for q in queues]
        env = dict(os.environ)
        env[ENV_SPEC] = json.dumps({**self.spec, "queues": dqueues, "supervisor": os.getpid()})
        env["dramatiq_queue_prefetch"] = str(self.prefetch or threads)
        env["dramatiq_worker_timeout"] = str(self.worker_timeout)
        env.setdefault("PYTHONUNBUFFERED", "1")
        cmd = [
            sys.executable, "-m", "dramatiq", "multistep_dramatiq.worker_app", *modules,
            "--processes", str(self.processes), "--threads", str(threads),
            "--path", os.getcwd(), "--queues", *dqueues,
        ]
        proc = subprocess.Popen(cmd, env=env)
        stopping = {"n": 0}

        def forward(signum: int, frame: Any) -> None:
            stopping["n"] += 1
            try:
                # a second Ctrl-C/SIGTERM kills running jobs (Dramatiq's own second-signal rule)
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

        old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while True:
                try:
                    return int(proc.wait())
                except KeyboardInterrupt:  # pragma: no cover - handler replaced above
                    forward(signal.SIGINT, None)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            if proc.poll() is None:  # pragma: no cover - only on an unexpected error above
                proc.kill()

    def close(self) -> None:
        try:
            self.broker.close()
        except Exception:  # pragma: no cover - closing must not raise
            pass


def backend_from_url(
    url: str = "dramatiq",
    *,
    lease: float = 30.0,
    store: str | None = None,
    prefix: str = "ms",
    **opts: Any,
) -> Backend:
    """Build a Dramatiq backend from ``dramatiq+redis://...`` or ``dramatiq+amqp://...``."""
    reject_unknown(opts, KNOWN_OPTIONS - {"store", "prefix", "lease"}, "dramatiq")
    return build_backend(url, lease=lease, store=store, prefix=prefix, opts=opts, worker_side=False)


def build_backend(
    url: str, *, lease: float, store: str | None, prefix: str, opts: dict[str, Any], worker_side: bool
) -> Backend:
    """The backend of a producer, or (``worker_side``) of one Dramatiq worker process."""
    kind, burl = broker_url(url)
    if store is None:
        store = burl if kind == "redis" else os.environ.get("MULTISTEP_STORE") or DEFAULT_REDIS
    spec = {"url": url, "options": {"lease": lease, "store": store, "prefix": prefix, **opts}}
    heartbeat = opts.get("heartbeat")
    queue = DramatiqQueue(
        kind,
        burl,
        spec=spec,
        heartbeat=None if heartbeat is None else float(heartbeat),
        maintenance_chance=WORKER_MAINTENANCE_CHANCE if worker_side else opts.get("maintenance_chance"),
        namespace=str(opts.get("namespace", "dramatiq")),
        queue_prefix=str(opts.get("queue_prefix", "multistep.")),
        processes=int(opts.get("processes", 1)),
        prefetch=opts.get("prefetch"),
        worker_timeout=int(opts.get("worker_timeout", DEFAULT_WORKER_TIMEOUT)),
        time_limit=None if opts.get("time_limit") in (None, 0) else float(opts["time_limit"]),
        confirm=bool(opts.get("confirm", False)),
    )
    st = store_from_url(str(store), prefix=str(prefix), lease=float(lease))
    return Backend(st, queue, name=f"dramatiq+{kind}")
