"""``multistep demo``: a real multi-step task, run with a live progress bar.

A few hundred simulated jobs of varied length (5-60 ms each) fan out over the backend's
worker threads; about 3 % of them fail on their first attempt and succeed when the core
retries them. When every job has succeeded, two finalizers run one after the other:
``aggregate`` reads the jobs' results, then ``publish``. Nothing here needs a service:
the default backend is the embedded ``memory`` one.

The job functions are registered at import, so a worker of another backend can run the
demo too: ``multistep worker multistep_core.demo``.
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from .backend import Backend
from .context import current_job, current_task
from .model import Progress as TaskProgress
from .model import TaskState
from .registry import job

FLAKY_SHARE = 0.03  # share of jobs that fail on their first attempt
MIN_MS, MAX_MS = 5, 60


class DemoFlake(RuntimeError):
    """The simulated transient failure of a demo job (it succeeds when retried)."""


class _Counters:
    """What this process saw its demo jobs do (only complete when the jobs run here)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.first_try_failures = 0
        self.retries_run = 0
        self.finalizers: list[str] = []
        self.aggregate: dict[str, Any] | None = None

    def reset(self) -> None:
        with self.lock:
            self.first_try_failures = 0
            self.retries_run = 0
            self.finalizers = []
            self.aggregate = None


seen = _Counters()


@job(name="multistep.demo.work")
def work(index: int, ms: int, flaky: bool) -> dict[str, Any]:
    """Sleep ``ms`` milliseconds; fail the first attempt when ``flaky``."""
    attempt = current_job().attempt
    if attempt > 1:
        with seen.lock:
            seen.retries_run += 1
    time.sleep(ms / 1000.0)
    if flaky and attempt == 1:
        with seen.lock:
            seen.first_try_failures += 1
        raise DemoFlake(f"job {index} failed on purpose on its first attempt (it succeeds when retried)")
    return {"index": index, "ms": ms, "attempt": attempt}


@job(name="multistep.demo.aggregate")
def aggregate() -> dict[str, Any]:
    """Finalizer 1: read every job's result (the task keeps results)."""
    results = current_task().results()
    summary = {
        "jobs": len(results),
        "total_ms": sum(int(r["ms"]) for r in results.values()),
        "retried": sum(1 for r in results.values() if int(r["attempt"]) > 1),
    }
    with seen.lock:
        seen.finalizers.append("aggregate")
        seen.aggregate = summary
    return summary


@job(name="multistep.demo.publish")
def publish() -> None:
    """Finalizer 2: runs only after ``aggregate`` succeeded."""
    time.sleep(0.01)
    with seen.lock:
        seen.finalizers.append("publish")


@dataclass
class DemoResult:
    task_id: str
    backend: str
    state: TaskState
    jobs_total: int
    jobs_succeeded: int
    jobs_failed: int
    flaky_planned: int
    retries: int  # from the jobs' results: attempts beyond the first
    finalizers_total: int
    finalizers_done: int
    finalizer_order: list[str] = field(default_factory=list)  # as seen in this process
    wall_time: float = 0.0
    aggregate: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.state == TaskState.SUCCEEDED

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "backend": self.backend,
            "state": self.state.value,
            "jobs_total": self.jobs_total,
            "jobs_succeeded": self.jobs_succeeded,
            "jobs_failed": self.jobs_failed,
            "flaky_planned": self.flaky_planned,
            "retries": self.retries,
            "finalizers_total": self.finalizers_total,
            "finalizers_done": self.finalizers_done,
            "finalizer_order": self.finalizer_order,
            "wall_time": round(self.wall_time, 3),
            "aggregate": self.aggregate,
        }


def plan(jobs: int, seed: int | None = None) -> list[tuple[int, int, bool]]:
    """``(index, ms, flaky)`` for each job: varied lengths, about 3 % flaky (at least one)."""
    rng = random.Random(seed)
    out = [(i, rng.randint(MIN_MS, MAX_MS), rng.random() < FLAKY_SHARE) for i in range(jobs)]
    if jobs and not any(f for _, _, f in out):
        i, ms, _ = out[rng.randrange(jobs)]
        out[i] = (i, ms, True)
    return out


