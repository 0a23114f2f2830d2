"""Print the trace of a small task as a tree (the example in docs/observability.md).

    python -m benchmarks.trace_tree                       # embedded backend, in this process
    python -m benchmarks.trace_tree --backend rq+redis://127.0.0.1:6379/10   # + 2 RQ workers

Runs a task of three jobs (one fails, policy ``continue``) and two finalizers with the
OpenTelemetry SDK recording spans: in this process for the producer (and the embedded
backend's jobs); with a queue backend, in ``multistep worker -c 2`` processes that write
their spans to a file (``benchmarks/trace_jobs.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any


def _dict(s: Any) -> dict[str, Any]:
    return {
        "name": s.name, "kind": s.kind.name, "span": f"{s.context.span_id:016x}",
        "trace": f"{s.context.trace_id:032x}",
        "parent": f"{s.parent.span_id:016x}" if s.parent is not None else None,
        "links": [f"{lk.context.span_id:016x}" for lk in s.links], "status": s.status.status_code.name,
        "attributes": dict(s.attributes or {}), "start": s.start_time, "end": s.end_time, "pid": os.getpid(),
    }


def tree(spans: list[dict[str, Any]]) -> str:
    """Spans as an indented tree: name, kind, duration, attributes that matter, links by ref."""
    by_id = {s["span"]: s for s in spans}
    kids: dict[str | None, list[dict[str, Any]]] = {}
    for s in spans:
        kids.setdefault(s["parent"] if s["parent"] in by_id else None, []).append(s)
    label = {s["span"]: s["attributes"].get("multistep.ref") or s["name"] for s in spans}
    t0 = min(s["start"] for s in spans)
    lines = [f"trace {spans[0]['trace']}"]

    def walk(parent: str | None, prefix: str) -> None:
        children = sorted(kids.get(parent, []), key=lambda x: x["start"])
        for i, s in enumerate(children):
            last = i == len(children) - 1
            a = s["attributes"]
            bits = [f"{s['kind'].lower()}", f"+{(s['start'] - t0) / 1e6:.1f}ms", f"{(s['end'] - s['start']) / 1e6:.1f}ms"]
            if "multistep.ref" in a:
                bits.append(f"ref={a['multistep.ref']} attempt={a['multistep.attempt']} pid={s['pid']}")
            if s["status"] == "ERROR":
                bits.append("status=ERROR")
            if s["links"]:
                bits.append("links=" + ",".join(label.get(x, x[:6]) for x in s["links"]))
            lines.append(f"{prefix}{'└─' if last else '├─'} {s['name']}  [{' '.join(bits)}]")
            walk(s["span"], prefix + ("   " if last else "│  "))

    walk(None, "")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="memory://?threads=2")
    args = ap.parse_args(argv)
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    from benchmarks import trace_jobs
    from multistep_core import connect

    span_file = os.path.join(tempfile.mkdtemp(prefix="multistep-trace-"), "spans.jsonl")
    worker = None
    url = args.backend
    if not url.startswith(("memory", "sqlite", "eager")):
        url += ("&" if "?" in url else "?") + f"prefix=trace{uuid.uuid4().hex[:6]}"
        worker = subprocess.Popen(
            [sys.executable, "-m", "multistep_core", "--backend", url, "worker", "benchmarks.trace_jobs", "-q", "demo",
             "-c", "2"], env=dict(os.environ, TRACE_SPANS_FILE=span_file), start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    backend = connect(url)
    try:
        with backend.create_task(policy="continue", queue="demo") as task:
            task.add_jobs(trace_jobs.resize, [1, 2, -3])
            task.add_finalization_job(trace_jobs.publish, "a")
            task.add_finalization_job(trace_jobs.publish, "b")
        task.wait(timeout=60)
        deadline = time.monotonic() + 30
        while True:
            spans = [_dict(s) for s in exporter.get_finished_spans()]
            if os.path.exists(span_file):
                with open(span_file) as f:
                    spans += [json.loads(x) for x in f]
            if len([s for s in spans if s["attributes"].get("multistep.ref", "").startswith("f")]) >= 2:
                break
            if time.monotonic() > deadline:
                raise SystemExit("the finalizer spans did not arrive")
            time.sleep(0.05)
    finally:
        backend.close()
        if worker is not None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=60)
    print(tree(spans))


if __name__ == "__main__":
    main()
