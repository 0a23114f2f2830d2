"""Jobs of the fairness benchmark (workers: ``multistep worker fair_jobs`` with this folder
on ``PYTHONPATH``; kept free of other benchmark imports so an older checkout can run it too)."""

from __future__ import annotations

import os
import time

from multistep_core import job


@job(name="fair.work")
def work(ms: float) -> None:
    time.sleep(ms / 1000.0)


@job(name="fair.span")
def span(path: str, ms: float) -> None:
    """Sleep ``ms``, noting start and end (one O_APPEND write each) for a running-at-once count."""
    _note(path, f"s {time.time():.6f}")
    time.sleep(ms / 1000.0)
    _note(path, f"e {time.time():.6f}")


def _note(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