def run(
    backend: Backend,
    jobs: int = 300,
    *,
    console: Console | None = None,
    live: bool = True,
    timeout: float = 300.0,
    seed: int | None = None,
) -> DemoResult:
    """Create the demo task on ``backend``, show its progress until it ends, return a summary."""
    console = console or Console()
    seen.reset()
    items = plan(jobs, seed)
    flaky = sum(1 for _, _, f in items if f)
    task_id = f"demo-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}"
    in_process = backend.queue.in_process
    if not in_process:
        console.print(
            f"[yellow]The {backend.name} backend runs jobs on separate workers; start one with "
            "[bold]multistep worker multistep_core.demo[/bold] if none is running.[/yellow]"
        )
    started = time.monotonic()
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TextColumn("{task.fields[pct]}"),
        TextColumn("{task.fields[extra]}"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[rate]}"),
        console=console,
        disable=not live,
        refresh_per_second=12,
    )
    with bar:
        jobs_bar = bar.add_task("jobs", total=jobs, extra="", rate="", pct="")
        fin_bar = bar.add_task("finalizers", total=2, extra="", rate="", pct="")
        with backend.create_task(task_id, max_retries=2, backoff=0.05, keep_results=True) as task:
            task.add_jobs(work, [list(item) for item in items])
            task.add_finalization_job(aggregate)
            task.add_finalization_job(publish)
        deadline = started + timeout
        try:
            while True:
                p = task.progress()
                _update(bar, jobs_bar, fin_bar, p, time.monotonic() - started, in_process)
                if p.state.terminal or time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
        except KeyboardInterrupt:
            task.cancel(by="multistep demo (interrupted)")
            raise
    wall = time.monotonic() - started
    results = task.results()
    retries = sum(max(int(r.get("attempt", 1)) - 1, 0) for r in results.values() if isinstance(r, dict))
    with seen.lock:
        order = list(seen.finalizers)
        agg = dict(seen.aggregate) if seen.aggregate is not None else None
    return DemoResult(
        task_id=task_id,
        backend=backend.name,
        state=p.state,
        jobs_total=p.total,
        jobs_succeeded=p.succeeded,
        jobs_failed=p.failed,
        flaky_planned=flaky,
        retries=retries,
        finalizers_total=p.finalizers_total,
        finalizers_done=p.finalizers_done,
        finalizer_order=order,
        wall_time=wall,
        aggregate=agg,
    )


def _update(bar: Progress, jobs_bar: Any, fin_bar: Any, p: TaskProgress, elapsed: float, in_process: bool) -> None:
    rate = f"{p.done / elapsed:.0f}/s" if elapsed > 0 else ""
    with seen.lock:
        flakes, retried = seen.first_try_failures, seen.retries_run
    # Failed attempts that are retried are not failed jobs: the summary's "jobs failed" counts
    # only jobs that failed for good, so the bar names the two apart.
    extra = f"failed attempts {flakes} (retried: {retried})" if in_process else ""
    if p.failed:
        extra += f" [red]jobs failed for good {p.failed}[/red]"
    pct = f"task {p.percent:5.1f} %"  # the one definition (Progress.percent), as show and watch print it
    bar.update(jobs_bar, completed=p.done, total=p.total, extra=extra, rate=rate, pct=pct)
    bar.update(fin_bar, completed=p.finalizers_done, total=p.finalizers_total, extra=f"state {p.state.value}")


def summary_table(r: DemoResult) -> Table:
    colour = "green" if r.ok else "red"
    t = Table(title=f"multistep demo: task {r.task_id}", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("backend", r.backend)
    t.add_row("state", f"[{colour}]{r.state.value}[/{colour}]")
    t.add_row("jobs succeeded", f"{r.jobs_succeeded}/{r.jobs_total}")
    t.add_row("jobs failed for good", str(r.jobs_failed))
    t.add_row("failed attempts, retried", f"{r.retries} (planned first-try failures: {r.flaky_planned})")
    order = " -> ".join(r.finalizer_order) if r.finalizer_order else "(ran on other workers)"
    t.add_row("finalizers", f"{r.finalizers_done}/{r.finalizers_total} in order: {order}")
    if r.aggregate is not None:
        t.add_row("aggregate saw", f"{r.aggregate['jobs']} results, {r.aggregate['total_ms']} ms of simulated work")
    rate = r.jobs_total / r.wall_time if r.wall_time > 0 else 0.0
    t.add_row("wall time", f"{r.wall_time:.2f} s ({rate:.0f} jobs/s)")
    return t
