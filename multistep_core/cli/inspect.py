"""Commands that read state: ``ls``, ``show``, ``rejected``."""

from __future__ import annotations

import time

import click
from rich.table import Table
from rich.text import Text

from ..backend import Backend
from ..model import Progress as TaskProgress
from ..model import Rejected, TaskState
from .base import (
    MEMORY_HINT,
    age,
    cli,
    echo_json,
    exit_code_of,
    get_task,
    hint,
    is_memory,
    json_option,
    next_steps,
    obj,
    out,
    progress_json,
    state_text,
    when,
)
from .triage import group_failures, group_panel

SHOW_GROUPS = 10  # failure groups `show` prints unless --limit says otherwise


@cli.command(name="ls")
@click.option("--state", "state_filter", type=click.Choice([s.value for s in TaskState]), default=None,
              help="Only tasks in this state.")
@click.option("--limit", "-n", default=100, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--all", "-a", "every", is_flag=True, help="Subtasks too (by default only top-level tasks).")
@json_option
@click.pass_context
def ls_cmd(ctx: click.Context, state_filter: str | None, limit: int, every: bool, as_json: bool) -> None:
    """List top-level tasks (``--all``: subtasks too): id, state, jobs done/total, failed,
    finalizers, group, running, share, age."""
    backend = obj(ctx).connect(ctx)
    tasks = backend.list_tasks(state_filter, limit, top_level=not every)
    if as_json:
        echo_json([progress_json(p) for p in tasks])
    else:
        now = time.time()
        table = Table(title=f"tasks on {backend.name}" + (f" ({state_filter})" if state_filter else ""))
        table.add_column("id", no_wrap=True)
        table.add_column("state", no_wrap=True)
        table.add_column("jobs", justify="right", no_wrap=True)
        table.add_column("failed", justify="right")
        table.add_column("finalizers", justify="right", no_wrap=True)
        table.add_column("group", no_wrap=True)
        table.add_column("running", justify="right", no_wrap=True)
        table.add_column("share", justify="right", no_wrap=True)
        table.add_column("age", justify="right", no_wrap=True)
        running_on = queue_running(backend, {p.options.queue for p in tasks if not p.state.terminal})
        for p in tasks:
            o = p.options
            table.add_row(
                p.task_id, state_text(p.state), f"{p.done}/{p.total}",
                Text(str(p.failed), style="red" if p.failed else ""),
                f"{p.finalizers_done}/{p.finalizers_total}", o.group or "-",
                f"{p.running}/{o.max_concurrency}" if o.max_concurrency else str(p.running),
                share_of(p, running_on), age(p.created_at, now),
            )
        if tasks:
            out().print(table)
        else:
            out().print("no tasks" + (f" in state {state_filter}" if state_filter else ""))
    if not tasks and is_memory(backend):
        hint(MEMORY_HINT)


def queue_running(backend: Backend, queues: set[str]) -> dict[str, int]:
    """Jobs running on each queue, from the store's scheduling state (docs/fairness.md), for
    stores that expose it (``queue_state``)."""
    read = getattr(backend.store, "queue_state", None)
    out: dict[str, int] = {}
    if read is None:
        return out
    for q in sorted(queues):
        row = read(q)
        out[q] = sum(g.running for g in row.groups.values()) if row is not None else 0
    return out


def share_of(p: TaskProgress, running_on: dict[str, int]) -> str:
    """The task's share of the jobs running on its queue right now."""
    total = running_on.get(p.options.queue, 0)
    if p.state.terminal or not total:
        return "-"
    return f"{100 * p.running / total:.0f} %"


def share_line(p: TaskProgress, running_on: dict[str, int]) -> str:
    o = p.options
    parts = [f"group {o.group or '(a group of its own)'}", f"weight {o.weight:g}",
             f"running {p.running}" + (f" of at most {o.max_concurrency}" if o.max_concurrency else "")]
    if o.group_max_concurrency:
        parts.append(f"group at most {o.group_max_concurrency} running")
    share = share_of(p, running_on)
    if share != "-":
        parts.append(f"{share} of the {running_on[o.queue]} jobs running on queue {o.queue}")
    return ", ".join(parts)


def progress_table(p: TaskProgress, running_on: dict[str, int] | None = None) -> Table:
    t = Table(show_header=False, title=f"task {p.task_id}", title_justify="left")
    t.add_column(style="bold")
    t.add_column(overflow="fold")
    t.add_row("state", state_text(p.state))
    t.add_row("progress", f"{p.percent:.1f} %")
    waiting = (f"{p.skipped} skipped (never started: the task ended first)" if p.skipped
               else f"{p.pending} pending")
    t.add_row("jobs", f"{p.done}/{p.total} ended: {p.succeeded} succeeded, {p.failed} failed, "
                      f"{p.running} running, {waiting}")
    t.add_row("finalizers", f"{p.finalizers_done}/{p.finalizers_total}")
    t.add_row("created", when(p.created_at))
    t.add_row("sealed", when(p.sealed_at))
    t.add_row("finished", when(p.finished_at))
    if p.elapsed is not None:
        t.add_row("took", f"{p.elapsed:.3f} s")
    if p.cancelled_at is not None or p.cancelled_by:
        t.add_row("cancelled", f"{when(p.cancelled_at)} by {p.cancelled_by or '?'}")
    o = p.options
    t.add_row("options", f"policy={o.policy.value} max_retries={o.max_retries} backoff={o.backoff}s "
                         f"backoff_max={o.backoff_max}s max_lost={o.max_lost} keep_results={o.keep_results} "
                         f"retention={o.retention:g}s queue={o.queue}")
    t.add_row("share", share_line(p, running_on or {}))
    return t


@cli.command()
@click.argument("task_id", metavar="ID")
@click.option("--limit", "-n", default=SHOW_GROUPS, show_default=True, type=click.IntRange(1, 1_000_000),
              help="Failure groups to print (identical failures are one group).")
@click.option("--tree", "as_tree", is_flag=True, help="The task and its subtasks, to any depth (docs/nested.md).")
@json_option
@click.pass_context
def show(ctx: click.Context, task_id: str, limit: int, as_tree: bool, as_json: bool) -> None:
    """Show one task: progress, options, and its failures.

    Identical failures (same type and message) are one group: its count, refs, the arguments
    of the first few, and one traceback. Exits 1 if the task ended failed or cancelled.
    """
    backend = obj(ctx).connect(ctx)
    task = get_task(backend, task_id)
    if as_tree:  # nested tasks: one line per task of the tree
        from ..tree_view import render

        tree = task.tree()
        if as_json:
            echo_json(tree.to_dict())
        else:
            out().print(render(tree))
        return
    p = task.progress()
    failures = task.failures()
    groups = group_failures(failures)
    if as_json:
        echo_json({
            "progress": progress_json(p),
            "failures": [f.to_dict() for f in failures],
            "failure_groups": [g.to_dict() for g in groups[:limit]],
        })
        ctx.exit(exit_code_of(p))
    console = out()
    console.print(progress_table(p, queue_running(backend, {p.options.queue})))
    if failures:
        console.print(Text(f"{len(failures)} failure(s) in {len(groups)} group(s):", style="bold red"))
        for g in groups[:limit]:
            console.print(group_panel(g))
        if len(groups) > limit:
            rest = sum(g.count for g in groups[limit:])
            console.print(Text(f"... {len(groups) - limit} more group(s), {rest} failure(s): "
                               f"show {task_id} --limit {len(groups)}", style="yellow"))
    next_steps(backend, p)
    ctx.exit(exit_code_of(p))


@cli.command()
@click.option("--limit", "-n", default=100, show_default=True, type=click.IntRange(1, 1_000_000))
@json_option
@click.pass_context
def rejected(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Messages workers refused (forged, malformed, or for tasks that no longer exist)."""
    backend = obj(ctx).connect(ctx)
    items: list[Rejected] = backend.rejected(limit)
    if as_json:
        echo_json([{"at": r.at, "reason": r.reason, "raw": r.raw} for r in items])
    elif items:
        table = Table(title=f"rejected messages on {backend.name}")
        table.add_column("when")
        table.add_column("reason", overflow="fold")
        table.add_column("message", overflow="fold")
        for r in items:
            table.add_row(when(r.at), Text(r.reason), Text(r.raw[:500]))
        out().print(table)
    else:
        out().print("no rejected messages")
    if not items and is_memory(backend):
        hint(MEMORY_HINT)
