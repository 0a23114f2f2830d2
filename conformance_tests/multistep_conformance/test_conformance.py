"""Runs the whole suite against ``--multistep-backend`` (see plugin.py)."""

from __future__ import annotations

import pytest

from multistep_conformance import BackendTests, DifferentialTests, StoreTests

pytestmark = pytest.mark.conformance


class TestStore(StoreTests):
    """Store-level transitions of the configured backend."""


class TestBackend(BackendTests):
    """End-to-end behaviour of the configured backend."""


class TestDifferential(DifferentialTests):
    """The configured backend's store against the reference RowStore (skipped when it is the
    reference itself)."""
