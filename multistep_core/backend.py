"""Backends and tasks: the user-facing API.

    from multistep_core import connect, job

    @job
    def reindex(post_id: int) -> None: ...

    @job
    def commit_index() -> None: ...

    backend = connect()                       # from config; or connect("sqlite:///tasks.db")
    with backend.create_task("reindex-blog-42") as task:
        for post_id in range(1000):
            task.add_job(reindex, post_id)
        task.add_finalization_job(commit_index)
    task.wait(timeout=60)

A :class:`Backend` is a store plus a queue. It owns the :class:`~multistep_core.runner.Runner`
that workers use, and it builds every operation from the store's atomic transitions.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any

from . import epoch
from .errors import InvalidJob, InvalidTransition, TaskFailed, TaskNotFound, WaitTimeout
from .faults import crash_point
from .model import (
    CALLBACK,
    FINALIZER,
    JOB,
    MAX_REFS_PER_MESSAGE,
    Dispatch,
    Failure,
    Policy,
    Progress,
    Rejected,
    TaskOptions,
    TaskState,
    encode_messages,
    validate_task_id,
)
from .queue import Queue, SupportsWorkers
from .registry import check_json, make_spec
from .runner import Recovery, Runner
from .store import Store

ADD_CHUNK = 2000  # jobs per store call and per bulk enqueue when adding many
_PLAIN_JSON = (int, str, bool, type(None))  # exact types check_json accepts as they are


def _who() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no user database entry (containers)
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"


class Backend:
    """A store and a queue, and everything built on their primitives."""

    def __init__(self, store: Store, queue: Queue, *, name: str = "custom", eager: bool = False) -> None:
        self.store = store
        self.queue = queue
        self.name = name
        self.eager = eager
        self.runner = Runner(self)
        self._recovery: Recovery | None = None
        # An in-process backend recovers due work once this process sends work of its own: a
        # process that only reads never runs (and fails) jobs it has not registered.
        self._recover_on_send = queue.in_process and not eager
        queue.bind(self.runner)
        epoch.watch(store)  # a Redis store: note its data set's epoch (docs/reliability.md)

    def __repr__(self) -> str:
        return f"<multistep Backend {self.name}>"

    # -- tasks -------------------------------------------------------------------------
    def create_task(
        self,
        task_id: str | None = None,
        *,
        policy: Policy | str = Policy.FAIL,
        max_retries: int = 0,
        backoff: float = 1.0,
        backoff_max: float = 300.0,
        max_lost: int = 3,
        keep_results: bool = False,
        retention: float = 7 * 24 * 3600.0,
        queue: str = "default",
        on_failure: Callable[..., Any] | str | None = None,
    ) -> Task:
        """Create an open task. Use it as a context manager: it is sealed when the block
        ends cleanly and cancelled if the block raises.

        ``policy``: ``"fail"`` (default), ``"continue"`` or ``"fail_fast"``.
        ``max_retries``/``backoff``: per-job retries, the delay doubling from ``backoff``
        seconds up to ``backoff_max``. ``keep_results``: keep each job's return value
        (JSON) for the finalizers. ``retention``: seconds a finished task is kept.
        ``on_failure``: a registered job run once each time the task becomes failed.
        """
        if task_id is None:
            task_id = f"task-{os.urandom(8).hex()}"
        validate_task_id(task_id)
        try:
            pol = Policy(policy)
        except ValueError:
            raise InvalidJob(f"policy must be one of fail, continue, fail_fast; not {policy!r}") from None
        try:
            options = TaskOptions(
                policy=pol,
                max_retries=max_retries,
                backoff=0.0 if self.eager else backoff,
                backoff_max=backoff_max,
                max_lost=max_lost,
                keep_results=keep_results,
                retention=retention,
                queue=queue,
            )
        except ValueError as exc:
            raise InvalidJob(str(exc)) from None
        cb_spec = make_spec(on_failure, (), {}).to_json() if on_failure is not None else None
        self.store.create_task(task_id, options, time.time())
        task = Task(self, task_id, options.queue)
        if cb_spec is not None:
            self.store.add_jobs(task_id, CALLBACK, [cb_spec], time.time())
        return task

    def get_task(self, task_id: str) -> Task:
        """A handle on an existing task. Raises :class:`TaskNotFound`."""
        progress = self.store.progress(task_id)
        if progress is None:
            raise TaskNotFound(f"no task with id {task_id!r}")
        return Task(self, task_id, progress.options.queue)

    def get_task_handle(self, task_id: str, queue: str | None = None) -> Task:
        """A handle without a store read (the runner's, for ``current_task()``)."""
        return Task(self, task_id, queue)

    def list_tasks(self, state: TaskState | str | None = None, limit: int = 1000) -> list[Progress]:
        return self.store.list_tasks(TaskState(state) if state is not None else None, limit)

    def rejected(self, limit: int = 100) -> list[Rejected]:
        """Messages workers refused (forged, malformed, or for tasks that no longer exist)."""
        return self.store.rejected(limit)

    # -- plumbing --------------------------------------------------------------------
    def dispatch(self, d: Dispatch, per_message: int = 1) -> None:
        """Enqueue the messages a transition asked for (up to ``per_message`` refs each)."""
        if self._recover_on_send and self._recovery is None:
            self.start_recovery()
        if not d.refs:
            return
        msgs = encode_messages(d.task_id, d.refs, per_message)
        for i in range(0, len(msgs), ADD_CHUNK):
            self.queue.enqueue(d.queue, msgs[i : i + ADD_CHUNK])
            crash_point("add_jobs.between_batches")

    def recover(self, now: float | None = None) -> int:
        """One recovery pass: resend what is due. Returns how many messages were sent."""
        sent = 0
        for d in self.store.claim_due(time.time() if now is None else now):
            crash_point("recovery.claimed")
            self.dispatch(d)
            sent += len(d.refs)
        return sent

    def recover_task(self, task_id: str) -> Dispatch:
        """Send again what ``task_id`` waits for and no worker holds (idempotent; see
        multistep_core/resend.py). Returns what was sent. Raises TaskNotFound."""
        d = self.store.waiting(task_id)
        self.dispatch(d)
        return d

    def run_worker(self, modules: Sequence[str] = (), queues: Sequence[str] = ("default",), concurrency: int = 2) -> int:
        """Serve jobs until stopped, with a recovery thread beside the queue's worker."""
        if not isinstance(self.queue, SupportsWorkers):
            raise InvalidTransition(
                f"the {self.name} backend runs its jobs inside the process that creates them; "
                "it has no separate worker"
            )
        recovery = Recovery(self).start()
        try:
            return self.queue.run_worker(modules, queues, concurrency)
        finally:
            recovery.stop()

    def start_recovery(self) -> None:
        """Start this process's recovery thread now. In-process backends (``sqlite``, ``redis``,
        ``memory``) start it when the process first sends work (adds jobs, seals, retries), so a
        process that only reads runs no recovery; a process that should finish the tasks of a
        dead one without adding work calls this (with the job modules imported)."""
        if self._recovery is None:
            self._recovery = Recovery(self).start()

    def stop_recovery(self) -> None:
        """Stop this process's recovery thread, and never start it again on this backend."""
        self._recover_on_send = False
        if self._recovery is not None:
            self._recovery.stop()
            self._recovery = None

    def close(self) -> None:
        self.stop_recovery()
        self.queue.close()
        self.runner.close()
        self.store.close()

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Task:
    """A handle on one task. Cheap; holds no state of its own but the id."""

    def __init__(self, backend: Backend, task_id: str, queue: str | None = None) -> None:
        self.backend = backend
        self.id = task_id
        self._queue = queue

    def __repr__(self) -> str:
        return f"<multistep Task {self.id!r}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Task) and other.id == self.id and other.backend is self.backend

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def queue(self) -> str:
        if self._queue is None:
            self._queue = self.progress().options.queue
        return self._queue

    # -- building --------------------------------------------------------------------
    def add_job(self, fn: Callable[..., Any] | str, *args: Any, **kwargs: Any) -> str:
        """Add one job; it may start at once. Returns its ref (``"j0"``, ``"j1"``, ...)."""
        return self._add(JOB, [make_spec(fn, args, kwargs, _retries_of(fn)).to_json()])[0]

    def add_jobs(
        self, fn: Callable[..., Any] | str, arg_lists: Iterable[Sequence[Any] | Any], *, per_message: int = 1
    ) -> list[str]:
        """Add one job per item, in chunks (one store call and one bulk enqueue per chunk).
        An item that is a list or tuple is spread as positional arguments; anything else
        is passed as the single argument.

        ``per_message`` > 1 (at most 64) sends up to that many jobs in one queue message; the
        worker that receives it runs them one after another, with one store round trip per
        job instead of two and a fraction of the queue's own per-message cost. Use it for many
        short jobs; it lowers parallelism when jobs are few or long (a message's jobs never
        run on two workers at once). Counting, retries, leases and recovery stay per job."""
        if not isinstance(per_message, int) or isinstance(per_message, bool) or not 1 <= per_message <= MAX_REFS_PER_MESSAGE:
            raise InvalidJob(f"per_message must be an integer from 1 to {MAX_REFS_PER_MESSAGE}, not {per_message!r}")
        refs: list[str] = []
        chunk: list[str] = []
        retries = _retries_of(fn)
        name = make_spec(fn, (), {}, retries).fn  # validates the function and its retries once
        # Each spec is the text JobSpec(name, args, retries=retries).to_json() gives, built
        # without the per-job round trip through JobSpec (large tasks add one per job).
        head = '{"fn":' + json.dumps(name) + ',"args":'
        tail = "}" if retries is None else f',"retries":{int(retries)}}}'
        dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
        for item in arg_lists:
            args = list(item) if isinstance(item, (list, tuple)) else [item]
            for i, a in enumerate(args):
                if type(a) not in _PLAIN_JSON:
                    check_json(a, f"argument {i} of {name}")
            chunk.append(head + dumps(args) + tail)
            if len(chunk) >= ADD_CHUNK:
                refs += self._add(JOB, chunk, per_message)
                chunk = []
        if chunk:
            refs += self._add(JOB, chunk, per_message)
        return refs

    def add_finalization_job(self, fn: Callable[..., Any] | str, *args: Any, **kwargs: Any) -> str:
        """Add a finalizer. Finalizers run one at a time, in the order added, after every job
        has ended (and, under the default policy, succeeded)."""
        return self._add(FINALIZER, [make_spec(fn, args, kwargs, _retries_of(fn)).to_json()])[0]

    def set_failure_callback(self, fn: Callable[..., Any] | str, *args: Any, **kwargs: Any) -> None:
        """Run ``fn(*args, **kwargs)`` once each time the task becomes failed."""
        self.backend.store.add_jobs(self.id, CALLBACK, [make_spec(fn, args, kwargs).to_json()], time.time())

    def _add(self, kind: str, specs: list[str], per_message: int = 1) -> list[str]:
        refs = self.backend.store.add_jobs(self.id, kind, specs, time.time())
        crash_point("add_jobs.written")
        if kind == JOB:
            self.backend.dispatch(Dispatch(self.id, self.queue, tuple(refs)), per_message)
        return refs

    def seal(self) -> None:
        """No more jobs from outside: finalization may start once every job has ended.
        (Jobs of the task may still add jobs while it is running.)"""
        self.backend.dispatch(self.backend.store.seal(self.id, time.time()))

    def __enter__(self) -> Task:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.seal()
        else:
            self.cancel(by=f"{_who()} (the block creating the task raised {exc_type.__name__}: {exc})")

    # -- reading ---------------------------------------------------------------------
    def progress(self) -> Progress:
        p = self.backend.store.progress(self.id)
        if p is None:
            raise epoch.not_found(self.backend.store, self.id)
        return p

    @property
    def state(self) -> TaskState:
        return self.progress().state

    def failures(self) -> list[Failure]:
        """Jobs and finalizers that failed for good, with type, message and traceback."""
        return self.backend.store.failures(self.id)

    def results(self) -> dict[str, Any]:
        """``{ref: return value}`` of succeeded jobs, when the task keeps results."""
        return self.backend.store.results(self.id)

    def wait(self, timeout: float | None = None, *, poll: float = 0.02, raise_on_failure: bool = False) -> Progress:
        """Block until the task is succeeded, failed or cancelled; return its progress.
        Raises :class:`WaitTimeout` after ``timeout`` seconds, and :class:`TaskFailed` at a
        failed or cancelled end when ``raise_on_failure`` is set."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = min(poll, 0.005)
        while True:
            p = self.progress()
            if p.state.terminal:
                if raise_on_failure and p.state != TaskState.SUCCEEDED:
                    first = self.failures()[:1]
                    why = f": {first[0].ref} {first[0].type}: {first[0].message}" if first else ""
                    raise TaskFailed(f"task {self.id!r} ended {p.state.value}{why}")
                return p
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(
                    f"task {self.id!r} still {p.state.value} after {timeout}s "
                    f"({p.done}/{p.total} jobs ended, {p.finalizers_done}/{p.finalizers_total} finalizers)"
                )
            time.sleep(delay)
            delay = min(delay * 2, poll)

    # -- controlling -----------------------------------------------------------------
    def retry(self) -> None:
        """Resume a failed task: resend its failed jobs (or its failed finalizer)."""
        self.backend.dispatch(self.backend.store.retry(self.id, time.time()))

    def cancel(self, by: str | None = None) -> bool:
        """Stop the task. Jobs not yet started are skipped; no finalizer starts. Returns
        False if the task had already succeeded or been cancelled."""
        return self.backend.store.cancel(self.id, by or _who(), time.time())

    def delete(self) -> bool:
        return self.backend.store.delete(self.id)


def _retries_of(fn: Any) -> int | None:
    from .registry import lookup, name_of

    f = lookup(name_of(fn))
    r = getattr(f, "__multistep_retries__", None)
    return r if isinstance(r, int) else None
