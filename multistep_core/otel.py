"""OpenTelemetry tracing of multistep tasks (``pip install "multistep[otel]"``).

Built on :mod:`multistep_core.hooks` and ``opentelemetry-api`` only; spans are recorded by the
SDK tracer provider the application configures (``opentelemetry-sdk``, or an
auto-instrumentation agent).

When it is on (``MULTISTEP_OTEL``):

* ``auto`` (default): the first :class:`~multistep_core.backend.Backend` created, or the first
  job started, in a process while an SDK tracer provider is set connects it (set the provider
  at startup, e.g. in the job module the worker imports). With the API alone nothing is
  connected: tracing costs one ``isinstance`` check per job.
* ``on``: connected at the first Backend even without an SDK (the API's no-op spans then cost
  a few microseconds per job); an error if ``opentelemetry-api`` is missing.
* ``off``: never connected by the environment.

:func:`instrument` and :func:`uninstrument` connect and disconnect it in code at any time.

Spans (one task is one trace, across processes and queues):

* ``create <queue>`` (PRODUCER) when a task is created; the root of the task's trace unless
  a span was current in the creating code.
* ``send <queue>`` (PRODUCER) per batch of added jobs (``add_job``, each chunk of
  ``add_jobs``), a child of the task's ``create`` span in the creating process, else of the
  current span (a job adding jobs): it times storing the batch and releasing its tickets.
* ``job <fn>``, ``finalizer <fn>``, ``callback <fn>`` (CONSUMER) in the worker, around the
  function call and the recorded outcome. Jobs wait in the store and a worker takes one by
  presenting a ticket, which belongs to no task (docs/fairness.md), so a job's parent is the
  task's ``create`` span: its W3C ``traceparent`` is kept with the task
  (``TaskOptions.trace``) and read once per task per worker process. The jobs are siblings of
  the ``send`` spans, whatever process or batch added them.
* A finalizer or callback is sent by ref; its message carries the parent (``"tp"``, 55
  characters: the ``create`` span too) and links to the job whose finish started it (``"tl"``),
  plus up to :data:`MAX_LINKS` - 1 other jobs of the task that ran in the same worker process;
  the next finalizer links to the previous one. (Links stay bounded: a 100,000-job task does
  not make a 100,000-link span or a message that grows with the task.)

Attributes follow the OpenTelemetry messaging conventions: ``messaging.system`` (``rq``,
``celery``, ``dramatiq``, ``embedded``), ``messaging.destination.name`` (the queue),
``messaging.operation.type`` (``create``/``send``/``process``), ``messaging.operation.name``,
``messaging.message.id`` (``<task>/<ref>``), ``messaging.batch.message_count`` (send), plus
``multistep.task_id``, ``multistep.ref``, ``multistep.attempt``, ``multistep.function``,
``multistep.kind`` and ``multistep.outcome``. A failed attempt sets the span's status to
ERROR and records the exception (type, message, traceback) as an ``exception`` event.

Recovery sends a lost worker's job again as a ticket: the job then joins its task's trace
like any other. A finalizer or callback it sends again carries the task's context (the
create span's, read from the task when this process has no span of the task at hand).
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from . import hooks

if TYPE_CHECKING:
    from .backend import Backend
    from .model import Dispatch, Failure

#: Most links a finalizer span gets (the job that started it first).
MAX_LINKS = 16
_MAX_TASKS = 1024

_tracer = trace.get_tracer("multistep")
_local = threading.local()
_lock = threading.Lock()
_created: OrderedDict[str, SpanContext] = OrderedDict()  # task id -> create span (producer side)
_ran: OrderedDict[str, deque[SpanContext]] = OrderedDict()  # task id -> recent job spans here
_instrumented = False


def system_of(backend: Backend) -> str:
    """``messaging.system`` of a backend: the queue library, or ``embedded``."""
    kind = backend.name.split("+", 1)[0]
    return "embedded" if kind in ("memory", "sqlite", "eager", "redis") else kind


def traceparent(sc: SpanContext) -> str:
    return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"


def parse_traceparent(tp: str) -> SpanContext | None:
    try:
        version, trace_id, span_id, flags = tp.split("-")
        sc = SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=TraceFlags(int(flags, 16)))
    except ValueError:
        return None
    return sc if sc.is_valid and version == "00" else None


def _field(message: str, name: str) -> str | None:
    key = f'"{name}":"'
    i = message.find(key)
    if i < 0:
        return None
    i += len(key)
    j = message.find('"', i)
    return message[i:j] if j > i else None


def _stack() -> list[tuple[Any, object, str | None, int]]:
    """This thread's consumer spans: (span, context token, parent traceparent, how many send
    spans were open when it started)."""
    st: list[tuple[Any, object, str | None, int]] | None = getattr(_local, "stack", None)
    if st is None:
        st = _local.stack = []
    return st


def _remember(table: OrderedDict[str, Any], key: str, value: Any) -> None:
    with _lock:
        table[key] = value
        table.move_to_end(key)
        while len(table) > _MAX_TASKS:
            table.popitem(last=False)


# -- what goes into messages ---------------------------------------------------------------
def trace_context(task_id: str = "") -> tuple[str | None, str | None]:
    """``(parent, link)`` traceparents for a message of ``task_id`` being encoded in this thread:
    the open send span, else the running job's parent (linking the job), else the task's
    create span if this process made it (a seal that starts the finalizers), else the current
    span. (With none, :func:`multistep_core.observe.trace_members` uses the task's own.)"""
    sending = getattr(_local, "sending", None) or ()
    st = _stack()
    if sending and (not st or st[-1][3] < len(sending)):  # a send span opened inside the job, or no job
        return sending[-1], None
    if st:
        span, _token, parent, _depth = st[-1]
        sc = span.get_span_context()
        own = traceparent(sc) if sc.is_valid else None
        return (parent or own), own
    if task_id:
        with _lock:
            root = _created.get(task_id)
        if root is not None:
            return traceparent(root), None
    sc = trace.get_current_span().get_span_context()
    return (traceparent(sc) if sc.is_valid else None), None


# -- producer side -------------------------------------------------------------------------
def create_span(*, backend: Backend, task_id: str, queue: str, **_: Any) -> str | None:
    """Open and end the task's ``create`` span (once per task); its traceparent, kept with the
    task, is the parent of every job a worker takes for it by ticket."""
    with _lock:
        have = _created.get(task_id)
    if have is not None:
        return traceparent(have)
    span = _tracer.start_span(
        f"create {queue}", kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": system_of(backend), "messaging.destination.name": queue,
            "messaging.operation.type": "create", "messaging.operation.name": "create",
            "multistep.task_id": task_id,
        },
    )
    sc = span.get_span_context()
    span.end()
    if sc.is_valid:
        _remember(_created, task_id, sc)
        return traceparent(sc)
    return None


