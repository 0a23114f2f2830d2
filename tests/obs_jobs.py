"""Job functions for tests/test_observability.py, imported by real worker processes.

When ``OBS_SPANS_FILE`` is set, importing this module configures the OpenTelemetry SDK in
the worker process with an exporter that appends each finished span as one JSON line to
that file (one ``write`` per span, so processes can share the file). When ``OBS_RAISING_HOOK``
is set, it connects a ``job_finished`` receiver that raises (it must not fail any job)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from multistep_core import current_job, hooks, job


@job(name="obs.work")
def work(x: int) -> int:
    if x < 0:
        raise ValueError(f"negative input {x}")
    return x * 2


@job(name="obs.pair")
def pair(path: str) -> None:
    """A barrier for two jobs: record this process, then wait until both are running (so they
    run at the same time, on two worker processes when each process runs one job at a time)."""
    import time

    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    deadline = time.monotonic() + 60
    while len(open(path).read().split()) < 2:
        if time.monotonic() > deadline:
            raise TimeoutError("the other job of the pair never started")
        time.sleep(0.01)


@job(name="obs.exit")
def exit_now() -> None:
    raise SystemExit(3)  # not an Exception: the runner lets it through, as a worker's shutdown would


@job(name="obs.fin")
def fin(label: str) -> None:
    path = os.environ.get("OBS_FIN_FILE")
    if path:
        with open(path, "a") as f:
            f.write(f"{label} {current_job().ref}\n")


def _setup_spans(path: str) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class FileExporter(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            for s in spans:
                line = json.dumps(span_dict(s)) + "\n"
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, line.encode())
                finally:
                    os.close(fd)
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
    trace.set_tracer_provider(provider)


def span_dict(s: Any) -> dict[str, Any]:
    """A finished span as plain JSON (ids in hex)."""
    return {
        "name": s.name,
        "kind": s.kind.name,
        "trace": f"{s.context.trace_id:032x}",
        "span": f"{s.context.span_id:016x}",
        "parent": f"{s.parent.span_id:016x}" if s.parent is not None else None,
        "links": [f"{lk.context.span_id:016x}" for lk in s.links],
        "status": s.status.status_code.name,
        "attributes": dict(s.attributes or {}),
        "events": [{"name": e.name, "attributes": dict(e.attributes or {})} for e in s.events],
        "start": s.start_time,
        "end": s.end_time,
        "pid": os.getpid(),
    }


if os.environ.get("OBS_SPANS_FILE"):
    _setup_spans(os.environ["OBS_SPANS_FILE"])

if os.environ.get("OBS_RAISING_HOOK"):

    @hooks.job_finished.connect
    def _raising(**kwargs: Any) -> None:
        raise RuntimeError("a broken hook")
