"""``multistep recover ID``: an operator re-sends what a task waits for, idempotently, on an
embedded backend (the jobs run in the CLI process: ``-i MODULE``) and on a queue backend (RQ:
the workers run them)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from multistep_conformance import Harness, Journal, jobs
from services import REDIS_ADDR

from multistep_core import TaskState, connect


def _lost_task(backend_url: str, journal: Journal, queue: str = "default") -> str:
    """A task whose 3 jobs are in the store and whose messages were never sent (as after a client
    died between the store write and the enqueue), plus one finalizer; sealed."""
    tid = f"lost-{uuid.uuid4().hex[:8]}"
    b = connect(backend_url)
    try:
        task = b.create_task(tid, queue=queue)
        specs = [json.dumps({"fn": "conformance.record", "args": [journal.path, f"job{i}"]}) for i in range(3)]
        b.store.add_jobs(tid, "j", specs, time.time())
        task.add_finalization_job(jobs.record, journal.path, "fin")
        task.seal()
        assert task.progress().pending == 3
    finally:
        b.close()
    return tid


def _recover(url: str, tid: str, *extra: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "multistep_core", "-b", url, "recover", tid, "--json", *extra],
                         capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()
    return json.loads(out.stdout)


def test_recover_on_sqlite_runs_the_lost_jobs_here(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 't.db'}"
    journal = Journal(tmp_path)
    tid = _lost_task(url, journal)
    first = _recover(url, tid, "-i", "multistep_conformance.jobs")
    assert first == {"task_id": tid, "resent": ["j0", "j1", "j2"], "state": "succeeded"}
    assert sorted(journal.lines()) == ["fin", "job0", "job1", "job2"]
    assert _recover(url, tid)["resent"] == []  # idempotent: nothing left to send
    missing = subprocess.run([sys.executable, "-m", "multistep_core", "-b", url, "recover", "nope"],
                             capture_output=True, timeout=60)
    assert missing.returncode == 3 and b"nope" in missing.stderr


@pytest.mark.usefixtures("redis_service")
def test_recover_on_rq_sends_to_the_workers(tmp_path: Path) -> None:
    pytest.importorskip("rq")
    h = Harness(f"rq+redis://{REDIS_ADDR}/15?prefix=msrecover", workers=1)
    try:
        journal = Journal(tmp_path)
        tid = _lost_task(h.backend_string, journal, h.queue)
        # the workers' own recovery issues the tickets the queue is owed within a pass or two (the
        # ticket ledger), so recover may find some jobs already taken: whatever it sends is harmless
        first = _recover(h.worker_url, tid)["resent"]
        assert set(first) <= {"j0", "j1", "j2"}
        again = _recover(h.worker_url, tid)["resent"]  # a second run while they may be running: harmless
        assert set(again) <= {"j0", "j1", "j2"}
        p = h.backend.get_task(tid).wait(timeout=60)
        assert p.state == TaskState.SUCCEEDED and (p.total, p.succeeded) == (3, 3)
        assert sorted(journal.lines()) == ["fin", "job0", "job1", "job2"]
    finally:
        h.stop()
