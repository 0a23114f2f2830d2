"""The fan-in benchmark runs end to end at a tiny size and reports every key (no timing is
checked: benchmarks are never timed assertions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REDIS = "redis://127.0.0.1:6379/11"


def _redis_or_skip() -> None:
    redis = pytest.importorskip("redis")
    pytest.importorskip("dramatiq")
    try:
        redis.Redis.from_url(REDIS, socket_connect_timeout=1).ping()
    except Exception:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("no Redis at 127.0.0.1:6379")


@pytest.mark.timeout(120)
def test_fanin_benchmark_smoke() -> None:
    _redis_or_skip()
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fanin.py"), "-q", "dramatiq-redis", "-n", "50", "--repeat", "1",
         "--create", "500", "--per-message", "8", "--redis", REDIS, "--json"],
        capture_output=True, text=True, timeout=110, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    o = lines[0]
    for key in ("queue", "jobs", "raw_jobs_per_s", "native_jobs_per_s", "multistep_jobs_per_s", "fanin_latency_ms_p50",
                "multistep1_jobs_per_s", "ratio_multistep_raw", "ratio_multistep_native",
                "multistep_bytes_per_job_running", "multistep_bytes_per_job_finished", "create_100k_jobs_per_s"):
        assert key in o, key
    assert (o["queue"], o["jobs"], o["per_message"]) == ("dramatiq-redis", 50, 8)
    for key in ("raw_jobs_per_s", "native_jobs_per_s", "multistep_jobs_per_s", "multistep1_jobs_per_s"):
        assert o[key] > 0, key
    assert o["multistep_final_states"] == ["succeeded"]
    assert o["callback_saw_min"] == {"native": 50, "multistep": 50}  # every job ran before its callback
    assert o["fanin_latency_ms_p50"] >= 0
    assert o["create_500"]["jobs"] == 500
