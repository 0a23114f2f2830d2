"""multistep job functions of the benchmark (workers: ``multistep worker benchmarks.jobs_module``)."""

from __future__ import annotations

from benchmarks import common
from multistep_core import job


@job(name="fanin.work")
def work(i: int) -> None:
    common.work(i)


@job(name="fanin.final")
def final() -> None:
    common.callback()
