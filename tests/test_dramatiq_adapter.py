"""Dramatiq adapter specifics: options, missing driver, connection errors, the wire format,
the one actor, and the worker's process handling."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from services import REDIS_ADDR, require_module

from multistep_core import connect
from multistep_core.errors import BackendConnectionError, BackendDriverMissing, ConfigurationError

require_module("dramatiq")

import multistep_dramatiq  # noqa: E402 - after the library check
from multistep_dramatiq import ACTOR_NAME, DramatiqQueue, backend_from_url  # noqa: E402 - after the library check

REDIS = f"dramatiq+redis://{REDIS_ADDR}/13"


def test_unknown_option_is_refused_with_a_suggestion() -> None:
    with pytest.raises(ConfigurationError, match=r"'heartbeats' \(did you mean 'heartbeat'\?\)"):
        backend_from_url(REDIS, heartbeats=3)
    with pytest.raises(ConfigurationError, match="unknown option"):
        connect(REDIS + "?retries=3")


def test_bad_backend_strings() -> None:
    with pytest.raises(ConfigurationError, match="dramatiq\\+redis://"):
        backend_from_url("dramatiq+kafka://127.0.0.1:9092")
    with pytest.raises(ConfigurationError, match="store must be"):
        backend_from_url(REDIS, store="mysql://x")
    assert multistep_dramatiq.broker_url("dramatiq") == ("redis", "redis://127.0.0.1:6379/0")
    assert multistep_dramatiq.broker_url("dramatiq+amqp://u:p@h:5672/") == ("amqp", "amqp://u:p@h:5672/")


def test_missing_driver_names_the_pip_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dramatiq", None)  # import dramatiq -> ImportError
    with pytest.raises(BackendDriverMissing, match=r'pip install "multistep\[dramatiq\]"'):
        connect(REDIS)


def test_import_of_the_package_does_not_need_dramatiq() -> None:
    code = "import sys; sys.modules['dramatiq'] = None; import multistep_dramatiq, multistep_core; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("url", ["redis://127.0.0.1:1/0", "amqp://guest:secret@127.0.0.1:1/"])
def test_connection_errors_name_the_url_without_password(url: str) -> None:
    kind = "redis" if url.startswith("redis") else "amqp"
    q = DramatiqQueue(kind, url)
    try:
        with pytest.raises(BackendConnectionError) as info:
            q.enqueue("default", ['{"x":1}'])
        msg = str(info.value)
        assert "127.0.0.1:1" in msg and "secret" not in msg
        with pytest.raises(BackendConnectionError):
            q.ping()
    finally:
        q.close()


@pytest.mark.usefixtures("redis_service")
def test_wire_format_is_json_even_with_a_global_pickle_encoder() -> None:
    import dramatiq
    from dramatiq.encoder import PickleEncoder

    old = dramatiq.get_encoder()
    dramatiq.set_encoder(PickleEncoder())
    backend = backend_from_url(REDIS, prefix=f"mstest{uuid.uuid4().hex[:6]}")
    queue = f"adaptertest-{uuid.uuid4().hex[:6]}"
    try:
        q = backend.queue
        assert isinstance(q, DramatiqQueue)
        bodies = [json.dumps({"i": i}) for i in range(2500)]
        q.enqueue(queue, bodies)
        q.publish_raw(queue, "not json at all")
        client = q.broker.client
        key = f"dramatiq:multistep.{queue}"
        ids = client.lrange(key, 0, -1)
        assert len(ids) == 2501
        raw = client.hmget(f"{key}.msgs", ids)
        decoded = [json.loads(r) for r in raw]  # JSON, never pickle
        assert {d["actor_name"] for d in decoded} == {ACTOR_NAME}
        assert [d["args"] for d in decoded] == [[b] for b in bodies] + [["not json at all"]]
        assert all(d["queue_name"] == f"multistep.{queue}" for d in decoded)
        assert all(d["options"]["redis_message_id"] == i.decode() for d, i in zip(decoded, ids, strict=True))
        assert q.purge(queue) == 2501
        assert client.llen(key) == 0
    finally:
        dramatiq.set_encoder(old)
        backend.close()


@pytest.mark.usefixtures("rabbitmq_service")
def test_amqp_enqueue_and_purge() -> None:
    q = DramatiqQueue("amqp", "amqp://guest:guest@127.0.0.1:5672/")
    queue = f"adaptertest-{uuid.uuid4().hex[:6]}"
    try:
        q.enqueue(queue, [json.dumps({"i": i}) for i in range(300)])
        q.publish_raw(queue, "raw")
        deadline = time.monotonic() + 5
        n = 0
        while time.monotonic() < deadline:
            n = q.broker.channel.queue_declare(q.dq(queue), passive=True).method.message_count
            if n == 301:
                break
            time.sleep(0.05)
        assert n == 301
        _method, _props, body = q.broker.channel.basic_get(q.dq(queue), auto_ack=True)
        d = json.loads(body)
        assert d["actor_name"] == ACTOR_NAME and d["args"] == ['{"i": 0}']
        assert q.purge(queue) == 300
    finally:
        try:
            q.broker.channel.queue_delete(q.dq(queue))
            q.broker.channel.queue_delete(q.dq(queue) + ".DQ")
            q.broker.channel.queue_delete(q.dq(queue) + ".XQ")
        finally:
            q.close()


@pytest.mark.usefixtures("redis_service")
def test_one_actor_without_dramatiq_retries_or_time_limit() -> None:
    spec = {
        "url": REDIS,
        "options": {"lease": 5, "store": f"redis://{REDIS_ADDR}/13", "prefix": "ms", "heartbeat": 4},
        "queues": ["multistep.a", "multistep.b"],
    }
    code = (
        "import json, multistep_dramatiq.worker_app as w\n"
        "b = w.broker\n"
        "a = b.get_actor('multistep.run')\n"
        "print(json.dumps({'actors': sorted(b.actors), 'options': {k: str(v) for k, v in a.options.items()},"
        " 'queues': sorted(b.get_declared_queues()), 'hb': b.heartbeat_timeout, 'mc': b.maintenance_chance,"
        " 'encoder': type(__import__('dramatiq').get_encoder()).__name__}))\n"
    )
    env = dict(os.environ, MULTISTEP_DRAMATIQ_SPEC=json.dumps(spec))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["actors"] == [ACTOR_NAME]
    assert info["options"] == {"max_retries": "0", "time_limit": "inf"}
    assert {"multistep.a", "multistep.b"} <= set(info["queues"])
    assert info["hb"] == 4000 and info["mc"] == 1_000_000
    assert info["encoder"] == "JSONEncoder"


@pytest.mark.usefixtures("redis_service")
def test_worker_stops_gracefully_on_a_group_sigterm(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # `kill -TERM -<pgid>` reaches every process of the worker at once; it must still be a
    # graceful stop (exit 0), not Dramatiq's "second signal kills" path.
    log = open(tmp_path / "worker.log", "wb")
    cmd = [
        sys.executable, "-m", "multistep_core", "--backend", REDIS, "worker", "multistep_conformance.jobs",
        "-q", f"adaptertest-{uuid.uuid4().hex[:6]}", "-c", "2",
    ]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while b"ready for action" not in (tmp_path / "worker.log").read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, (tmp_path / "worker.log").read_text()
        assert b"Killing worker process" not in (tmp_path / "worker.log").read_bytes()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


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
    from multistep_conformance import jobs

    # Given `multistep worker -c 2` with processes=2: two Dramatiq worker processes of one thread each
    url = f"{REDIS}?prefix=mstest{uuid.uuid4().hex[:6]}&processes=2"
    queue = f"adaptertest-{uuid.uuid4().hex[:6]}"
    log = tmp_path / "worker.log"
    cmd = [sys.executable, "-m", "multistep_core", "--backend", url, "worker", "multistep_conformance.jobs", "-q", queue,
           "-c", "2"]
    proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    backend = connect(url)
    try:
        _wait_for("two ready worker processes", lambda: log.read_text().count("ready for action") >= 2, proc, log)
        victim, survivor = _children(proc.pid)
        # When one of them is SIGKILLed
        os.kill(victim, signal.SIGKILL)
        # Then a replacement appears beside the survivor, and `multistep worker` lives on
        kids = _wait_for("a replacement", lambda: (k := _children(proc.pid)) and len(k) == 2 and victim not in k and k,
                         proc, log)
        assert survivor in kids and proc.poll() is None
        _wait_for("the replacement ready", lambda: log.read_text().count("ready for action") >= 3, proc, log)
        assert "exited unexpectedly" not in log.read_text()
        # and a task submitted afterwards completes
        journal = tmp_path / "journal.log"
        journal.touch()
        with backend.create_task(queue=queue) as task:
            task.add_jobs(jobs.record, [(str(journal), f"j{i}") for i in range(8)])
        assert task.wait(timeout=60).state.value == "succeeded", log.read_text()
        assert sorted(journal.read_text().split()) == sorted(f"j{i}" for i in range(8))
        assert proc.poll() is None
    finally:
        backend.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_unknown_option_names_every_option_of_the_backend() -> None:
    with pytest.raises(ConfigurationError) as info:
        connect(REDIS + f"?stor=redis://{REDIS_ADDR}/13")
    msg = str(info.value)
    assert "'stor' (did you mean 'store'?)" in msg
    assert all(name in msg for name in multistep_dramatiq.OPTIONS)
    assert {"lease", "store", "prefix"} <= set(multistep_dramatiq.OPTIONS)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("lease=abc", "the dramatiq option lease='abc' (str) must be a number of seconds greater than 0, e.g. lease=30"),
        ("lease=-1", "the dramatiq option lease=-1 (int) must be a number of seconds greater than 0"),
        ("prefetch=0", "the dramatiq option prefetch=0 (int) must be an integer >= 1"),
        ("processes=0", "processes=0 (int) must be an integer >= 1"),
        ("worker_timeout=x", "worker_timeout='x' (str) must be a number of milliseconds >= 1"),
        ("time_limit=-3", "time_limit=-3 (int) must be a number of seconds greater than 0 (0: off)"),
        ("heartbeat=fast", "heartbeat='fast' (str) must be a number of seconds greater than 0"),
        ("maintenance_chance=2000000", "maintenance_chance=2000000 (int) must be an integer from 0 to 1000000"),
        ("namespace=", "namespace='' (str) must be a string (not empty)"),
        ("confirm=2", "confirm=2 (int) must be true or false"),
    ],
)
def test_bad_option_values_name_the_option_the_value_and_what_it_must_be(query: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        connect(f"{REDIS}?{query}")
    assert type(info.value) is ConfigurationError
    assert message in str(info.value)


def test_a_rabbitmq_broker_needs_a_store(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given no store= and no $MULTISTEP_STORE: task state must not land in some default Redis
    monkeypatch.delenv("MULTISTEP_STORE", raising=False)
    with pytest.raises(ConfigurationError) as info:
        connect("dramatiq+amqp://guest:secret@rabbit.internal:5672/")
    msg = str(info.value)
    assert type(info.value) is ConfigurationError
    assert "needs a store" in msg and "secret" not in msg
    assert "dramatiq+amqp://guest:***@rabbit.internal:5672/?store=redis://rabbit.internal:6379/0" in msg


@pytest.mark.usefixtures("rabbitmq_service")
def test_a_wrong_rabbitmq_password_is_a_connection_error_at_connect() -> None:
    with pytest.raises(BackendConnectionError) as info:
        connect(f"dramatiq+amqp://guest:wrong@127.0.0.1:5672/?store=redis://{REDIS_ADDR}/13")
    msg = str(info.value)
    assert type(info.value) is BackendConnectionError
    assert "cannot reach the Dramatiq amqp broker at amqp://guest:***@127.0.0.1:5672/" in msg
    assert "ACCESS_REFUSED" in msg and "wrong" not in msg


@pytest.mark.usefixtures("redis_service")
def test_a_down_broker_is_named_with_the_reason(tmp_path: Path) -> None:
    down = f"dramatiq+amqp://guest:guest@127.0.0.1:1/?store=redis://{REDIS_ADDR}/13"
    # Given a RabbitMQ that is down (a closed port): connect() says so, with the cause
    with pytest.raises(BackendConnectionError) as info:
        connect(down)
    assert "cannot reach the Dramatiq amqp broker at amqp://guest:***@127.0.0.1:1/: AMQPConnectionError" in str(info.value)
    assert "Connection refused" in str(info.value)
    # and so does `multistep worker` (it used to print an empty reason)
    out = subprocess.run(
        [sys.executable, "-m", "multistep_core", "--backend", down, "worker", "multistep_conformance.jobs", "-c", "1"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert out.returncode == 2 and "Connection refused" in out.stderr, out.stderr


@pytest.mark.usefixtures("redis_service")
def test_a_redis_broker_that_may_evict_keys_gets_a_warning(evicting_redis: str) -> None:
    from multistep_core.kit import EvictionWarning

    port = evicting_redis.rsplit(":", 1)[1].split("/")[0]
    with pytest.warns(EvictionWarning, match=rf"Redis at redis://127\.0\.0\.1:{port}/0 has maxmemory-policy allkeys-lru"):
        backend_from_url("dramatiq+" + evicting_redis).close()
