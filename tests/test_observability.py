"""Hooks, OpenTelemetry traces and Prometheus metrics (docs/observability.md), in process on
the embedded backend and across real worker processes on RQ, Celery and Dramatiq."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CI
from services import REDIS_ADDR

from multistep_core import connect, hooks
from multistep_core.model import Dispatch, TaskOptions, decode

HERE = Path(__file__).parent


def _need(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        if CI:
            pytest.fail(f"{module} is not installed (CI is set: a missing library fails the run)", pytrace=False)
        pytest.skip(f"{module} is not installed (pip install 'multistep[all,test]')")


# -- OpenTelemetry in this process -------------------------------------------------------
_EXPORTER: Any = None


@pytest.fixture
def spans() -> Iterator[Any]:
    """The in-memory exporter of this process's SDK tracer provider (set once per session)."""
    global _EXPORTER
    _need("opentelemetry.sdk")
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from multistep_core import otel

    if _EXPORTER is None:
        _EXPORTER = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    from multistep_core import observe

    was = otel.instrumented()
    otel.instrument()
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()
    if not was:  # later tests of this session run untraced, as they would without this fixture
        otel.uninstrument()
        observe._otel_state = "absent"


def _dicts(exporter: Any) -> list[dict[str, Any]]:
    import obs_jobs

    return [obs_jobs.span_dict(s) for s in exporter.get_finished_spans()]


def _check_task_trace(spans: list[dict[str, Any]], task_id: str, system: str, queue: str) -> None:
    """The structure every backend must produce for the obs task (jobs 1, 2, -3 under policy
    continue, then finalizers a and b)."""
    mine = [s for s in spans if s["attributes"].get("multistep.task_id") == task_id]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for s in mine:
        by_name.setdefault(s["name"].split(" ")[0], []).append(s)
    assert {s["trace"] for s in mine} == {mine[0]["trace"]}, "one task, one trace"
    (create,) = by_name["create"]
    (send,) = by_name["send"]
    assert create["kind"] == "PRODUCER" and send["kind"] == "PRODUCER"
    assert send["parent"] == create["span"]
    assert send["attributes"]["messaging.batch.message_count"] == 3
    jobs = {s["attributes"]["multistep.ref"]: s for s in by_name["job"]}
    fins = {s["attributes"]["multistep.ref"]: s for s in by_name["finalizer"]}
    assert sorted(jobs) == ["j0", "j1", "j2"] and sorted(fins) == ["f0", "f1"]
    for s in [*jobs.values(), *fins.values()]:
        a = s["attributes"]
        # a worker takes a job by ticket (which belongs to no task): every job and finalizer is
        # a child of the task's create span, whose context the task keeps (TaskOptions.trace)
        assert s["kind"] == "CONSUMER" and s["parent"] == create["span"]
        assert a["messaging.system"] == system and a["messaging.destination.name"] == queue
        assert a["messaging.operation.type"] == "process" and a["multistep.attempt"] == 1
        assert a["messaging.message.id"] == f"{task_id}/{a['multistep.ref']}"
    assert jobs["j2"]["status"] == "ERROR" and jobs["j2"]["attributes"]["multistep.outcome"] == "failed"
    (exc,) = [e for e in jobs["j2"]["events"] if e["name"] == "exception"]
    assert exc["attributes"]["exception.type"] == "ValueError" and "negative input -3" in exc["attributes"]["exception.message"]
    assert all(jobs[r]["status"] == "UNSET" for r in ("j0", "j1"))
    # f0 links first to the job whose finish started it (the one whose span lists f0 as a
    # follow-up), then to other jobs seen in its process; when the seal started it, only those
    trigger = [s for s in jobs.values() if "f0" in s["attributes"].get("multistep.followups", "").split(",")]
    if trigger:
        assert fins["f0"]["links"][0] == trigger[0]["span"]
    assert set(fins["f0"]["links"]) <= {s["span"] for s in jobs.values()}
    assert fins["f1"]["links"] == [fins["f0"]["span"]]
    assert fins["f0"]["attributes"]["multistep.function"] == "obs.fin"


def _obs_task(backend: Any, queue: str) -> Any:
    import obs_jobs

    with backend.create_task(policy="continue", queue=queue) as task:
        task.add_jobs(obs_jobs.work, [1, 2, -3])
        task.add_finalization_job(obs_jobs.fin, "a")
        task.add_finalization_job(obs_jobs.fin, "b")
    return task


