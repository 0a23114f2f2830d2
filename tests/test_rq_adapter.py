"""RQ adapter specifics: options, missing driver, connection errors, the JSON wire format, the
one job function (and the refusal of any other), and the worker processes (backend built once
per process, forwarding of SIGTERM, restart of a dead worker process)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from services import REDIS_ADDR, require_module

from multistep_core import connect
from multistep_core.errors import BackendConnectionError, BackendDriverMissing, ConfigurationError

require_module("rq")

import multistep_rq  # noqa: E402 - after the library check
from multistep_rq import JOB_PATH, RQQueue, backend_from_url  # noqa: E402 - after the library check

URL = f"rq+redis://{REDIS_ADDR}/15"
REDIS = f"redis://{REDIS_ADDR}/15"
HERE = Path(__file__).parent


def _prefix() -> str:
    return f"msrqtest{uuid.uuid4().hex[:6]}"


def test_unknown_option_is_refused_with_a_suggestion() -> None:
    with pytest.raises(ConfigurationError, match=r"'worker_clas' \(did you mean 'worker_class'\?\)"):
        backend_from_url(URL, worker_clas="fork")
    with pytest.raises(ConfigurationError, match="unknown option"):
        connect(URL + "?retries=3")


def test_bad_backend_strings_and_values() -> None:
    with pytest.raises(ConfigurationError, match=r"rq\+redis://"):
        backend_from_url("rq+amqp://127.0.0.1:5672/")
    with pytest.raises(ConfigurationError, match="store must be"):
        backend_from_url(URL, store="mysql://x")
    with pytest.raises(ConfigurationError, match=r"worker_class='thread' \(str\) must be one of simple, fork"):
        RQQueue(REDIS, worker_class="thread")
    with pytest.raises(ConfigurationError, match="job_timeout"):
        RQQueue(REDIS, job_timeout=0)
    assert multistep_rq.broker_url("rq") == "redis://127.0.0.1:6379/0"
    assert multistep_rq.broker_url("rq+rediss://h:6380/2") == "rediss://h:6380/2"


def test_missing_driver_names_the_pip_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rq", None)  # import rq -> ImportError
    with pytest.raises(BackendDriverMissing, match=r'pip install "multistep\[rq\]"'):
        connect(URL)


def test_import_of_the_package_does_not_need_rq() -> None:
    code = (
        "import sys; sys.modules['rq'] = None; import multistep_rq, multistep_rq.job, multistep_core; "
        "print(multistep_rq.JOB_PATH)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "multistep_rq.job.run", out.stderr


def test_connection_errors_name_the_url_without_password() -> None:
    q = RQQueue("redis://:secret@127.0.0.1:1/0")
    try:
        for call in (lambda: q.enqueue("default", ['{"x":1}']), q.ping, lambda: q.publish_raw("default", "x")):
            with pytest.raises(BackendConnectionError) as info:
                call()
            assert "127.0.0.1:1" in str(info.value) and "secret" not in str(info.value)
    finally:
        q.close()
    with pytest.raises(BackendConnectionError, match=r"127\.0\.0\.1:1"):
        connect("rq+redis://127.0.0.1:1/0")


def test_the_job_function_is_importable_by_its_dotted_path() -> None:
    import multistep_rq.job
    from rq.utils import import_attribute

    assert JOB_PATH == "multistep_rq.job.run"
    assert import_attribute(JOB_PATH) is multistep_rq.job.run


@pytest.mark.usefixtures("redis_service")
def test_wire_format_is_json_one_function_and_no_kept_results() -> None:
    backend = backend_from_url(URL, prefix=_prefix())
    queue = f"adaptertest-{uuid.uuid4().hex[:6]}"
    try:
        q = backend.queue
        assert isinstance(q, RQQueue)
        bodies = [json.dumps({"i": i}) for i in range(2500)]
        q.enqueue(queue, bodies)
        q.publish_raw(queue, "not json at all")
        r = q.redis
        ids = [i.decode() for i in r.lrange(f"rq:queue:multistep:{queue}", 0, -1)]
        assert len(ids) == 2501
        pipe = r.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(f"rq:job:{i}")
        hashes = pipe.execute()
        calls = [json.loads(zlib.decompress(h[b"data"])) for h in hashes]  # JSON, never pickle
        assert calls == [[JOB_PATH, None, [b], {}] for b in [*bodies, "not json at all"]]
        for h in hashes:
            assert h[b"result_ttl"] == b"0" and h[b"failure_ttl"] == b"3600" and h[b"timeout"] == b"-1"
            assert h[b"status"] == b"queued" and h[b"origin"] == f"multistep:{queue}".encode()
            assert h[b"success_callback_name"] == b"" and h[b"failure_callback_name"] == b""
        assert q.purge(queue) == 2501
        assert r.llen(f"rq:queue:multistep:{queue}") == 0 and not r.exists(f"rq:job:{ids[0]}")
    finally:
        backend.close()


@pytest.mark.usefixtures("redis_service")
def test_workers_run_only_the_multistep_function(tmp_path: Path) -> None:
    # RQ jobs forged with plain rq APIs on a multistep queue: another function, and ours with a
    # callback. Neither the function nor the callback may be imported or called.
    import multistep_rq.job as mj
    from multistep_rq.worker import MultistepJob
    from rq import Callback, Queue, SimpleWorker
    from rq.serializers import JSONSerializer

    canary = tmp_path / "pwned"
    backend = backend_from_url(URL, prefix=_prefix())
    queue = f"adaptertest-{uuid.uuid4().hex[:6]}"
    try:
        q = backend.queue
        assert isinstance(q, RQQueue)
        rq_queue = Queue(q.rq_name(queue), connection=q.redis, serializer=JSONSerializer)
        rq_queue.enqueue("os.system", f"touch {canary}", result_ttl=0)
        rq_queue.enqueue(JOB_PATH, "forged body", on_success=Callback("os.abort"), result_ttl=0)
        mj.PROCESS.set(backend)
        worker = SimpleWorker([rq_queue], connection=q.redis, serializer=JSONSerializer, job_class=MultistepJob)
        worker.work(burst=True, with_scheduler=False)
        reasons = [(r.raw, r.reason) for r in backend.rejected(10)]
        assert any("os.system" in raw and "multistep_rq.job.run" in why for raw, why in reasons), reasons
        assert any(raw == "forged body" and "not JSON" in why for raw, why in reasons), reasons
        assert not canary.exists()
    finally:
        mj.PROCESS.set(None)
        backend.close()


def _start_worker(tmp_path: Path, url: str, queue: str, c: int) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / f"worker-{uuid.uuid4().hex[:4]}.log"
    cmd = [sys.executable, "-m", "multistep_core", "--backend", url, "worker", "rq_jobs", "-q", queue, "-c", str(c)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True, cwd=HERE, env=env
    )
    return proc, log


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


@pytest.mark.usefixtures("redis_service")
@pytest.mark.parametrize("worker_class", ["simple", "fork", "fork&go_on=0"])
def test_the_backend_is_built_once_per_worker_process(tmp_path: Path, worker_class: str) -> None:
    sys.path.insert(0, str(HERE))
    try:
        import rq_jobs
    finally:
        sys.path.remove(str(HERE))
    prefix = _prefix()
    url = f"{URL}?prefix={prefix}&worker_class={worker_class}"
    queue = f"adaptertest-{uuid.uuid4().hex[:6]}"
    proc, log = _start_worker(tmp_path, url, queue, 1)
    backend = connect(url)
    journal = tmp_path / "journal.log"
    try:
        with backend.create_task(queue=queue) as task:
            task.add_jobs(rq_jobs.where, [(str(journal), f"j{i}") for i in range(6)])
        assert task.wait(timeout=60).state.value == "succeeded", log.read_text()
        lines = [json.loads(x) for x in journal.read_text().splitlines()]
        assert {x["built_in"] for x in lines} == {proc.pid}  # built by the worker process, once
        assert len({x["backend"] for x in lines}) == 1
        pids = {x["pid"] for x in lines}
        if worker_class == "simple":
            assert pids == {proc.pid}  # run in the worker process itself
        elif worker_class == "fork":
            # a forked work horse per message; a horse goes on from job to job while jobs wait
            assert proc.pid not in pids and 1 <= len(pids) <= 6
        else:  # go_on=0, from the worker's backend string: one job per ticket, so a horse per job
            assert proc.pid not in pids and len(pids) == 6
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        backend.close()


@pytest.mark.usefixtures("redis_service")
def test_supervisor_forwards_sigterm_and_restarts_a_dead_worker_process(tmp_path: Path) -> None:
    queue = f"adaptertest-{uuid.uuid4().hex[:6]}"
    proc, log = _start_worker(tmp_path, f"{URL}?prefix={_prefix()}", queue, 2)
    try:
        deadline = time.monotonic() + 30
        while log.read_text().count("Listening on") < 2:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        kids = _children(proc.pid)
        assert len(kids) == 2
        os.kill(kids[0], signal.SIGKILL)  # one RQ worker process dies
        deadline = time.monotonic() + 30
        while True:
            now = _children(proc.pid)
            if len(now) == 2 and kids[0] not in now:
                break
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        deadline = time.monotonic() + 30
        while log.read_text().count("Listening on") < 3:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGTERM)  # the supervisor alone: it forwards to its workers
        assert proc.wait(timeout=30) == 0, log.read_text()
        assert log.read_text().count("warm shut down requested") == 2
        assert _children(proc.pid) == []
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_for(what: str, check: Callable[[], Any], proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> Any:
    """Poll ``check`` until it is truthy (the event), failing at once if the worker exits."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert proc.poll() is None, f"multistep worker exited ({proc.returncode}) waiting for {what}\n{log.read_text()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{log.read_text()}"
        time.sleep(0.05)
    return value


@pytest.mark.usefixtures("redis_service")
def test_a_sigkilled_worker_process_is_replaced_and_the_worker_keeps_serving(tmp_path: Path) -> None:
    sys.path.insert(0, str(HERE))
    try:
        import rq_jobs
    finally:
        sys.path.remove(str(HERE))
    # Given `multistep worker -c 2`: two RQ worker processes, both listening
    url = f"{URL}?prefix={_prefix()}"
    queue = f"adaptertest-{uuid.uuid4().hex[:6]}"
    proc, log = _start_worker(tmp_path, url, queue, 2)
    backend = connect(url)
    try:
        _wait_for("two listening RQ workers", lambda: log.read_text().count("Listening on") >= 2, proc, log)
        victim, survivor = _children(proc.pid)
        # When one of them is SIGKILLed
        os.kill(victim, signal.SIGKILL)
        # Then a replacement appears beside the survivor, and the supervisor lives on
        kids = _wait_for("a replacement", lambda: (k := _children(proc.pid)) and len(k) == 2 and victim not in k and k,
                         proc, log)
        assert survivor in kids and proc.poll() is None
        _wait_for("the replacement listening", lambda: log.read_text().count("Listening on") >= 3, proc, log)
        # and a task submitted afterwards completes
        journal = tmp_path / "journal.log"
        with backend.create_task(queue=queue) as task:
            task.add_jobs(rq_jobs.where, [(str(journal), f"j{i}") for i in range(8)])
        assert task.wait(timeout=60).state.value == "succeeded", log.read_text()
        assert proc.poll() is None
    finally:
        backend.close()
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_unknown_option_names_every_option_of_the_backend() -> None:
    with pytest.raises(ConfigurationError) as info:
        connect(URL + "?leas=3")
    msg = str(info.value)
    assert "'leas' (did you mean 'lease'?)" in msg
    assert all(name in msg for name in multistep_rq.OPTIONS) and {"lease", "store", "prefix"} <= set(multistep_rq.OPTIONS)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("lease=abc", "the rq option lease='abc' (str) must be a number of seconds greater than 0, e.g. lease=30"),
        ("lease=-1", "the rq option lease=-1 (int) must be a number of seconds greater than 0"),
        ("job_timeout=x", "the rq option job_timeout='x' (str) must be a number of seconds >= 1, or -1 for no limit"),
        ("job_timeout=0", "job_timeout=0 (int) must be a number of seconds >= 1, or -1 for no limit"),
        ("failure_ttl=0", "the rq option failure_ttl=0 (int) must be an integer >= 1"),
        ("maintenance_interval=1.5", "maintenance_interval=1.5 (float) must be an integer >= 1"),
        ("worker_class=thread", "worker_class='thread' (str) must be one of simple, fork"),
        ("log_level=loud", "log_level='loud' (str) must be a log level: DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ("prefix=", "the rq option prefix='' (str) must be a key prefix (not empty)"),
    ],
)
def test_bad_option_values_name_the_option_the_value_and_what_it_must_be(query: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        connect(f"{URL}?{query}")
    assert type(info.value) is ConfigurationError
    assert message in str(info.value)


@pytest.mark.usefixtures("redis_service")
def test_a_redis_that_may_evict_keys_gets_a_warning(evicting_redis: str) -> None:
    from multistep_core.kit import EvictionWarning

    port = evicting_redis.rsplit(":", 1)[1].split("/")[0]
    # Given a Redis with maxmemory-policy allkeys-lru, as the RQ broker
    policy = rf"Redis at redis://127\.0\.0\.1:{port}/0 has maxmemory-policy allkeys-lru.*noeviction"
    with pytest.warns(EvictionWarning, match=policy):
        backend_from_url("rq+" + evicting_redis).close()
    # as the store of another broker's backend
    with pytest.warns(EvictionWarning, match=rf"127\.0\.0\.1:{port}.*an evicted key is a lost task"):
        backend_from_url(URL, store=evicting_redis, prefix=_prefix()).close()
    # and as the store of the embedded redis:// backend
    with pytest.warns(EvictionWarning, match=rf"127\.0\.0\.1:{port}"):
        connect(evicting_redis).close()
