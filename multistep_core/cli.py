"""The ``multistep`` command line: run the demo, run a worker, inspect and control tasks.

    multistep demo                              # a sample task on the embedded backend
    multistep -b sqlite:///tasks.db ls          # tasks in a SQLite store
    multistep -b redis://localhost/0 show ID    # one task: progress, options, failures
    multistep -b rq+redis://localhost/0 worker myapp.jobs -q default -c 8
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from . import __version__
from .backend import Backend, Task
from .config import backend_name, connect
from .errors import InvalidTransition, MultistepError, TaskNotFound, WaitTimeout
from .model import Failure, Rejected, TaskState
from .model import Progress as TaskProgress
from .registry import lookup

EXIT_OK = 0
EXIT_FAILED = 1  # the task ended failed or cancelled (watch, retry, demo); a command was declined
EXIT_ERROR = 2  # a multistep error: bad backend string, invalid transition, failed import, ...
EXIT_NOT_FOUND = 3  # no task with this id
EXIT_TIMEOUT = 4  # watch --timeout ran out

EPILOG = """\b
Backend: --backend, else $MULTISTEP_BACKEND, else [tool.multistep] backend in the nearest
pyproject.toml (or multistep.toml), else "memory".  Examples: memory, eager,
sqlite:///tasks.db, redis://localhost:6379/0, rq+redis://..., celery+amqp://...

\b
Exit codes:
  0  success (for watch/retry/demo: the task succeeded)
  1  the task ended failed or cancelled; or the command was declined
  2  error: unknown backend, bad option, invalid transition, module import failed
  3  no task with that id
  4  watch --timeout expired before the task ended
  130  interrupted (Ctrl-C)
"""

MEMORY_HINT = (
    "the memory backend keeps state inside one process; use sqlite:///file.db or a Redis "
    "backend to inspect tasks from another process"
)

STATE_STYLE = {
    TaskState.OPEN: "cyan",
    TaskState.RUNNING: "blue",
    TaskState.FINALIZING: "magenta",
    TaskState.SUCCEEDED: "green",
    TaskState.FAILED: "red",
    TaskState.CANCELLED: "yellow",
}

F = TypeVar("F", bound=Callable[..., Any])


# -- output helpers ----------------------------------------------------------------------
def _out() -> Console:
    return Console(highlight=False)


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    _err().print(Text(f"error: {message}", style="bold red"))
    raise click.exceptions.Exit(code)


def _hint(message: str) -> None:
    _err().print(Text(f"hint: {message}", style="yellow"))


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def _progress_json(p: TaskProgress) -> dict[str, Any]:
    return {**p.to_dict(), "done": p.done, "elapsed": p.elapsed}


def _state(state: TaskState) -> Text:
    return Text(state.value, style=STATE_STYLE.get(state, ""))


def _age(since: float | None, now: float | None = None) -> str:
    if since is None:
        return "-"
    secs = max(0.0, (now or time.time()) - since)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs / size:.0f}{unit}"
    return f"{secs:.0f}s"


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) + f" ({_age(ts)} ago)"


# -- the backend ---------------------------------------------------------------------------
class State:
    """What the group passes to its commands: the backend string and, once made, the backend."""

    def __init__(self, backend: str | None) -> None:
        self.backend_arg = backend
        self._backend: Backend | None = None

    def connect(self, ctx: click.Context, *, read_only: bool = True, **options: Any) -> Backend:
        if self._backend is None:
            b: Backend = connect(self.backend_arg, **options)
            self._backend = b
            ctx.call_on_close(self.close)
            if read_only:
                # Reading or flipping state must not pick up another process's due jobs.
                b.stop_recovery()
        return self._backend

    def close(self) -> None:
        if self._backend is not None:
            try:
                self._backend.close()
            finally:
                self._backend = None


def _is_memory(backend: Backend) -> bool:
    return getattr(backend, "name", "") == "memory"


def _get_task(backend: Backend, task_id: str) -> Task:
    try:
        return backend.get_task(task_id)
    except TaskNotFound:
        if _is_memory(backend):
            _hint(MEMORY_HINT)
        raise


def _obj(ctx: click.Context) -> State:
    obj = ctx.find_object(State)
    if obj is None:  # pragma: no cover - the group always sets it
        obj = ctx.ensure_object(State)
    return obj


# -- the group -----------------------------------------------------------------------------
class _Group(click.Group):
    """Turns multistep errors into a one-line message and an exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TaskNotFound as exc:
            _fail(str(exc), EXIT_NOT_FOUND)
        except WaitTimeout as exc:
            _fail(str(exc), EXIT_TIMEOUT)
        except MultistepError as exc:
            _fail(str(exc), EXIT_ERROR)
        except KeyboardInterrupt:
            _err().print(Text("interrupted", style="yellow"))
            raise click.exceptions.Exit(130) from None


