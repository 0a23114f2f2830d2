"""Holding a delivered message through a store outage.

A worker that took a message and cannot reach the store for its first call (``start``) holds
the only copy of that message on a queue that does not redeliver (RQ) or that dead-letters a
message whose handler raised (Dramatiq with the core's ``max_retries=0``). Raising would lose
it: nothing in the store says the job was ever sent. :func:`handle_through_outage` keeps the
message and hands it to the runner again, every second, until the store answers or
``wait`` seconds have passed (then it raises, as before).

Handling a message again is always safe: every transition is idempotent per ref and attempt
(a ref this worker started before the connection dropped is ``already-running`` and left to
the core's recovery when its lease expires).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from .errors import BackendConnectionError

if TYPE_CHECKING:
    from .runner import Runner

log = logging.getLogger("multistep.outage")

#: Seconds a worker holds a message while the store is unreachable.
OUTAGE_WAIT = 120.0


def handle_through_outage(runner: Runner, body: Any, wait: float = OUTAGE_WAIT, pause: float = 1.0) -> str:
    """``runner.handle(body)``, again after each :class:`BackendConnectionError` for up to ``wait`` s."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return runner.handle(body)
        except BackendConnectionError as exc:
            if time.monotonic() + pause > deadline:
                raise
            log.warning("the store is unreachable (%s); holding the message and trying again in %.0f s", exc, pause)
            time.sleep(pause)
