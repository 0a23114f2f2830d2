"""What a newcomer needs to hear when the code is right but the setup is not.

* :func:`refuse_main_job`: a job function defined in ``__main__`` (the script being run) can
  never be found by a worker in another process, which imports modules by name: refused at
  ``add_job`` on queue backends, before anything is stored.
* :func:`failure_callback_spec`: ``create_task(on_failure=(fn, *args))``, arguments checked
  like ``add_job``'s.
* :func:`check_retention`: a finished task stays readable at least :data:`MIN_RETENTION`.
* :func:`wait_timeout_message`: ``wait()`` timing out says whether any job started at all, and
  where the workers must run (``multistep worker MODULE -q QUEUE``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .errors import InvalidJob
from .registry import lookup, make_spec

if TYPE_CHECKING:
    from .backend import Backend
    from .model import Progress


def refuse_main_job(backend: Backend, spec_json: str) -> None:
    """Raise :class:`InvalidJob` when the job of ``spec_json`` is defined in ``__main__`` and the
    backend's workers run in other processes."""
    if backend.queue.in_process:
        return
    try:
        name = json.loads(spec_json)["fn"]
    except (ValueError, KeyError, TypeError):  # pragma: no cover - specs are built by make_spec
        return
    fn = lookup(name)
    if fn is None or getattr(fn, "__module__", None) != "__main__":
        return
    raise InvalidJob(
        f"the job {getattr(fn, '__qualname__', name)!r} is defined in __main__ (the script you ran), and the "
        f"{backend.name} backend runs jobs in worker processes, which import modules by name and so can never "
        "find it. Move the @job functions into a module (e.g. myapp/jobs.py), import them from there in this "
        "script, and start workers with: multistep worker myapp.jobs (from the directory that contains myapp/)"
    )


def wait_timeout_message(backend: Backend, p: Progress, timeout: float | None) -> str:
    """The :class:`WaitTimeout` message: where the task stands and, when no job has started on a
    queue backend, that no worker seems to be serving its queue."""
    msg = (
        f"task {p.task_id!r} still {p.state.value} after {timeout}s "
        f"({p.done}/{p.total} jobs ended, {p.finalizers_done}/{p.finalizers_total} finalizers)"
    )
    if p.state.value == "open":
        msg += (
            "; the task is still open, and it ends only once sealed: create it with `with backend.create_task(...) "
            "as task:` (sealed when the block ends) or call task.seal() after the last add_job"
        )
    if backend.queue.in_process:
        return msg
    queue = p.options.queue
    if p.done == 0 and p.running == 0 and p.finalizers_done == 0:
        return msg + (
            f"; no job of it has started, so no worker seems to serve the queue {queue!r}: start one with "
            f"`multistep -b {backend.name}... worker YOUR.JOBS.MODULE -q {queue}` (the module that defines the "
            "@job functions, importable from the worker's working directory)"
        )
    return msg + f"; workers serving the queue {queue!r} are slower than the timeout, or too few (multistep worker -c N)"


def failure_callback_spec(on_failure: Any) -> str:
    """The spec of ``create_task(on_failure=...)``: a registered function (or its name), or a
    tuple ``(fn, *args)`` whose arguments are checked as ``add_job`` checks them."""
    if isinstance(on_failure, tuple):
        if not on_failure:
            raise InvalidJob("on_failure=() names no function; give on_failure=fn or on_failure=(fn, arg, ...)")
        fn, *args = on_failure
        return make_spec(fn, args, {}).to_json()
    if isinstance(on_failure, list):
        raise InvalidJob(
            f"on_failure must be a registered job or a tuple (fn, arg, ...), not a list {on_failure!r}"
        )
    return make_spec(on_failure, (), {}).to_json()


MIN_RETENTION = 1.0  # seconds: a finished task stays readable at least this long


def check_retention(retention: float) -> None:
    """``create_task(retention=...)``: at least :data:`MIN_RETENTION`, so that whoever waits for the
    task (``wait()``, ``multistep watch``) can still read how it ended."""
    if isinstance(retention, (int, float)) and not isinstance(retention, bool) and 0 <= retention < MIN_RETENTION:
        raise InvalidJob(
            f"retention={retention!r} would delete the task the moment it ends, before wait() or multistep watch "
            f"can read how it ended: give at least {MIN_RETENTION:g} s (the default keeps a finished task 7 days)"
        )
