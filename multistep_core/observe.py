"""Where the core emits :mod:`~multistep_core.hooks` events: the few lines in the runner and
the backend call the functions here, so the logic stays out of the dispatch code.

Every function is cheap when no receiver is connected: call sites test
``observe.watching()`` (or a signal) first. :func:`autoload` turns the built-in
integrations on from the environment (see docs/observability.md):

``MULTISTEP_OTEL``        ``auto`` (default: on once an OpenTelemetry SDK tracer provider is set
                          when a Backend is created), ``on`` (always, even with the API alone;
                          an error if ``opentelemetry-api`` is missing) or ``off``.
``MULTISTEP_PROMETHEUS``  ``1``: record the worker metrics (``multistep worker --metrics-port``
                          sets it, with ``PROMETHEUS_MULTIPROC_DIR``, for its worker processes).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import hooks
from .errors import BackendDriverMissing, ConfigurationError
from .model import CALLBACK, FINALIZER, Dispatch, Failure, Start, TaskState

if TYPE_CHECKING:
    from .backend import Backend

log = logging.getLogger("multistep.hooks")

_loaded = False
_otel_state = ""  # "" unknown, "absent", "done"
_load_lock = threading.Lock()


def autoload() -> None:
    """Connect the integrations the environment asks for (called by every new Backend); never
    raises for a missing optional library in ``auto`` mode.

    Tracing in ``auto`` mode is connected by the first Backend created, or the first job
    started, while an SDK tracer provider is set (before that, and with the API alone, nothing
    is connected and tracing costs one ``isinstance`` per job);
    :func:`multistep_core.otel.instrument` connects it at any time."""
    global _loaded, _otel_state
    if _loaded and _otel_state:
        return
    with _load_lock:
        mode = os.environ.get("MULTISTEP_OTEL", "auto").strip().lower()
        if mode not in ("auto", "on", "off", "1", "0", "true", "false", ""):
            raise ConfigurationError(
                f"MULTISTEP_OTEL={os.environ['MULTISTEP_OTEL']!r} is not one of auto, on, off "
                "(unset it for auto: tracing once an OpenTelemetry SDK is configured)"
            )
        prom = os.environ.get("MULTISTEP_PROMETHEUS", "").strip().lower()
        if prom not in ("1", "on", "true", "0", "off", "false", ""):
            raise ConfigurationError(
                f"MULTISTEP_PROMETHEUS={os.environ['MULTISTEP_PROMETHEUS']!r} is not one of 1, on, true, 0, off, "
                "false (1 records the worker metrics in this process)"
            )
        if not _otel_state:
            _otel_state = _load_otel(mode)
        if _loaded:
            return
        _loaded = True
        if prom in ("1", "on", "true"):
            try:
                from . import prometheus
            except ImportError as exc:
                raise BackendDriverMissing(
                    f"MULTISTEP_PROMETHEUS=1 needs prometheus-client ({exc}): pip install 'multistep[prometheus]'"
                ) from None
            prometheus.instrument()


def _load_otel(mode: str) -> str:
    if mode in ("off", "0", "false"):
        return "absent"
    if mode in ("on", "1", "true"):
        try:
            from . import otel
        except ImportError as exc:
            raise BackendDriverMissing(
                f"MULTISTEP_OTEL=on needs opentelemetry-api ({exc}): pip install 'multistep[otel]', "
                "or set MULTISTEP_OTEL=auto"
            ) from None
        otel.instrument()
        return "done"
    import importlib.util

    if importlib.util.find_spec("opentelemetry") is None:
        return "absent"
    try:
        from opentelemetry import trace
    except ImportError as exc:  # a broken or partial install: say so once
        log.warning("OpenTelemetry tracing is off: %s", exc)
        return "absent"
    if isinstance(trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        global _trace_mod
        _trace_mod = trace
        return ""  # no SDK yet: look again at the next Backend and the next job
    from . import otel

    otel.instrument()
    return "done"


_trace_mod: Any = None


def _recheck_otel() -> None:
    """``auto`` mode with the API alone so far: connect tracing once an SDK provider is set (a
    worker process may build its backend before importing the module that sets it)."""
    global _otel_state
    tr = _trace_mod
    if tr is None or isinstance(tr.get_tracer_provider(), (tr.ProxyTracerProvider, tr.NoOpTracerProvider)):
        return
    with _load_lock:
        if not _otel_state:
            from . import otel

            otel.instrument()
            _otel_state = "done"


def prepare_worker_metrics() -> str:
    """Before a worker starts its processes: set ``PROMETHEUS_MULTIPROC_DIR`` (a fresh temporary
    directory, removed at exit, unless set) and ``MULTISTEP_PROMETHEUS=1`` in this process's environment, which
    the worker processes inherit. Returns the directory."""
    import glob
    import sys
    import tempfile

    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or ""
    if not path:  # ours: removed when this process exits (not when a forked child does)
        import atexit
        import shutil

        path = tempfile.mkdtemp(prefix="multistep-metrics-")
        owner = os.getpid()

        def _cleanup() -> None:
            if os.getpid() == owner:
                shutil.rmtree(path, ignore_errors=True)

        atexit.register(_cleanup)
    os.makedirs(path, exist_ok=True)
    for f in glob.glob(os.path.join(path, "*.db")):  # counters of an earlier run would add up
        os.remove(f)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    os.environ["MULTISTEP_PROMETHEUS"] = "1"
    values = sys.modules.get("prometheus_client.values")
    if values is not None:  # imported already: metrics made from now on must use the directory
        values.ValueClass = values.get_value_class()  # type: ignore[attr-defined]
    return path


def watching() -> bool:
    return bool(hooks.job_started or hooks.job_finished or hooks.finalizer_started or hooks.finalizer_finished)


# -- where a message is encoded -----------------------------------------------------------
def trace_members(task_id: str = "", backend: Backend | None = None) -> str:
    """The optional ``"tp"`` (W3C traceparent) and ``"tl"`` (a link) members to append to a
    message, as JSON text (empty when tracing is off or there is no span to carry). With
    ``backend``, a message the integration has no context for (recovery resending a finalizer
    in a process that never saw its task) carries the task's own (:func:`task_trace`)."""
    get = hooks.trace_context
    if get is None:
        return ""
    try:
        tp, tl = get(task_id)
    except Exception:
        log.exception("the tracing integration failed to give a trace context; message sent without one")
        return ""
    if not tp and backend is not None and task_id:
        tp = task_trace(backend, task_id) or None
    out = ""
    if tp:
        out += f',"tp":"{tp}"'
    if tl:
        out += f',"tl":"{tl}"'
    return out


