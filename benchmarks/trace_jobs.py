"""Jobs of ``benchmarks/trace_tree.py``. With ``TRACE_SPANS_FILE`` set (in its worker
processes) the SDK appends each finished span to that file as one JSON line."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from multistep_core import job


@job(name="demo.resize")
def resize(image: int) -> int:
    if image < 0:
        raise ValueError(f"image {image} does not exist")
    return image


@job(name="demo.publish")
def publish(where: str) -> None:
    return None


if os.environ.get("TRACE_SPANS_FILE"):
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    from benchmarks.trace_tree import _dict

    _path = os.environ["TRACE_SPANS_FILE"]

    class _File(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            for s in spans:
                fd = os.open(_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, (json.dumps(_dict(s)) + "\n").encode())
                finally:
                    os.close(fd)
            return SpanExportResult.SUCCESS

    _provider = TracerProvider()
    _provider.add_span_processor(SimpleSpanProcessor(_File()))
    trace.set_tracer_provider(_provider)


