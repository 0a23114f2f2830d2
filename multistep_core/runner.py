"""The runner: where a delivered message becomes a function call and an outcome.

Every queue's worker calls :meth:`Runner.handle` with the raw message body. The runner

1. decodes the message (anything malformed, forged or oversized is refused and
   recorded with :meth:`Store.reject`, never executed),
2. asks the store to *start* a job (one atomic call): a *ticket* of a queue lets the store
   pick the next job of the fairest task and take a lease on it (docs/fairness.md); a
   finalizer or failure callback message names its task and ref, and the store skips
   duplicates, cancelled or failed tasks and finalizers out of turn,
3. looks the function up in this process's registry (never imports what a spec names),
4. calls it with the JSON arguments while a heartbeat renews the lease,
5. records the outcome with :meth:`Store.finish` (one atomic call that counts the job
   once per ref and decides whether finalization starts), and
6. enqueues whatever that transition asked for.

A job's completion is counted in step 5, in the store, and nowhere else.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from . import epoch, observe
from .context import JobContext, _current
from .fairshare import DEFAULT_GO_ON
from .faults import crash_point
from .model import CALLBACK, FINALIZER, Dispatch, Failure, JobSpec, Start, decode
from .registry import lookup, registered_names

if TYPE_CHECKING:
    from .backend import Backend

log = logging.getLogger("multistep.runner")


class _Heartbeat:
    """One thread per runner that renews the leases of the jobs running in this process."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.lock = threading.Lock()
        self.active: dict[int, tuple[str, str, int]] = {}
        self.keys = itertools.count()
        self.thread: threading.Thread | None = None
        self.stop = threading.Event()

    def add(self, task_id: str, ref: str, attempt: int) -> int:
        with self.lock:
            key = next(self.keys)
            self.active[key] = (task_id, ref, attempt)
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, name="multistep-heartbeat", daemon=True)
                self.thread.start()
        return key

    def remove(self, key: int) -> None:
        with self.lock:
            self.active.pop(key, None)

    def _loop(self) -> None:
        store = self.runner.backend.store
        while not self.stop.wait(max(store.lease / 3.0, 0.05)):
            with self.lock:
                items = list(self.active.values())
            for task_id, ref, attempt in items:
                try:
                    store.renew(task_id, ref, attempt, time.time())
                except Exception:  # a store hiccup must not kill the heartbeat
                    log.exception("lease renewal failed for %s/%s", task_id, ref, extra=observe.log_extra(task_id, ref, attempt))


def failure_from(exc: BaseException, ref: str, fn: str, attempt: int) -> Failure:
    return Failure(
        ref=ref,
        fn=fn,
        type=type(exc).__qualname__,
        message=str(exc)[:2000],
        traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-8000:],
        attempt=attempt,
        at=time.time(),
    )


ARGS_PREVIEW = 300  # characters of a failed job's arguments kept with its failure