# -- which queue a task uses (the worker's messages do not say) ----------------------------
_queues: OrderedDict[str, str] = OrderedDict()
_queues_lock = threading.Lock()


def _task_fact(cache: OrderedDict[str, str], backend: Backend, task_id: str, fact: Callable[[Any], str],
               missing: str) -> str:
    """One fact of a task's options: one store read per task per process, then a bounded cache."""
    with _queues_lock:
        v = cache.get(task_id)
        if v is not None:
            cache.move_to_end(task_id)
            return v
    try:
        p = backend.store.progress(task_id)
    except Exception:
        p = None
    v = fact(p.options) if p is not None else missing
    with _queues_lock:
        cache[task_id] = v
        while len(cache) > 4096:
            cache.popitem(last=False)
    return v


def queue_of(backend: Backend, task_id: str) -> str:
    """The task's queue (read once per task per process)."""
    return _task_fact(_queues, backend, task_id, lambda o: o.queue, "unknown")


def note_queue(task_id: str, queue: str) -> None:
    with _queues_lock:
        _queues[task_id] = queue
        while len(_queues) > 4096:
            _queues.popitem(last=False)


# -- the runner --------------------------------------------------------------------------
def _fn_of(spec: str) -> str:
    """The function name of a stored spec (``{"fn":"name",...}`` as the core writes it, read
    without decoding the arguments; anything else through json)."""
    if spec.startswith('{"fn":"'):
        end = spec.find('"', 7)
        name = spec[7:end]
        if end > 7 and "\\" not in name:
            return name
    try:
        d = json.loads(spec)
    except ValueError:
        return "?"
    return d["fn"] if isinstance(d, dict) and isinstance(d.get("fn"), str) else "?"


