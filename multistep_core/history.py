"""What an operator reads after the fact: the failure history a task ``retry()`` keeps, and the
error of a retry that is refused. Used by :class:`~multistep_core.store.RowStore` and the Redis
store alike (their twin in Lua: ``redis/lua/retry.lua`` and ``failures.lua``).

A row's ``error`` (a failure as a dict) is what ``failures()`` shows while the row is failed.
``retry()`` marks it ``"retried"``: from then on it is the row's history, carried along inside
the errors of later failed attempts (``"history"``), and listed by ``failures()`` with
``resolved=True`` once the row has succeeded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import InvalidTransition

if TYPE_CHECKING:
    from .store import JobRow


def retry_refused(task_id: str, state: str) -> InvalidTransition:
    """The error of ``retry`` on a task that has not failed, saying what to do instead."""
    what = {
        "cancelled": "a cancelled task is final; create a new task to run its jobs again",
        "succeeded": "it has nothing to resume",
    }.get(state, "wait until it ends (multistep watch ID); retry resumes it only if it ended failed")
    return InvalidTransition(f"task {task_id!r} is {state}; only a failed task can be retried: {what}")


def retried_failure(row: JobRow) -> dict[str, Any] | None:
    """The failure ``retry()`` resumes a row from, kept as its history (``failures()`` lists it,
    resolved, once a later attempt succeeds; the Redis store keeps it in its ``err`` hash)."""
    return None if row.error is None else {**row.error, "retried": True}


def failure_history(error: dict[str, Any] | None) -> dict[str, Any] | None:
    """The history kept in a row's error: the failure a task retry resumed from, or None."""
    if not error:
        return None
    if error.get("retried"):
        return error
    kept = error.get("history")
    return kept if isinstance(kept, dict) else None


def with_history(error: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """A failed attempt's error, carrying the history of the row along."""
    kept = failure_history(previous)
    return error if kept is None else {**error, "history": kept}
