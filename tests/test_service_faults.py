"""Service faults mid-run (issue 10): a Redis restarted with persistence, a Redis restarted
without it (reported loudly, never a hang), client connections killed mid-transition
(``CLIENT KILL``), and RabbitMQ dropping every connection of the test's own vhost.

Each Redis test runs its own ``redis-server`` on a free loopback port (never the shared one).
RabbitMQ is shared with other runs on this machine, so these tests never restart it: they
close the connections of a private vhost (``rabbitmqctl close_all_connections --vhost``), which
is what a broker restart does to the workers' connections.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CI
from multistep_conformance import Harness, Journal, eventually, jobs
from multistep_conformance.crash import FINS, check_journal, record_timing, wait_restarting, xfail_if_lost_message
from services import REDIS_ADDR

from multistep_core import Task
from multistep_core.errors import StoreLost

N_JOBS = 40
VHOST = "multistep-faults"


class OwnRedis:
    """A redis-server of this test: restartable, with or without persistence."""

    def __init__(self, directory: Path, persistent: bool) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            if CI:
                pytest.fail("redis-server is not installed (CI is set)")
            pytest.skip("redis-server is not installed")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else ["--appendonly", "no"]
        self.cmd = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", str(directory),
                    *persistence]
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def client(self):  # type: ignore[no-untyped-def]
        import redis

        return redis.Redis(port=self.port)

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        c = self.client()
        eventually(lambda: _pings(c), timeout=20, what="the test's redis-server to answer")
        c.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def restart(self, down: float = 1.0) -> None:
        self.kill()
        time.sleep(down)  # workers see the outage, not a blip
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def _pings(client) -> bool:  # type: ignore[no-untyped-def]
    import redis

    try:
        return bool(client.ping())
    except redis.exceptions.ConnectionError:
        return False


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    r = OwnRedis(tmp_path, persistent=True)
    yield r
    r.stop()


@pytest.fixture
def volatile_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    r = OwnRedis(tmp_path, persistent=False)
    yield r
    r.stop()


def _urls(port: int) -> dict[str, str]:
    return {
        "rq": f"rq+redis://127.0.0.1:{port}/0",
        "celery": f"celery+redis://127.0.0.1:{port}/0",
        "dramatiq": f"dramatiq+redis://127.0.0.1:{port}/0",
    }


def _task(h: Harness, journal: Journal, n: int = N_JOBS, seconds: float = 0.05) -> Task:
    with h.task() as task:
        task.add_jobs(jobs.record, [(journal.path, f"job{i}", seconds) for i in range(n)])
        for f in FINS:
            task.add_finalization_job(jobs.record, journal.path, f)
    return task


def _mid_run(journal: Journal, n: int = 8) -> None:
    eventually(lambda: len(journal.starting("job")) >= n, timeout=60, what=f"{n} jobs to run")


@pytest.mark.parametrize("adapter", ["rq", "celery", "dramatiq"])
def test_workers_go_on_after_redis_restarts_with_persistence(
    adapter: str, persistent_redis: OwnRedis, tmp_path: Path
) -> None:
    pytest.importorskip(adapter)
    h = Harness(_urls(persistent_redis.port)[adapter], workers=2)
    try:
        journal = Journal(tmp_path)
        task = _task(h, journal, seconds=0.1)
        # When Redis (store and broker) is killed mid-run and comes back from its append-only file
        _mid_run(journal)
        persistent_redis.restart()
        back = time.monotonic()
        assert not task.progress().state.terminal, "the task ended before the restart: make it longer"
        # Then the workers reconnect and the task ends, counts exact, finalizers once after the jobs
        (p,) = wait_restarting(h, [task], 2, 90, f"{adapter} after a Redis restart")
        record_timing(h, "redis-restart", adapter=adapter, seconds=round(time.monotonic() - back, 2))
        check_journal(journal, p, N_JOBS)
        assert all(proc.poll() is None for proc in h.procs), "a worker exited on the outage"
    finally:
        h.stop()


@pytest.mark.parametrize("adapter", ["rq", "dramatiq"])
def test_a_redis_that_forgot_everything_is_reported_not_waited_for(
    adapter: str, volatile_redis: OwnRedis, tmp_path: Path
) -> None:
    pytest.importorskip(adapter)
    h = Harness(_urls(volatile_redis.port)[adapter], workers=1)
    try:
        journal = Journal(tmp_path)
        task = _task(h, journal, seconds=0.2)
        # When Redis restarts without persistence mid-run (every task and message is gone)
        _mid_run(journal, 2)
        volatile_redis.restart()
        # Then a waiter gets a clear error at once instead of waiting or "no task"
        started = time.monotonic()
        with pytest.raises(StoreLost, match="lost its data") as err:
            task.wait(timeout=60)
        assert time.monotonic() - started < 10 and task.id in str(err.value)
        assert "appendonly" in str(err.value)
        # And the workers say so in their logs, and keep serving tasks created afterwards
        eventually(lambda: "lost its data" in h.worker_logs(), timeout=30, what="the workers to report the loss")
        after = _task(h, journal, n=3, seconds=0.0)
        assert after.wait(timeout=60).succeeded == 3
    finally:
        h.stop()


@pytest.mark.parametrize("adapter", ["rq", "celery", "dramatiq"])
def test_client_connections_killed_mid_transition(adapter: str, persistent_redis: OwnRedis, tmp_path: Path) -> None:
    pytest.importorskip(adapter)
    h = Harness(_urls(persistent_redis.port)[adapter], workers=2)
    admin = persistent_redis.client()
    try:
        journal = Journal(tmp_path)
        task = _task(h, journal, n=60, seconds=0.1)  # about 1.5 s of work on 4 slots: several kills land
        # When every client connection is killed again and again while jobs start and finish
        _mid_run(journal, 4)
        kills = 0
        until = time.monotonic() + 4
        while time.monotonic() < until and not task.progress().state.terminal:
            admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
            kills += 1
            time.sleep(0.15)
        # Then the workers reconnect and the task ends with exact counts (a connection killed while
        # RQ moved a message to its worker loses that ticket: the ledger sends it again)
        try:
            (p,) = wait_restarting(h, [task], 2, 60, f"{adapter} after CLIENT KILL")
        except AssertionError as exc:
            xfail_if_lost_message(exc, queue_loses=False)
            raise
        check_journal(journal, p, 60)
        assert kills > 3
    finally:
        admin.close()
        h.stop()


def _rabbitmqctl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["rabbitmqctl", *args], capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def private_vhost(rabbitmq_service: None) -> Iterator[str]:
    if shutil.which("rabbitmqctl") is None:
        if CI:
            pytest.fail("rabbitmqctl is not installed (CI is set)")
        pytest.skip("rabbitmqctl is not installed")
    _rabbitmqctl("add_vhost", VHOST)
    out = _rabbitmqctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
    assert out.returncode == 0, out.stderr.decode()
    yield VHOST
    _rabbitmqctl("delete_vhost", VHOST)


@pytest.mark.usefixtures("redis_service")
@pytest.mark.parametrize("adapter", ["celery", "dramatiq"])
def test_workers_go_on_after_rabbitmq_drops_every_connection(adapter: str, private_vhost: str, tmp_path: Path) -> None:
    pytest.importorskip(adapter)
    prefix = f"msfault{uuid.uuid4().hex[:6]}"
    h = Harness(f"{adapter}+amqp://guest:guest@127.0.0.1:5672/{private_vhost}?store=redis://{REDIS_ADDR}/12"
                f"&prefix={prefix}", workers=2)
    try:
        journal = Journal(tmp_path)
        task = _task(h, journal, n=80, seconds=0.5)  # ~10 s of work: rabbitmqctl itself takes seconds
        # When the broker closes every connection of the vhost (what its restart does to them)
        _mid_run(journal, 4)
        out = _rabbitmqctl("close_all_connections", "-p", private_vhost, "multistep fault test")
        assert out.returncode == 0, out.stderr.decode()
        dropped = time.monotonic()
        assert not task.progress().state.terminal, "the task ended before the drop: make it longer"
        # Then the workers reconnect and the task ends with exact counts
        (p,) = wait_restarting(h, [task], 2, 90, f"{adapter} after the broker dropped its connections")
        record_timing(h, "amqp-drop", adapter=adapter, seconds=round(time.monotonic() - dropped, 2))
        check_journal(journal, p, 80)
    finally:
        h.stop()
