"""The command group, exit codes, output helpers and the backend a command connects to."""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.text import Text

from .. import __version__
from ..backend import Backend, Task
from ..config import backend_name, connect, resolve
from ..errors import ConfigurationError, MultistepError, TaskNotFound, WaitTimeout
from ..model import Progress as TaskProgress
from ..model import TaskState
from ..options import split_options, sqlite_path

EXIT_OK = 0
EXIT_FAILED = 1  # the task ended failed or cancelled (show, watch, retry, demo); a command was declined
EXIT_ERROR = 2  # a multistep error: bad backend string, invalid transition, failed import, ...
EXIT_NOT_FOUND = 3  # no task with this id
EXIT_TIMEOUT = 4  # watch --timeout ran out
EXIT_INTERRUPTED = 130

EPILOG = """\b
Backend: --backend, else $MULTISTEP_BACKEND, else [tool.multistep] backend in the nearest
pyproject.toml (or multistep.toml), else "memory".  Examples: memory, eager,
sqlite:///tasks.db, redis://localhost:6379/0, rq+redis://..., celery+amqp://...?store=...

\b
Exit codes:
  0  success (show/watch/retry/demo: the task did not end failed or cancelled)
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
def out() -> Console:
    return Console(highlight=False)


def err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str, code: int = EXIT_ERROR, ctx: click.Context | None = None) -> NoReturn:
    """Print ``error: message`` (and, under ``--json``, ``{"error": ..., "exit_code": ...}`` on
    stdout, so that a script reading JSON gets JSON), then exit with ``code``."""
    state = (ctx or click.get_current_context()).find_object(State)
    if state is not None and state.as_json:
        echo_json({"error": message, "exit_code": code})
    err().print(Text(f"error: {message}", style="bold red"))
    raise click.exceptions.Exit(code)


def hint(message: str) -> None:
    err().print(Text(f"hint: {message}", style="yellow"))


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def progress_json(p: TaskProgress) -> dict[str, Any]:
    return {**p.to_dict(), "done": p.done, "elapsed": p.elapsed}


def state_text(state: TaskState) -> Text:
    return Text(state.value, style=STATE_STYLE.get(state, ""))


def age(since: float | None, now: float | None = None) -> str:
    if since is None:
        return "-"
    secs = max(0.0, (now or time.time()) - since)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs / size:.0f}{unit}"
    return f"{secs:.0f}s"


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) + f" ({age(ts)} ago)"


def exit_code_of(p: TaskProgress) -> int:
    """The exit code of a command that reports on one task: 1 if it ended failed or cancelled."""
    return EXIT_FAILED if p.state in (TaskState.FAILED, TaskState.CANCELLED) else EXIT_OK


def next_steps(backend: Backend, p: TaskProgress) -> None:
    """After a task ended failed: where to look, how to resume."""
    if p.state != TaskState.FAILED:
        return
    resume = f"multistep retry {p.task_id}" + (" -i MODULE (the module defining its jobs)"
                                               if backend.queue.in_process else "")
    hint(f"see what failed with: multistep show {p.task_id}; after fixing the cause: {resume}")


# -- the backend ---------------------------------------------------------------------------
class State:
    """What the group passes to its commands: the backend string and, once made, the backend."""

    def __init__(self, backend: str | None) -> None:
        self.backend_arg = backend
        self.as_json = False
        self._backend: Backend | None = None

    def connect(self, ctx: click.Context, *, read_only: bool = True, **options: Any) -> Backend:
        if self._backend is None:
            if read_only:
                self._refuse_missing_sqlite()
            b: Backend = connect(self.backend_arg, **options)
            self._backend = b
            ctx.call_on_close(self.close)
            if read_only:
                # Reading or flipping state must not pick up another process's due jobs.
                b.stop_recovery()
        return self._backend

    def _refuse_missing_sqlite(self) -> None:
        """A command that reads tasks never creates a SQLite file (nor its directory): a mistyped
        path would otherwise show an empty store and leave a stray file behind."""
        url, _, source = resolve(self.backend_arg)
        base, _ = split_options(url)
        if backend_name(base) != "sqlite":
            return
        path = sqlite_path(base)
        if path == ":memory:":
            return
        if not os.path.isabs(path) and source not in ("argument", "$MULTISTEP_BACKEND", "default"):
            path = str(Path(source).parent / path)  # relative to the config file that names it
        if not os.path.exists(path):
            raise ConfigurationError(
                f"no SQLite store at {os.path.abspath(path)} (from {url!r}): the file does not exist, and commands "
                "that read tasks do not create it. Check the path: sqlite:///rel/path.db is relative to the "
                "working directory, sqlite:////abs/path.db is absolute"
            )

    def close(self) -> None:
        if self._backend is not None:
            try:
                self._backend.close()
            finally:
                self._backend = None


def obj(ctx: click.Context) -> State:
    found = ctx.find_object(State)
    if found is None:  # pragma: no cover - the group always sets it
        found = ctx.ensure_object(State)
    return found


def is_memory(backend: Backend) -> bool:
    return getattr(backend, "name", "") == "memory"


def get_task(backend: Backend, task_id: str) -> Task:
    try:
        return backend.get_task(task_id)
    except TaskNotFound:
        if is_memory(backend):
            hint(MEMORY_HINT)
        raise


def import_modules(modules: Sequence[str]) -> None:
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: the project's own modules import
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # ImportError, or any error the module raises at import
            fail(f"cannot import module {name!r}: {type(exc).__name__}: {exc}")


# -- the group -----------------------------------------------------------------------------
class Group(click.Group):
    """Turns multistep errors into a one-line message and an exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TaskNotFound as exc:
            fail(str(exc), EXIT_NOT_FOUND, ctx)
        except WaitTimeout as exc:
            fail(str(exc), EXIT_TIMEOUT, ctx)
        except MultistepError as exc:
            fail(str(exc), EXIT_ERROR, ctx)
        except KeyboardInterrupt:
            err().print(Text("interrupted", style="yellow"))
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None


def _remember_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    state = ctx.find_object(State)
    if state is not None and value:
        state.as_json = True
    return value


def json_option(f: F) -> F:
    return click.option(
        "--json", "as_json", is_flag=True, is_eager=True, callback=_remember_json,
        help="Print machine-readable JSON (no colour); errors too, as {\"error\", \"exit_code\"}.",
    )(f)


@click.group(cls=Group, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
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