def _json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON (no colour).")(f)


@click.group(cls=_Group, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-b", "--backend", metavar="TEXT", default=None,
    help="Backend string (alias, URL or package.module:factory). Default: resolved from "
    "$MULTISTEP_BACKEND, pyproject.toml/multistep.toml, else memory.",
)
@click.version_option(__version__, prog_name="multistep")
@click.pass_context
def cli(ctx: click.Context, backend: str | None) -> None:
    """multistep: multi-step tasks on job queues.

    A task fans out many jobs that run in parallel, tracks their progress and failures,
    then runs its finalizers strictly one after another.
    """
    ctx.obj = State(backend)


# -- demo --------------------------------------------------------------------------------
@cli.command()
@click.option("--jobs", "-n", default=300, show_default=True, type=click.IntRange(1, 100_000), help="How many jobs.")
@click.option("--threads", "-t", default=8, show_default=True, type=click.IntRange(1, 256),
              help="Worker threads (embedded memory/sqlite backends).")
@click.option("--backend", "-b", "demo_backend", metavar="TEXT", default=None,
              help="Backend for the demo (default: memory, whatever the configuration says).")
@click.option("--timeout", default=300.0, show_default=True, type=float, help="Give up after this many seconds.")
@click.option("--seed", default=None, type=int, help="Seed for the job plan (lengths, flaky jobs).")
@_json_option
@click.pass_context
def demo(ctx: click.Context, jobs: int, threads: int, demo_backend: str | None, timeout: float,
         seed: int | None, as_json: bool) -> None:
    """Run a sample task with a live progress bar, then print a summary.

    A few hundred jobs of varied length (5-60 ms) run in parallel; about 3 % fail on their
    first attempt and succeed when retried; then the finalizers "aggregate" (reads every
    job's result) and "publish" run in order. Needs no service: it runs on the embedded
    memory backend unless --backend says otherwise. Exits 0 only if the task succeeded.
    """
    from . import demo as demo_mod

    state = _obj(ctx)
    url = demo_backend or state.backend_arg or "memory"
    options: dict[str, Any] = {}
    if backend_name(url.partition("?")[0]) in ("memory", "sqlite") and "threads=" not in url:
        options["threads"] = threads
    state.backend_arg = url
    backend = state.connect(ctx, read_only=False, **options)
    console = _err() if as_json else _out()
    result = demo_mod.run(backend, jobs, console=console, live=not as_json, timeout=timeout, seed=seed)
    if as_json:
        _echo_json(result.to_dict())
    else:
        console.print(demo_mod.summary_table(result))
        colour = "green" if result.ok else "red"
        console.print(Text(f"task {result.task_id} {result.state.value}", style=f"bold {colour}"))
    ctx.exit(EXIT_OK if result.ok else EXIT_FAILED)


# -- worker -------------------------------------------------------------------------------
def _import_modules(modules: Sequence[str]) -> None:
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: the project's own modules import
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # ImportError, or any error the module raises at import
            _fail(f"cannot import module {name!r}: {type(exc).__name__}: {exc}")


@cli.command()
@click.argument("modules", nargs=-1)
@click.option("-q", "--queue", "queues", multiple=True, default=("default",), show_default=True,
              help="Queue to serve (repeat for several).")
@click.option("-c", "--concurrency", default=None, type=click.IntRange(1, 10_000),
              help="Jobs run at once  [default: number of CPUs]")
