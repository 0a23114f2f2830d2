"""What a running job knows about itself.

Inside a job, finalizer or failure callback::

    from multistep_core import current_task, current_job

    @job
    def crawl(url: str) -> None:
        for link in find_links(url):
            current_task().add_job(crawl, link)   # the task waits for these too
        if current_job().attempt > 1:
            log.info("second try of %s", current_job().ref)
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import InvalidTransition

if TYPE_CHECKING:
    from .backend import Task


@dataclass(frozen=True)
class JobContext:
    task: Task
    ref: str
    attempt: int

    @property
    def task_id(self) -> str:
        return self.task.id


_current: ContextVar[JobContext | None] = ContextVar("multistep_current_job", default=None)


def current_job() -> JobContext:
    """The job being run by this thread. Raises :class:`InvalidTransition` (a ``RuntimeError``) outside a job."""
    ctx = _current.get()
    if ctx is None:
        raise InvalidTransition("current_job() is only available inside a running multistep job")
    return ctx


def current_task() -> Task:
    """The task of the job being run by this thread. Raises :class:`InvalidTransition` (a ``RuntimeError``) outside a job."""
    return current_job().task