def test_embedded_task_is_one_trace_with_jobs_under_the_create_span_and_linked_finalizers(spans: Any) -> None:
    backend = connect("memory://?threads=2")
    try:
        task = _obs_task(backend, "default")
        assert task.wait(timeout=30).state == "succeeded"
        deadline = time.monotonic() + 10
        while len([s for s in _dicts(spans) if s["name"].startswith("finalizer")]) < 2:
            assert time.monotonic() < deadline, _dicts(spans)
            time.sleep(0.01)
        _check_task_trace(_dicts(spans), task.id, "embedded", "default")
    finally:
        backend.close()


def test_a_task_created_inside_a_span_joins_that_trace(spans: Any) -> None:
    from opentelemetry import trace

    backend = connect("eager://")
    try:
        with trace.get_tracer("test").start_as_current_span("request") as outer:
            task = _obs_task(backend, "default")
        assert task.state == "succeeded"
        rows = _dicts(spans)
        assert {s["trace"] for s in rows} == {f"{outer.get_span_context().trace_id:032x}"}
        # eager: every job ran inside add_jobs, and f0 still links to the job that started it first
        _check_task_trace(rows, task.id, "embedded", "default")
    finally:
        backend.close()


def test_messages_carry_a_fixed_size_trace_context_and_bad_ones_are_refused() -> None:
    tp = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    trace = f',"tp":"{tp}","tl":"{tp}"'
    d = Dispatch("t", "q", ("f0", "f99999"), (1, 2))
    plain, traced = d.messages(), d.messages(trace)
    # tickets belong to no task and carry no trace; refs carry it, at a size independent of the task
    assert [len(b) - len(a) for a, b in zip(plain, traced, strict=True)] == [0, 0, len(trace), len(trace)]
    m = decode(traced[3])
    assert (m.task_id, m.ref, m.tp, m.tl) == ("t", "f99999", tp, tp)
    assert json.loads(traced[2])["tp"] == tp
    # a job a worker takes by ticket joins its task's trace: the task keeps the create span's context
    assert TaskOptions(trace=tp).trace == tp
    from multistep_core.errors import InvalidMessage

    with pytest.raises(InvalidMessage, match="'tp' must be a W3C traceparent"):
        decode('{"v":1,"task":"t","ref":"j0","tp":"00-zz"}')
    with pytest.raises(ValueError, match="trace must be a W3C traceparent"):
        TaskOptions(trace="00-zz")


