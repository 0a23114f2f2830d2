"""Runs the whole suite against ``--multistep-backend`` (see plugin.py)."""

from __future__ import annotations

import pytest

from multistep_conformance import BackendTests, StoreTests

pytestmark = pytest.mark.conformance


class TestStore(StoreTests):
    """Store-level transitions of the configured backend."""


class TestBackend(BackendTests):
    """End-to-end behaviour of the configured backend."""
