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

from . import epoch, observe
from .errors import InvalidJob, InvalidTransition, TaskFailed, TaskNotFound, WaitTimeout
from .faults import crash_point
from .hints import check_retention, failure_callback_spec, refuse_main_job, wait_timeout_message
from .model import (
    CALLBACK,
    FINALIZER,
    JOB,
    MAX_PER_MESSAGE,
    Dispatch,
    Failure,
    Policy,
    Progress,
    Rejected,
    TaskOptions,
    TaskState,
    validate_task_id,
)
from .queue import Queue, SupportsWorkers
from .registry import check_json, make_spec
from .runner import Recovery, Runner
from .store import Store, SupportsWaitChanged

ADD_CHUNK = 2000  # jobs per store call and per bulk enqueue when adding many
_PLAIN_JSON = (int, str, bool, type(None))  # exact types check_json accepts as they are
NOTIFY_BACKSTOP = 2.0  # seconds Task.wait reads again when its store notifies (a lost notification costs this)


def _who() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no user database entry (containers)
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"


class Backend:
    """A store and a queue, and everything built on their primitives."""

    def __init__(
        self, store: Store, queue: Queue, *, name: str = "custom", eager: bool = False, go_on: int | None = None
    ) -> None:
        self.store = store
        self.queue = queue
        self.name = name
        self.eager = eager
        observe.autoload()
        self.runner = Runner(self)
        if go_on is not None:  # the go_on= option: jobs a worker goes on to per ticket
            self.runner.go_on_jobs = go_on
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
        on_failure: Callable[..., Any] | str | tuple[Any, ...] | None = None,
        group: str = "",
        weight: float = 1.0,
        max_concurrency: int = 0,
        group_max_concurrency: int = 0,
    ) -> Task:
        """Create an open task. Use it as a context manager: it is sealed when the block
        ends cleanly and cancelled if the block raises.

        ``policy``: ``"fail"`` (default), ``"continue"`` or ``"fail_fast"``.
        ``max_retries``/``backoff``: per-job retries, the delay doubling from ``backoff``
        seconds up to ``backoff_max``. ``keep_results``: keep each job's return value
        (JSON) for the finalizers. ``retention``: seconds a finished task is kept.
        ``on_failure``: a registered job run once each time the task becomes failed: the
        function, or a tuple ``(fn, *args)`` to call it with arguments, checked like ``add_job``'s
        (``task.set_failure_callback(fn, *args, **kwargs)`` also takes keyword arguments).

        Fair share (docs/fairness.md): the tasks of a queue share its workers; ``group``
        puts tasks under one share (a tenant, a team), ``weight`` is the task's share relative
        to the others of its group (or of the queue, with no group), ``max_concurrency`` caps
        the task's running jobs over all workers and ``group_max_concurrency`` the group's
        (0 = no cap).
        """
        if task_id is None:
            task_id = f"task-{os.urandom(8).hex()}"
        validate_task_id(task_id)
        check_retention(retention)
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
                group=group,
                weight=weight,
                max_concurrency=max_concurrency,
                group_max_concurrency=group_max_concurrency,
                trace=observe.creating(self, task_id, queue),
            )
        except ValueError as exc:
            raise InvalidJob(str(exc)) from None
        cb_spec = failure_callback_spec(on_failure) if on_failure is not None else None
        if cb_spec is not None:
            refuse_main_job(self, cb_spec)
        self.store.create_task(task_id, options, time.time())
        observe.created(self, task_id, options.queue, options)
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

    def list_tasks(
        self, state: TaskState | str | None = None, limit: int = 1000, *, top_level: bool = False
    ) -> list[Progress]:
        """Tasks, newest first (``top_level``: only those that are no other task's subtask)."""
        rows = self.store.list_tasks(TaskState(state) if state is not None else None, limit)
        return [p for p in rows if p.parent is None] if top_level else rows

    def rejected(self, limit: int = 100) -> list[Rejected]:
        """Messages workers refused (forged, malformed, or for tasks that no longer exist)."""
        return self.store.rejected(limit)

    # -- plumbing --------------------------------------------------------------------
    def dispatch(self, d: Dispatch) -> None:
        """Enqueue the messages a transition asked for (tickets and follow-up refs)."""
        if self._recover_on_send and self._recovery is None:
            self.start_recovery()
        for part in d.parts():
            msgs = part.messages(observe.trace_members(part.task_id, self) if part.refs else "")
            for i in range(0, len(msgs), ADD_CHUNK):
                self.queue.enqueue(part.queue, msgs[i : i + ADD_CHUNK])
                crash_point("add_jobs.between_batches")

    def recover(self, now: float | None = None) -> int:
        """One recovery pass: resend what is due. Returns how many messages were sent."""
        sent = 0
        for d in self.store.claim_due(time.time() if now is None else now):
            crash_point("recovery.claimed")
            self.dispatch(d)
            observe.recovered(self, d)
            sent += sum(len(p.refs) + len(p.tickets) for p in d.parts())
        return sent

    def recover_task(self, task_id: str) -> Dispatch:
        """Send again what ``task_id`` waits for and no worker holds (idempotent; see
        multistep_core/resend.py). Returns what was sent. Raises TaskNotFound."""
        d = self.store.waiting(task_id)
        self.dispatch(d)
        self.dispatch(self.store.release(d.queue, time.time()))  # tickets owed or presumed lost
        return d

    def run_worker(self, modules: Sequence[str] = (), queues: Sequence[str] = ("default",), concurrency: int = 2) -> int:
        """Serve jobs until stopped, with a recovery thread beside the queue's worker."""
        if not isinstance(self.queue, SupportsWorkers):
            raise InvalidTransition(
                f"the {self.name} backend runs its jobs inside the process that creates them; "
                "it has no separate worker"
            )
        window = int(getattr(self.store, "window", 0) or 0)
        if window and concurrency > window // 2:
            import logging

            logging.getLogger("multistep").warning(
                "this worker runs %d jobs at once, but the store keeps only %d to %d tickets per queue in the "
                "broker (window=%d, refilled at half): some slots will wait for work while jobs wait in the "
                "store; add window=%d (or more) to the backend string of clients and workers",
                concurrency, window // 2, window, window, 2 * concurrency,
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

        ``per_message`` > 1 (at most 64) lets the worker that takes a ticket of this task run
        up to that many of its jobs one after another, with one store round trip per job
        instead of two and a fraction of the queue's own per-message cost. Use it for many
        short jobs; it lowers parallelism when jobs are few or long. Counting, retries, leases
        and recovery stay per job, and the jobs a worker has not reached stay in the store for
        any other worker."""
        if not isinstance(per_message, int) or isinstance(per_message, bool) or not 1 <= per_message <= MAX_PER_MESSAGE:
            raise InvalidJob(f"per_message must be an integer from 1 to {MAX_PER_MESSAGE}, not {per_message!r}")
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
        spec = make_spec(fn, args, kwargs).to_json()
        refuse_main_job(self.backend, spec)
        self.backend.store.add_jobs(self.id, CALLBACK, [spec], time.time())

    def _add(self, kind: str, specs: list[str], per_message: int = 1) -> list[str]:
        refuse_main_job(self.backend, specs[0])  # one function per call
        store = self.backend.store
        refs = store.add_jobs(self.id, kind, specs, time.time(), per_message)
        crash_point("add_jobs.written")
        observe.adding(self.backend, self.id, self.queue if kind == JOB else self._queue or "", kind, refs)
        if kind == JOB:
            # The jobs wait in the store; the queue gets tickets for them, up to its window.
            # (Should this process die right here, recovery issues those tickets.)
            try:
                self.backend.dispatch(store.release(self.queue, time.time()))
            finally:
                observe.sent(self.backend, self.id, self.queue, refs)
        return refs

    def add_subtask(self, child_id: str | None = None, **options: Any) -> Task:
        """Create a child task that is one step of this one (docs/nested.md): its whole life,
        jobs then finalizers, counts as one job here, exactly once. Use it as a context manager,
        like :meth:`Backend.create_task` (sealed on a clean exit, cancelled if the block raises).
        Takes the options of ``create_task`` (``queue``, ``group``, ``weight`` and
        ``group_max_concurrency`` default to this task's) and ``parent_on_failure``: what the
        child's failure or cancellation does here: ``"fail"`` (default: a failed step, this task's
        policy decides), ``"ignore"`` (counts as succeeded) or ``"continue"`` (a failed step that
        never fails this task; its finalizers run and see it in ``failures()``). Also from a
        running job: ``current_task().add_subtask(...)``."""
        from .nested import add_subtask

        return add_subtask(self, child_id, **options)

    def tree(self) -> Any:
        """This task and its subtasks to any depth, read in one store call
        (a :class:`~multistep_core.nesting.TaskTree`)."""
        from .nested import tree

        return tree(self)

    def seal(self) -> None:
        """No more jobs from outside: finalization may start once every job has ended.
        (Jobs of the task may still add jobs while it is running.)"""
        d = self.backend.store.seal(self.id, time.time())
        self.backend.dispatch(d)
        observe.sealed(self.backend, self.id, d)

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
    def progress(self, deep: bool = False) -> Progress:
        """A snapshot of the task: its direct steps (a subtask counts as one), or with ``deep``
        the whole tree rolled up (every job of every subtask, every finalizer)."""
        if deep:
            from .nested import deep_progress

            return deep_progress(self)
        p = self.backend.store.progress(self.id)
        if p is None:
            raise epoch.not_found(self.backend.store, self.id)
        return p

    @property
    def state(self) -> TaskState:
        return self.progress().state

    def failures(self) -> list[Failure]:
        """Jobs and finalizers that failed for good, with type, message, traceback and arguments;
        and, marked ``resolved``, the failures a ``retry()`` resumed from whose job has since
        succeeded (the history an operator reads after the fact)."""
        return self.backend.store.failures(self.id)

    def results(self) -> dict[str, Any]:
        """``{ref: return value}`` of succeeded jobs, when the task keeps results; a succeeded
        subtask's ref maps to that subtask's own ``results()``."""
        return self.backend.store.results(self.id)

    def wait(self, timeout: float | None = None, *, poll: float = 0.02, raise_on_failure: bool = False) -> Progress:
        """Block until the task is succeeded, failed or cancelled; return its progress.
        Raises :class:`WaitTimeout` after ``timeout`` seconds, and :class:`TaskFailed` at a
        failed or cancelled end when ``raise_on_failure`` is set. ``poll``: seconds between
        reads; with a store that notifies the end (PostgreSQL) the wait is woken by it, and
        reads again after ``max(poll, NOTIFY_BACKSTOP)`` seconds without one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = min(poll, 0.005)
        while True:
            p = self.progress()
            if p.state.terminal:
                if raise_on_failure and p.state != TaskState.SUCCEEDED:
                    first = [f for f in self.failures() if not f.resolved][:1]
                    why = f": {first[0].ref} {first[0].type}: {first[0].message}" if first else ""
                    raise TaskFailed(f"task {self.id!r} ended {p.state.value}{why}")
                return p
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(wait_timeout_message(self.backend, p, timeout))
            if isinstance(self.backend.store, SupportsWaitChanged):  # woken when the task ends
                left = NOTIFY_BACKSTOP if deadline is None else deadline - time.monotonic()
                self.backend.store.wait_changed(self.id, max(0.0, min(max(poll, NOTIFY_BACKSTOP), left)))
                continue
            time.sleep(delay)
            delay = min(delay * 2, poll)

    # -- controlling -----------------------------------------------------------------
    def retry(self) -> None:
        """Resume a failed task: resend its failed jobs (or its failed finalizer)."""
        self.backend.dispatch(self.backend.store.retry(self.id, time.time()))
        observe.retried(self.backend, self.id)

    def cancel(self, by: str | None = None) -> bool:
        """Stop the task. Jobs not yet started are skipped; no finalizer starts. Returns
        False if the task had already succeeded or been cancelled."""
        done, d = self.backend.store.cancel_and_dispatch(self.id, by or _who(), time.time())
        self.backend.dispatch(d)  # a cancelled subtask may let its parent finalize
        observe.cancelled(self.backend, self.id, done)
        return done

    def delete(self) -> bool:
        return self.backend.store.delete(self.id)


def _retries_of(fn: Any) -> int | None:
    from .registry import lookup, name_of

    f = lookup(name_of(fn))
    r = getattr(f, "__multistep_retries__", None)
    return r if isinstance(r, int) else None
