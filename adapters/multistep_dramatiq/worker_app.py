"""The Dramatiq app of one multistep worker process: importing this module sets it up.

It builds the process's backend once from ``$MULTISTEP_DRAMATIQ_SPEC`` (set by ``multistep
worker``), makes that backend's broker Dramatiq's global broker, uses the JSON encoder,
declares the served queues and the one actor, ``multistep.run``, which hands each message to
the core's runner. :mod:`multistep_dramatiq.worker` imports it in every worker process;
nothing here runs in the process that enqueues.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.encoder import JSONEncoder

from multistep_core.errors import ConfigurationError
from multistep_core.faults import crash_point
from multistep_core.outage import handle_through_outage

from . import ACTOR_NAME, ENV_SPEC, PROCESS
from .queue import DramatiqQueue

_spec = PROCESS.env_spec()
if _spec is None:
    raise ConfigurationError(
        f"multistep_dramatiq.worker_app is imported by `multistep worker` processes (${ENV_SPEC} is not set)"
    )
backend = PROCESS.get()
_queue = backend.queue
if not isinstance(_queue, DramatiqQueue):  # pragma: no cover - the spec is always a dramatiq one
    raise ConfigurationError(f"${ENV_SPEC} names a {backend.name} backend, not a dramatiq one")
queue: DramatiqQueue = _queue
broker = queue.broker
dramatiq.set_encoder(JSONEncoder())
dramatiq.set_broker(broker)
queues: list[str] = list(_spec.get("queues") or [queue.dq("default")])


def run(body: Any, *_rest: Any, **_kw: Any) -> None:
    """Hand one multistep message to the runner. It records every outcome itself (failures,
    retries, refusals), so returning means "acknowledge"."""
    crash_point("message.received")
    handle_through_outage(backend.runner, body)
    crash_point("message.handled")


actor = dramatiq.actor(
    actor_name=ACTOR_NAME,
    queue_name=queues[0],
    broker=broker,
    max_retries=0,  # retries are the core's
    time_limit=float("inf") if queue.time_limit is None else int(queue.time_limit * 1000),
)(run)
for _q in queues:
    broker.declare_queue(_q)
