"""The one RQ job function of multistep: ``multistep_rq.job.run`` (a dotted path, as RQ needs).

Every multistep message travels as the single JSON argument of this function. It hands the
message to the core's runner of the backend this worker process built once at start (the
``multistep worker`` process, or each worker process it started); with RQ's forking
``Worker`` the work horse inherits that backend from its parent. This module imports
neither rq nor redis, so importing it is cheap and never fails.
"""

from __future__ import annotations

import json
import os
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multistep_core.backend import Backend

#: The dotted path RQ stores in every job of ours (``pkg.mod.func``; RQ cannot use ``pkg.mod:func``).
JOB_PATH = "multistep_rq.job.run"

_lock = threading.Lock()
_backend: Backend | None = None
#: The process that built ``_backend``; differs from ``os.getpid()`` in a forked RQ work horse,
#: which uses the backend its worker process built (it is never rebuilt per job).
built_in_pid: int | None = None


def set_backend(backend: Backend) -> None:
    """Make ``backend`` the one this process's jobs use (called once per worker process)."""
    global _backend, built_in_pid
    with _lock:
        _backend = backend
        built_in_pid = os.getpid()


def get_backend() -> Backend:
    """This process's backend; built from ``$MULTISTEP_RQ_SPEC`` the first time if a worker
    was started some other way than ``multistep worker`` (then once per process too)."""
    global _backend, built_in_pid
    if _backend is not None:
        return _backend
    with _lock:
        if _backend is None:
            from . import ENV_SPEC, backend_from_spec

            spec = os.environ.get(ENV_SPEC)
            if not spec:
                raise RuntimeError(
                    "this RQ worker has no multistep backend: start workers with "
                    "`multistep --backend rq+redis://... worker MODULES` (not plain `rq worker`)"
                )
            _backend = backend_from_spec(json.loads(spec))
            built_in_pid = os.getpid()
        return _backend


def run(*args: Any, **kwargs: Any) -> None:
    """Hand one multistep message to the runner, which records every outcome itself (job
    failures, retries, refusals) and never raises for a bad message; returning means the
    RQ job succeeded (it is then deleted at once: ``result_ttl=0``).

    Anything but exactly one positional argument (an RQ job made by hand with other
    arguments) is passed on as a JSON text the runner refuses and records."""
    body: Any = args[0] if len(args) == 1 and not kwargs else json.dumps({"args": list(args), "kwargs": kwargs}, default=repr)
    get_backend().runner.handle(body)