# -- hooks ---------------------------------------------------------------------------------
def test_hooks_report_each_event_and_a_raising_hook_never_fails_a_job(caplog: pytest.LogCaptureFixture) -> None:
    import obs_jobs

    from multistep_core.model import encode_message

    events: list[tuple[str, dict[str, Any]]] = []

    def recorder(name: str) -> Callable[..., None]:
        def rec(**kw: Any) -> None:
            events.append((name, kw))
        return rec

    receivers = {sig: recorder(sig.name) for sig in hooks.ALL}
    for sig, fn in receivers.items():
        sig.connect(fn)

    @hooks.job_started.connect
    def broken(**kw: Any) -> None:
        raise RuntimeError("hook bug")

    backend = connect("memory://?threads=2")
    try:
        # Given a task with a failing job, two finalizers, and a hook that raises
        task = _obs_task(backend, "default")
        # Then the task still ends as it would without hooks, and the hook's error is logged
        assert task.wait(timeout=30).state == "succeeded"
        assert [f.ref for f in task.failures()] == ["j2"]
        assert any("hook bug" in (r.exc_text or "") or "raised; ignored" in r.getMessage() for r in caplog.records)
        # When a duplicate and a forged message are delivered
        assert backend.runner.handle(encode_message(task.id, "j0")) == "skipped:already-finished"
        assert backend.runner.handle('{"v":1,"task":"t","ref":"j0","fn":"os:system"}') == "rejected"
    finally:
        backend.close()
        for sig, fn in receivers.items():
            sig.disconnect(fn)
        assert hooks.job_started.disconnect(broken) and not hooks.job_started.disconnect(broken)
    names = [n for n, _ in events]
    assert names.count("task_created") == 1 and names.count("task_sealed") == 1
    states = [str(kw["state"]) for n, kw in events if n == "task_state_changed"]
    assert states == ["open", "running", "finalizing", "succeeded"]
    finished = {kw["ref"]: kw for n, kw in events if n == "job_finished"}
    assert {r: kw["outcome"] for r, kw in finished.items()} == {"j0": "succeeded", "j1": "succeeded", "j2": "failed"}
    assert finished["j2"]["error"].type == "ValueError" and all(kw["duration"] >= 0 for kw in finished.values())
    assert finished["j0"]["fn"] == "obs.work" and finished["j0"]["queue"] == "default"
    fins = [(kw["ref"], kw["kind"]) for n, kw in events if n == "finalizer_finished"]
    assert fins == [("f0", "finalizer"), ("f1", "finalizer")]
    skips = [kw for n, kw in events if n == "delivery_skipped"]
    # the duplicate; and tickets left when workers that went on from job to job took every job
    (skip,) = [kw for kw in skips if kw["ref"]]
    assert (skip["ref"], skip["reason"], skip["detail"]) == ("j0", "duplicate", "already-finished")
    assert len(skips) <= 3 and all(kw["detail"] == "no-work" for kw in skips if kw is not skip)
    (rej,) = [kw for n, kw in events if n == "message_rejected"]
    assert "unexpected field(s) 'fn'" in rej["reason"]
    added = [kw for n, kw in events if n == "jobs_added"]
    assert [(kw["kind"], kw["refs"]) for kw in added] == [("job", ["j0", "j1", "j2"]), ("finalizer", ["f0"]),
                                                          ("finalizer", ["f1"])]
    assert obs_jobs is not None


def test_cancel_and_retry_are_reported_as_state_changes() -> None:
    import obs_jobs

    states: list[str] = []

    def rec(*, state: Any, **_: Any) -> None:
        states.append(str(state))

    hooks.task_state_changed.connect(rec)
    backend = connect("eager://")
    try:
        with backend.create_task() as t:
            t.add_job(obs_jobs.work, -1)
        assert t.state == "failed"
        t2 = backend.create_task()
        t2.cancel()
    finally:
        hooks.task_state_changed.disconnect(rec)
        backend.close()
    assert states == ["open", "failed", "open", "cancelled"]


def test_a_hook_connected_twice_runs_once_and_a_non_callable_is_refused() -> None:
    from multistep_core.errors import ConfigurationError

    calls: list[int] = []

    def fn(**_: Any) -> None:
        calls.append(1)

    hooks.task_sealed.connect(fn)
    hooks.task_sealed.connect(fn)
    try:
        hooks.task_sealed.send(task_id="x")
    finally:
        hooks.task_sealed.disconnect(fn)
    assert calls == [1] and not hooks.task_sealed
    with pytest.raises(ConfigurationError, match="must be callable"):
        hooks.task_sealed.connect("nope")  # type: ignore[arg-type]


def test_runner_log_lines_carry_task_ref_and_attempt(caplog: pytest.LogCaptureFixture) -> None:
    import obs_jobs

    backend = connect("eager://")
    try:
        with caplog.at_level(logging.INFO, logger="multistep.runner"), backend.create_task() as t:
            t.add_job(obs_jobs.work, -5)
    finally:
        backend.close()
    (rec,) = [r for r in caplog.records if r.name == "multistep.runner" and "failed" in r.getMessage()]
    assert (rec.task_id, rec.ref, rec.attempt) == (t.id, "j0", 1)  # type: ignore[attr-defined]


