"""Prometheus metrics of multistep (``pip install "multistep[prometheus]"``).

Worker metrics, recorded from :mod:`multistep_core.hooks` events in each process that runs
jobs, served by ``multistep worker --metrics-port N`` on ``http://<host>:N/metrics``:

==================================== ========= ============================ =====================================
name                                 type      labels                       what
==================================== ========= ============================ =====================================
``multistep_jobs_total``             counter   queue, function, outcome     attempts ended (jobs, finalizers and
                                                                            callbacks; outcome succeeded, failed
                                                                            or interrupted)
``multistep_job_duration_seconds``   histogram queue, function              seconds from an attempt's start to its
                                                                            recorded outcome
``multistep_fanin_latency_seconds``  histogram queue                        seconds from the finish of a task's last
                                                                            job to the start of its first finalizer
``multistep_jobs_running``           gauge     queue                        attempts running now
``multistep_skipped_total``          counter   reason                       deliveries not run (duplicate,
                                                                            out-of-turn, cancelled, task-ended,
                                                                            retry-not-due, no-work)
``multistep_recovered_total``        counter   reason                       messages recovery sent again (ticket,
                                                                            finalizer, callback)
``multistep_rejected_total``         counter   (none)                       messages refused and recorded
==================================== ========= ============================ =====================================

The fan-in latency is observed where the first finalizer starts in the process whose job
finish decided it (the default: the runner runs it right there); a finalizer that goes
through the queue to another process is not observed.

With several worker processes (``-c N``) the command gives every process the same
``PROMETHEUS_MULTIPROC_DIR`` (a fresh temporary directory unless you set one) and serves
their sum (prometheus_client's multiprocess mode; gauges count live processes only).

Store metrics, from ``multistep metrics --port N`` (one exporter per store, anywhere):
``multistep_tasks{state}`` (gauge: tasks the store holds in each state) and
``multistep_jobs_pending{queue}`` (gauge: jobs of unfinished tasks waiting to start, by queue),
plus ``multistep_store_refresh_seconds`` (how long the last read took). They are read
from the store by a background thread every ``--interval`` seconds (default 15), never
on a scrape, so a scrape costs nothing however many tasks there are.
"""

from __future__ import annotations

import glob
import logging
import os
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from . import hooks
from .model import TaskState

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .backend import Backend
    from .model import Dispatch

log = logging.getLogger("multistep.prometheus")

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_lock = threading.Lock()
_metrics: dict[str, Any] = {}
_fanin: OrderedDict[str, float] = OrderedDict()  # task id -> when its last job's finish started f0


def _make(registry: CollectorRegistry | None = None) -> dict[str, Any]:
    kw: dict[str, Any] = {} if registry is None else {"registry": registry}
    return {
        "jobs": Counter("multistep_jobs_total", "Attempts of jobs, finalizers and callbacks that ended.",
                        ["queue", "function", "outcome"], **kw),
        "duration": Histogram("multistep_job_duration_seconds", "Seconds from an attempt's start to its outcome.",
                              ["queue", "function"], buckets=_BUCKETS, **kw),
        "fanin": Histogram("multistep_fanin_latency_seconds",
                           "Seconds from the last job's finish to the first finalizer's start.", ["queue"],
                           buckets=_BUCKETS, **kw),
        "running": Gauge("multistep_jobs_running", "Attempts running now.", ["queue"],
                         multiprocess_mode="livesum", **kw),
        "skipped": Counter("multistep_skipped_total", "Deliveries not run, by reason.", ["reason"], **kw),
        "recovered": Counter("multistep_recovered_total", "Messages sent again by recovery, by kind.", ["reason"], **kw),
        "rejected": Counter("multistep_rejected_total", "Messages refused and recorded.", **kw),
    }


def _m() -> dict[str, Any]:
    if not _metrics:
        with _lock:
            if not _metrics:
                _metrics.update(_make())
    return _metrics


_children: dict[tuple[str, str], tuple[Any, Any, Any, Any]] = {}


def _per_fn(queue: str, fn: str) -> tuple[Any, Any, Any, Any]:
    """The labelled children of one (queue, function): running gauge, succeeded and failed
    counters, duration histogram (looked up once, not per job)."""
    c = _children.get((queue, fn))
    if c is None:
        m = _m()
        c = _children[(queue, fn)] = (
            m["running"].labels(queue), m["jobs"].labels(queue, fn, "succeeded"), m["jobs"].labels(queue, fn, "failed"),
            m["duration"].labels(queue, fn),
        )
        if len(_children) > 10_000:  # label sets are bounded by the registry anyway
            _children.clear()
    return c


def _on_started(*, queue: str, fn: str, task_id: str, ref: str, **_: Any) -> None:
    _per_fn(queue, fn)[0].inc()
    if ref == "f0":
        with _lock:
            t = _fanin.pop(task_id, None)
        if t is not None:
            _m()["fanin"].labels(queue).observe(max(time.time() - t, 0.0))


def _on_finished(*, queue: str, fn: str, task_id: str, outcome: str, duration: float, followups: Dispatch,
                 **_: Any) -> None:
    running, ok, failed, hist = _per_fn(queue, fn)
    running.dec()
    if outcome == "succeeded":
        ok.inc()
    elif outcome == "failed":
        failed.inc()
    else:
        _m()["jobs"].labels(queue, fn, outcome).inc()
    hist.observe(duration)
    if followups and followups.refs and followups.refs[0] == "f0":
        with _lock:
            _fanin[task_id] = time.time()
            while len(_fanin) > 4096:
                _fanin.popitem(last=False)


