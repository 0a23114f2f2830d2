"""The test suite's own plumbing (issue 13, sections 5 and 6): one CI switch; a missing service
or library skips locally and fails under CI; docker-compose.yml is valid; without Docker the
service fixtures say why they could not start anything."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import COMPOSE_FILE, docker_unavailable, unreachable
from services import require_module

ROOT = Path(__file__).resolve().parent.parent

PROBE = '''
import importlib.util
import pytest
from services import require_module

_spec = importlib.util.spec_from_file_location("suite_conftest", {conftest!r})
suite = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(suite)

@pytest.fixture
def fake_service(request):
    suite._service(request, "Fake", "127.0.0.1", {port}, "redis")

def test_missing_library():
    require_module("no_such_library_for_multistep")

def test_missing_service():
    suite.require_service("Fake", "127.0.0.1", {port})

def test_missing_service_fixture(fake_service):
    pass
'''


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends


def _run_probe(tmp_path: Path, ci: str | None, port: int) -> str:
    (tmp_path / "test_probe.py").write_text(PROBE.format(port=port, conftest=str(ROOT / "tests" / "conftest.py")))
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    tests = str(ROOT / "tests")
    env["PYTHONPATH"] = os.pathsep.join([tests, env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rsfE", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path / "test_probe.py")],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )
    return out.stdout + out.stderr


def test_locally_a_missing_library_or_service_skips_with_the_reason(tmp_path: Path) -> None:
    out = _run_probe(tmp_path, None, _closed_port())
    assert "3 skipped" in out, out
    assert "no_such_library_for_multistep is not installed" in out
    assert "Fake is not reachable at 127.0.0.1:" in out
    assert "Docker could not start it: " in out  # the fixture tried Docker and says why it could not


@pytest.mark.parametrize("ci", ["true", "1"])
def test_under_ci_a_missing_library_or_service_fails(tmp_path: Path, ci: str) -> None:
    out = _run_probe(tmp_path, ci, _closed_port())
    assert "2 failed, 1 error" in out, out  # the fixture's failure is a setup error
    assert "skipped" not in out, out
    assert "CI is set: a missing library fails the run" in out
    assert "CI is set: a missing service fails the run" in out


def test_the_compose_file_defines_the_services_the_tests_use() -> None:
    yaml = require_module("yaml")
    compose = yaml.safe_load(COMPOSE_FILE.read_text("utf-8"))  # type: ignore[attr-defined]
    services = compose["services"]
    assert set(services) == {"redis", "rabbitmq", "postgres"}
    redis, rabbit, pg = services["redis"], services["rabbitmq"], services["postgres"]
    assert redis["image"].startswith("redis:") and rabbit["image"].startswith("rabbitmq:")
    assert redis["ports"] == ["127.0.0.1:${MULTISTEP_REDIS_PORT:-6379}:6379"]
    assert "127.0.0.1:5672:5672" in rabbit["ports"]
    assert "noeviction" in redis["command"]  # an evicted key is a lost task
    assert rabbit["environment"] == {"RABBITMQ_DEFAULT_USER": "guest", "RABBITMQ_DEFAULT_PASS": "guest"}
    assert pg["image"].startswith("postgres:") and "127.0.0.1:5432:5432" in pg["ports"]
    assert pg["environment"] == {"POSTGRES_HOST_AUTH_METHOD": "trust"}  # the tests' URL has no password
    for svc in (redis, rabbit, pg):
        assert svc["healthcheck"]["test"][0] == "CMD"


def test_without_docker_the_reason_says_what_was_tried() -> None:
    # This machine has a docker command but no daemon (or none at all): the real check, no stand-in
    why = docker_unavailable()
    if not why:
        pytest.skip("Docker is available here: the services can be started, nothing to fall back from")
    assert why.startswith(("no docker command", "the Docker daemon is not available", "docker compose is not available",
                           "the Docker daemon does not answer", "pytest-docker is not installed"))
    msg = unreachable("Redis", "127.0.0.1", 1, why)
    assert msg.startswith("Redis is not reachable at 127.0.0.1:1; Docker could not start it: ")
    assert "docker compose up -d" in msg and "docker-compose.yml" in msg
