"""Jobs of ``benchmarks/observability.py`` (imported by its producer and worker processes).

With ``OBS_BENCH_SDK=1`` the importing process installs the OpenTelemetry SDK with a batch
span processor and an exporter that drops every span: the cost of recording spans, without
the cost of any backend they would be sent to."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from multistep_core import job


@job(name="obsbench.noop")
def noop(i: int) -> None:
    return None


@job(name="obsbench.fin")
def fin() -> None:
    return None


def _sdk() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    trace.set_tracer_provider(provider)


if os.environ.get("OBS_BENCH_SDK") == "1":
    _sdk()
