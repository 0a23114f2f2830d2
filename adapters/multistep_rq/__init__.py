"""multistep on RQ: ``pip install "multistep[rq]"``. The manual is docs/adapters/rq.md.

Features
    Every multistep message is the one JSON argument of one RQ job function,
    ``multistep_rq.job.run``, on the RQ queue ``multistep:<queue>``; counting, retries and
    fan-in are the core's. ``multistep worker -c N`` runs N supervised RQ worker processes
    (``-c 1``: one, in its own process); a dead one is replaced. Workers run nothing else.

Backend string
    ``rq+redis://127.0.0.1:6379/0`` (also ``rq+rediss://``, ``rq+unix://``); ``rq`` is the local
    Redis. Task state lives in the same Redis unless ``store=`` names another.

Options
    ``store``, ``prefix`` (``ms``), ``lease`` (30 s), ``worker_class`` (``simple`` | ``fork``),
    ``queue_prefix`` (``multistep:``), ``job_timeout`` (-1: none), ``failure_ttl`` (3600 s),
    ``maintenance_interval`` (600 s), ``log_level`` (``INFO``).
"""

from __future__ import annotations

from typing import Any

from multistep_core import kit
from multistep_core.backend import Backend

from .job import ENV_SPEC, JOB_PATH
from .queue import QUEUE_OPTIONS, RQQueue

__all__ = ["ENV_SPEC", "JOB_PATH", "OPTIONS", "RQQueue", "backend_from_spec", "backend_from_url", "broker_url"]

#: Every option of an rq backend string.
OPTIONS: dict[str, kit.Option] = {**kit.STORE_OPTIONS, **QUEUE_OPTIONS}
KINDS = {"redis": "redis", "rediss": "redis", "unix": "redis"}


def broker_url(url: str) -> str:
    """``rq+redis://h:6379/0`` -> ``redis://h:6379/0``; ``rq`` -> the local Redis."""
    return kit.broker_url(url, "rq", KINDS).url


def backend_from_url(url: str = "rq", **options: Any) -> Backend:
    """Build an RQ backend from ``rq+redis://host:6379/0`` and its options (see :data:`OPTIONS`)."""
    opts = kit.check_options("rq", options, OPTIONS)
    burl = broker_url(url)
    store = kit.store_url("rq", "redis", burl, opts["store"])
    given = {k: v for k, v in opts.items() if k in options and options[k] is not None}
    spec = {"url": url, "options": {**given, "store": store, "prefix": opts["prefix"], "lease": opts["lease"]}}
    queue = RQQueue(burl, spec=spec, **{k: opts[k] for k in QUEUE_OPTIONS})
    try:
        kit.probe_redis(burl, "the RQ Redis")
        st = kit.store_from_url(store, prefix=opts["prefix"], lease=opts["lease"], probe=store != burl,
                                window=opts["window"])
    except BaseException:
        queue.close()
        raise
    return Backend(st, queue, name="rq", go_on=opts["go_on"])


def backend_from_spec(spec: dict[str, Any]) -> Backend:
    """The backend of one worker process, from what ``multistep worker`` handed it."""
    return backend_from_url(spec["url"], **spec.get("options", {}))
