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

import pytest

from multistep_core import connect
from multistep_core.errors import BackendConnectionError, BackendDriverMissing, ConfigurationError

pytest.importorskip("dramatiq")

import multistep_dramatiq
from multistep_dramatiq import ACTOR_NAME, DramatiqQueue, backend_from_url

REDIS = "dramatiq+redis://127.0.0.1:6379/13"


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
        "options": {"lease": 5, "store": "redis://127.0.0.1:6379/13", "prefix": "ms", "heartbeat": 4},
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
