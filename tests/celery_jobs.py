"""Job functions for tests/test_celery_adapter.py (registered at import)."""

from __future__ import annotations

import json
import os
import threading

import multistep_celery

from multistep_core import job


@job(name="celerytest.where")
def where(path: str, label: str) -> None:
    """Record which process ran the job, which backend object it used and where that was built."""
    from multistep_celery.task import PROCESS

    backend = multistep_celery.get_backend()
    line = {
        "label": label,
        "pid": os.getpid(),
        "backend": id(backend),
        "built_in": PROCESS.built_in,
        "threads": sorted(t.name for t in threading.enumerate()),
    }
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


@job(name="celerytest.crash")
def crash(path: str) -> None:
    """Kill the process running the job (as a segfault or the OOM killer would)."""
    with open(path, "a") as f:
        f.write(f"crash {os.getpid()}\n")
    os._exit(1)
