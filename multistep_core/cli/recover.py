"""``multistep recover ID``: send again what a task is waiting for (see :mod:`multistep_core.resend`)."""

from __future__ import annotations

import importlib
import json
import time
from typing import Any

import click

from ..errors import InvalidTransition, WaitTimeout


@click.command(name="recover")
@click.argument("task_id", metavar="ID")
@click.option("-i", "--import", "modules", multiple=True, metavar="MODULE",
              help="Module defining the task's jobs (embedded backends run the re-sent jobs here).")
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(0),
              help="With an embedded backend: stop waiting after S seconds (exit 4).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON (no colour).")
@click.pass_context
def recover(ctx: click.Context, task_id: str, modules: tuple[str, ...], timeout: float, as_json: bool) -> None:
    """Send again what a task is waiting for: its pending jobs (the first window of them, and
    the tickets its queue is owed), or its next finalizer, or its failure callback, that no
    worker holds. Safe to run any number of times: a job that is
    running or done is skipped and counted once.

    Use it when a task shows pending work that nothing runs (pending > 0, running 0, no worker
    busy with it) after a worker, broker or client died. Jobs running under a lease are left to
    the workers' recovery, which re-sends them when the lease expires. With an embedded backend
    (sqlite, redis) the jobs run in this process: pass their modules with --import.
    """
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise InvalidTransition(f"cannot import {name!r}: {exc}") from exc
    backend = ctx.obj.connect(ctx, read_only=False)
    d = backend.recover_task(task_id)
    p = backend.store.progress(task_id)
    state = p.state.value if p is not None else "gone"
    if backend.queue.in_process and d.refs:
        deadline = time.monotonic() + timeout
        while p is not None and not p.state.terminal:
            if time.monotonic() > deadline:
                raise WaitTimeout(f"task {task_id!r} still {p.state.value} after {timeout}s")
            time.sleep(0.05)
            p = backend.store.progress(task_id)
        state = p.state.value if p is not None else "gone"
    out: dict[str, Any] = {"task_id": task_id, "resent": list(d.refs), "state": state}
    if as_json:
        click.echo(json.dumps(out))
    elif d.refs:
        click.echo(f"task {task_id}: sent again {len(d.refs)} ref(s) ({', '.join(d.refs[:20])}"
                   f"{', ...' if len(d.refs) > 20 else ''}); state {state}")
    else:
        click.echo(f"task {task_id}: nothing to send again (state {state}; running work is left to recovery)")
