"""The shared conformance suite against the Redis store (jobs on threads of this process).
Redis DB 11 is this backend's in the project's test run."""

from __future__ import annotations

import pytest
from multistep_conformance import BackendTests, StoreTests

URL = "redis://127.0.0.1:6379/11"


@pytest.mark.usefixtures("redis_service")
class TestRedisStore(StoreTests):
    backend_string = URL


@pytest.mark.usefixtures("redis_service")
class TestRedisBackend(BackendTests):
    backend_string = URL
