"""The one Celery task, ``multistep.run``, the backend it uses in each process, and ``attach``.

The task hands each message to the core's runner of this process's backend
(:data:`PROCESS`): built once per process, so a prefork child builds its own (never an
inherited connection) on ``worker_process_init``, from the spec of the queue that started the
worker, from :func:`attach`, or from ``$MULTISTEP_BACKEND`` / the project's config.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from multistep_core.backend import Backend
from multistep_core.errors import ConfigurationError
from multistep_core.faults import crash_point
from multistep_core.kit import ProcessBackend
from multistep_core.options import split_options

from .app import require_celery

log = logging.getLogger("multistep.celery")

#: The one Celery task that carries every multistep message.
TASK_NAME = "multistep.run"
REQUEUE_DELAY = 1.0  # seconds before a message whose handling failed (store unreachable) is requeued
#: Task-level settings of ``multistep.run`` (why: docs/adapters/celery.md).
TASK_OPTIONS: dict[str, Any] = {
    "acks_late": True,
    "acks_on_failure_or_timeout": True,
    "reject_on_worker_lost": True,
    "ignore_result": True,
    "store_errors_even_if_ignored": False,
    "track_started": False,
    "max_retries": 0,
    "serializer": "json",
    "typing": False,
}


def _build(spec: Any) -> Backend:
    from . import backend_from_url

    url, options = spec
    return backend_from_url(url, **options)


def _from_config() -> Backend:
    from multistep_core import connect

    from .queue import CeleryQueue

    backend: Backend = connect()
    if not isinstance(backend.queue, CeleryQueue):
        raise ConfigurationError(
            f"this Celery worker runs multistep jobs, but the configured backend is {backend.name!r}; "
            "call multistep_celery.attach(app, 'celery+redis://...') or set MULTISTEP_BACKEND"
        )
    return backend


#: This process's backend; its spec is ``(backend string, options)``.
PROCESS = ProcessBackend(None, _build, fallback=_from_config, hint="no multistep backend is configured")


class _State:
    default_app: Any = None  # the app of attach(): every backend of this process publishes through it
    in_multistep_worker = False  # this process runs `multistep worker` (which runs the recovery itself)
    recovery: Any = None  # the recovery thread started in a plain `celery worker` of an attached app


_state = _State()


def set_backend(backend: Backend) -> None:
    """Make ``backend`` the one this process's ``multistep.run`` uses."""
    PROCESS.set(backend)


def get_backend() -> Backend:
    """This process's backend, built once per process (see the module documentation)."""
    return PROCESS.get()


def run(*args: Any, **kwargs: Any) -> None:
    """The body of ``multistep.run``: hand one message to the runner, which records every
    outcome itself (failures, retries, refusals) and never raises for a bad message, so
    returning means "acknowledge". Anything but exactly one positional argument (a message
    made by hand with other arguments) is passed on as JSON text the runner refuses and records."""
    if len(args) == 1 and not kwargs:
        body: Any = args[0]
    else:
        body = json.dumps({"args": list(args), "kwargs": kwargs}, default=repr)
    crash_point("message.received")
    try:
        get_backend().runner.handle(body)
        crash_point("message.handled")
    except Exception as exc:
        # Only infrastructure fails here (the store or the broker unreachable): the runner
        # records every job's own failure. Put the message back instead of dropping it (a
        # job that never got its lease would have nothing else to bring it back), after a
        # pause so an outage is not a hot loop.
        from celery.exceptions import Reject

        log.error("multistep could not handle %.200r (%s: %s); requeueing it in %.0f s",
                  body, type(exc).__name__, exc, REQUEUE_DELAY)
        time.sleep(REQUEUE_DELAY)
        raise Reject(f"{type(exc).__name__}: {exc}", requeue=True) from exc


def register_task(app: Any) -> Any:
    """Register ``multistep.run`` on ``app`` (idempotent) and return the task."""
    require_celery()
    existing = app._tasks.get(TASK_NAME)
    if existing is not None:
        if not getattr(existing, "__multistep__", False):
            raise ConfigurationError(f"the Celery app already has a task named {TASK_NAME!r} that is not multistep's")
        return existing
    task = app.task(name=TASK_NAME, bind=False, shared=False, lazy=False, **TASK_OPTIONS)(run)
    task.__multistep__ = True
    _connect_signals()
    return task


_signals_connected = False


def _connect_signals() -> None:
    global _signals_connected
    if _signals_connected:
        return
    from celery import signals

    def on_process_init(**_: Any) -> None:
        # A prefork child: build its own backend now (not at its first message).
        if PROCESS.spec is not None or PROCESS.built_in is not None:
            try:
                get_backend()
            except Exception:  # the first message retries and reports it
                log.exception("building the multistep backend in this worker process failed")

    def on_process_shutdown(**_: Any) -> None:
        try:
            PROCESS.close()
        except Exception:  # pragma: no cover - closing must not raise
            pass

    def on_worker_ready(sender: Any = None, **_: Any) -> None:
        # A plain `celery worker` of an attached app: run the core's recovery in its main process.
        if _state.in_multistep_worker or _state.recovery is not None:
            return
        app = getattr(sender, "app", None)
        if app is None or TASK_NAME not in app.tasks:
            return
        try:
            from multistep_core.runner import Recovery

            _state.recovery = Recovery(get_backend()).start()
        except Exception:
            log.exception("could not start the multistep recovery thread in this Celery worker")

    signals.worker_process_init.connect(on_process_init, weak=False)
    signals.worker_process_shutdown.connect(on_process_shutdown, weak=False)
    signals.worker_ready.connect(on_worker_ready, weak=False)
    _signals_connected = True


def attach(app: Any, backend: str | None = None, **options: Any) -> Any:
    """Use your own Celery ``app`` for multistep: register ``multistep.run`` on it and make it
    the app every Celery backend of this process publishes through. ``backend`` (a backend
    string such as ``"celery+redis://127.0.0.1:6379/0"``, or ``"celery"`` for the app's own
    broker) and ``options`` say how worker processes of this app build their multistep
    backend; without them they use ``$MULTISTEP_BACKEND`` / the project's config.
    Returns the Celery task. No app-wide setting is changed."""
    task = register_task(app)
    _state.default_app = app
    if backend is not None:
        base, query = split_options(backend)
        PROCESS.spec = (base, {**query, **options, "celery_app": app})
    return task
