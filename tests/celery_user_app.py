"""An application's own Celery app, attached to multistep (for tests/test_celery_adapter.py):
``celery -A celery_user_app worker -Q multistep.celery.default`` runs multistep jobs too."""

from __future__ import annotations

import os

import celery_jobs  # noqa: F401 - registers the multistep jobs this app's workers run
import multistep_celery
from celery import Celery
from services import REDIS_ADDR

app = Celery("celerytest", broker=os.environ.get("CELERYTEST_BROKER", f"redis://{REDIS_ADDR}/14"), set_as_current=False)
multistep_celery.attach(app, os.environ.get("CELERYTEST_BACKEND"))


@app.task(name="celerytest.own")
def own(x: int) -> int:
    """One of the application's own tasks, untouched by multistep."""
    return x
