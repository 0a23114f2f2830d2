"""Shared test plumbing: service checks that skip on a laptop and fail under CI."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from services import CI, REDIS_HOST, REDIS_PORT


def service_up(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"


def docker_unavailable() -> str:
    """Why the services cannot be started with Docker here ("" when they can): no ``docker``
    command, no daemon answering, no ``docker compose``, or pytest-docker not installed."""
    import shutil
    import subprocess

    if shutil.which("docker") is None:
        return "no docker command"
    for args, what in ((["docker", "info"], "the Docker daemon"), (["docker", "compose", "version"], "docker compose")):
        try:
            out = subprocess.run(args, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{what} does not answer ({exc})"
        if out.returncode != 0:
            why = (out.stderr or out.stdout).strip().splitlines()
            return f"{what} is not available ({why[-1] if why else f'exit {out.returncode}'})"
    try:
        import pytest_docker  # noqa: F401
    except ImportError:
        return "pytest-docker is not installed (pip install -e '.[test]')"
    return ""


def unreachable(name: str, host: str, port: int, docker: str) -> str:
    """The message for a service that is down, saying what was tried."""
    how = f"Docker could not start it: {docker}" if docker else "Docker was not tried"
    return f"{name} is not reachable at {host}:{port}; {how}. Start it, or run `docker compose up -d` ({COMPOSE_FILE.name})"


def require_service(name: str, host: str, port: int) -> None:
    """Skip the calling test (or module) when a service is down; under CI, fail instead."""
    if service_up(host, port):
        return
    msg = f"{name} is not reachable at {host}:{port}"
    if CI:
        pytest.fail(f"{msg} (CI is set: a missing service fails the run)", pytrace=False)
    pytest.skip(f"{msg}; start it, or run `docker compose up -d` ({COMPOSE_FILE.name}) to include these tests")


def _service(request: pytest.FixtureRequest, name: str, host: str, port: int, compose: str) -> None:
    """A session service: reachable already, else started by pytest-docker from
    docker-compose.yml when Docker is available (loopback addresses only), else skipped
    locally and failed under CI, the message saying what was tried."""
    if service_up(host, port):
        return
    docker = docker_unavailable() if host in ("127.0.0.1", "localhost") else f"{host} is not this machine"
    if not docker:
        os.environ.setdefault("MULTISTEP_REDIS_PORT", str(REDIS_PORT))
        services = request.getfixturevalue("docker_services")  # pytest-docker: compose up, down at the end
        services.wait_until_responsive(timeout=120.0, pause=0.5, check=lambda: service_up(host, port))
        return
    msg = unreachable(name, host, port, docker)
    if CI:
        pytest.fail(f"{msg} (CI is set: a missing service fails the run)", pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    """pytest-docker: the project's compose file."""
    return str(COMPOSE_FILE)


@pytest.fixture(scope="session")
def redis_service(request: pytest.FixtureRequest) -> None:
    _service(request, "Redis", REDIS_HOST, REDIS_PORT, "redis")


@pytest.fixture(scope="session")
def rabbitmq_service(request: pytest.FixtureRequest) -> None:
    _service(request, "RabbitMQ", "127.0.0.1", 5672, "rabbitmq")


@pytest.fixture(scope="session")
def postgres_service(request: pytest.FixtureRequest) -> str:
    """The URL of the tests' PostgreSQL database, dropped and created afresh once per session
    (UTF8); skipped (failed under CI) when the server is down or psycopg is not installed."""
    from urllib.parse import urlsplit

    from services import POSTGRES_URL

    parts = urlsplit(POSTGRES_URL)
    _service(request, "PostgreSQL", parts.hostname or "127.0.0.1", parts.port or 5432, "postgres")
    try:
        import psycopg
    except ImportError:
        if CI:
            pytest.fail('psycopg is not installed (CI is set): pip install "multistep[postgres]"', pytrace=False)
        pytest.skip('psycopg is not installed: pip install "multistep[postgres]"')
    name = parts.path.lstrip("/")
    admin = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f"CREATE DATABASE \"{name}\" ENCODING 'UTF8' TEMPLATE template0")
    return POSTGRES_URL


@pytest.fixture
def evicting_redis(tmp_path: Path) -> Iterator[str]:
    """The URL of a throwaway Redis server (its own process, a free loopback port, no
    persistence) whose ``maxmemory-policy`` is ``allkeys-lru``: the shared server's config is
    never changed. Skipped when ``redis-server`` is not installed."""
    import shutil
    import subprocess
    import time

    exe = shutil.which("redis-server")
    if exe is None:
        if CI:
            pytest.fail("redis-server is not installed (CI is set: a missing service fails the run)", pytrace=False)
        pytest.skip("redis-server is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        import redis

        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:  # until it answers
            try:
                client.config_set("maxmemory-policy", "allkeys-lru")
                break
            except redis.exceptions.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, "the throwaway redis-server did not start"
                time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _cluster_or_skip(base: int) -> object:
    """A fresh 6-node Redis Cluster on base..base+5 (tests/cluster_service.py); skipped with the
    reason where it cannot start here, failed under CI."""
    from cluster_service import ClusterUnavailable, start_cluster

    try:
        return start_cluster(base)
    except ClusterUnavailable as exc:
        msg = f"cannot start a Redis Cluster on ports {base}-{base + 5}: {exc}"
        if CI:
            pytest.fail(f"{msg} (CI is set: a missing service fails the run)", pytrace=False)
        pytest.skip(msg)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[str]:
    """The ``redis+cluster://`` URL of a real cluster (3 primaries, 3 replicas) started for the
    session on ``$MULTISTEP_TEST_CLUSTER_PORT`` (default 7100) and the five ports after it;
    every node is killed at the end."""
    from cluster_service import BASE_PORT

    cluster = _cluster_or_skip(BASE_PORT)
    try:
        yield cluster.url  # type: ignore[attr-defined]
    finally:
        cluster.stop()  # type: ignore[attr-defined]


@pytest.fixture
def failover_cluster() -> Iterator[object]:
    """A cluster of its own (ports base+10..base+15) for a test that kills its nodes."""
    from cluster_service import BASE_PORT

    cluster = _cluster_or_skip(BASE_PORT + 10)
    try:
        yield cluster
    finally:
        cluster.stop()  # type: ignore[attr-defined]
