"""Where the tests find their services. One place, so a contributor (or a parallel run) can
point the whole suite at a private Redis: ``MULTISTEP_TEST_REDIS=127.0.0.1:6390``."""

from __future__ import annotations

import os

#: host:port of the Redis the tests use (each test file keeps its own DB number or prefix).
REDIS_ADDR = os.environ.get("MULTISTEP_TEST_REDIS", "127.0.0.1:6379")
REDIS_HOST, _, _port = REDIS_ADDR.rpartition(":")
REDIS_PORT = int(_port)

#: The PostgreSQL database the tests use (created afresh, and dropped first, by the session's
#: ``postgres_service`` fixture; each test class keeps its own table prefix).
POSTGRES_URL = os.environ.get("MULTISTEP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/multistep_test_pg")
