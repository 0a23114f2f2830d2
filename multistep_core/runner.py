"""The runner: where a delivered message becomes a function call and an outcome.

Every queue's worker calls :meth:`Runner.handle` with the raw message body. The runner

1. decodes the message (anything malformed, forged or oversized is refused and
   recorded with :meth:`Store.reject`, never executed),
2. asks the store to *start* the job (one atomic call: skips duplicates, jobs of
   cancelled or failed tasks, finalizers out of turn; takes a lease otherwise),
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
from typing import TYPE_CHECKING, Any

from . import epoch
from .context import JobContext, _current
from .faults import crash_point
from .model import CALLBACK, FINALIZER, Dispatch, Failure, JobSpec, Start, decode_refs, encode_message
from .registry import lookup

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
                    log.exception("lease renewal failed for %s/%s", task_id, ref)


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


def _plain_failure(ref: str, fn: str, attempt: int, kind: str, message: str) -> Failure:
    return Failure(ref=ref, fn=fn, type=kind, message=message, attempt=attempt, at=time.time())


class Runner:
    """Executes delivered messages for one backend.

    A message names one job ref, or several (``"refs"``, sent by
    ``Task.add_jobs(..., per_message=k)``): those run one after another in the delivering
    thread, each with its own start and finish transition; the finish of one and the start
    of the next go to the store together (:meth:`Store.finish_then_start`).

    A follow-up that a transition made here decides (the next finalizer, the failure
    callback) is run by this thread right after, without a trip through the queue
    (``inline_followups``): the transition registered it with a grace period, so if this
    process dies first the core's recovery sends it through the queue as usual.
    """

    #: Run the finalizer/callback a finish decided in this thread instead of enqueuing it.
    inline_followups = True

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
                task_id, ref = local.pending.pop(0)
                self._handle_one(task_id, ref, encode_message(task_id, ref))
            return out
        finally:
            local.pending = None

    def _handle(self, raw: Any) -> str:
        store = self.backend.store
        text = raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else str(raw)
        try:
            task_id, refs = decode_refs(raw)
        except ValueError as exc:
            log.warning("refused message %.200r: %s", text, exc)
            store.reject(text, f"refused: {exc}", time.time())
            return "rejected"
        if len(refs) == 1:
            return self._handle_one(task_id, refs[0], text)
        outcomes: list[str] = []
        # The refs after the first get a due time now: if this worker dies before reaching
        # them, recovery sends them again (a queue need not redeliver the message).
        start = store.start_packed(task_id, refs, time.time())
        for i, ref in enumerate(refs):
            nxt = refs[i + 1] if i + 1 < len(refs) else None
            if not start.run:
                outcomes.append(self._not_started(task_id, ref, text, start))
                if start.reason == "task-missing":
                    break
                if nxt is not None:
                    start = store.start(task_id, nxt, time.time())
                continue
            result_text, error = self._execute(task_id, ref, start)
            now = time.time()
            if nxt is None:
                self.dispatch(store.finish(task_id, ref, start.attempt, now, result=result_text, error=error))
            else:
                d, start = store.finish_then_start(
                    task_id, ref, start.attempt, now, nxt, result=result_text, error=error
                )
                self.dispatch(d)
                crash_point("packed.between")
            outcomes.append("failed" if error is not None else "succeeded")
        return outcomes[0] if len(set(outcomes)) == 1 else ",".join(outcomes)

    def _handle_one(self, task_id: str, ref: str, text: str) -> str:
        store = self.backend.store
        start = store.start(task_id, ref, time.time())
        if not start.run:
            return self._not_started(task_id, ref, text, start)
        result_text, error = self._execute(task_id, ref, start)
        self.dispatch(store.finish(task_id, ref, start.attempt, time.time(), result=result_text, error=error))
        return "failed" if error is not None else "succeeded"

    def _not_started(self, task_id: str, ref: str, text: str, start: Start) -> str:
        if start.reason in ("task-missing", "job-missing"):
            what = "no task" if start.reason == "task-missing" else f"task has no job {ref}"
            self.backend.store.reject(
                text,
                f"{what}: {task_id!r} (deleted, expired, or never created)",
                time.time(),
            )
            return "rejected"
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
            err = _plain_failure(
                ref, spec.fn, attempt, "UnregisteredJob",
                f"no job function is registered as {spec.fn!r} in this worker; workers run only "
                "functions decorated with @job in the modules they import",
            )
            log.error("%s/%s: %s", task_id, ref, err.message)
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
            log.info("%s/%s attempt %d failed: %s: %s", task_id, ref, attempt, error.type, error.message)
        crash_point("called", ref)
        return result_text, error

    def dispatch(self, d: Dispatch) -> None:
        crash_point("finished")
        pending = getattr(self._local, "pending", None)
        if (
            pending is not None
            and self.inline_followups
            and len(d.refs) == 1
            and d.refs[0][:1] in (FINALIZER, CALLBACK)
        ):
            pending.append((d.task_id, d.refs[0]))
            return
        self.backend.dispatch(d)


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
