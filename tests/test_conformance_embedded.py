"""The shared conformance suite against the embedded backends (no service needed)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest
from multistep_conformance import BackendTests, DifferentialTests, StoreTests

from multistep_core import Store
from multistep_core.embedded.sqlite import SQLiteStore

_DB = os.path.join(tempfile.mkdtemp(prefix="multistep-conf-"), "tasks.db")


class TestMemoryStore(StoreTests):
    backend_string = "memory"


class TestMemoryBackend(BackendTests):
    backend_string = "memory"


class TestSQLiteStore(StoreTests):
    backend_string = f"sqlite:///{_DB}"


class TestSQLiteBackend(BackendTests):
    backend_string = f"sqlite:///{_DB}"


class TestSQLiteAgainstTheReference(DifferentialTests):
    """SQLiteStore is a RowStore too, but with its own Txn primitives: the differential test
    checks they behave like the memory ones (a fresh database file for the class)."""

    @pytest.fixture(scope="class")
    @classmethod
    def native_store(cls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
        store = SQLiteStore(str(tmp_path_factory.mktemp("differential") / "tasks.db"), lease=cls.lease)
        try:
            yield store
        finally:
            store.close()