def args_preview(args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """A failed job's arguments as JSON (``[1, "a"]``, ``{"k": 2}``, or both), cut to ARGS_PREVIEW."""
    text = json.dumps(list(args), separators=(",", ":"), default=str)
    if kwargs:
        text = (text + " " if args else "") + json.dumps(dict(kwargs), separators=(",", ":"), default=str)
    return text if len(text) <= ARGS_PREVIEW else text[: ARGS_PREVIEW - 3] + "..."


def unregistered_message(name: str) -> str:
    """Why a job named ``name`` cannot run here, what this worker has, and what to do."""
    have = registered_names()
    shown = ", ".join(have[:8]) + (f" and {len(have) - 8} more" if len(have) > 8 else "")
    module = name.partition(":")[0] if ":" in name else ""  # "module:function", the default name
    return (
        f"no job function is registered as {name!r} in this worker (it has: {shown or 'none'}); workers "
        "run only functions decorated with @job in the modules they import. If it is one of your jobs, start "
        f"the workers with the module that defines it (multistep worker {module or 'MODULE'} ...), then retry "
        "the task's failed jobs (multistep retry TASK_ID)"
    )


def _plain_failure(ref: str, fn: str, attempt: int, kind: str, message: str) -> Failure:
    return Failure(ref=ref, fn=fn, type=kind, message=message, attempt=attempt, at=time.time())


class Runner:
    """Executes delivered messages for one backend.

    A ticket starts one job, or, for a task whose jobs were added with ``per_message=k``,
    up to k of that task's jobs one after another in the delivering thread, each with its
    own start and finish transition; the finish of one and the start of the next go to the
    store together (:meth:`Store.take_next`). Jobs not reached stay in the store, waiting
    for any worker.

    A follow-up that a transition made here decides (the next finalizer, the failure
    callback) is run by this thread right after, without a trip through the queue
    (``inline_followups``): the transition registered it with a grace period, so if this
    process dies first the core's recovery sends it through the queue as usual.
    """

    #: Run the finalizer/callback a finish decided in this thread instead of enqueuing it.
    inline_followups = True
    #: A thread that ran a ticket's job *goes on*: the finish of each job also starts the job a
    #: ticket of the queue would start now (the fairest task's), without a trip through the
    #: broker, for up to this many jobs and this many seconds per message (docs/fairness.md,
    #: "Going on"). 0 turns it off: every job then waits for a ticket of its own.
    go_on_jobs = DEFAULT_GO_ON  # the go_on= option of every backend string
    go_on_seconds = 1.0

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._heartbeat = _Heartbeat(self)
        self._local = threading.local()

    def close(self) -> None:
        self._heartbeat.stop.set()

    def handle(self, raw: Any) -> str:
        """Run one delivered message. Returns what happened (``"succeeded"``, ``"failed"``,
        ``"skipped:<reason>"``, ``"rejected"``; for a message of several refs, the outcome
        of each, comma-separated, unless all are the same); never raises for a bad message,
        so the queue can always acknowledge it."""
        local = self._local
        if getattr(local, "pending", None) is not None:  # a job calling handle(): no inlining inside
            return self._handle(raw)
        local.pending = []
        try:
            out = self._handle(raw)
            while local.pending:
                task_id, ref, msg = local.pending.pop(0)
                self._handle_one(task_id, ref, msg)
            return out
        finally:
            local.pending = None

    def _handle(self, raw: Any) -> str:
        store = self.backend.store
        text = raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else str(raw)
        try:
            msg = decode(raw)
        except ValueError as exc:
            log.warning("refused message %.200r: %s", text, exc)
            store.reject(text, f"refused: {exc}", time.time())
            observe.rejected(self.backend, text, f"refused: {exc}")
            return "rejected"
        if not msg.is_ticket:
            return self._handle_one(msg.task_id, msg.ref, text)
        start = store.take(msg.queue, msg.ticket, time.time())
        if not start.run:
            observe.skipped(self.backend, "", "", start.reason)
            return f"skipped:{start.reason}"
        outcomes: list[str] = []
        budget = start.batch  # jobs of this task in a row (per_message), then the queue's
        went_on, until = 0, time.time() + self.go_on_seconds
        while start.run:
            task_id, ref = start.task_id, start.ref
            w = observe.begin(self.backend, task_id, ref, start, observe.job_message(self.backend, task_id, ref))
            try:
                result_text, error = self._execute(task_id, ref, start)
                budget -= 1
                now = time.time()
                if budget > 0:
                    d, start = store.take_next(task_id, ref, start.attempt, now, result=result_text, error=error)
                elif went_on < self.go_on_jobs and now < until and not self._local.pending:
                    d, start = store.take_next(task_id, ref, start.attempt, now, result=result_text, error=error,
                                               go_on=True)
                    went_on += 1
                    budget = start.batch
                else:
                    d = store.finish(task_id, ref, start.attempt, now, result=result_text, error=error)
                    start = Start(False, "batch-done")
                self.dispatch(d)
            except BaseException as exc:
                if w is not None:
                    w.abort(exc)
                raise
            if w is not None:
                w.end(error, d)
            if start.run:
                crash_point("packed.between")
            outcomes.append("failed" if error is not None else "succeeded")
        return outcomes[0] if len(set(outcomes)) == 1 else ",".join(outcomes)

    def _handle_one(self, task_id: str, ref: str, text: str) -> str:
        """A finalizer or failure callback (or a job ref, which the store refuses: jobs
        start by ticket)."""
        store = self.backend.store
        start = store.start(task_id, ref, time.time())
        if not start.run:
            return self._not_started(task_id, ref, text, start)
        w = observe.begin(self.backend, task_id, ref, start, text)
        try:
            result_text, error = self._execute(task_id, ref, start)
            d = store.finish(task_id, ref, start.attempt, time.time(), result=result_text, error=error)
            self.dispatch(d)
        except BaseException as exc:  # the store or the queue failed: the watch still ends
            if w is not None:
                w.abort(exc)
            raise
        if w is not None:
            w.end(error, d)
        return "failed" if error is not None else "succeeded"

    def _not_started(self, task_id: str, ref: str, text: str, start: Start) -> str:
        if start.reason in ("task-missing", "job-missing"):
            what = "no task" if start.reason == "task-missing" else f"task has no job {ref}"
            self.backend.store.reject(
                text,
                f"{what}: {task_id!r} (deleted, expired, or never created)",
                time.time(),
            )
            observe.rejected(self.backend, text, f"{what}: {task_id!r}")
            return "rejected"
        observe.skipped(self.backend, task_id, ref, start.reason)
        return f"skipped:{start.reason}"

    def _execute(self, task_id: str, ref: str, start: Start) -> tuple[str | None, Failure | None]:
        """Call the job of a started attempt; return ``(result JSON, failure)``."""
        crash_point("started", ref)
        attempt = start.attempt
        fn_name = "?"
        try:
            spec = JobSpec.from_json(start.spec)
            fn_name = spec.fn
        except ValueError as exc:
            return None, _plain_failure(ref, fn_name, attempt, "InvalidJobSpec", f"arguments do not decode: {exc}")
        fn = lookup(spec.fn)
        if fn is None:
            err = _plain_failure(ref, spec.fn, attempt, "UnregisteredJob", unregistered_message(spec.fn))
            log.error("%s/%s: %s", task_id, ref, err.message, extra=observe.log_extra(task_id, ref, attempt))
            return None, err
        task = self.backend.get_task_handle(task_id)
        token = _current.set(JobContext(task=task, ref=ref, attempt=attempt))
        beat = self._heartbeat.add(task_id, ref, attempt)
        result_text: str | None = None
        error: Failure | None = None
        try:
            value = fn(*spec.args, **spec.kwargs)
            if start.keep_results:
                try:
                    result_text = json.dumps(value, allow_nan=False, separators=(",", ":"))
                except (TypeError, ValueError) as exc:
                    error = _plain_failure(
                        ref, spec.fn, attempt, "ResultNotJSON",
                        f"the task keeps results, and this job returned a {type(value).__name__}, "
                        f"which is not JSON: {exc}",
                    )
        except Exception as exc:  # the job's own failure: record it, never crash the worker
            error = failure_from(exc, ref, spec.fn, attempt)
        finally:
            self._heartbeat.remove(beat)
            _current.reset(token)
        if error is not None:
            error = replace(error, args=args_preview(spec.args, spec.kwargs))
            log.info("%s/%s attempt %d failed: %s: %s", task_id, ref, attempt, error.type, error.message,
                     extra=observe.log_extra(task_id, ref, attempt))
        crash_point("called", ref)
        return result_text, error

    def dispatch(self, d: Dispatch) -> None:
        crash_point("finished")
        pending = getattr(self._local, "pending", None)
        for part in d.parts():  # a child's end may also advance its parent (docs/nested.md)
            if (
                pending is not None
                and self.inline_followups
                and len(part.refs) == 1
                and part.refs[0][:1] in (FINALIZER, CALLBACK)
                and part.queue == d.queue  # run inline only what this worker's queue would bring
            ):
                pending.append((part.task_id, part.refs[0], observe.inline_message(part.task_id, part.refs[0])))
                if part.tickets:  # the tickets the same transition issued still go out now
                    self.backend.dispatch(Dispatch(part.task_id, part.queue, (), part.tickets))
                continue
            self.backend.dispatch(part)


class Recovery:
    """A background thread that hands out again whatever is due: expired leases of dead
    workers, retries whose backoff has passed, follow-ups that were never started.

    Every worker runs one; several at once are safe (each due item is claimed atomically)."""

    def __init__(self, backend: Backend, interval: float | None = None) -> None:
        self.backend = backend
        self.interval = interval if interval is not None else min(0.25, max(backend.store.lease / 4.0, 0.02))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Recovery:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="multistep-recovery", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                epoch.check(self.backend.store)
                self.backend.recover()
            except Exception:
                log.exception("recovery pass failed; trying again in %.1fs", self.interval)