def _on_skipped(*, reason: str, **_: Any) -> None:
    _m()["skipped"].labels(reason).inc()


def _on_recovered(*, reason: str, refs: list[str], tickets: int = 0, **_: Any) -> None:
    if refs:
        _m()["recovered"].labels(reason).inc(len(refs))
    if tickets:
        _m()["recovered"].labels("ticket").inc(tickets)


def _on_rejected(**_: Any) -> None:
    _m()["rejected"].inc()


_RECEIVERS = (
    (hooks.job_started, _on_started), (hooks.finalizer_started, _on_started),
    (hooks.job_finished, _on_finished), (hooks.finalizer_finished, _on_finished),
    (hooks.delivery_skipped, _on_skipped), (hooks.recovery_resent, _on_recovered),
    (hooks.message_rejected, _on_rejected),
)


def instrument() -> None:
    """Record the worker metrics in this process (idempotent)."""
    _m()
    for sig, fn in _RECEIVERS:
        sig.connect(fn)


def uninstrument() -> None:
    for sig, fn in _RECEIVERS:
        sig.disconnect(fn)


# -- serving a worker's metrics ------------------------------------------------------------
def _multiproc_registry(path: str) -> CollectorRegistry:
    from prometheus_client import multiprocess

    class _Live(multiprocess.MultiProcessCollector):  # type: ignore[misc, unused-ignore]
        """Sums every process's files; first drops the live gauges of processes that died
        (a replaced worker process must not keep counting as running)."""

        def collect(self) -> Iterator[Any]:
            for f in glob.glob(os.path.join(path, "gauge_live*_*.db")):
                pid = f.rsplit("_", 1)[-1][:-3]
                if pid.isdigit() and not _alive(int(pid)):
                    multiprocess.mark_process_dead(int(pid), path)  # type: ignore[no-untyped-call, unused-ignore]
            return super().collect()  # type: ignore[no-untyped-call, no-any-return, unused-ignore]

    registry = CollectorRegistry()
    _Live(registry, path)  # type: ignore[no-untyped-call, unused-ignore]
    return registry


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def serve_worker_metrics(port: int, addr: str = "0.0.0.0") -> None:
    """Serve the sum of every worker process's metrics on ``port`` (after
    :func:`multistep_core.observe.prepare_worker_metrics`)."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    registry = _multiproc_registry(path) if path else None
    if registry is None:
        start_http_server(port, addr)
    else:
        start_http_server(port, addr, registry=registry)
    log.info("serving worker metrics on http://%s:%d/metrics", addr, port)


# -- the store exporter --------------------------------------------------------------------
class StoreCollector:
    """``multistep_tasks{state}`` and ``multistep_jobs_pending{queue}`` from a snapshot that a
    background thread refreshes every ``interval`` seconds (a scrape only reads the snapshot)."""

    def __init__(self, backend: Backend, interval: float = 15.0, limit: int = 100_000) -> None:
        self.backend = backend
        self.interval = interval
        self.limit = limit
        self.tasks: dict[str, int] = {}
        self.pending: dict[str, int] = {}
        self.took = 0.0
        self.refreshed = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> None:
        t0 = time.perf_counter()
        tasks: dict[str, int] = {}
        pending: dict[str, int] = {}
        for state in TaskState:
            rows = self.backend.list_tasks(state, self.limit)
            tasks[state.value] = len(rows)
            if not state.terminal:
                for p in rows:
                    q = p.options.queue
                    pending[q] = pending.get(q, 0) + p.pending
        self.tasks, self.pending = tasks, pending
        self.took = time.perf_counter() - t0
        self.refreshed.set()

    def start(self) -> StoreCollector:
        """Read the store once now (so the first scrape has figures, and a store that cannot be
        read is an error at start), then every ``interval`` seconds in a thread."""
        self.refresh()

        def loop() -> None:
            while not self._stop.wait(self.interval):
                try:
                    self.refresh()
                except Exception:
                    log.exception("reading the store for metrics failed; trying again in %.0fs", self.interval)

        self._thread = threading.Thread(target=loop, name="multistep-metrics", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily("multistep_tasks", "Tasks the store holds, by state.", labels=["state"])
        for state, n in sorted(self.tasks.items()):
            g.add_metric([state], n)
        yield g
        p = GaugeMetricFamily("multistep_jobs_pending", "Jobs of unfinished tasks waiting to start, by queue.",
                              labels=["queue"])
        for q, n in sorted(self.pending.items()):
            p.add_metric([q], n)
        yield p
        yield GaugeMetricFamily("multistep_store_refresh_seconds", "Seconds the last read of the store took.",
                                value=self.took)


def serve_store_metrics(backend: Backend, port: int, addr: str = "0.0.0.0", interval: float = 15.0) -> StoreCollector:
    """Start the store exporter's refresh thread and HTTP server; returns the collector."""
    registry = CollectorRegistry()
    collector = StoreCollector(backend, interval).start()
    registry.register(collector)
    start_http_server(port, addr, registry=registry)
    log.info("serving store metrics on http://%s:%d/metrics", addr, port)
    return collector