@click.pass_context
def worker(ctx: click.Context, modules: tuple[str, ...], queues: tuple[str, ...], concurrency: int | None) -> None:
    """Serve jobs: import MODULES (registering their @job functions), then run until stopped.

    Only the functions registered by these modules can run. The embedded backends
    (memory, sqlite, eager) run jobs inside the process that creates them and have no
    separate worker.
    """
    _import_modules(modules)
    backend = _obj(ctx).connect(ctx, read_only=False)
    try:
        code = backend.run_worker(list(modules), list(queues), concurrency or os.cpu_count() or 2)
    except InvalidTransition as exc:
        _fail(str(exc))
    ctx.exit(code)


# -- ls -----------------------------------------------------------------------------------
@cli.command(name="ls")
@click.option("--state", "state_filter", type=click.Choice([s.value for s in TaskState]), default=None,
              help="Only tasks in this state.")
@click.option("--limit", "-n", default=100, show_default=True, type=click.IntRange(1, 1_000_000))
@_json_option
@click.pass_context
def ls_cmd(ctx: click.Context, state_filter: str | None, limit: int, as_json: bool) -> None:
    """List tasks: id, state, jobs done/total, failed, finalizers, age."""
    backend = _obj(ctx).connect(ctx)
    tasks = backend.list_tasks(state_filter, limit)
    if as_json:
        _echo_json([_progress_json(p) for p in tasks])
    else:
        now = time.time()
        table = Table(title=f"tasks on {backend.name}" + (f" ({state_filter})" if state_filter else ""))
        table.add_column("id", no_wrap=True)
        table.add_column("state", no_wrap=True)
        table.add_column("jobs", justify="right", no_wrap=True)
        table.add_column("failed", justify="right")
        table.add_column("finalizers", justify="right", no_wrap=True)
        table.add_column("age", justify="right", no_wrap=True)
        for p in tasks:
            table.add_row(
                p.task_id, _state(p.state), f"{p.done}/{p.total}",
                Text(str(p.failed), style="red" if p.failed else ""),
                f"{p.finalizers_done}/{p.finalizers_total}", _age(p.created_at, now),
            )
        if tasks:
            _out().print(table)
        else:
            _out().print("no tasks" + (f" in state {state_filter}" if state_filter else ""))
    if not tasks and _is_memory(backend):
        _hint(MEMORY_HINT)


# -- show ---------------------------------------------------------------------------------
def _progress_table(p: TaskProgress) -> Table:
    t = Table(show_header=False, title=f"task {p.task_id}", title_justify="left")
    t.add_column(style="bold")
    t.add_column(overflow="fold")
    t.add_row("state", _state(p.state))
    t.add_row("progress", f"{100 * p.fraction:.1f} %")
    t.add_row("jobs", f"{p.done}/{p.total} ended: {p.succeeded} succeeded, {p.failed} failed, "
                      f"{p.running} running, {p.pending} pending")
    t.add_row("finalizers", f"{p.finalizers_done}/{p.finalizers_total}")
    t.add_row("created", _when(p.created_at))
    t.add_row("sealed", _when(p.sealed_at))
    t.add_row("finished", _when(p.finished_at))
    if p.elapsed is not None:
        t.add_row("took", f"{p.elapsed:.3f} s")
    if p.cancelled_at is not None or p.cancelled_by:
        t.add_row("cancelled", f"{_when(p.cancelled_at)} by {p.cancelled_by or '?'}")
    o = p.options
    t.add_row("options", f"policy={o.policy.value} max_retries={o.max_retries} backoff={o.backoff}s "
                         f"backoff_max={o.backoff_max}s max_lost={o.max_lost} keep_results={o.keep_results} "
                         f"retention={o.retention:g}s queue={o.queue}")
    return t


def _failure_panel(f: Failure) -> Panel:
    body = Text()
    body.append(f"{f.type}: {f.message}\n", style="bold red")
    body.append(f"attempt {f.attempt}, {_when(f.at) if f.at else 'time unknown'}\n", style="dim")
    if f.traceback:
        body.append("\n" + f.traceback.rstrip())
    return Panel(body, title=f"{f.ref} {f.fn}", title_align="left", border_style="red")


