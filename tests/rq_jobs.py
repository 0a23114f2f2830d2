"""Job functions for tests/test_rq_adapter.py (registered at import)."""

from __future__ import annotations

import json
import os

from multistep_core import job


@job(name="rqtest.where")
def where(path: str, label: str) -> None:
    """Record which process ran the job and which backend object it used."""
    import multistep_rq.job as mj

    backend = mj.PROCESS.get()
    line = {"label": label, "pid": os.getpid(), "backend": id(backend), "built_in": mj.PROCESS.built_in}
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")