class Watch:
    """One started attempt between its start and its recorded outcome."""

    __slots__ = ("args", "begin", "kind", "wall")

    def __init__(self, backend: Backend, task_id: str, ref: str, start: Start, message: str) -> None:
        fn = _fn_of(start.spec)
        self.kind = hooks.KINDS.get(ref[:1], "job")
        self.args: dict[str, Any] = dict(
            backend=backend, task_id=task_id, ref=ref, attempt=start.attempt, fn=fn, kind=self.kind,
            queue=queue_of(backend, task_id), message=message,
        )
        self.wall = time.time()
        self.begin = time.perf_counter()
        (hooks.job_started if self.kind == "job" else hooks.finalizer_started).send(**self.args)

    def end(self, error: Failure | None, followups: Dispatch) -> None:
        duration = time.perf_counter() - self.begin
        sig = hooks.job_finished if self.kind == "job" else hooks.finalizer_finished
        sig.send(**self.args, outcome="failed" if error is not None else "succeeded", duration=duration,
                 error=error, followups=followups)
        if hooks.task_state_changed:
            _state_after_finish(self.args["backend"], self.args["task_id"], followups, self.wall, self.kind)

    def abort(self, exc: BaseException) -> None:
        """The outcome could not be recorded (the store or the queue raised): end the watch with
        outcome ``"interrupted"``; the lease expires and recovery sends the job again."""
        import traceback

        args = self.args
        err = Failure(ref=args["ref"], fn=args["fn"], type=type(exc).__qualname__, message=str(exc)[:2000],
                      traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-8000:],
                      attempt=args["attempt"], at=time.time())
        sig = hooks.job_finished if self.kind == "job" else hooks.finalizer_finished
        sig.send(**args, outcome="interrupted", duration=time.perf_counter() - self.begin, error=err,
                 followups=Dispatch())


def begin(backend: Backend, task_id: str, ref: str, start: Start, message: str) -> Watch | None:
    if not _otel_state:
        _recheck_otel()
    if not watching() and not hooks.task_state_changed:
        return None
    return Watch(backend, task_id, ref, start, message)


def _changed(backend: Backend, task_id: str, state: TaskState) -> None:
    hooks.task_state_changed.send(backend=backend, task_id=task_id, state=state)


def _state_after_finish(backend: Backend, task_id: str, d: Dispatch, since: float, kind: str) -> None:
    refs = d.refs
    if refs and refs[0][:1] == FINALIZER and kind == "job":
        _changed(backend, task_id, TaskState.FINALIZING)
        return
    if refs and refs[0][:1] == CALLBACK:
        _changed(backend, task_id, TaskState.FAILED)
        return
    if refs:
        return
    p = backend.store.progress(task_id)
    if p is not None and p.state in (TaskState.SUCCEEDED, TaskState.FAILED) and p.finished_at is not None \
            and p.finished_at >= since:
        _changed(backend, task_id, p.state)


def skipped(backend: Backend, task_id: str, ref: str, detail: str) -> None:
    if hooks.delivery_skipped:
        hooks.delivery_skipped.send(backend=backend, task_id=task_id, ref=ref, reason=hooks.skip_reason(detail),
                                    detail=detail)


def rejected(backend: Backend, raw: str, reason: str) -> None:
    if hooks.message_rejected:
        hooks.message_rejected.send(backend=backend, raw=raw, reason=reason)


