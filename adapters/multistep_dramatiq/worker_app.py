"""The module the Dramatiq CLI imports in each worker process (``multistep worker`` runs
``python -m dramatiq multistep_dramatiq.worker_app MODULES ...``).

It builds the backend from ``$MULTISTEP_DRAMATIQ_SPEC`` (set by ``multistep worker``), makes
its broker the global one, uses the JSON encoder, declares the served queues and the one
actor, ``multistep.run``, which hands each message to the core's runner. Nothing here runs
in the process that enqueues.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from typing import Any

import dramatiq
from dramatiq.encoder import JSONEncoder

from . import ACTOR_NAME, ENV_SPEC, build_backend

log = logging.getLogger("multistep.dramatiq")

try:
    _spec: dict[str, Any] = json.loads(os.environ[ENV_SPEC])
except KeyError:
    raise ImportError(
        f"multistep_dramatiq.worker_app is started by `multistep worker` (${ENV_SPEC} is not set)"
    ) from None

_opts = dict(_spec["options"])
backend = build_backend(
    _spec["url"],
    lease=float(_opts.pop("lease")),
    store=_opts.pop("store"),
    prefix=str(_opts.pop("prefix")),
    opts=_opts,
    worker_side=True,
)
queue = backend.queue
broker = queue.broker  # type: ignore[attr-defined]
dramatiq.set_encoder(JSONEncoder())
dramatiq.set_broker(broker)
_runner = backend.runner


def run(body: Any, *_rest: Any, **_kw: Any) -> None:
    """Hand one multistep message to the runner. It records every outcome itself (failures,
    retries, refusals), so returning means "acknowledge"."""
    _runner.handle(body)


_time_limit = queue.time_limit  # type: ignore[attr-defined]
actor = dramatiq.actor(
    actor_name=ACTOR_NAME,
    queue_name=_spec["queues"][0] if _spec.get("queues") else queue.dq("default"),  # type: ignore[attr-defined]
    broker=broker,
    max_retries=0,  # retries are the core's
    time_limit=float("inf") if _time_limit is None else int(_time_limit * 1000),
)(run)
for _q in _spec.get("queues", []):
    broker.declare_queue(_q)


def _debounce_sigterm() -> None:
    """``kill -TERM -<pgid>`` reaches this process twice (directly, and forwarded by Dramatiq's
    parent); Dramatiq treats a second SIGTERM as "kill now". Ignore repeats within 2 s so a
    group-wide SIGTERM stays a graceful stop; a later second SIGTERM still kills."""
    prev = signal.getsignal(signal.SIGTERM)
    if not callable(prev) or threading.current_thread() is not threading.main_thread():
        return
    last = [0.0]

    def handler(signum: int, frame: Any) -> None:
        now = time.monotonic()
        if last[0] and now - last[0] < 2.0:
            return
        last[0] = now
        prev(signum, frame)

    signal.signal(signal.SIGTERM, handler)


def _watch_supervisor() -> None:
    """Stop gracefully if the ``multistep worker`` process that started us disappears
    (e.g. it alone was SIGKILLed), instead of consuming forever as an orphan."""
    pid = int(_spec.get("supervisor") or 0)
    if pid <= 0:
        return

    def loop() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                log.warning("multistep worker process %d is gone; stopping this Dramatiq process", pid)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            except PermissionError:  # pragma: no cover - pid reused by another user
                return

    threading.Thread(target=loop, name="multistep-supervisor-watch", daemon=True).start()


_debounce_sigterm()
_watch_supervisor()
