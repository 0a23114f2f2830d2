"""The shared conformance suite against the embedded backends (no service needed)."""

from __future__ import annotations

import os
import tempfile

from multistep_conformance import BackendTests, StoreTests

_DB = os.path.join(tempfile.mkdtemp(prefix="multistep-conf-"), "tasks.db")


class TestMemoryStore(StoreTests):
    backend_string = "memory"


class TestMemoryBackend(BackendTests):
    backend_string = "memory"


class TestSQLiteStore(StoreTests):
    backend_string = f"sqlite:///{_DB}"


class TestSQLiteBackend(BackendTests):
    backend_string = f"sqlite:///{_DB}"
