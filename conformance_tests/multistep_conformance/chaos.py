"""The chaos test: many tasks while a killer SIGKILLs random worker processes, then a drain.

Half the tasks send one job per message, half four (``per_message=4``); each has two
finalizers. While work remains (at most ``seconds``), every 0.5-2 s the killer picks a
random worker and SIGKILLs either its whole process group or one random process in it (a
pool child, a supervised process, or the main one). A worker whose main process died is
replaced at once, unarmed, as systemd or Kubernetes would. After the last kill every task
must end within the drain bound, and the journal the jobs write (never the store's own
counters) must show every job run, each task's first finalizer started after its last job,
and its finalizers in order.

Sizes: ``--multistep-chaos=short`` (default: a minute or two per backend), ``long`` (the
five-minute run of issue 10: 50 tasks x 200 jobs, kills for 300 s), or ``off``.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

import pytest

from multistep_core import TaskState

from . import jobs
from .crash import record_timing, wait_restarting, xfail_if_lost_message
from .harness import Harness, Journal, group_pids


@dataclass(frozen=True)
class ChaosSize:
    tasks: int
    jobs: int
    job_seconds: float
    seconds: float  # the longest the killer runs
    drain: float  # the bound after the last kill


SIZES = {
    "short": ChaosSize(tasks=8, jobs=40, job_seconds=0.1, seconds=30.0, drain=60.0),
    "long": ChaosSize(tasks=50, jobs=200, job_seconds=0.02, seconds=300.0, drain=120.0),
}


class ChaosTests:
    """Mixed into :class:`~multistep_conformance.BackendTests`."""

    workers: ClassVar[int]
    queue_may_lose: ClassVar[bool]

    def _need_workers(self, harness: Harness) -> None:
        if not harness.external:
            pytest.skip("capability: separate worker processes (this backend runs jobs in-process)")

    @pytest.mark.timeout(1200)  # the long size kills for five minutes, then drains
    def test_chaos_random_kills_leave_every_task_finished(
        self, request: pytest.FixtureRequest, harness: Harness, journal: Journal
    ) -> None:
        self._need_workers(harness)
        size_name = request.config.getoption("--multistep-chaos", default=None) or os.environ.get(
            "MULTISTEP_CHAOS", "short"
        )
        if size_name == "off":
            pytest.skip("--multistep-chaos=off")
        size = SIZES[size_name]
        n = max(len(harness.procs), self.workers)
        harness.restart_dead(n)
        seed = int(os.environ.get("MULTISTEP_CHAOS_SEED") or time.time())
        rng = random.Random(seed)
        # Given many tasks, half of them packed four jobs to a message
        tasks = []
        for t in range(size.tasks):
            with harness.task() as task:
                items = [(journal.path, f"t{t}.j{i}", size.job_seconds) for i in range(size.jobs)]
                task.add_jobs(jobs.record_run, items, per_message=1 if t % 2 == 0 else 4)
                task.add_finalization_job(jobs.record_run, journal.path, f"t{t}.fin0")
                task.add_finalization_job(jobs.record_run, journal.path, f"t{t}.fin1")
            tasks.append(task)
        # When a killer SIGKILLs a random worker process or worker group every 0.5-2 s while work remains
        kills = groups = 0
        started = last_kill = time.monotonic()
        while time.monotonic() - started < size.seconds:
            pause_until = time.monotonic() + rng.uniform(0.5, 2.0)
            while time.monotonic() < pause_until:
                harness.restart_dead(n)
                time.sleep(0.05)
            if all(t.progress().state.terminal for t in tasks):
                break
            live = [p for p in harness.procs if p.poll() is None]
            if not live:
                continue
            victim = rng.choice(live)
            pids = group_pids(victim.pid)
            try:
                if rng.random() < 0.5 or len(pids) <= 1:
                    os.killpg(victim.pid, signal.SIGKILL)
                    groups += 1
                else:
                    os.kill(rng.choice(pids), signal.SIGKILL)
            except ProcessLookupError:
                continue
            kills += 1
            last_kill = time.monotonic()
        # Then, once the killing stops, every task ends within the drain bound
        try:
            ps = wait_restarting(harness, tasks, n, size.drain, f"chaos (seed {seed}, {kills} kills)")
        except AssertionError as exc:
            xfail_if_lost_message(exc, queue_loses=self.queue_may_lose)
            raise
        drain = time.monotonic() - last_kill
        # And the journal shows every job run, each task's finalizers after its jobs, in order
        lines = journal.lines()
        counts = Counter(lines)
        for t, (task, p) in enumerate(zip(tasks, ps, strict=True)):
            assert p.state == TaskState.SUCCEEDED, (task.id, p)
            assert (p.total, p.succeeded, p.failed) == (size.jobs, size.jobs, 0), (task.id, p)
            missing = [i for i in range(size.jobs) if counts[f"t{t}.j{i}"] == 0]
            assert not missing, f"task {t}: jobs that never ran: {missing}"
            last_job = max(i for i, line in enumerate(lines) if line.startswith(f"t{t}.j"))
            fin0, fin1 = lines.index(f"t{t}.fin0:run"), lines.index(f"t{t}.fin1:run")
            assert last_job < fin0 < lines.index(f"t{t}.fin0") < fin1, (
                f"task {t}: finalizers out of place (last job line {last_job}, fin0 started {fin0}, fin1 {fin1})"
            )
        # Re-runs: executions beyond the first (a killed worker's, or a duplicate after a kill)
        reruns = sum(c - 1 for label, c in counts.items() if ".j" in label and label.endswith(":run"))
        fin_reruns = sum(c - 1 for label, c in counts.items() if ".fin" in label and label.endswith(":run"))
        assert fin_reruns <= kills, f"{fin_reruns} finalizer re-runs for {kills} kills"
        record_timing(
            harness, "chaos", size=size_name, seed=seed, tasks=size.tasks, jobs=size.tasks * size.jobs, kills=kills,
            group_kills=groups, job_reruns=reruns, finalizer_reruns=fin_reruns,
            kill_seconds=round(last_kill - started, 1), drain_seconds=round(drain, 2),
        )
