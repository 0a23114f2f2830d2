"""Decoding what the Redis store keeps: a task's meta hash into a Progress, job state codes
(a leaf shared by the reads and the paginated listing)."""

from __future__ import annotations

import json
from typing import Any

from ..model import Progress, Rejected, TaskOptions, TaskState

_STATE_CODE = {"p": "pending", "r": "running", "w": "retry_wait", "s": "succeeded", "f": "failed"}


def _f(v: Any) -> float | None:
    return None if v is None else float(v)


def _progress(tid: str, m: dict[str, str]) -> Progress:
    total = int(m["total"])
    running = int(m["running"])
    succeeded = int(m["succeeded"])
    failed = int(m["failed"])
    return Progress(
        task_id=tid,
        state=TaskState(m["state"]),
        total=total,
        pending=total - running - succeeded - failed,
        running=running,
        succeeded=succeeded,
        failed=failed,
        finalizers_total=int(m["fin_total"]),
        finalizers_done=int(m["fin_done"]),
        created_at=float(m["created_at"]),
        sealed_at=_f(m.get("sealed_at")),
        finished_at=_f(m.get("finished_at")),
        cancelled_by=m.get("cancelled_by"),
        cancelled_at=_f(m.get("cancelled_at")),
        options=TaskOptions.from_dict(json.loads(m["opts"])),
        parent=m.get("parent") or None,
    )


def rejected_entries(items: list[Any]) -> list[Rejected]:
    """The entries of a rejected-messages list (JSON, newest first) as :class:`Rejected`."""
    out = []
    for it in items:
        d = json.loads(it.decode("utf-8") if isinstance(it, bytes) else it)
        out.append(Rejected(raw=d["raw"], reason=d["reason"], at=d["at"]))
    return out
