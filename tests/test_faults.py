"""Crash points (multistep_core/faults.py): armed only by MULTISTEP_CRASH, the nth hit kills,
MULTISTEP_CRASH_ONCE lets one process of a fleet die per point, bad settings are refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HIT_FIVE_TIMES = """
from multistep_core.faults import crash_point
for i in range(5):
    crash_point("called", "f1")
    print(i, flush=True)
"""


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MULTISTEP_CRASH")}
    return subprocess.run([sys.executable, "-c", HIT_FIVE_TIMES], env={**full, **env}, capture_output=True,
                          text=True, timeout=60)


def test_unarmed_points_do_nothing() -> None:
    out = _run({})
    assert out.returncode == 0 and out.stdout.split() == ["0", "1", "2", "3", "4"]
    assert _run({"MULTISTEP_CRASH": "job.called"}).returncode == 0  # a job point; the ref is a finalizer


def test_the_nth_hit_kills_the_process_and_says_where() -> None:
    out = _run({"MULTISTEP_CRASH": "job.started,finalizer.called:3"})
    assert out.returncode == -9 and out.stdout.split() == ["0", "1"]
    assert "multistep crash point finalizer.called hit 3: SIGKILL pid" in out.stderr


def test_once_lets_only_the_first_process_die_at_a_point(tmp_path: Path) -> None:
    env = {"MULTISTEP_CRASH": "finalizer.called:2", "MULTISTEP_CRASH_ONCE": str(tmp_path)}
    first, second = _run(env), _run(env)
    assert first.returncode == -9 and second.returncode == 0
    assert (tmp_path / "finalizer.called").read_text().startswith("multistep crash point finalizer.called hit 2")


def test_bad_settings_are_refused_with_the_list_of_points() -> None:
    unknown = _run({"MULTISTEP_CRASH": "job.calld"})
    assert unknown.returncode == 1 and "unknown crash point 'job.calld'" in unknown.stderr
    assert "recovery.claimed" in unknown.stderr
    bad_count = _run({"MULTISTEP_CRASH": "job.called:0"})
    assert bad_count.returncode == 1 and "integer >= 1" in bad_count.stderr
