"""Celery adapter specifics: options, missing driver, connection errors, the wire format, the
one task and its settings, a user's own Celery app, and the worker's processes."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from services import REDIS_ADDR, require_module

from multistep_core import connect
from multistep_core.errors import BackendConnectionError, BackendDriverMissing, ConfigurationError

require_module("celery")

import multistep_celery  # noqa: E402 - after the library check
from multistep_celery import TASK_NAME, CeleryQueue, backend_from_url  # noqa: E402 - after the library check

HERE = Path(__file__).parent
REDIS = f"celery+redis://{REDIS_ADDR}/14"
AMQP = "celery+amqp://guest:guest@127.0.0.1:5672//"


def _prefix() -> str:
    return f"mstest{uuid.uuid4().hex[:6]}"


@pytest.fixture
def user_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """tests/celery_user_app.py's own Celery app, attached, without leaving it as this process's
    default app for the other tests."""
    monkeypatch.setattr(multistep_celery.task._state, "default_app", None)
    monkeypatch.setattr(multistep_celery.task.PROCESS, "spec", None)
    monkeypatch.syspath_prepend(str(HERE))
    import celery_user_app

    yield celery_user_app.app


def test_unknown_option_is_refused_with_a_suggestion() -> None:
    with pytest.raises(ConfigurationError, match=r"'visibility' \(did you mean 'visibility_timeout'\?\)"):
        backend_from_url(REDIS, visibility=3)
    with pytest.raises(ConfigurationError, match="unknown option"):
        connect(REDIS + "?retries=3")
    with pytest.raises(ConfigurationError, match=r"pool='gevent' \(str\) must be one of prefork, threads, solo"):
        backend_from_url(REDIS, pool="gevent")


def test_bad_backend_strings() -> None:
    with pytest.raises(ConfigurationError, match=r"celery\+redis://"):
        backend_from_url("celery+kafka://127.0.0.1:9092")
    with pytest.raises(ConfigurationError, match="store must be"):
        backend_from_url(REDIS, store="mysql://x")
    with pytest.raises(ConfigurationError, match="cannot import"):
        backend_from_url("celery", celery_app="no_such_module_xyz:app")
    assert multistep_celery.broker_url("celery") == (None, None)
    assert multistep_celery.broker_url("celery+amqp://u:p@h:5672//") == ("amqp", "amqp://u:p@h:5672//")
    assert multistep_celery.broker_url("celery+redis://h:6379/3") == ("redis", "redis://h:6379/3")


def test_missing_driver_names_the_pip_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "celery", None)  # import celery -> ImportError
    with pytest.raises(BackendDriverMissing, match=r'pip install "multistep\[celery\]"'):
        connect(REDIS)


def test_import_of_the_package_does_not_need_celery() -> None:
    code = (
        "import sys; sys.modules['celery'] = None; sys.modules['kombu'] = None\n"
        "import multistep_celery, multistep_core; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("url", ["celery+redis://127.0.0.1:1/0", "celery+amqp://guest:secret@127.0.0.1:1//"])
def test_connection_errors_name_the_url_without_password(url: str, tmp_path: Path) -> None:
    # Given a broker that is down (a closed port)
    # When connecting, Then the broker is checked at once: the error names it, never the password
    with pytest.raises(BackendConnectionError) as info:
        backend_from_url(url, store=f"sqlite:///{tmp_path}/t.db")
    msg = str(info.value)
    assert "Celery" in msg and "broker at" in msg and "127.0.0.1:1" in msg and "secret" not in msg
    assert "refused" in msg.lower()  # the cause
    # and a queue that loses its broker later says the same when it publishes
    q = CeleryQueue(multistep_celery.make_app(url.removeprefix("celery+")))
    try:
        with pytest.raises(BackendConnectionError) as info:
            q.enqueue("default", ['{"x":1}'])
        assert "127.0.0.1:1" in str(info.value) and "secret" not in str(info.value)
        with pytest.raises(BackendConnectionError):
            q.ping()
    finally:
        q.close()


def _redis_messages(client: Any, key: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in reversed(client.lrange(key, 0, -1))]  # LPUSH: oldest last


@pytest.mark.usefixtures("redis_service")
def test_wire_format_is_json_and_names_the_one_task() -> None:
    import redis

    backend = backend_from_url(REDIS, prefix=_prefix())
    queue = f"adaptertest-{uuid.uuid4().hex[:6]}"
    try:
        q = backend.queue
        assert isinstance(q, CeleryQueue)
        bodies = [json.dumps({"i": i}) for i in range(2500)]
        q.enqueue(queue, bodies)
        q.publish_raw(queue, "not json at all")
        client = redis.Redis.from_url(f"redis://{REDIS_ADDR}/14")
        msgs = _redis_messages(client, f"multistep.celery.{queue}")
        assert len(msgs) == 2501
        assert {m["content-type"] for m in msgs} == {"application/json"}  # JSON, never pickle
        assert {m["headers"]["task"] for m in msgs} == {TASK_NAME}
        assert all(m["headers"]["ignore_result"] for m in msgs)
        args = [json.loads(base64.b64decode(m["body"]))[0] for m in msgs]
        assert args == [[b] for b in bodies] + [["not json at all"]]
        assert len({m["headers"]["id"] for m in msgs}) == 2501
        assert q.purge(queue) == 2501
        assert client.llen(f"multistep.celery.{queue}") == 0
    finally:
        backend.close()


def test_the_task_and_the_app_carry_the_settings_the_adapter_relies_on() -> None:
    backend = backend_from_url(REDIS)
    try:
        q = backend.queue
        assert isinstance(q, CeleryQueue)
        task = q.app.tasks[TASK_NAME]
        assert task.acks_late and task.reject_on_worker_lost and task.ignore_result
        assert task.acks_on_failure_or_timeout and task.max_retries == 0 and task.serializer == "json"
        assert [n for n in q.app.tasks if not n.startswith("celery.")] == [TASK_NAME]
        conf = q.app.conf
        assert conf.accept_content == ["json"] and conf.task_serializer == "json"
        assert conf.worker_prefetch_multiplier == 1 and conf.worker_disable_prefetch
        opts = conf.broker_transport_options
        assert opts["visibility_timeout"] == 10.0 and opts["unacked_restore_interval"] == 1.0
        assert opts["unacked_restore_throttle"] == 1 and opts["unacked_key"] == "multistep.unacked"
        assert str(conf.result_backend or "disabled").startswith("disabled")
    finally:
        backend.close()
    b2 = backend_from_url(REDIS, visibility_timeout=5, restore_interval=0.5)
    try:
        assert b2.queue.app.conf.broker_transport_options["visibility_timeout"] == 5.0  # type: ignore[attr-defined]
    finally:
        b2.close()


@pytest.mark.usefixtures("redis_service")
def test_a_user_app_is_used_unchanged_and_publishes_json(user_app: Any) -> None:
    import redis

    before = dict(user_app.conf.broker_transport_options or {})
    old_serializer = user_app.conf.task_serializer
    user_app.conf.task_serializer = "pickle"  # the app's own tasks may pickle
    backend = backend_from_url("celery", celery_app="celery_user_app:app", prefix=_prefix())
    queue = f"adaptertest-{uuid.uuid4().hex[:6]}"
    try:
        q = backend.queue
        assert isinstance(q, CeleryQueue) and q.app is user_app and not q.own_app
        assert backend.name == "celery+redis"
        # the app's own pickle serializer is not used for multistep's messages
        q.enqueue(queue, ['{"v":1}'])
        (msg,) = _redis_messages(redis.Redis.from_url(f"redis://{REDIS_ADDR}/14"), f"multistep.celery.{queue}")
        assert msg["content-type"] == "application/json" and msg["headers"]["task"] == TASK_NAME
        assert dict(user_app.conf.broker_transport_options or {}) == before  # nothing app-wide changed
        assert user_app.conf.task_serializer == "pickle"
        assert multistep_celery.attach(user_app) is user_app.tasks[TASK_NAME]  # idempotent
        q.purge(queue)
    finally:
        user_app.conf.task_serializer = old_serializer
        backend.close()
    with pytest.raises(ConfigurationError, match="Celery app uses"):
        backend_from_url(f"celery+redis://{REDIS_ADDR}/3", celery_app=user_app)


def test_a_foreign_task_with_the_same_name_is_refused() -> None:
    from celery import Celery

    app = Celery("other", broker=f"redis://{REDIS_ADDR}/14", set_as_current=False)

    @app.task(name=TASK_NAME)
    def impostor(x: Any) -> None: ...

    app.finalize()
    with pytest.raises(ConfigurationError, match="not multistep's"):
        multistep_celery.attach(app)


@pytest.mark.usefixtures("rabbitmq_service")
def test_amqp_enqueue_and_purge() -> None:
    backend = backend_from_url(AMQP, store=f"redis://{REDIS_ADDR}/14", prefix=_prefix())
    q = backend.queue
    assert isinstance(q, CeleryQueue)
    queue = f"adaptertest-{uuid.uuid4().hex[:6]}"
    try:
        q.enqueue(queue, [json.dumps({"i": i}) for i in range(300)])
        q.publish_raw(queue, "raw")
        with q.app.connection_for_write() as conn:
            ch = conn.default_channel
            deadline = time.monotonic() + 5
            n = 0
            while time.monotonic() < deadline:
                n = ch.queue_declare(q.cq(queue), passive=True).message_count
                if n == 301:
                    break
                time.sleep(0.05)
            assert n == 301
            m = ch.basic_get(q.cq(queue), no_ack=True)
            assert m.headers["task"] == TASK_NAME and m.properties["content_type"] == "application/json"
            assert json.loads(m.body)[0] == ['{"i": 0}']
            assert q.purge(queue) == 300
            ch.queue_delete(q.cq(queue))
            # a queue of that name declared by another program with other arguments: a clear error
            ch.queue_declare(q.cq(queue + "x"), durable=True, arguments={"x-dead-letter-exchange": ""})
        with pytest.raises(ConfigurationError, match=r"exists with other arguments.*queue_prefix"):
            q.enqueue(queue + "x", ['{"i": 1}'])
    finally:
        with q.app.connection_for_write() as conn:
            conn.default_channel.queue_delete(q.cq(queue + "x"))
        backend.close()


# -- real workers ------------------------------------------------------------------------
def _start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    out = open(log, "wb")
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    full_env.update(env or {})
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=full_env, cwd=HERE)


def _wait_ready(proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while b" ready." not in log.read_bytes():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes], log: Path) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"worker did not stop on SIGTERM\n{log.read_text()}") from None


@pytest.mark.usefixtures("redis_service")
@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_worker_processes_build_the_backend_once_and_recovery_runs_in_the_main_process(
    pool: str, tmp_path: Path, user_app: Any
) -> None:
    import celery_jobs

    prefix = _prefix()
    url = f"{REDIS}?prefix={prefix}&pool={pool}&lease=5"
    queue = f"adaptertest-{uuid.uuid4().hex[:6]}"
    log = tmp_path / "worker.log"
    cmd = [sys.executable, "-m", "multistep_core", "--backend", url, "worker", "celery_jobs", "-q", queue, "-c", "2"]
    proc = _start(cmd, log)
    backend = backend_from_url(REDIS, prefix=prefix, lease=5)
    journal = tmp_path / "journal"
    try:
        _wait_ready(proc, log)
        with backend.create_task(queue=queue) as task:
            task.add_jobs(celery_jobs.where, [(str(journal), f"j{i}") for i in range(12)])
        assert task.wait(timeout=60).state == "succeeded", log.read_text()
        lines = [json.loads(line) for line in journal.read_text().splitlines()]
        assert len(lines) == 12
        by_pid: dict[int, set[int]] = {}
        for line in lines:
            by_pid.setdefault(line["pid"], set()).add(line["backend"])
            assert line["built_in"] == line["pid"]  # built in the process that uses it
        assert all(len(ids) == 1 for ids in by_pid.values())  # once per process
        if pool == "prefork":
            assert proc.pid not in by_pid and len(by_pid) <= 2
            assert all("multistep-recovery" not in line["threads"] for line in lines)
        else:
            assert set(by_pid) == {proc.pid}
            assert all("multistep-recovery" in line["threads"] for line in lines)
    finally:
        code = _stop(proc, log)
        backend.close()
    assert code == 0, log.read_text()
    if pool == "prefork":
        assert b"multistep-recovery" not in log.read_bytes()


@pytest.mark.usefixtures("redis_service")
def test_a_plain_celery_worker_of_an_attached_app_runs_jobs(tmp_path: Path, user_app: Any) -> None:
    import celery_jobs

    prefix = _prefix()
    queue = f"adaptertest-{uuid.uuid4().hex[:6]}"
    log = tmp_path / "worker.log"
    env = {"CELERYTEST_BACKEND": f"celery?prefix={prefix}&lease=5"}
    cmd = [
        sys.executable, "-m", "celery", "-A", "celery_user_app:app", "worker", "-Q", f"multistep.celery.{queue}",
        "-P", "threads", "-c", "2", "-l", "INFO", "--without-mingle", "--without-gossip", "-n", f"plain-{prefix}@%h",
    ]
    proc = _start(cmd, log, env)
    backend = backend_from_url("celery", celery_app=user_app, prefix=prefix, lease=5)
    journal = tmp_path / "journal"
    try:
        _wait_ready(proc, log)
        with backend.create_task(queue=queue) as task:
            task.add_jobs(celery_jobs.where, [(str(journal), f"j{i}") for i in range(4)])
            task.add_finalization_job(celery_jobs.where, str(journal), "fin")
        assert task.wait(timeout=60).state == "succeeded", log.read_text()
        lines = [json.loads(line) for line in journal.read_text().splitlines()]
        assert [line["label"] for line in lines][-1] == "fin"
        assert {line["pid"] for line in lines} == {proc.pid}
        assert all("multistep-recovery" in line["threads"] for line in lines)  # started on worker_ready
    finally:
        _stop(proc, log)
        backend.close()


def test_a_message_whose_handling_fails_goes_back_to_the_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    # The runner raises only when the store (or broker) is unreachable; the message must be
    # requeued, not acknowledged away.
    from celery.exceptions import Reject

    class Down:
        class runner:
            @staticmethod
            def handle(body: Any) -> str:
                raise ConnectionError("store unreachable")

    monkeypatch.setattr(multistep_celery.task, "get_backend", lambda: Down)
    monkeypatch.setattr(multistep_celery.task, "REQUEUE_DELAY", 0.0)
    with pytest.raises(Reject) as info:
        multistep_celery.task.run('{"v":1,"task":"t","ref":"j0"}')
    assert info.value.requeue is True and "store unreachable" in str(info.value.reason)


@pytest.mark.usefixtures("rabbitmq_service")
def test_a_dead_pooled_connection_is_replaced_and_nothing_is_lost() -> None:
    import socket

    backend = backend_from_url(AMQP, store=f"redis://{REDIS_ADDR}/14", prefix=_prefix())
    q = backend.queue
    assert isinstance(q, CeleryQueue)
    queue = f"adaptertest-{uuid.uuid4().hex[:6]}"
    try:
        q.enqueue(queue, ['{"a":0}'])
        time.sleep(0.2)
        for n in (1, 500):  # single publish, and a chunk written at once
            with q.app.producer_or_acquire() as p:  # the broker (or a firewall) drops the idle connection
                p.connection.connection.transport.sock.shutdown(socket.SHUT_RDWR)
            time.sleep(0.2)
            q.enqueue(queue, ['{"a":1}'] * n)
        with q.app.connection_for_write() as conn:
            ch = conn.default_channel
            deadline = time.monotonic() + 5
            while (n := ch.queue_declare(q.cq(queue), passive=True).message_count) < 502 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert n == 502
            ch.queue_delete(q.cq(queue))
    finally:
        backend.close()


@pytest.mark.usefixtures("rabbitmq_service")
def test_publisher_confirms_on_request() -> None:
    backend = backend_from_url(AMQP, store=f"redis://{REDIS_ADDR}/14", prefix=_prefix(), confirm=True)
    q = backend.queue
    assert isinstance(q, CeleryQueue)
    queue = f"adaptertest-{uuid.uuid4().hex[:6]}"
    try:
        assert q.app.conf.broker_transport_options == {"confirm_publish": True}
        q.enqueue(queue, ['{"a":1}'] * 200)
        with q.app.connection_for_write() as conn:  # confirmed: all there when enqueue returns
            assert conn.default_channel.queue_declare(q.cq(queue), passive=True).message_count == 200
            conn.default_channel.queue_delete(q.cq(queue))
    finally:
        backend.close()


@pytest.mark.usefixtures("redis_service")
def test_a_job_that_kills_its_prefork_child_fails_after_max_lost_and_the_worker_lives_on(tmp_path: Path) -> None:
    import celery_jobs

    prefix = _prefix()
    queue = f"adaptertest-{uuid.uuid4().hex[:6]}"
    log = tmp_path / "worker.log"
    cmd = [sys.executable, "-m", "multistep_core", "--backend", f"{REDIS}?prefix={prefix}&lease=1", "worker",
           "celery_jobs", "-q", queue, "-c", "2"]
    proc = _start(cmd, log)
    backend = backend_from_url(REDIS, prefix=prefix, lease=1)
    journal = tmp_path / "journal"
    try:
        _wait_ready(proc, log)
        with backend.create_task(queue=queue, max_lost=2) as task:
            task.add_job(celery_jobs.crash, str(journal))
            task.add_job(celery_jobs.where, str(journal), "fine")
            task.add_finalization_job(celery_jobs.where, str(journal), "fin")
        p = task.wait(timeout=60)
        assert p.state == "failed" and p.failed == 1 and p.succeeded == 1, log.read_text()
        (failure,) = task.failures()
        assert failure.ref == "j0" and "lost" in (failure.type + failure.message).lower()
        crashes = [line for line in journal.read_text().splitlines() if line.startswith("crash")]
        # bounded: the core counts lost leases (max_lost=2) whatever Celery's requeues do
        assert 2 <= len(crashes) <= 4, crashes
        assert proc.poll() is None, "the worker died with its child"
        with backend.create_task(queue=queue) as after:  # and it still serves
            after.add_job(celery_jobs.where, str(journal), "after")
        assert after.wait(timeout=30).state == "succeeded"
    finally:
        _stop(proc, log)
        backend.close()


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
def test_a_sigkilled_pool_process_is_replaced_and_the_worker_keeps_serving(tmp_path: Path) -> None:
    import celery_jobs

    # Given `multistep worker -c 2` (prefork): a Celery worker with two pool processes
    prefix = _prefix()
    queue = f"adaptertest-{uuid.uuid4().hex[:6]}"
    log = tmp_path / "worker.log"
    cmd = [sys.executable, "-m", "multistep_core", "--backend", f"{REDIS}?prefix={prefix}", "worker", "celery_jobs",
           "-q", queue, "-c", "2"]
    proc = _start(cmd, log)
    backend = backend_from_url(REDIS, prefix=prefix)
    try:
        _wait_ready(proc, log)
        victim, survivor = _wait_for("two pool processes", lambda: len(k := _children(proc.pid)) == 2 and k,
                                     proc, log)
        # When one of them is SIGKILLed
        os.kill(victim, signal.SIGKILL)
        # Then Celery starts a replacement beside the survivor, and the worker lives on
        kids = _wait_for("a replacement", lambda: (k := _children(proc.pid)) and len(k) == 2 and victim not in k and k,
                         proc, log)
        assert survivor in kids and proc.poll() is None
        # and a task submitted afterwards completes
        journal = tmp_path / "journal"
        with backend.create_task(queue=queue) as task:
            task.add_jobs(celery_jobs.where, [(str(journal), f"j{i}") for i in range(8)])
        assert task.wait(timeout=60).state == "succeeded", log.read_text()
        assert proc.poll() is None
    finally:
        _stop(proc, log)
        backend.close()


def test_unknown_option_names_every_option_of_the_backend() -> None:
    with pytest.raises(ConfigurationError) as info:
        connect(REDIS + "?prefx=a")
    msg = str(info.value)
    assert "'prefx' (did you mean 'prefix'?)" in msg
    assert all(name in msg for name in multistep_celery.OPTIONS)
    assert {"lease", "store", "prefix"} <= set(multistep_celery.OPTIONS)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("lease=abc", "the celery option lease='abc' (str) must be a number of seconds greater than 0, e.g. lease=30"),
        ("lease=-1", "the celery option lease=-1 (int) must be a number of seconds greater than 0"),
        ("visibility_timeout=0", "visibility_timeout=0 (int) must be a number of seconds greater than 0"),
        ("restore_interval=soon", "restore_interval='soon' (str) must be a number of seconds greater than 0"),
        ("heartbeat=-5", "heartbeat=-5 (int) must be a number of seconds greater than 0"),
        ("max_tasks_per_child=-1", "max_tasks_per_child=-1 (int) must be an integer >= 0 (0: no limit)"),
        ("confirm=maybe", "the celery option confirm='maybe' (str) must be true or false, e.g. confirm=true"),
        ("pool=gevent", "pool='gevent' (str) must be one of prefork, threads, solo"),
        ("loglevel=loud", "loglevel='loud' (str) must be a log level"),
        ("celery_app=7", "celery_app=7 (int) must be 'package.module:app' or a Celery app"),
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
        connect("celery+amqp://guest:secret@rabbit.internal:5672//")
    msg = str(info.value)
    assert type(info.value) is ConfigurationError
    assert "needs a store" in msg and "secret" not in msg
    assert "celery+amqp://guest:***@rabbit.internal:5672//?store=redis://rabbit.internal:6379/0" in msg


@pytest.mark.usefixtures("rabbitmq_service")
def test_a_wrong_rabbitmq_password_is_a_connection_error_at_connect() -> None:
    with pytest.raises(BackendConnectionError) as info:
        connect(f"celery+amqp://guest:wrong@127.0.0.1:5672//?store=redis://{REDIS_ADDR}/14")
    msg = str(info.value)
    assert type(info.value) is BackendConnectionError
    assert "cannot reach the Celery amqp broker at amqp://guest:***@127.0.0.1:5672//" in msg
    assert "ACCESS_REFUSED" in msg and "wrong" not in msg


@pytest.mark.usefixtures("redis_service")
def test_a_redis_broker_that_may_evict_keys_gets_a_warning(evicting_redis: str) -> None:
    from multistep_core.kit import EvictionWarning

    port = evicting_redis.rsplit(":", 1)[1].split("/")[0]
    with pytest.warns(EvictionWarning, match=rf"Redis at redis://127\.0\.0\.1:{port}/0 has maxmemory-policy allkeys-lru"):
        backend_from_url("celery+" + evicting_redis).close()
