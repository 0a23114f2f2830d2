"""One Dramatiq worker process of ``multistep worker`` (``python -m multistep_dramatiq``).

It does what Dramatiq's CLI does in each of its worker processes (``dramatiq.cli.worker_process``):
set up the broker (:mod:`multistep_dramatiq.worker_app`), emit ``process_boot``, import the job
modules, start a ``dramatiq.Worker`` with its threads, and on SIGTERM/SIGINT stop it gracefully
(running jobs finish, prefetched messages go back to the queue). It is not run under Dramatiq's
CLI because that CLI's main process shuts every worker process down when one of them dies;
``multistep worker`` supervises these processes itself and replaces a dead one (the kit's
:class:`~multistep_core.kit.Supervisor`).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

from multistep_core.kit import GracefulStop, watch_parent

from . import PROCESS

log = logging.getLogger("multistep.dramatiq")

SHUTDOWN_TIMEOUT_MS = 600_000  # what Dramatiq's CLI waits for running jobs at a graceful stop
LOG_FORMAT = "[%(asctime)s] [PID %(process)d] [%(threadName)s] [%(name)s] [%(levelname)s] %(message)s"


def main() -> int:
    """Entry point of one worker process started by ``multistep worker``."""
    spec = PROCESS.env_spec()
    if spec is None:
        print(f"multistep_dramatiq.worker is started by `multistep worker` (${PROCESS.env_var} is not set)", file=sys.stderr)
        return 2
    stop = GracefulStop().install()  # before the slow part: a stop asked for during boot is graceful too
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    import dramatiq

    from . import worker_app

    broker = worker_app.broker
    broker.emit_after("process_boot")
    for name in spec.get("modules", []):
        importlib.import_module(name)
    queue = worker_app.queue
    threads = int(spec.get("threads") or 1)
    worker = dramatiq.Worker(broker, queues=set(worker_app.queues), worker_threads=threads,
                             worker_timeout=queue.worker_timeout)
    # A process reserves no more messages than it can run at once (Dramatiq's default is 2 x
    # threads): idle processes get the rest, and a killed one holds few.
    worker.queue_prefetch = queue.prefetch or threads
    watch_parent()
    worker.start()
    log.info("Dramatiq worker process %d is ready for action (%d threads on %s)", os.getpid(), threads,
             ", ".join(worker_app.queues))
    stop.wait()
    worker.stop(timeout=SHUTDOWN_TIMEOUT_MS)
    PROCESS.close()  # the backend, the broker with it
    return 0
