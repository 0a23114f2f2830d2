"""In-process backends (SQLite here) run recovery only in processes that send work: a process
that only reads a task never claims another process's expired finalizer and runs it where the
function is not registered (issue 10: it failed the task with UnregisteredJob). Real processes:
an owner killed mid-finalizer, a reader without the job module, then a process with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from multistep_conformance import Journal, eventually, jobs

from multistep_core import TaskState, connect

LEASE = 0.5


def _python(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)


def test_a_reading_process_runs_no_recovery_and_a_working_one_finishes_the_task(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    journal = Journal(tmp_path)
    gate = journal.flag("gate")
    # Given an owner process killed while its task's finalizer runs (its lease then expires)
    owner = _python(f"""
        import time
        from multistep_core import connect
        from multistep_conformance import jobs
        b = connect({url!r}, lease={LEASE})
        with b.create_task("owned", on_failure=jobs.ping) as t:
            t.add_job(jobs.record, {journal.path!r}, "job")
            t.add_finalization_job(jobs.block, {journal.path!r}, "fin", {gate!r})
        time.sleep(120)
    """)
    try:
        start = eventually(lambda: journal.starting("fin:start:1:"), timeout=30, what="the finalizer to start")
        os.killpg(owner.pid, signal.SIGKILL)
    finally:
        owner.kill()
        owner.wait(timeout=10)
    assert int(start[0].rsplit(":", 1)[1]) == owner.pid
    # When a process that imports no job module reads the task for many leases
    reader = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from multistep_core import connect
        b = connect({url!r}, lease={LEASE})
        t = b.get_task("owned")
        end = time.time() + {8 * LEASE}
        while time.time() < end:
            t.progress()
            time.sleep(0.05)
        assert "multistep_conformance.jobs" not in sys.modules
        print(t.progress().state.value)
    """)], capture_output=True, timeout=60)
    assert reader.returncode == 0, reader.stderr.decode()
    # Then it ran nothing: the task is still finalizing, with no failure recorded
    assert reader.stdout.decode().strip() == "finalizing"
    b = connect(url, lease=LEASE)
    try:
        task = b.get_task("owned")
        assert task.progress().state == TaskState.FINALIZING and task.failures() == []
        time.sleep(4 * LEASE)  # this process only read too: it recovers nothing either
        assert task.progress().state == TaskState.FINALIZING and journal.count("fin:done") == 0
        # And a process that has the job module and starts its recovery finishes the task
        assert jobs.block is not None
        open(gate, "w").close()
        b.start_recovery()
        p = task.wait(timeout=30)
        assert p.state == TaskState.SUCCEEDED and task.failures() == []
        assert len(journal.starting("fin:start:")) == 2 and journal.count("fin:done") == 1
        assert journal.count("job") == 1
    finally:
        b.close()