def creating(backend: Backend, task_id: str, queue: str) -> str:
    """The traceparent of the task's create span, kept with the task (``TaskOptions.trace``), or
    "" when nothing traces."""
    make = hooks.trace_create
    if make is None:
        return ""
    try:
        return make(backend=backend, task_id=task_id, queue=queue) or ""
    except Exception:
        log.exception("the tracing integration failed to open the task's span; the task has no trace")
        return ""


_traces: OrderedDict[str, str] = OrderedDict()


def job_message(backend: Backend, task_id: str, ref: str) -> str:
    """The message a job taken by ticket is reported with: its task and ref and, when tracing,
    the task's trace context (read from the task once per task per process)."""
    from .model import encode_message

    msg = encode_message(task_id, ref)
    if not _otel_state:
        _recheck_otel()  # the first job of a worker whose SDK was set up after its Backend
    if hooks.trace_context is None:
        return msg
    tp = task_trace(backend, task_id)
    return msg[:-1] + f',"tp":"{tp}"}}' if tp else msg


def task_trace(backend: Backend, task_id: str) -> str:
    """The traceparent of the task's create span (``TaskOptions.trace``), or "" (read once per
    task per process)."""
    return _task_fact(_traces, backend, task_id, lambda o: o.trace, "")


def inline_message(task_id: str, ref: str) -> str:
    """The message of a follow-up the runner runs in this thread (it carries the trace context
    taken when the follow-up was decided)."""
    from .model import encode_message

    msg = encode_message(task_id, ref)
    extra = trace_members(task_id)
    return msg[:-1] + extra + "}" if extra else msg


# -- the backend -------------------------------------------------------------------------
def created(backend: Backend, task_id: str, queue: str, options: Any) -> None:
    note_queue(task_id, queue)
    if hooks.task_created:
        hooks.task_created.send(backend=backend, task_id=task_id, queue=queue, options=options)
    if hooks.task_state_changed:
        _changed(backend, task_id, TaskState.OPEN)


def adding(backend: Backend, task_id: str, queue: str, kind: str, refs: list[str]) -> None:
    if hooks.jobs_added:
        hooks.jobs_added.send(backend=backend, task_id=task_id, queue=queue, kind=hooks.KINDS.get(kind, kind),
                              refs=refs)


def sent(backend: Backend, task_id: str, queue: str, refs: list[str]) -> None:
    if hooks.jobs_sent:
        hooks.jobs_sent.send(backend=backend, task_id=task_id, queue=queue, refs=refs)


def sealed(backend: Backend, task_id: str, d: Dispatch) -> None:
    if hooks.task_sealed:
        hooks.task_sealed.send(backend=backend, task_id=task_id)
    if not hooks.task_state_changed:
        return
    if d.refs:
        _changed(backend, task_id, TaskState.FAILED if d.refs[0][:1] == CALLBACK else TaskState.FINALIZING)
        return
    p = backend.store.progress(task_id)
    if p is not None:
        _changed(backend, task_id, p.state)


def cancelled(backend: Backend, task_id: str, done: bool) -> None:
    if done and hooks.task_state_changed:
        _changed(backend, task_id, TaskState.CANCELLED)


def retried(backend: Backend, task_id: str) -> None:
    if hooks.task_state_changed:
        p = backend.store.progress(task_id)
        if p is not None:
            _changed(backend, task_id, p.state)


def recovered(backend: Backend, d: Dispatch) -> None:
    if hooks.recovery_resent:
        hooks.recovery_resent.send(backend=backend, task_id=d.task_id, queue=d.queue, refs=list(d.refs),
                                   tickets=len(d.tickets),
                                   reason=hooks.KINDS.get(d.refs[0][:1], "job") if d.refs else "ticket")


def log_extra(task_id: str, ref: str | None = None, attempt: int | None = None) -> dict[str, Any]:
    """The structured fields of a runner log line (``extra=``), for JSON log formatters."""
    return {"task_id": task_id, "ref": ref, "attempt": attempt}
