"""Nested tasks, the user-facing side: ``task.add_subtask(...)``, ``task.tree()``, deep progress.

    with backend.create_task("reindex-site") as site:
        for blog in blogs:
            with site.add_subtask(f"reindex-{blog}") as sub:   # one step of the site task
                sub.add_jobs(reindex_post, posts_of(blog))
                sub.add_finalization_job(commit_blog_index, blog)
        site.add_finalization_job(publish_site)              # after every blog committed

The store side (slots, exactly once at the boundary, cascades) is :mod:`multistep_core.nesting`;
docs/nested.md tells the whole story.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import InvalidJob, TaskNotFound
from .model import CALLBACK, Policy, Progress, TaskOptions
from .nesting import OnFailure, TaskTree
from .registry import make_spec

if TYPE_CHECKING:
    from .backend import Task

#: options a subtask takes from its parent unless given (so a tree shares one share of its queue)
INHERITED = ("queue", "group", "weight", "group_max_concurrency")
_OPTIONS = frozenset(TaskOptions.__dataclass_fields__)


def add_subtask(
    parent: Task,
    child_id: str | None = None,
    *,
    parent_on_failure: OnFailure | str = OnFailure.FAIL,
    on_failure: Callable[..., Any] | str | None = None,
    **options: Any,
) -> Task:
    """Create a child task that is one step of ``parent`` (see :meth:`Task.add_subtask`)."""
    from .model import validate_task_id

    backend = parent.backend
    if child_id is None:
        child_id = f"{parent.id[:100]}.{os.urandom(6).hex()}"
    validate_task_id(child_id)
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise InvalidJob(
            f"add_subtask got unknown option(s) {', '.join(map(repr, unknown))}; it takes the options of "
            f"create_task ({', '.join(sorted(_OPTIONS))}), on_failure and parent_on_failure"
        )
    try:
        mode = OnFailure(parent_on_failure)
    except ValueError:
        raise InvalidJob(
            f"parent_on_failure must be one of fail, ignore, continue; not {parent_on_failure!r}"
        ) from None
    inherited = parent.progress().options
    merged = {k: getattr(inherited, k) for k in INHERITED}
    merged.update(options)
    if backend.eager:
        merged["backoff"] = 0.0
    if "policy" in merged:
        try:
            merged["policy"] = Policy(merged["policy"])
        except ValueError:
            raise InvalidJob(f"policy must be one of fail, continue, fail_fast; not {merged['policy']!r}") from None
    try:
        opts = TaskOptions(**merged)
    except (ValueError, TypeError) as exc:
        raise InvalidJob(str(exc)) from None
    cb_spec = make_spec(on_failure, (), {}).to_json() if on_failure is not None else None
    backend.store.add_subtask(parent.id, child_id, opts, mode.value, time.time())
    child = type(parent)(backend, child_id, opts.queue)  # a Task, without importing the backend
    if cb_spec is not None:
        backend.store.add_jobs(child_id, CALLBACK, [cb_spec], time.time())
    return child


def tree(task: Task) -> TaskTree:
    t = task.backend.store.tree(task.id)
    if t is None:
        raise TaskNotFound(f"no task with id {task.id!r}")
    assert isinstance(t, TaskTree)
    return t


def deep_progress(task: Task) -> Progress:
    return tree(task).deep()
