"""What the dashboard shows, as plain JSON-ready dicts: the same data feeds the HTML pages and
the ``/api/`` endpoints, so the two never disagree."""

from __future__ import annotations

import json
import time
from dataclasses import fields
from typing import Any

from ..backend import Backend
from ..errors import TaskNotFound
from ..listing import TaskPage, TaskQuery
from ..model import Failure, Progress, Rejected, TaskOptions

MAX_FINALIZERS = 200  # finalizers listed on a task page
MAX_GROUP_REFS = 20  # refs listed per failure group
MAX_GROUP_ARGS = 5  # jobs per failure group whose arguments are shown
MAX_RESULTS = 100  # results listed on a task page


_PROGRESS_FIELDS = [f.name for f in fields(Progress) if f.name not in ("state", "options")]
_OPTION_FIELDS = [f.name for f in fields(TaskOptions) if f.name != "policy"]


def progress_dict(p: Progress) -> dict[str, Any]:
    """``Progress.to_dict()`` and a few derived values, built field by field (a page of 50
    through ``dataclasses.asdict`` costs more than the store read)."""
    d: dict[str, Any] = {name: getattr(p, name) for name in _PROGRESS_FIELDS}
    d["state"] = p.state.value
    o = p.options
    opts = {name: getattr(o, name) for name in _OPTION_FIELDS}
    opts["policy"] = o.policy.value
    d["options"] = opts
    d["percent"] = round(100 * p.fraction, 2)
    d["done"] = p.done
    d["elapsed"] = p.elapsed
    d["terminal"] = p.state.terminal
    return d


def page_dict(page: TaskPage) -> dict[str, Any]:
    return {"items": [progress_dict(p) for p in page.items], "offset": page.offset, "limit": page.limit,
            "total": page.total, "has_more": page.has_more}


def tasks_page(backend: Backend, query: TaskQuery) -> dict[str, Any]:
    return page_dict(backend.store.page_tasks(query))


def timing(p: Progress, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    end = p.finished_at if p.finished_at is not None else now
    return {
        "created_at": p.created_at,
        "sealed_at": p.sealed_at,
        "finished_at": p.finished_at,
        "cancelled_at": p.cancelled_at,
        "cancelled_by": p.cancelled_by,
        "took": end - p.created_at,
        "running_for": None if p.finished_at is not None else now - p.created_at,
    }


def task_dict(backend: Backend, task_id: str) -> dict[str, Any]:
    """Progress, timing, options and the finalizers in order with their states."""
    p = backend.store.progress(task_id)
    if p is None:
        raise TaskNotFound(f"no task with id {task_id!r}")
    refs = [f"f{i}" for i in range(min(p.finalizers_total, MAX_FINALIZERS))]
    details = backend.store.job_details(task_id, [*refs, "x0"])
    finalizers = []
    for i, ref in enumerate(refs):
        d = details.get(ref)
        state = d.state if d is not None else "pending"
        if i < p.finalizers_done:
            state = "succeeded"
        finalizers.append({
            "ref": ref, "index": i, "state": state,
            "fn": d.fn if d is not None else None,
            "args": d.args if d is not None else [], "kwargs": d.kwargs if d is not None else {},
            "attempt": d.attempt if d is not None else 0,
        })
    cb = details.get("x0")
    return {
        "progress": progress_dict(p),
        "timing": timing(p),
        "options": p.options.to_dict(),
        "finalizers": finalizers,
        "finalizers_shown": len(refs),
        "callback": cb.to_dict() if cb is not None else None,
    }


def failure_groups(backend: Backend, task_id: str) -> dict[str, Any]:
    """Failures grouped by type and message, most frequent first: count, functions, refs,
    the arguments of a few of its jobs, and one traceback per group. Failures a later attempt
    resolved (a retry that succeeded) are history: counted in ``resolved``, not grouped."""
    every: list[Failure] = backend.store.failures(task_id)
    failures = [f for f in every if not f.resolved]
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for f in failures:
        g = groups.get((f.type, f.message))
        if g is None:
            g = groups[(f.type, f.message)] = {
                "type": f.type, "message": f.message, "count": 0, "fns": [], "refs": [],
                "traceback": f.traceback, "first_at": f.at, "last_at": f.at, "jobs": [],
            }
        g["count"] += 1
        if f.fn not in g["fns"]:
            g["fns"].append(f.fn)
        if len(g["refs"]) < MAX_GROUP_REFS:
            g["refs"].append(f.ref)
        g["first_at"] = min(g["first_at"], f.at)
        g["last_at"] = max(g["last_at"], f.at)
    ordered = sorted(groups.values(), key=lambda g: -int(g["count"]))
    wanted = [r for g in ordered for r in g["refs"][:MAX_GROUP_ARGS]]
    details = backend.store.job_details(task_id, wanted) if wanted else {}
    for g in ordered:
        for ref in g["refs"][:MAX_GROUP_ARGS]:
            d = details.get(ref)
            if d is not None:
                g["jobs"].append({"ref": ref, "fn": d.fn, "args": d.args, "kwargs": d.kwargs, "attempt": d.attempt})
    return {"task_id": task_id, "total": len(failures), "resolved": len(every) - len(failures), "groups": ordered}


def results_dict(backend: Backend, task_id: str, limit: int = MAX_RESULTS) -> dict[str, Any]:
    res = backend.store.results(task_id)
    keys = sorted(res, key=lambda r: (r[0], int(r[1:]) if r[1:].isdigit() else 0))
    return {"task_id": task_id, "total": len(res), "items": [{"ref": k, "value": res[k]} for k in keys[:limit]]}


def rejected_list(items: list[Rejected]) -> list[dict[str, Any]]:
    return [{"at": r.at, "reason": r.reason, "raw": r.raw} for r in items]


def as_json(value: Any) -> str:
    """Arguments and results shown as compact JSON text (escaped by the template, never raw)."""
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)
