"""Commands that run jobs: ``demo`` (a sample task, live) and ``worker``."""

from __future__ import annotations

import os
from typing import Any

import click
from rich.text import Text

from ..config import backend_name
from ..errors import InvalidTransition
from .base import EXIT_FAILED, EXIT_OK, cli, echo_json, err, fail, import_modules, json_option, obj, out
from .metrics import metrics_port_option, start_worker_metrics


@cli.command()
@click.option("--jobs", "-n", default=300, show_default=True, type=click.IntRange(1, 100_000), help="How many jobs.")
@click.option("--threads", "-t", default=8, show_default=True, type=click.IntRange(1, 256),
              help="Worker threads (embedded memory/sqlite backends).")
@click.option("--backend", "-b", "demo_backend", metavar="TEXT", default=None,
              help="Backend for the demo (default: memory, whatever the configuration says).")
@click.option("--timeout", default=300.0, show_default=True, type=float, help="Give up after this many seconds.")
@click.option("--seed", default=None, type=int, help="Seed for the job plan (lengths, flaky jobs).")
@json_option
@click.pass_context
def demo(ctx: click.Context, jobs: int, threads: int, demo_backend: str | None, timeout: float,
         seed: int | None, as_json: bool) -> None:
    """Run a sample task with a live progress bar, then print a summary.

    A few hundred jobs of varied length (5-60 ms) run in parallel; about 3 % fail on their
    first attempt and succeed when retried; then the finalizers "aggregate" (reads every
    job's result) and "publish" run in order. Needs no service: it runs on the embedded
    memory backend unless --backend says otherwise. Exits 0 only if the task succeeded.
    """
    from .. import demo as demo_mod

    state = obj(ctx)
    url = demo_backend or state.backend_arg or "memory"
    options: dict[str, Any] = {}
    if backend_name(url.partition("?")[0]) in ("memory", "sqlite") and "threads=" not in url:
        options["threads"] = threads
    state.backend_arg = url
    backend = state.connect(ctx, read_only=False, **options)
    console = err() if as_json else out()
    result = demo_mod.run(backend, jobs, console=console, live=not as_json, timeout=timeout, seed=seed)
    if as_json:
        echo_json(result.to_dict())
    else:
        console.print(demo_mod.summary_table(result))
        colour = "green" if result.ok else "red"
        console.print(Text(f"task {result.task_id} {result.state.value}", style=f"bold {colour}"))
    ctx.exit(EXIT_OK if result.ok else EXIT_FAILED)


@cli.command()
@click.argument("modules", nargs=-1)
@click.option("-q", "--queue", "queues", multiple=True, default=("default",), show_default=True,
              help="Queue to serve (repeat for several).")
@click.option("-c", "--concurrency", default=None, type=click.IntRange(1, 10_000),
              help="Jobs run at once  [default: number of CPUs]")
@metrics_port_option
@click.pass_context
def worker(ctx: click.Context, modules: tuple[str, ...], queues: tuple[str, ...], concurrency: int | None,
           metrics_port: int | None = None) -> None:
    """Serve jobs: import MODULES (registering their @job functions), then run until stopped.

    Only the functions registered by these modules can run. The embedded backends
    (memory, sqlite, eager) run jobs inside the process that creates them and have no
    separate worker.
    """
    start_worker_metrics(metrics_port)
    import_modules(modules)
    backend = obj(ctx).connect(ctx, read_only=False)
    try:
        code = backend.run_worker(list(modules), list(queues), concurrency or os.cpu_count() or 2)
    except InvalidTransition as exc:
        fail(str(exc))
    ctx.exit(code)
