"""Where the tests find their services. One place, so a contributor (or a parallel run) can
point the whole suite at a private Redis: ``MULTISTEP_TEST_REDIS=127.0.0.1:6390``."""

from __future__ import annotations

import os

#: host:port of the Redis the tests use (each test file keeps its own DB number or prefix).
REDIS_ADDR = os.environ.get("MULTISTEP_TEST_REDIS", "127.0.0.1:6379")
REDIS_HOST, _, _port = REDIS_ADDR.rpartition(":")
REDIS_PORT = int(_port)

#: Under CI a missing service or library fails the run instead of skipping (``.ci/run`` exports
#: CI=true; "1" and "yes" count too). The one place the test suite decides it.
CI = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_module(name: str) -> object:
    """Import ``name``, or skip the calling test or module (with the pip line) when it is not
    installed; under CI, fail instead: a missing library must not hide a part of the suite."""
    import importlib

    import pytest

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        msg = f"{name} is not installed ({exc}); pip install -e '.[all,test]'"
        if CI:
            pytest.fail(f"{msg} (CI is set: a missing library fails the run)", pytrace=False)
        pytest.skip(msg, allow_module_level=True)
#: The PostgreSQL database the tests use (created afresh, and dropped first, by the session's
#: ``postgres_service`` fixture; each test class keeps its own table prefix).
POSTGRES_URL = os.environ.get("MULTISTEP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/multistep_test_pg")
