"""Celery's side of the nested fan-in benchmark: a chord whose header holds chords.

Workers: ``celery -A benchmarks.nested_celery worker``; ``$FANIN_BROKER`` is the broker (redis://
or amqp://), ``$FANIN_REDIS`` the result backend a chord needs and where the marks go.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, chord

from benchmarks import nested_jobs

app = Celery("nested", broker=os.environ.get("FANIN_BROKER", "redis://127.0.0.1:6379/11"),
             backend=os.environ.get("FANIN_REDIS", "redis://127.0.0.1:6379/11"))
app.conf.update(
    task_default_queue=os.environ.get("NESTED_CQ", "nested_celery"),
    task_serializer="json", result_serializer="json", accept_content=["json"], result_expires=3600,
    worker_hijack_root_logger=False, broker_connection_retry_on_startup=True,
)


@app.task(name="nested.c_leaf")
def c_leaf(child: int, i: int) -> None:
    nested_jobs.leaf(child, i)


@app.task(name="nested.c_child")
def c_child(_results: Any, child: int) -> int:
    nested_jobs.child_done(child)
    return child


@app.task(name="nested.c_parent", ignore_result=True)
def c_parent(_results: Any) -> None:
    nested_jobs.parent_done()


def chord_of_chords(children: int, jobs: int) -> Any:
    """A chord whose header is ``children`` chords of ``jobs`` leaves each."""
    inner = [chord([c_leaf.si(c, i) for i in range(jobs)], c_child.s(c)) for c in range(children)]
    return chord(inner, c_parent.s()).apply_async()
