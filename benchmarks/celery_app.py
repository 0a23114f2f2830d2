"""Plain Celery tasks of the benchmark (workers: ``celery -A benchmarks.celery_app worker``).

``$FANIN_BROKER`` is the broker URL (redis://... or amqp://...). The result backend, which a
chord needs, is always ``$FANIN_REDIS`` (Celery's Redis backend joins a chord with a
counter, no polling). ``work`` ignores its result (the raw path); ``work_chord`` keeps it,
as a chord header must.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from benchmarks import common

BROKER_URL = os.environ.get("FANIN_BROKER", "redis://127.0.0.1:6379/10")
REDIS_URL = os.environ.get("FANIN_REDIS", "redis://127.0.0.1:6379/10")
QUEUE = os.environ.get("FANIN_CQ", "fanin_raw")

app = Celery("fanin", broker=BROKER_URL, backend=REDIS_URL)
app.conf.update(
    task_default_queue=QUEUE,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=3600,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="fanin.work", ignore_result=True)
def work(i: int) -> None:
    common.work(i)


@app.task(name="fanin.work_chord")
def work_chord(i: int) -> None:
    common.work(i)


@app.task(name="fanin.callback", ignore_result=True)
def callback(results: Any = None) -> None:
    common.callback()
