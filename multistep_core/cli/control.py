"""Commands that follow or change a task: ``watch``, ``retry``, ``cancel``, ``delete``."""

from __future__ import annotations

import time

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from ..backend import Backend, Task
from ..errors import TaskNotFound
from ..model import Progress as TaskProgress
from ..model import TaskState
from ..registry import lookup
from .base import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    cli,
    echo_json,
    err,
    exit_code_of,
    fail,
    get_task,
    import_modules,
    json_option,
    next_steps,
    obj,
    out,
    progress_json,
)


def bar_line(p: TaskProgress) -> str:
    """The text beside the bar: jobs, failures, finalizers, state (the percent is p.percent)."""
    failed = f"[red]{p.failed} failed[/red], " if p.failed else ""
    skipped = f"{p.skipped} skipped, " if p.skipped else ""
    return (f"jobs {p.done}/{p.total} ({failed}{skipped}{p.running} running)  "
            f"finalizers {p.finalizers_done}/{p.finalizers_total}  state {p.state.value}")


def follow(task: Task, timeout: float | None, *, live: bool, interval: float = 0.1) -> tuple[TaskProgress, bool]:
    """Poll the task until it ends or ``timeout`` passes; return (last progress, ended)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    bar = Progress(
        TextColumn("[bold]task"), BarColumn(), TextColumn("{task.fields[pct]}"),
        TextColumn("{task.fields[line]}"), TimeElapsedColumn(),
        console=out(), disable=not live, transient=False,
    )
    with bar:
        row = bar.add_task("task", total=100.0, pct="", line="")
        while True:
            p = task.progress()
            bar.update(row, completed=p.percent, pct=f"{p.percent:5.1f} %", line=bar_line(p))
            if p.state.terminal:
                return p, True
            if deadline is not None and time.monotonic() >= deadline:
                return p, False
            time.sleep(interval)


def end(backend: Backend, p: TaskProgress, ended: bool, timeout: float | None, as_json: bool) -> int:
    if as_json:
        echo_json({**progress_json(p), "timed_out": not ended})
    elif ended:
        style = "bold green" if p.state == TaskState.SUCCEEDED else "bold red"
        out().print(Text(f"task {p.task_id} {p.state.value}", style=style))
    if not ended:
        err().print(Text(f"task {p.task_id} still {p.state.value} after {timeout}s", style="yellow"))
        return EXIT_TIMEOUT
    next_steps(backend, p)
    return exit_code_of(p)


@cli.command()
@click.argument("task_id", metavar="ID")
@click.option("--timeout", default=None, type=click.FloatRange(0), help="Give up after S seconds (exit 4).")
@click.option("--interval", default=0.1, show_default=True, type=click.FloatRange(0.01), help="Poll interval (s).")
@json_option
@click.pass_context
def watch(ctx: click.Context, task_id: str, timeout: float | None, interval: float, as_json: bool) -> None:
    """Show a live progress bar until the task ends.

    Exits 0 if it succeeded, 1 if it failed or was cancelled, 4 on timeout.
    With --json, prints the final progress only.
    """
    backend = obj(ctx).connect(ctx)
    task = get_task(backend, task_id)
    p, ended = follow(task, timeout, live=not as_json, interval=interval)
    ctx.exit(end(backend, p, ended, timeout, as_json))


@cli.command()
@click.argument("task_id", metavar="ID")
@click.option("-i", "--import", "modules", multiple=True, metavar="MODULE",
              help="Module defining the task's jobs (embedded backends run the retried jobs here).")
@click.option("--timeout", default=None, type=click.FloatRange(0),
              help="With an embedded backend: stop waiting after S seconds (exit 4).")
@json_option
@click.pass_context
def retry(ctx: click.Context, task_id: str, modules: tuple[str, ...], timeout: float | None, as_json: bool) -> None:
    """Resume a failed task: re-enqueue its failed jobs (or its failed finalizer).

    With a queue backend (RQ, Celery, Dramatiq) the workers run them and this returns at
    once. The embedded backends (memory, sqlite) run jobs in the process that enqueues
    them: pass the modules defining the jobs with --import, and this command runs the
    task here until it ends (exit code as for watch).
    """
    import_modules(modules)
    backend = obj(ctx).connect(ctx, read_only=False)
    task = get_task(backend, task_id)
    in_process = backend.queue.in_process
    if in_process:
        missing = sorted({f.fn for f in task.failures() if f.ref[0] != "x" and not f.resolved and lookup(f.fn) is None})
        if missing:
            fail(
                f"the {backend.name} backend runs retried jobs in this process, and these job functions "
                f"are not registered here: {', '.join(missing)}; pass the module(s) defining them "
                "with --import MODULE"
            )
    task.retry()
    if not in_process:
        p = task.progress()
        if as_json:
            echo_json({"task_id": task_id, "retried": True, "state": p.state.value})
        else:
            out().print(Text(f"task {task_id} resumed: {p.state.value}", style="green"))
        return
    if not as_json:
        out().print(Text(f"task {task_id} resumed; running its jobs here until it ends", style="green"))
    p, ended = follow(task, timeout, live=not as_json)
    ctx.exit(end(backend, p, ended, timeout, as_json))


@cli.command()
@click.argument("task_id", metavar="ID")
@click.option("--by", default=None, help="Who cancels (default: user@host pid N).")
@json_option
@click.pass_context
def cancel(ctx: click.Context, task_id: str, by: str | None, as_json: bool) -> None:
    """Cancel a task: jobs not yet started are skipped and no finalizer starts.

    Exits 1 if the task had already succeeded or been cancelled.
    """
    backend = obj(ctx).connect(ctx)
    task = get_task(backend, task_id)
    done = task.cancel(by=by)
    p = task.progress()
    if as_json:
        echo_json({"task_id": task_id, "cancelled": done, "state": p.state.value, "cancelled_by": p.cancelled_by})
    elif done:
        out().print(Text(f"task {task_id} cancelled", style="yellow"))
    else:
        out().print(Text(f"task {task_id} is already {p.state.value}; nothing to cancel", style="yellow"))
    ctx.exit(EXIT_OK if done else EXIT_FAILED)


@cli.command()
@click.argument("task_id", metavar="ID")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@json_option
@click.pass_context
def delete(ctx: click.Context, task_id: str, yes: bool, as_json: bool) -> None:
    """Delete a task and everything recorded about it (asks first unless --yes)."""
    backend = obj(ctx).connect(ctx)
    task = get_task(backend, task_id)
    if not yes:
        p = task.progress()
        click.confirm(f"Delete task {task_id} ({p.state.value}, {p.done}/{p.total} jobs)?", abort=True, err=True)
    deleted = task.delete()
    if not deleted:
        raise TaskNotFound(f"no task with id {task_id!r}")
    if as_json:
        echo_json({"task_id": task_id, "deleted": True})
    else:
        out().print(f"task {task_id} deleted")