def _on_created(*, backend: Backend, task_id: str, queue: str, **_: Any) -> None:
    create_span(backend=backend, task_id=task_id, queue=queue)


def _on_added(*, backend: Backend, task_id: str, queue: str, kind: str, refs: list[str], **_: Any) -> None:
    if kind != "job":
        return
    with _lock:
        root = _created.get(task_id)
    ctx = trace.set_span_in_context(trace.NonRecordingSpan(root)) if root is not None else None
    span = _tracer.start_span(
        f"send {queue}", context=ctx, kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": system_of(backend), "messaging.destination.name": queue,
            "messaging.operation.type": "send", "messaging.operation.name": "send",
            "messaging.batch.message_count": len(refs), "multistep.task_id": task_id,
            "multistep.refs": f"{refs[0]}..{refs[-1]}" if len(refs) > 1 else (refs[0] if refs else ""),
        },
    )
    sc = span.get_span_context()
    sending = getattr(_local, "sending", None)
    if sending is None:
        sending = _local.sending = []
    sending.append(traceparent(sc) if sc.is_valid else None)
    st = getattr(_local, "send_spans", None)
    if st is None:
        st = _local.send_spans = []
    st.append(span)


def _on_sent(**_: Any) -> None:
    st = getattr(_local, "send_spans", None)
    if st:
        st.pop().end()
        _local.sending.pop()


