"""Job functions for the web dashboard tests (registered at import; also imported by the
`multistep web -i web_jobs` and `multistep worker web_jobs` processes the tests start)."""

from __future__ import annotations

import time
from pathlib import Path

from multistep_core import job

XSS = "<script>alert(1)</script>"


@job
def gated(gate: str) -> str:
    """Ends only once the test creates the file ``gate``: the test controls progress."""
    deadline = time.monotonic() + 120
    while not Path(gate).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} was never opened")
        time.sleep(0.01)
    return gate


@job
def flaky(i: int, fixed: str, kind: str, *decoys: str) -> int:
    """Fails until the file ``fixed`` exists: with a script tag as its message (kind "xss")
    or with a plain message shared by its group (kind "disk")."""
    if not Path(fixed).exists():
        if kind == "xss":
            raise ValueError(XSS)
        raise RuntimeError("disk full on shard 7")
    return i


@job
def fin() -> None:
    pass
