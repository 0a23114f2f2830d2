"""A third-party backend written from docs/writing-a-backend.md alone (docs/examples/spool_backend),
run through the shipped conformance suite, as a backend author would adopt it (issue 13, section 4).

* ``spoolq:backend_from_url``: a spool-directory queue with separate worker processes and a
  SQLite store: the whole suite, the worker-kill tests included.
* ``spoolq:inprocess_backend``: the same transport consumed by threads of the test process, over
  a RowStore of dicts: the suite, and the store suite; the kill tests skip, naming the capability.
* ``spoolq:misdeclared_backend``: jobs in the test process but ``in_process`` left False: the
  harness refuses it with what to change, and never kills its own process.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
from multistep_conformance import BackendTests, Harness, StoreTests

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "spool_backend"
sys.path.insert(0, str(EXAMPLE))  # the suite's workers inherit it through PYTHONPATH below
os.environ["PYTHONPATH"] = os.pathsep.join([str(EXAMPLE), os.environ.get("PYTHONPATH", "")])

_ROOT = tempfile.mkdtemp(prefix="spoolq-")
SEPARATE = f"spoolq:backend_from_url?dir={_ROOT}/spool&store=sqlite:///{_ROOT}/tasks.db"
LOCAL = f"spoolq:inprocess_backend?dir={_ROOT}/local"


class TestSpoolBackend(BackendTests):
    backend_string = SEPARATE


class TestSpoolInProcess(BackendTests):
    backend_string = LOCAL

    def test_kill_tests_skip_naming_the_capability(self, harness: Harness) -> None:
        assert harness.no_separate_workers() == (
            "capability: separate worker processes (LocalSpoolQueue.in_process is True: jobs run in the test process)"
        )


class TestDictStore(StoreTests):
    backend_string = LOCAL


def test_a_queue_that_misdeclares_in_process_is_refused_not_killed(tmp_path: Path) -> None:
    # Given a queue whose jobs run in this process, with in_process left False
    with pytest.raises(AssertionError) as info:
        Harness(f"spoolq:misdeclared_backend?dir={tmp_path}")
    # Then the harness says what to change, and this process is alive to read it
    msg = str(info.value)
    assert ("MisdeclaredSpoolQueue.in_process is False, but the suite's job ran in the test process itself "
            f"(pid {os.getpid()})") in msg
    assert "must set `in_process = True`" in msg and "skips its worker-kill tests instead of killing itself" in msg


def test_the_harness_never_kills_its_own_process_group() -> None:
    h = Harness(LOCAL)
    try:
        with pytest.raises(AssertionError, match=rf"refusing to kill process {os.getpid()} .*not a worker this suite started"):
            h.kill_worker_of(os.getpid())
    finally:
        h.stop()
