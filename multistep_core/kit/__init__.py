"""The adapter kit: what every queue adapter needs besides its queue library.

A queue adapter (``multistep_rq``, ``multistep_celery``, ``multistep_dramatiq``, or a third
party's) builds a :class:`~multistep_core.backend.Backend` from a store and a
:class:`~multistep_core.queue.Queue`. The parts the adapters share live here, so that each
adapter is only its transport. Nothing here imports a queue library (redis-py is imported
only by the functions that talk to Redis). Use the names below from ``multistep_core.kit``;
the modules they live in are an implementation detail.

Backend strings and options (:mod:`.backend_string`, :mod:`.store`)
    * :func:`broker_url` splits ``rq+redis://h:6379/0`` into the broker's kind and URL, with an
      error that shows the right form.
    * :func:`check_options` checks every option against the adapter's :class:`Option` table:
      an unknown name gets a "did you mean" and the list of every option the backend takes; a
      bad value a :class:`ConfigurationError` naming option, value and expected type.
      :func:`seconds`, :func:`integer`, :func:`flag`, :func:`text`, :func:`choice`,
      :func:`log_level` build the entries; :data:`STORE_OPTIONS` are the four every adapter takes.
    * :func:`store_url` is the store of a backend (``store=``, else the broker's Redis; required
      for other brokers), :func:`store_from_url` builds it.
    * :func:`driver_missing` is the error for a queue library that is not installed.

Connections (:mod:`.connect`, :mod:`.redis_probe`)
    * :func:`reaching` turns the driver's connection errors into :class:`BackendConnectionError`
      naming what could not be reached, where (password redacted) and why.
    * :func:`probe_redis` is the quick connect-time check of a Redis server (short timeouts), and
      :func:`warn_if_evicting` warns (:class:`EvictionWarning`) when its ``maxmemory-policy``
      may evict keys: an evicted key is a lost task or message.

Worker processes (:mod:`.process`, :mod:`.supervise`)
    * :class:`ProcessBackend`: the one backend of a worker process, built once from a spec
      (handed to child processes in an environment variable).
    * :class:`Supervisor`: ``multistep worker -c N`` running N worker processes: forwards
      SIGTERM/SIGINT, replaces a dead one (with backoff) and keeps serving, returns an exit code.
    * :func:`watch_parent`: a worker process stops when its supervisor is gone.
    * :class:`GracefulStop`: SIGTERM/SIGINT handling for a worker process that runs its queue
      library's consumer itself (the same signal twice within 2 s is one stop).

A third-party adapter's factory, with the kit::

    from multistep_core import Backend
    from multistep_core import kit

    OPTIONS = {**kit.STORE_OPTIONS, "prefetch": kit.integer(10, minimum=1)}

    def backend_from_url(url: str = "mine", **options) -> Backend:
        opts = kit.check_options("mine", options, OPTIONS)
        kind, broker = kit.broker_url(url, "mine", {"redis": "redis", "rediss": "redis"})
        kit.probe_redis(broker, "the mine broker")
        store = kit.store_url("mine", kind, broker, opts["store"])
        queue = MyQueue(broker, prefetch=opts["prefetch"])
        st = kit.store_from_url(store, prefix=opts["prefix"], lease=opts["lease"], window=opts["window"])
        return Backend(st, queue, name=f"mine+{kind}", go_on=opts["go_on"])
"""

from __future__ import annotations

from .backend_string import (
    DEFAULT_REDIS,
    GO_ON,
    STORE_OPTIONS,
    WINDOW,
    BrokerURL,
    Option,
    broker_url,
    check_options,
    choice,
    flag,
    integer,
    log_level,
    seconds,
    text,
)
from .connect import PROBE_TIMEOUT, driver_missing, reaching, reason
from .process import ProcessBackend
from .redis_probe import EvictionWarning, probe_redis, redis_errors, warn_if_evicting
from .store import store_from_url, store_url
from .supervise import SUPERVISOR_ENV, GracefulStop, Supervisor, watch_parent

__all__ = [
    "DEFAULT_REDIS", "GO_ON", "PROBE_TIMEOUT", "STORE_OPTIONS", "SUPERVISOR_ENV", "WINDOW",
    "BrokerURL", "EvictionWarning", "GracefulStop", "Option", "ProcessBackend", "Supervisor",
    "broker_url", "check_options", "choice", "driver_missing", "flag", "integer", "log_level",
    "probe_redis", "reaching", "reason", "redis_errors", "seconds", "store_from_url", "store_url",
    "text", "warn_if_evicting", "watch_parent",
]
