"""The one RQ job function of multistep: ``multistep_rq.job.run`` (a dotted path, as RQ needs).

Every multistep message travels as the single JSON argument of this function. It hands the
message to the core's runner of the backend this worker process built once at start (the
``multistep worker`` process, or each worker process it started); with RQ's forking
``Worker`` the work horse inherits that backend from its parent. This module imports
neither rq nor redis, so importing it is cheap and never fails.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from multistep_core.faults import crash_point
from multistep_core.kit import ProcessBackend
from multistep_core.outage import handle_through_outage

if TYPE_CHECKING:
    from multistep_core.backend import Backend

#: The dotted path RQ stores in every job of ours (``pkg.mod.func``; RQ cannot use ``pkg.mod:func``).
JOB_PATH = "multistep_rq.job.run"
#: Environment variable through which ``multistep worker -c N`` hands the backend to its worker processes.
ENV_SPEC = "MULTISTEP_RQ_SPEC"


def _build(spec: Any) -> Backend:
    from . import backend_from_spec

    return backend_from_spec(spec)


#: This process's backend. A forked work horse keeps the one its worker process built
#: (it runs one job and exits; nothing is rebuilt per job).
PROCESS = ProcessBackend(
    ENV_SPEC,
    _build,
    rebuild_after_fork=False,
    hint="this RQ worker has no multistep backend: start workers with "
    "`multistep --backend rq+redis://... worker MODULES` (not plain `rq worker`)",
)


def run(*args: Any, **kwargs: Any) -> None:
    """Hand one multistep message to the runner, which records every outcome itself (job
    failures, retries, refusals) and never raises for a bad message; returning means the
    RQ job succeeded (it is then deleted at once: ``result_ttl=0``).

    Anything but exactly one positional argument (an RQ job made by hand with other
    arguments) is passed on as a JSON text the runner refuses and records."""
    body: Any = args[0] if len(args) == 1 and not kwargs else json.dumps({"args": list(args), "kwargs": kwargs}, default=repr)
    crash_point("message.received")
    handle_through_outage(PROCESS.get().runner, body)
    crash_point("message.handled")
