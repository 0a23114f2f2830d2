"""Shared test plumbing: service checks that skip on a laptop and fail under CI."""

from __future__ import annotations

import os
import socket

import pytest

CI = bool(os.environ.get("CI"))


def service_up(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip the calling test (or module) when a service is down; under CI, fail instead."""
    if service_up(host, port):
        return
    msg = f"{name} is not reachable at {host}:{port}"
    if CI:
        pytest.fail(f"{msg} (CI is set: a missing service fails the run)", pytrace=False)
    pytest.skip(f"{msg}; start it or run under Docker (pytest-docker) to include these tests")


@pytest.fixture(scope="session")
def redis_service() -> None:
    require_service("Redis", "127.0.0.1", 6379)


@pytest.fixture(scope="session")
def rabbitmq_service() -> None:
    require_service("RabbitMQ", "127.0.0.1", 5672)
