"""Job functions for tests/test_cli.py (registered at import)."""

from __future__ import annotations

import threading
import time

from multistep_core import job

gate = threading.Event()  # set: gated jobs succeed; clear: they fail
gate.set()


@job
def add(x: int, y: int) -> int:
    return x + y


@job
def nap(ms: int) -> int:
    time.sleep(ms / 1000.0)
    return ms


@job
def gated(x: int) -> int:
    if not gate.is_set():
        raise ValueError(f"gate closed for {x}")
    return x


@job
def finish() -> None:
    pass


@job
def boom(x: int) -> None:
    raise ValueError("the same failure every time")


@job
def too_big(blob: str, n: int = 0) -> None:
    raise KeyError(f"too big: {len(blob)}")


@job
def record(path: str, *items: object) -> None:
    """Append one JSON line of ``items`` to ``path`` (a journal tests read back)."""
    import json

    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(list(items)) + "\n")


hold = threading.Event()


@job
def held(x: int) -> int:
    """Runs until ``hold`` is set (tests open it), so a task stays with jobs running."""
    hold.wait(60)
    return x
