"""Hooks: what happens inside multistep, as events you can subscribe to.

Each event is a :class:`Signal`. Connect a function to it, and the function is called, in
the process and thread where the event happens, with keyword arguments describing it::

    from multistep_core import hooks

    @hooks.job_finished.connect
    def slow_jobs(*, task_id, ref, fn, duration, outcome, **kwargs):
        if duration > 10:
            log.warning("%s/%s (%s) took %.1fs: %s", task_id, ref, fn, duration, outcome)

    hooks.job_finished.disconnect(slow_jobs)

Always accept ``**kwargs``: events may gain arguments. A receiver that raises is logged
(logger ``multistep.hooks``) and skipped; it never fails a job, a transition or another
receiver. Receivers run synchronously: keep them short. With no receiver connected an
event costs one truth test at its call site.

The OpenTelemetry tracing (:mod:`multistep_core.otel`) and the Prometheus metrics
(:mod:`multistep_core.prometheus`) are built on these events.

Events and their arguments (every event also gets ``backend``, the
:class:`~multistep_core.backend.Backend` it happened on):

``task_created``         ``task_id``, ``queue``, ``options`` (a :class:`~multistep_core.model.TaskOptions`)
                         — in the process that created the task.
``jobs_added``           ``task_id``, ``queue``, ``kind`` (``"job"``/``"finalizer"``), ``refs``
                         — after the store call, before the queue gets tickets for them.
``jobs_sent``            ``task_id``, ``queue``, ``refs`` — after the tickets the added jobs released
                         were sent (jobs wait in the store; docs/fairness.md).
``task_sealed``          ``task_id``.
``task_state_changed``   ``task_id``, ``state`` (a :class:`~multistep_core.model.TaskState`): the task
                         entered ``state``, reported once, by the process whose call made the change
                         (see "State changes" below).
``job_started``          ``task_id``, ``ref``, ``attempt``, ``fn``, ``kind`` (``"job"``), ``queue``,
                         ``message`` (the message text: for a job taken by ticket, its task's and ref's
                         message with the task's trace context, as if sent by ref) — the store
                         started the attempt; the call follows, in this thread.
``job_finished``         the same plus ``outcome`` (``"succeeded"``/``"failed"``, or ``"interrupted"``
                         when the store or the queue raised before the outcome was recorded), ``duration``
                         (seconds from the start to the recorded outcome: the call and the finish
                         transition), ``error`` (a :class:`~multistep_core.model.Failure` with the
                         exception's type, message and traceback, or None) and ``followups`` (the
                         :class:`~multistep_core.model.Dispatch` the store decided, already sent).
``finalizer_started``    as ``job_started``, ``kind`` is ``"finalizer"`` or ``"callback"``.
``finalizer_finished``   as ``job_finished``, for finalizers and failure callbacks.
``delivery_skipped``     ``task_id``, ``ref``, ``reason`` (``duplicate``, ``out-of-turn``, ``cancelled``,
                         ``task-ended``, ``retry-not-due``, ``no-work``), ``detail`` (the store's reason,
                         e.g. ``already-finished``): a delivery the store refused to start. For a ticket
                         (which belongs to no task) ``task_id`` and ``ref`` are ``""``: ``stale-ticket``
                         (taken already) is a ``duplicate``, ``capped``/``no-work`` are ``no-work``.
``message_rejected``     ``reason``, ``raw``: a message refused and recorded (malformed, forged, or
                         for a task or job that does not exist).
``recovery_resent``      ``task_id``, ``queue``, ``refs``, ``tickets``, ``reason``: what one recovery
                         dispatch sent again. ``refs``: a finalizer's or the failure callback's ref
                         (``reason`` ``finalizer``/``callback``); ``tickets``: how many tickets it
                         issued on ``queue`` (a lost worker's job, a retry whose backoff passed, a
                         ticket presumed lost; ``reason`` ``ticket`` when ``refs`` is empty, and
                         ``task_id`` is ``""`` for tickets no one task's event issued). Jobs start by
                         ticket, so a job is never resent by ref; the store's claim does not say
                         whether a lease expired, a backoff passed or a follow-up was never started.

State changes: the store decides transitions atomically and answers with the messages to
send, not the new state. The core reports ``task_state_changed`` where the caller can tell:
``open`` at creation, ``running``/``finalizing``/``succeeded`` after a seal, ``finalizing``
when a job's finish starts the first finalizer, ``failed`` when a finish starts the failure
callback, ``cancelled`` after a cancel, and after a retry. Where a finish sent nothing, the
runner reads the task once (only while a receiver is connected) and reports ``succeeded``
or ``failed`` if the task ended after the attempt started (two workers finishing a task's
last jobs at nearly the same time may then both report it).
A change made by recovery (a lost worker's job failing for good) is not reported.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger("multistep.hooks")

F = TypeVar("F", bound=Callable[..., Any])


class Signal:
    """One event. ``connect``/``disconnect`` receivers; ``send`` calls each with keyword arguments.

    A signal is true while it has receivers, so call sites write
    ``if hooks.job_started: hooks.job_started.send(...)`` and pay nothing otherwise."""

    def __init__(self, name: str, doc: str = "") -> None:
        self.name = name
        self.__doc__ = doc or f"The {name} event."
        self._receivers: tuple[Callable[..., Any], ...] = ()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<multistep signal {self.name} ({len(self._receivers)} receivers)>"

    def __bool__(self) -> bool:
        return bool(self._receivers)

    @property
    def receivers(self) -> tuple[Callable[..., Any], ...]:
        return self._receivers

    def connect(self, fn: F) -> F:
        """Call ``fn(**kwargs)`` at each event; returns ``fn``, so it works as a decorator.
        Connecting the same function twice connects it once."""
        if not callable(fn):
            from .errors import ConfigurationError

            raise ConfigurationError(f"a {self.name} receiver must be callable, not {type(fn).__name__}")
        with self._lock:
            if fn not in self._receivers:
                self._receivers = (*self._receivers, fn)
        return fn

    def disconnect(self, fn: Callable[..., Any]) -> bool:
        """Stop calling ``fn``. Returns False if it was not connected."""
        with self._lock:
            if fn not in self._receivers:
                return False
            self._receivers = tuple(r for r in self._receivers if r != fn)
            return True

    def send(self, **kwargs: Any) -> None:
        """Call every receiver; one that raises is logged and the others still run."""
        for fn in self._receivers:
            try:
                fn(**kwargs)
            except Exception:
                log.exception("multistep %s hook %r raised; ignored", self.name, fn)


task_created = Signal("task_created")
jobs_added = Signal("jobs_added")
jobs_sent = Signal("jobs_sent")
task_sealed = Signal("task_sealed")
task_state_changed = Signal("task_state_changed")
job_started = Signal("job_started")
job_finished = Signal("job_finished")
finalizer_started = Signal("finalizer_started")
finalizer_finished = Signal("finalizer_finished")
delivery_skipped = Signal("delivery_skipped")
message_rejected = Signal("message_rejected")
recovery_resent = Signal("recovery_resent")

ALL: tuple[Signal, ...] = (
    task_created, jobs_added, jobs_sent, task_sealed, task_state_changed, job_started, job_finished,
    finalizer_started, finalizer_finished, delivery_skipped, message_rejected, recovery_resent,
)

#: ``traceparent()`` of the tracing integration, or None: the W3C context (and an optional link)
#: that :meth:`Backend.dispatch` writes into each message. Set by :mod:`multistep_core.otel`.
trace_context: Callable[[str], tuple[str | None, str | None]] | None = None

#: Called by :meth:`Backend.create_task` before the task is stored, with ``backend``, ``task_id``
#: and ``queue``: returns the traceparent of the task's create span (kept with the task, so a job a
#: worker takes by ticket joins its task's trace), or None. Set by :mod:`multistep_core.otel`.
trace_create: Callable[..., str | None] | None = None

KINDS = {"j": "job", "f": "finalizer", "x": "callback"}


def skip_reason(detail: str) -> str:
    """The bounded category of a store's refusal to start a delivery."""
    if detail in ("already-finished", "already-running"):
        return "duplicate"
    if detail == "retry-not-due":
        return "retry-not-due"
    if detail == "stale-ticket":
        return "duplicate"  # a ticket taken already (a redelivery or a copy)
    if detail in ("capped", "no-work", "batch-done"):
        return "no-work"
    if detail == "task-cancelled":
        return "cancelled"
    if detail in ("task-finalizing", "task-open", "task-running"):
        return "out-of-turn"
    return "task-ended"