# -- worker side ---------------------------------------------------------------------------
def _on_started(*, backend: Backend, task_id: str, ref: str, attempt: int, fn: str, kind: str, queue: str,
                message: str, **_: Any) -> None:
    tp = _field(message, "tp")
    tl = _field(message, "tl")
    parent = parse_traceparent(tp) if tp else None
    ctx = trace.set_span_in_context(trace.NonRecordingSpan(parent)) if parent is not None else None
    links: list[Link] = []
    if kind != "job":
        first = parse_traceparent(tl) if tl else None
        seen = set()
        if first is not None:
            links.append(Link(first, {"multistep.link": "started-by"}))
            seen.add(first.span_id)
        if ref == "f0" or kind == "callback":
            with _lock:
                recent = list(_ran.get(task_id, ()))
            for sc in reversed(recent):
                if len(links) >= MAX_LINKS:
                    break
                if sc.span_id not in seen:
                    seen.add(sc.span_id)
                    links.append(Link(sc, {"multistep.link": "waited-for"}))
    span = _tracer.start_span(
        f"{kind} {fn}", context=ctx, kind=SpanKind.CONSUMER, links=links,
        attributes={
            "messaging.system": system_of(backend), "messaging.destination.name": queue,
            "messaging.operation.type": "process", "messaging.operation.name": "process",
            "messaging.message.id": f"{task_id}/{ref}", "multistep.task_id": task_id, "multistep.ref": ref,
            "multistep.attempt": attempt, "multistep.function": fn, "multistep.kind": kind,
        },
    )
    token = otel_context.attach(trace.set_span_in_context(span, ctx))
    _stack().append((span, token, tp if parent is not None else None, len(getattr(_local, "sending", None) or ())))


def _on_finished(*, task_id: str, kind: str, outcome: str, error: Failure | None, followups: Dispatch,
                 **_: Any) -> None:
    st = _stack()
    if not st:
        return
    span, token, _parent, _depth = st.pop()
    try:
        span.set_attribute("multistep.outcome", outcome)
        if followups and followups.refs:
            span.set_attribute("multistep.followups", ",".join(followups.refs[:8]))
        if error is not None:
            span.add_event("exception", {
                "exception.type": error.type, "exception.message": error.message,
                "exception.stacktrace": error.traceback,
            })
            span.set_status(Status(StatusCode.ERROR, f"{error.type}: {error.message}"[:500]))
        sc = span.get_span_context()
        if kind == "job" and sc.is_valid:
            with _lock:
                q = _ran.get(task_id)
                if q is None:
                    q = _ran[task_id] = deque(maxlen=MAX_LINKS)
                    while len(_ran) > _MAX_TASKS:
                        _ran.popitem(last=False)
                q.append(sc)
    finally:
        span.end()
        otel_context.detach(token)  # type: ignore[arg-type, unused-ignore]


_RECEIVERS = (
    (hooks.task_created, _on_created), (hooks.jobs_added, _on_added), (hooks.jobs_sent, _on_sent),
    (hooks.job_started, _on_started), (hooks.finalizer_started, _on_started),
    (hooks.job_finished, _on_finished), (hooks.finalizer_finished, _on_finished),
)


def instrument() -> None:
    """Trace multistep in this process (idempotent)."""
    global _instrumented
    for sig, fn in _RECEIVERS:
        sig.connect(fn)
    hooks.trace_context = trace_context
    hooks.trace_create = create_span
    _instrumented = True


def uninstrument() -> None:
    """Stop tracing multistep in this process."""
    global _instrumented
    for sig, fn in _RECEIVERS:
        sig.disconnect(fn)
    if hooks.trace_context is trace_context:
        hooks.trace_context = None
    if hooks.trace_create is create_span:
        hooks.trace_create = None
    _instrumented = False


def instrumented() -> bool:
    return _instrumented
