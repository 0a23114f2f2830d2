"""``multistep worker`` on Celery: a Celery worker in the ``multistep worker`` process itself.

``app.Worker(...).start()`` is what ``celery worker`` runs, so Celery's main process is this
one and the core's recovery thread (started by ``Backend.run_worker``) runs beside Celery's
consumer, never in a pool child. Celery's own pool is the supervisor here: a prefork child
that dies is replaced by Celery and the worker keeps serving (the kit's
:class:`~multistep_core.kit.Supervisor` is for queues whose worker cannot do that).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .task import PROCESS, _state

if TYPE_CHECKING:
    from multistep_core.backend import Backend

    from .queue import CeleryQueue


def run_worker(queue: CeleryQueue, backend: Backend | None, queues: Sequence[str], concurrency: int) -> int:
    """Run a Celery worker for ``queues`` (multistep names) with ``concurrency`` pool slots
    until SIGTERM (warm shutdown) or SIGINT; return its exit code. ``backend`` (the one this
    process built) is what ``multistep.run`` uses here; prefork children build their own from
    the queue's spec."""
    queue.ping()
    app = queue.app
    if backend is not None:
        PROCESS.set(backend)
    _state.in_multistep_worker = True
    if queue.spec is not None:
        PROCESS.spec = queue.spec
    settings: dict[str, Any] = {"worker_prefetch_multiplier": 1}
    if queue.kind == "redis":
        settings["worker_disable_prefetch"] = True
    if queue.worker_transport_options:
        settings["broker_transport_options"] = {**(app.conf.broker_transport_options or {}), **queue.worker_transport_options}
    app.conf.update(settings)
    cqueues = [queue.cq(q) for q in queues] or [queue.cq("default")]
    for q in cqueues:
        app.amqp.queues[q]  # declares the Celery queue object
    kwargs: dict[str, Any] = {
        "hostname": f"multistep-{os.getpid()}@{socket.gethostname()}",
        "pool_cls": queue.pool,
        "concurrency": max(1, int(concurrency)),
        "queues": cqueues,
        "loglevel": queue.loglevel,
        "without_gossip": True,
        "without_mingle": True,
        "without_heartbeat": True,
        "optimization": "fair",
    }
    if queue.max_tasks_per_child:
        kwargs["max_tasks_per_child"] = queue.max_tasks_per_child
    worker = app.Worker(**kwargs)
    worker.start()
    return int(getattr(worker, "exitcode", 0) or 0)
