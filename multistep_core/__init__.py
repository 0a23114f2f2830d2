"""multistep: multi-step tasks on job queues.

A task fans out many jobs that run in parallel on any number of workers, tracks their
progress, handles their failures, and when all of them are done runs its finalization
jobs strictly one after another. The same code runs on the embedded backend, RQ,
Celery or Dramatiq, chosen by configuration (see :mod:`multistep_core.config`).
"""

from __future__ import annotations

from .backend import Backend, Task
from .config import connect
from .context import JobContext, current_job, current_task
from .errors import (
    BackendConnectionError,
    BackendDriverMissing,
    BackendNotFound,
    ConfigurationError,
    InvalidJob,
    InvalidTaskId,
    InvalidTransition,
    MultistepError,
    TaskExists,
    TaskFailed,
    TaskNotFound,
    WaitTimeout,
)
from .model import Failure, JobState, Policy, Progress, TaskOptions, TaskState
from .queue import Queue, SupportsPurge, SupportsRawPublish, SupportsWorkers
from .registry import job
from .store import RowStore, Store

__version__ = "0.1.0"

__all__ = [
    "Backend", "BackendConnectionError", "BackendDriverMissing", "BackendNotFound",
    "ConfigurationError", "Failure", "InvalidJob", "InvalidTaskId", "InvalidTransition",
    "JobContext", "JobState", "MultistepError", "Policy", "Progress", "Queue", "RowStore",
    "Store", "SupportsPurge", "SupportsRawPublish", "SupportsWorkers", "Task", "TaskExists",
    "TaskFailed", "TaskNotFound", "TaskOptions", "TaskState", "WaitTimeout", "connect",
    "current_job", "current_task", "job", "__version__",
]