@cli.command()
@click.argument("task_id", metavar="ID")
@_json_option
@click.pass_context
def show(ctx: click.Context, task_id: str, as_json: bool) -> None:
    """Show one task: progress, options, and its failures with their tracebacks."""
    backend = _obj(ctx).connect(ctx)
    task = _get_task(backend, task_id)
    p = task.progress()
    failures = task.failures()
    if as_json:
        _echo_json({"progress": _progress_json(p), "failures": [f.to_dict() for f in failures]})
        return
    out = _out()
    out.print(_progress_table(p))
    if failures:
        out.print(Text(f"{len(failures)} failure(s):", style="bold red"))
        for f in failures:
            out.print(_failure_panel(f))


# -- watch --------------------------------------------------------------------------------
def _follow(task: Task, timeout: float | None, *, live: bool, interval: float = 0.1) -> tuple[TaskProgress, bool]:
    """Poll the task until it ends or ``timeout`` passes; return (last progress, ended)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
        TextColumn("{task.fields[extra]}"), TimeElapsedColumn(),
        console=_out(), disable=not live, transient=False,
    )
    with bar:
        jobs_bar = bar.add_task("jobs", total=None, extra="")
        fin_bar = bar.add_task("finalizers", total=None, extra="")
        while True:
            p = task.progress()
            failed = f"[red]{p.failed} failed[/red] " if p.failed else ""
            bar.update(jobs_bar, completed=p.done, total=p.total or None, extra=f"{failed}{p.running} running")
            bar.update(fin_bar, completed=p.finalizers_done, total=p.finalizers_total or None,
                       extra=f"state {p.state.value}")
            if p.state.terminal:
                return p, True
            if deadline is not None and time.monotonic() >= deadline:
                return p, False
            time.sleep(interval)


def _end(p: TaskProgress, ended: bool, timeout: float | None, as_json: bool) -> int:
    if as_json:
        _echo_json({**_progress_json(p), "timed_out": not ended})
    elif ended:
        style = "bold green" if p.state == TaskState.SUCCEEDED else "bold red"
        _out().print(Text(f"task {p.task_id} {p.state.value}", style=style))
    if not ended:
        _err().print(Text(f"task {p.task_id} still {p.state.value} after {timeout}s", style="yellow"))
        return EXIT_TIMEOUT
    return EXIT_OK if p.state == TaskState.SUCCEEDED else EXIT_FAILED


@cli.command()
@click.argument("task_id", metavar="ID")
@click.option("--timeout", default=None, type=click.FloatRange(0), help="Give up after S seconds (exit 4).")
@click.option("--interval", default=0.1, show_default=True, type=click.FloatRange(0.01), help="Poll interval (s).")
@_json_option
@click.pass_context
def watch(ctx: click.Context, task_id: str, timeout: float | None, interval: float, as_json: bool) -> None:
    """Show a live progress bar until the task ends.

    Exits 0 if it succeeded, 1 if it failed or was cancelled, 4 on timeout.
    With --json, prints the final progress only.
    """
    backend = _obj(ctx).connect(ctx)
    task = _get_task(backend, task_id)
    p, ended = _follow(task, timeout, live=not as_json, interval=interval)
    ctx.exit(_end(p, ended, timeout, as_json))


# -- retry / cancel / delete ---------------------------------------------------------------
@cli.command()
@click.argument("task_id", metavar="ID")
@click.option("-i", "--import", "modules", multiple=True, metavar="MODULE",
              help="Module defining the task's jobs (embedded backends run the retried jobs here).")
@click.option("--timeout", default=None, type=click.FloatRange(0),
              help="With an embedded backend: stop waiting after S seconds (exit 4).")
@_json_option
@click.pass_context
def retry(ctx: click.Context, task_id: str, modules: tuple[str, ...], timeout: float | None, as_json: bool) -> None:
    """Resume a failed task: re-enqueue its failed jobs (or its failed finalizer).

    With a queue backend (RQ, Celery, Dramatiq) the workers run them and this returns at
    once. The embedded backends (memory, sqlite) run jobs in the process that enqueues
    them: pass the modules defining the jobs with --import, and this command runs the
    task here until it ends (exit code as for watch).
    """
    _import_modules(modules)
    backend = _obj(ctx).connect(ctx, read_only=False)
    task = _get_task(backend, task_id)
    in_process = backend.queue.in_process
    if in_process:
        missing = sorted({f.fn for f in task.failures() if f.ref[0] != "x" and lookup(f.fn) is None})
        if missing:
            _fail(
                f"the {backend.name} backend runs retried jobs in this process, and these job functions "
                f"are not registered here: {', '.join(missing)}; pass the module(s) defining them "
                "with --import MODULE"
            )
    task.retry()
    if not in_process:
        p = task.progress()
        if as_json:
            _echo_json({"task_id": task_id, "retried": True, "state": p.state.value})
        else:
            _out().print(Text(f"task {task_id} resumed: {p.state.value}", style="green"))
        return
    if not as_json:
        _out().print(Text(f"task {task_id} resumed; running its jobs here until it ends", style="green"))
    p, ended = _follow(task, timeout, live=not as_json)
    ctx.exit(_end(p, ended, timeout, as_json))


@cli.command()
@click.argument("task_id", metavar="ID")
@click.option("--by", default=None, help="Who cancels (default: user@host pid N).")
@_json_option
@click.pass_context
def cancel(ctx: click.Context, task_id: str, by: str | None, as_json: bool) -> None:
    """Cancel a task: jobs not yet started are skipped and no finalizer starts.

    Exits 1 if the task had already succeeded or been cancelled.
    """
    backend = _obj(ctx).connect(ctx)
    task = _get_task(backend, task_id)
    done = task.cancel(by=by)
    p = task.progress()
    if as_json:
        _echo_json({"task_id": task_id, "cancelled": done, "state": p.state.value, "cancelled_by": p.cancelled_by})
    elif done:
        _out().print(Text(f"task {task_id} cancelled", style="yellow"))
    else:
        _out().print(Text(f"task {task_id} is already {p.state.value}; nothing to cancel", style="yellow"))
    ctx.exit(EXIT_OK if done else EXIT_FAILED)


@cli.command()
@click.argument("task_id", metavar="ID")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@_json_option
@click.pass_context
def delete(ctx: click.Context, task_id: str, yes: bool, as_json: bool) -> None:
    """Delete a task and everything recorded about it (asks first unless --yes)."""
    backend = _obj(ctx).connect(ctx)
    task = _get_task(backend, task_id)
    if not yes:
        p = task.progress()
        click.confirm(f"Delete task {task_id} ({p.state.value}, {p.done}/{p.total} jobs)?", abort=True, err=True)
    deleted = task.delete()
    if not deleted:
        raise TaskNotFound(f"no task with id {task_id!r}")
    if as_json:
        _echo_json({"task_id": task_id, "deleted": True})
    else:
        _out().print(f"task {task_id} deleted")


# -- rejected -----------------------------------------------------------------------------
@cli.command()
@click.option("--limit", "-n", default=100, show_default=True, type=click.IntRange(1, 1_000_000))
@_json_option
@click.pass_context
def rejected(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Messages workers refused (forged, malformed, or for tasks that no longer exist)."""
    backend = _obj(ctx).connect(ctx)
    items: list[Rejected] = backend.rejected(limit)
    if as_json:
        _echo_json([{"at": r.at, "reason": r.reason, "raw": r.raw} for r in items])
    elif items:
        table = Table(title=f"rejected messages on {backend.name}")
        table.add_column("when")
        table.add_column("reason", overflow="fold")
        table.add_column("message", overflow="fold")
        for r in items:
            table.add_row(_when(r.at), Text(r.reason), Text(r.raw[:500]))
        _out().print(table)
    else:
        _out().print("no rejected messages")
    if not items and _is_memory(backend):
        _hint(MEMORY_HINT)


from .cli_recover import recover  # noqa: E402 - the command lives in its own module

cli.add_command(recover)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="multistep")


if __name__ == "__main__":  # pragma: no cover
    main()
