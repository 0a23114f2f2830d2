"""Paginated reads of a store: one page of tasks, and the details of a few jobs.

``Store.page_tasks(TaskQuery(...))`` answers what a dashboard or an API asks for ("the 50
newest failed tasks whose id contains ``blog``, from the 100th on") without reading every
task: the SQLite store runs one indexed ``SELECT ... LIMIT ... OFFSET`` and the Redis store
reads a slice of its task index (``ms:tasks``). The functions here are the reference
behaviour, used by :class:`~multistep_core.store.RowStore` stores whose rows give no faster
way (the memory store) and by any :class:`~multistep_core.store.Store` that implements
only ``list_tasks``.

``Store.job_details(task_id, refs)`` reads the state and spec (function and arguments) of
the jobs named, so a page can show a failed job's arguments without reading every job.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import MultistepError
from .model import Progress, TaskState

MAX_PAGE = 1000  # most tasks one page may hold
MAX_SEARCH = 128  # longest id search (a task id is at most 128 characters)
MAX_IDS = 500  # most ids one query may name


class InvalidQuery(MultistepError, ValueError):
    """A task query's value is out of range; the message names the field and the range."""


@dataclass(frozen=True)
class TaskQuery:
    """Which tasks, in which order, and which slice of them.

    ``state``: only tasks in this state. ``search``: only tasks whose id contains this text
    (case-insensitive). ``ids``: only these tasks (a live view following the tasks it shows).
    ``newest_first``: order by creation time, newest first (the default) or oldest first.
    ``offset``/``limit``: skip that many matching tasks, return at most ``limit``.
    ``count``: also return how many tasks match in all, when the store can say so cheaply
    (``TaskPage.total`` is None otherwise).
    """

    state: TaskState | None = None
    search: str | None = None
    ids: tuple[str, ...] | None = None
    newest_first: bool = True
    offset: int = 0
    limit: int = 50
    count: bool = True

    def __post_init__(self) -> None:
        if self.state is not None:
            try:
                object.__setattr__(self, "state", TaskState(self.state))
            except ValueError:
                names = ", ".join(s.value for s in TaskState)
                raise InvalidQuery(f"state {self.state!r} is not a task state (one of {names})") from None
        if self.search is not None:
            if not isinstance(self.search, str) or len(self.search) > MAX_SEARCH:
                raise InvalidQuery(f"search must be a string of at most {MAX_SEARCH} characters")
            object.__setattr__(self, "search", self.search.strip() or None)
        if self.ids is not None:
            ids = tuple(self.ids)
            if len(ids) > MAX_IDS or not all(isinstance(i, str) for i in ids):
                raise InvalidQuery(f"ids must be at most {MAX_IDS} task ids")
            object.__setattr__(self, "ids", ids)
        for name, low, high in (("offset", 0, 10**9), ("limit", 1, MAX_PAGE)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
                raise InvalidQuery(f"{name} must be a whole number from {low} to {high}, not {v!r}")

    def matches(self, p: Progress) -> bool:
        """Whether one task passes the filters (not the slice)."""
        if self.state is not None and p.state != self.state:
            return False
        if self.search is not None and self.search.lower() not in p.task_id.lower():
            return False
        return self.ids is None or p.task_id in self.ids


@dataclass(frozen=True)
class TaskPage:
    """One page of tasks. ``total``: how many match in all (None when the store cannot say
    without reading every task). ``has_more``: whether tasks follow this page."""

    items: list[Progress]
    offset: int
    limit: int
    total: int | None
    has_more: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "items": [p.to_dict() for p in self.items],
            "offset": self.offset,
            "limit": self.limit,
            "total": self.total,
            "has_more": self.has_more,
        }


@dataclass(frozen=True)
class JobDetail:
    """One job as stored: its state, its spec (function and arguments, JSON text; None once
    a store dropped it, e.g. the Redis store after the job succeeded) and its attempts."""

    ref: str
    state: str
    spec: str | None = None
    attempt: int = 0

    @property
    def fn(self) -> str | None:
        d = self._spec()
        fn = d.get("fn") if d else None
        return fn if isinstance(fn, str) else None

    @property
    def args(self) -> list[Any]:
        d = self._spec()
        a = d.get("args") if d else None
        return a if isinstance(a, list) else []

    @property
    def kwargs(self) -> dict[str, Any]:
        d = self._spec()
        k = d.get("kwargs") if d else None
        return k if isinstance(k, dict) else {}

    def _spec(self) -> dict[str, Any] | None:
        if self.spec is None:
            return None
        try:
            d = json.loads(self.spec)
        except ValueError:
            return None
        return d if isinstance(d, dict) else None

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "state": self.state, "fn": self.fn, "args": self.args,
                "kwargs": self.kwargs, "attempt": self.attempt}


def page_of(query: TaskQuery, tasks: Iterable[Progress]) -> TaskPage:
    """The reference answer: filter ``tasks`` (in any order), sort, slice. Reads them all."""
    hits = [p for p in tasks if query.matches(p)]
    hits.sort(key=lambda p: (p.created_at, p.task_id), reverse=query.newest_first)
    items = hits[query.offset : query.offset + query.limit]
    return TaskPage(items, query.offset, query.limit, len(hits) if query.count else None,
                    query.offset + len(items) < len(hits))


def like_pattern(search: str) -> str:
    """``%search%`` for SQL ``LIKE ... ESCAPE '\\'`` with the wildcards in ``search`` escaped."""
    return "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def clip(refs: Sequence[str], most: int = MAX_IDS) -> list[str]:
    """At most ``most`` distinct refs, in their order (a page asks for a few jobs)."""
    return list(dict.fromkeys(refs))[:most]
