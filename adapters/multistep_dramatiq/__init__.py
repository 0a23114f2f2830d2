"""multistep on Dramatiq: ``pip install "multistep[dramatiq]"``. The manual is docs/adapters/dramatiq.md.

Features
    Every multistep message is the one JSON argument of one Dramatiq actor, ``multistep.run``,
    on the Dramatiq queue ``multistep.<queue>``; counting, retries and fan-in are the core's
    (the actor has no Dramatiq retries and no time limit). ``multistep worker -c N`` runs
    ``processes`` supervised Dramatiq worker processes with the N threads split among them; a
    dead one is replaced while the others keep serving.

Backend string
    ``dramatiq+redis://127.0.0.1:6379/0`` (also ``rediss://``, ``unix://``; ``dramatiq`` is the
    local Redis): task state in the same Redis unless ``store=`` names another.
    ``dramatiq+amqp://guest:guest@host:5672/?store=redis://host:6379/0``: RabbitMQ needs ``store=``.

Options
    ``store``, ``prefix`` (``ms``), ``lease`` (30 s), ``heartbeat`` (10 s), ``maintenance_chance``,
    ``namespace`` (``dramatiq``), ``queue_prefix`` (``multistep.``), ``processes`` (1),
    ``prefetch`` (threads per process), ``worker_timeout`` (250 ms), ``time_limit`` (off), ``confirm``.
"""

from __future__ import annotations

from typing import Any

from multistep_core import kit
from multistep_core.backend import Backend

from .queue import ACTOR_NAME, QUEUE_OPTIONS, DramatiqQueue

__all__ = ["ACTOR_NAME", "ENV_SPEC", "OPTIONS", "PROCESS", "DramatiqQueue", "backend_from_url", "broker_url"]

#: Every option of a dramatiq backend string.
OPTIONS: dict[str, kit.Option] = {**kit.STORE_OPTIONS, **QUEUE_OPTIONS}
KINDS = {"redis": "redis", "rediss": "redis", "unix": "redis", "amqp": "amqp", "amqps": "amqp"}
#: Environment variable through which ``multistep worker`` hands the backend to its worker processes.
ENV_SPEC = "MULTISTEP_DRAMATIQ_SPEC"


def broker_url(url: str) -> tuple[str, str]:
    """``dramatiq+redis://h/0`` -> ``("redis", "redis://h/0")``; ``dramatiq`` -> the local Redis."""
    return kit.broker_url(url, "dramatiq", KINDS)


def backend_from_url(url: str = "dramatiq", **options: Any) -> Backend:
    """Build a Dramatiq backend from ``dramatiq+redis://...`` or ``dramatiq+amqp://...?store=...``."""
    return build_backend(url, options, worker_side=False)


def build_backend(url: str, options: dict[str, Any], *, worker_side: bool) -> Backend:
    """The backend of a producer, or (``worker_side``) of one Dramatiq worker process."""
    opts = kit.check_options("dramatiq", options, OPTIONS)
    kind, burl = broker_url(url)
    store = kit.store_url("dramatiq", kind, burl, opts["store"])
    given = {k: v for k, v in opts.items() if k in options and options[k] is not None}
    spec = {"url": url, "options": {**given, "store": store, "prefix": opts["prefix"], "lease": opts["lease"]}}
    queue = DramatiqQueue(kind, burl, spec=spec, worker_side=worker_side, **{k: opts[k] for k in QUEUE_OPTIONS})
    try:
        queue.probe()
        st = kit.store_from_url(store, prefix=opts["prefix"], lease=opts["lease"], probe=store != burl,
                                window=opts["window"])
    except BaseException:
        queue.close()
        raise
    return Backend(st, queue, name=f"dramatiq+{kind}", go_on=opts["go_on"])


def _build_worker_backend(spec: Any) -> Backend:
    return build_backend(spec["url"], dict(spec.get("options", {})), worker_side=True)


#: The backend of a Dramatiq worker process, built once from ``$MULTISTEP_DRAMATIQ_SPEC``.
PROCESS = kit.ProcessBackend(
    ENV_SPEC,
    _build_worker_backend,
    hint="this Dramatiq worker process has no multistep backend: start workers with "
    "`multistep --backend dramatiq+redis://... worker MODULES`",
)