# -- real worker processes -----------------------------------------------------------------
BACKENDS = {
    "rq": (f"rq+redis://{REDIS_ADDR}/10", "rq"),
    "celery": (f"celery+redis://{REDIS_ADDR}/10", "celery"),
    "dramatiq": (f"dramatiq+redis://{REDIS_ADDR}/10", "dramatiq"),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    full = dict(os.environ, PYTHONUNBUFFERED="1",
                PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]), **env)
    return subprocess.Popen([sys.executable, "-m", "multistep_core", *args], stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True, env=full, cwd=HERE)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _until(what: str, check: Callable[[], Any], proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert proc.poll() is None, f"process exited ({proc.returncode}) waiting for {what}\n{log.read_text()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{log.read_text()}"
        time.sleep(0.05)
    return value


def _lib(kind: str) -> None:
    _need({"rq": "rq", "celery": "celery", "dramatiq": "dramatiq"}[kind])


@pytest.mark.usefixtures("redis_service")
@pytest.mark.parametrize("kind", sorted(BACKENDS))
def test_one_trace_per_task_across_real_worker_processes(kind: str, spans: Any, tmp_path: Path) -> None:
    _lib(kind)
    url, system = BACKENDS[kind]
    url = f"{url}?prefix=obs{uuid.uuid4().hex[:6]}"
    queue = f"obs-{uuid.uuid4().hex[:6]}"
    span_file = tmp_path / "spans.jsonl"
    log = tmp_path / "worker.log"
    # Given a worker of two processes whose SDK writes spans to a file, and a hook there that raises
    proc = _start(["--backend", url, "worker", "obs_jobs", "-q", queue, "-c", "2"], log,
                  {"OBS_SPANS_FILE": str(span_file), "OBS_RAISING_HOOK": "1"})
    backend = connect(url)
    try:
        # When a task runs on it
        task = _obs_task(backend, queue)
        assert task.wait(timeout=90).state == "succeeded", log.read_text()
        # Then the raising hook failed nothing but the job meant to fail
        assert [f.ref for f in task.failures()] == ["j2"]

        def worker_spans() -> list[dict[str, Any]]:
            if not span_file.exists():
                return []
            rows = [json.loads(x) for x in span_file.read_text().splitlines()]
            return rows if len([r for r in rows if r["name"].startswith("finalizer")]) >= 2 else []

        remote = _until("the finalizer spans", worker_spans, proc, log)
        # and the producer spans here and the consumer spans there are one trace
        _check_task_trace(_dicts(spans) + remote, task.id, system, queue)
        assert {r["pid"] for r in remote} != {os.getpid()}
        assert "a broken hook" in log.read_text()
    finally:
        _stop(proc)
        backend.close()


def _scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _get(m: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return m.get((name, frozenset(labels.items())), 0.0)


def _try_scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
    try:
        return _scrape(port)
    except OSError:
        return None


@pytest.mark.usefixtures("redis_service")
@pytest.mark.parametrize("kind", sorted(BACKENDS))
def test_worker_metrics_of_two_processes_count_the_task_that_ran(kind: str, tmp_path: Path) -> None:
    _need("prometheus_client")
    _lib(kind)
    import obs_jobs

    from multistep_core.model import encode_message

    url = f"{BACKENDS[kind][0]}?prefix=obs{uuid.uuid4().hex[:6]}"
    queue = f"obs-{uuid.uuid4().hex[:6]}"
    port = _free_port()
    log = tmp_path / "worker.log"
    proc = _start(["--backend", url, "worker", "obs_jobs", "-q", queue, "-c", "2", "--metrics-port", str(port)], log,
                  {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")})
    backend = connect(url)
    try:
        _until("/metrics", lambda: _try_scrape(port) is not None, proc, log)
        # Given a task of 7 jobs (one fails), two that run at once, and a finalizer, on two worker processes
        pair = tmp_path / "pair"
        with backend.create_task(policy="continue", queue=queue) as task:
            task.add_jobs(obs_jobs.work, [1, 2, 3, 4, 5, 6, -7])
            task.add_jobs(obs_jobs.pair, [[str(pair)], [str(pair)]])
            task.add_finalization_job(obs_jobs.fin, "a")
        assert task.wait(timeout=90).state == "succeeded", log.read_text()
        # When a duplicate of a finished job and a forged message arrive
        backend.queue.publish_raw(queue, encode_message(task.id, "j0"))  # type: ignore[attr-defined]
        backend.queue.publish_raw(queue, '{"v":1,"task":"nope","ref":"j0"}')  # type: ignore[attr-defined]

        def counted() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
            m = _scrape(port)
            done = _get(m, "multistep_skipped_total", reason="duplicate") and _get(m, "multistep_rejected_total")
            return m if done and _get(m, "multistep_jobs_total", queue=queue, function="obs.fin",
                                       outcome="succeeded") else None

        # Then /metrics, summed over both processes, counts exactly what ran
        m = _until("the counters", counted, proc, log)
        assert _get(m, "multistep_jobs_total", queue=queue, function="obs.work", outcome="succeeded") == 6
        assert _get(m, "multistep_jobs_total", queue=queue, function="obs.work", outcome="failed") == 1
        assert _get(m, "multistep_jobs_total", queue=queue, function="obs.fin", outcome="succeeded") == 1
        assert _get(m, "multistep_job_duration_seconds_count", queue=queue, function="obs.work") == 7
        assert _get(m, "multistep_fanin_latency_seconds_count", queue=queue) == 1
        assert _get(m, "multistep_jobs_running", queue=queue) == 0
        assert _get(m, "multistep_skipped_total", reason="duplicate") == 1
        assert _get(m, "multistep_rejected_total") == 1
        assert _get(m, "multistep_jobs_total", queue=queue, function="obs.pair", outcome="succeeded") == 2
        # and the store exporter on the same store sees the task that ran, and nothing pending
        sport = _free_port()
        slog = tmp_path / "metrics.log"
        exporter = _start(["--backend", url, "metrics", "--port", str(sport), "--interval", "0.1"], slog, {})
        try:
            s = _until("the store gauges", lambda: _try_scrape(sport), exporter, slog)
            assert _get(s, "multistep_tasks", state="succeeded") == 1
            assert sum(_get(s, "multistep_tasks", state=st) for st in ("open", "running", "finalizing")) == 0
            assert _get(s, "multistep_jobs_pending", queue=queue) == 0
        finally:
            _stop(exporter)
        if kind in ("rq", "celery"):  # one job at a time per process: the pair ran in two processes
            ran_in = set(pair.read_text().split())
            assert len(ran_in) == 2
            files = {p.name.rsplit("_", 1)[-1][:-3] for p in (tmp_path / "prom").glob("counter_*.db")}
            assert ran_in <= files, "each process counted in its own file, and /metrics summed them"
    finally:
        _stop(proc)
        backend.close()


@pytest.mark.usefixtures("redis_service")
def test_store_exporter_serves_tasks_by_state_and_pending_jobs_by_queue(tmp_path: Path) -> None:
    _need("prometheus_client")
    _lib("rq")
    import obs_jobs

    url = f"{BACKENDS['rq'][0]}?prefix=obs{uuid.uuid4().hex[:6]}"
    port = _free_port()
    backend = connect(url)
    log = tmp_path / "metrics.log"
    proc = _start(["--backend", url, "metrics", "--port", str(port), "--interval", "0.1"], log, {})
    try:
        # Given two tasks with no worker: one sealed with 5 jobs on queue q1, one open with 2 on q2, one cancelled
        with backend.create_task(queue="q1") as t1:
            t1.add_jobs(obs_jobs.work, range(5))
        t2 = backend.create_task(queue="q2")
        t2.add_jobs(obs_jobs.work, range(2))
        backend.create_task().cancel()

        def seen() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
            m = _try_scrape(port)
            return m if m and _get(m, "multistep_tasks", state="cancelled") == 1 else None

        # Then the exporter reports them
        m = _until("the store gauges", seen, proc, log)
        assert _get(m, "multistep_tasks", state="running") == 1
        assert _get(m, "multistep_tasks", state="open") == 1
        assert _get(m, "multistep_tasks", state="succeeded") == 0
        assert _get(m, "multistep_jobs_pending", queue="q1") == 5
        assert _get(m, "multistep_jobs_pending", queue="q2") == 2
    finally:
        _stop(proc)
        backend.close()


def test_a_taken_metrics_port_is_a_clear_error(tmp_path: Path) -> None:
    _need("prometheus_client")
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "multistep_core", "--backend", "memory", "metrics", "--port", str(port)],
                             capture_output=True, text=True, timeout=60, cwd=HERE)
    assert out.returncode == 2, out
    assert f"cannot serve metrics on 0.0.0.0:{port}" in out.stderr and "choose another --port" in out.stderr


def test_recovery_resending_a_lost_workers_job_is_reported() -> None:
    import obs_jobs

    from multistep_core.model import TaskOptions
    from multistep_core.registry import make_spec

    resent: list[dict[str, Any]] = []

    def rec(**kw: Any) -> None:
        resent.append(kw)

    backend = connect("memory://?lease=0.5")
    backend.stop_recovery()  # this test runs the one recovery pass itself
    hooks.recovery_resent.connect(rec)
    try:
        # Given a job whose worker took its lease and died (started in the store, never finished)
        store = backend.store
        store.create_task("lost-1", TaskOptions(queue="q9"), time.time())
        store.add_jobs("lost-1", "j", [make_spec(obs_jobs.work, (4,), {}).to_json()], time.time())
        store.seal("lost-1", time.time())
        (ticket,) = store.release("q9", time.time()).tickets
        assert store.take("q9", ticket, time.time()).ref == "j0"
        # When recovery runs after the lease expired
        assert backend.recover(now=time.time() + 5) == 1
        # Then the resend (a ticket for the job back in line) is reported, and the job runs again
        assert backend.get_task("lost-1").wait(timeout=30).state == "succeeded"
    finally:
        hooks.recovery_resent.disconnect(rec)
        backend.close()
    assert [(kw["task_id"], kw["refs"], kw["tickets"], kw["reason"], kw["queue"]) for kw in resent] == [
        ("lost-1", [], 1, "ticket", "q9")]


def test_the_recovered_counter_counts_the_tickets_recovery_issued() -> None:
    _need("prometheus_client")
    import obs_jobs
    from prometheus_client import REGISTRY

    from multistep_core import prometheus
    from multistep_core.model import TaskOptions
    from multistep_core.registry import make_spec

    def count() -> float:
        return REGISTRY.get_sample_value("multistep_recovered_total", {"reason": "ticket"}) or 0.0

    backend = connect("memory://?lease=0.5")
    backend.stop_recovery()
    prometheus.instrument()
    try:
        # Given two jobs whose worker took them by ticket and died
        store = backend.store
        store.create_task("lost-2", TaskOptions(queue="q5"), time.time())
        spec = make_spec(obs_jobs.work, (4,), {}).to_json()
        store.add_jobs("lost-2", "j", [spec, spec], time.time())
        store.seal("lost-2", time.time())
        tickets = store.release("q5", time.time()).tickets
        assert sorted(store.take("q5", t, time.time()).ref for t in tickets) == ["j0", "j1"]
        before = count()
        # When recovery sends them again
        sent = backend.recover(now=time.time() + 5)
        # Then the counter went up by the tickets it sent, and the task ends
        assert sent == 2 and count() - before == 2
        assert backend.get_task("lost-2").wait(timeout=30).state == "succeeded"
    finally:
        prometheus.uninstrument()
        backend.close()


def test_the_failure_callback_has_its_span_linked_to_the_job_that_failed_the_task(spans: Any) -> None:
    import obs_jobs

    backend = connect("memory://?threads=1")
    try:
        with backend.create_task() as task:
            task.set_failure_callback(obs_jobs.fin, "cb")
            task.add_jobs(obs_jobs.work, [1, -2])
        assert task.wait(timeout=30).state == "failed"
        deadline = time.monotonic() + 10
        while not [s for s in _dicts(spans) if s["name"] == "callback obs.fin"]:
            assert time.monotonic() < deadline, _dicts(spans)
            time.sleep(0.01)
    finally:
        backend.close()
    rows = _dicts(spans)
    (cb,) = [s for s in rows if s["name"] == "callback obs.fin"]
    (failed,) = [s for s in rows if s["attributes"].get("multistep.ref") == "j1"]
    (create,) = [s for s in rows if s["name"].startswith("create")]
    assert failed["status"] == "ERROR" and cb["status"] == "UNSET"
    # a sibling of the jobs (a child of the task's create span), linked to the job that failed it
    assert cb["parent"] == create["span"] == failed["parent"] and cb["links"][0] == failed["span"]
    assert cb["attributes"]["multistep.kind"] == "callback" and cb["attributes"]["multistep.ref"] == "x0"


def test_an_attempt_cut_short_by_a_base_exception_still_ends_its_span_and_hooks(spans: Any) -> None:
    import obs_jobs
    from opentelemetry import trace

    from multistep_core.model import TaskOptions, encode_message
    from multistep_core.registry import make_spec

    finished: list[dict[str, Any]] = []

    def rec(**kw: Any) -> None:
        finished.append(kw)

    backend = connect("memory://?threads=1")
    backend.stop_recovery()
    hooks.job_finished.connect(rec)
    try:
        store = backend.store
        store.create_task("cut-1", TaskOptions(), time.time())
        store.add_jobs("cut-1", "j", [make_spec(obs_jobs.exit_now, (), {}).to_json()], time.time())
        # When the job raises SystemExit in this thread
        with pytest.raises(SystemExit):
            backend.runner.handle(encode_message("cut-1", "j0"))
    finally:
        hooks.job_finished.disconnect(rec)
        backend.close()
    # Then the hook saw it end, its span ended with ERROR, and no span is left current here
    assert [(kw["ref"], kw["outcome"], kw["error"].type) for kw in finished] == [("j0", "interrupted", "SystemExit")]
    (span,) = [s for s in _dicts(spans) if s["name"] == "job obs.exit"]
    assert span["status"] == "ERROR" and span["attributes"]["multistep.outcome"] == "interrupted"
    assert not trace.get_current_span().get_span_context().is_valid


@pytest.mark.parametrize(("var", "value"), [("MULTISTEP_OTEL", "yes"), ("MULTISTEP_PROMETHEUS", "maybe")])
def test_a_bad_switch_value_is_a_clear_error(var: str, value: str) -> None:
    env = dict(os.environ, **{var: value})
    out = subprocess.run([sys.executable, "-m", "multistep_core", "--backend", "memory", "ls"],
                         capture_output=True, text=True, timeout=60, env=env, cwd=HERE)
    assert out.returncode == 2, out
    assert f"{var}={value!r} is not one of" in out.stderr


def test_a_job_resent_by_recovery_stays_in_its_tasks_trace(spans: Any) -> None:
    import obs_jobs

    from multistep_core.registry import make_spec

    backend = connect("memory://?lease=0.5")
    backend.stop_recovery()
    try:
        # Given a task created here whose only job's worker died after starting it
        task = backend.create_task(queue="q7")
        store = backend.store
        store.add_jobs(task.id, "j", [make_spec(obs_jobs.work, (3,), {}).to_json()], time.time())
        store.seal(task.id, time.time())
        (ticket,) = store.release("q7", time.time()).tickets
        assert store.take("q7", ticket, time.time()).ref == "j0"
        # When recovery sends it again (a ticket: the job's trace comes from its task) and it runs
        assert backend.recover(now=time.time() + 5) == 1
        assert task.wait(timeout=30).state == "succeeded"
        deadline = time.monotonic() + 10
        while not [s for s in _dicts(spans) if s["name"] == "job obs.work"]:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        backend.close()
    rows = _dicts(spans)
    (create,) = [s for s in rows if s["name"] == "create q7"]
    (job,) = [s for s in rows if s["name"] == "job obs.work"]
    assert job["trace"] == create["trace"] and job["parent"] == create["span"]


def test_a_finalizer_resent_by_recovery_in_a_process_that_never_saw_its_task_joins_its_trace(spans: Any) -> None:
    import obs_jobs

    from multistep_core import otel
    from multistep_core.registry import make_spec

    backend = connect("memory://?lease=0.5")
    backend.stop_recovery()
    try:
        # Given a task whose only finalizer's worker died after starting it
        task = backend.create_task(queue="q6")
        store = backend.store
        store.add_jobs(task.id, "f", [make_spec(obs_jobs.fin, ("z",), {}).to_json()], time.time())
        assert store.seal(task.id, time.time()).refs == ("f0",)
        assert store.start(task.id, "f0", time.time()).run
        # and a recovering process that neither created the task nor ran its jobs
        with otel._lock:
            otel._created.pop(task.id, None)
        # When recovery sends the finalizer again and it runs
        assert backend.recover(now=time.time() + 5) == 1
        assert task.wait(timeout=30).state == "succeeded"
        deadline = time.monotonic() + 10
        while not [s for s in _dicts(spans) if s["name"] == "finalizer obs.fin"]:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        backend.close()
    # Then its span is in the task's trace: the message carried the context the task keeps
    rows = _dicts(spans)
    (create,) = [s for s in rows if s["name"] == "create q6"]
    (fin,) = [s for s in rows if s["name"] == "finalizer obs.fin"]
    assert fin["trace"] == create["trace"] and fin["parent"] == create["span"]
