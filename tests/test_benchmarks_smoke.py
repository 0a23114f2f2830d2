"""The fan-in benchmark runs end to end at a tiny size and reports every key (no timing is
checked: benchmarks are never timed assertions); both command forms work; saved results,
old key names included, render as tables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from services import CI, REDIS_ADDR, require_module

from benchmarks import report

ROOT = Path(__file__).resolve().parent.parent
REDIS = f"redis://{REDIS_ADDR}/6"  # the benchmark flushes it: no other test file uses DB 6
OLD_RESULTS = ROOT / "benchmarks" / "results-2026-11-28.jsonl"  # written with create_100k_jobs_per_s


def _redis_or_skip() -> None:
    redis: Any = require_module("redis")
    require_module("dramatiq")
    try:
        redis.Redis.from_url(REDIS, socket_connect_timeout=1).ping()
    except Exception:
        if CI:
            raise
        pytest.skip(f"no Redis at {REDIS_ADDR}")


def _fanin(*args: str, module: bool = False, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "benchmarks.fanin"] if module else [sys.executable, str(ROOT / "benchmarks" / "fanin.py")]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.timeout(120)
def test_fanin_benchmark_smoke(tmp_path: Path) -> None:
    _redis_or_skip()
    out = _fanin("-q", "dramatiq-redis", "-n", "50", "--repeat", "1", "--create", "500", "--per-message", "8",
                 "--redis", REDIS, "--json", timeout=110)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    o = lines[0]
    for key in ("queue", "jobs", "raw_jobs_per_s", "native_jobs_per_s", "multistep_jobs_per_s", "fanin_latency_ms_p50",
                "multistep1_jobs_per_s", "ratio_multistep_raw", "ratio_multistep_native",
                "multistep_bytes_per_job_running", "multistep_bytes_per_job_finished", "create_jobs", "create_jobs_per_s"):
        assert key in o, key
    assert (o["queue"], o["jobs"], o["per_message"]) == ("dramatiq-redis", 50, 8)
    for key in ("raw_jobs_per_s", "native_jobs_per_s", "multistep_jobs_per_s", "multistep1_jobs_per_s"):
        assert o[key] > 0, key
    assert o["ratio_multistep_raw"] == pytest.approx(o["multistep_jobs_per_s"] / o["raw_jobs_per_s"])
    assert o["ratio_multistep_native"] == pytest.approx(o["multistep_jobs_per_s"] / o["native_jobs_per_s"])
    assert o["multistep_final_states"] == ["succeeded"]
    assert o["callback_saw_min"] == {"native": 50, "multistep": 50}  # every job ran before its callback
    assert o["fanin_latency_ms_p50"] >= 0
    # the create run: its record under its size, and the summary keys say which size that was
    assert o["create_500"]["jobs"] == 500
    assert o["create_jobs"] == 500
    assert o["create_jobs_per_s"] == o["create_500"]["jobs_per_s"] > 0
    assert "create_100k_jobs_per_s" not in o and "create_100k" not in o

    saved = tmp_path / "results.jsonl"
    saved.write_text(out.stdout)
    shown = _fanin("--table-from", str(saved), module=True)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "| create 500 jobs/s |" in shown.stdout
    assert "| dramatiq-redis | 50 | multistep (8/msg) |" in shown.stdout
    assert f"| {o['create_jobs_per_s']:.0f} |" in shown.stdout


def test_script_and_module_forms_agree() -> None:
    script, module = _fanin("--help"), _fanin("--help", module=True)
    assert script.returncode == 0, script.stderr[-3000:]
    assert module.returncode == 0, module.stderr[-3000:]
    assert "--table-from" in script.stdout
    assert script.stdout == module.stdout


def test_old_results_file_maps_the_create_key() -> None:
    saved = report.load(OLD_RESULTS)
    assert [o["queue"] for o in saved] == ["rq", "celery-redis", "celery-amqp", "dramatiq-redis", "dramatiq-amqp"]
    raw = [json.loads(line) for line in OLD_RESULTS.read_text().splitlines() if line.strip()]
    for old, new in zip(raw, saved, strict=True):
        assert "create_100k_jobs_per_s" not in new
        assert new["create_jobs_per_s"] == old["create_100k_jobs_per_s"] == old["create_100k"]["jobs_per_s"]
        assert new["create_jobs"] == 100_000

    # an old record of another --create size: the size comes from the create run it copied
    small = report.upgrade({"create_500": {"jobs": 500, "jobs_per_s": 1234.5}, "create_100k_jobs_per_s": 1234.5})
    assert (small["create_jobs"], small["create_jobs_per_s"]) == (500, 1234.5)
    skipped = report.upgrade({"create_100k_jobs_per_s": None})  # --create 0
    assert (skipped["create_jobs"], skipped["create_jobs_per_s"]) == (None, None)


def test_table_from_old_results_file() -> None:
    shown = _fanin("--table-from", str(OLD_RESULTS))
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "| B/job finished | create 100k jobs/s |" in shown.stdout
    # the rq row of the summary table, as in docs/benchmarks.md
    assert "| rq | 6.58 | 7.53 (native at N=1000) | 1.03 | 1.18 | 96.8 | 0.39 | 38834 |" in shown.stdout
    assert "| dramatiq-amqp | 1000000 | 22.88 | 43715 |" in shown.stdout


@pytest.mark.timeout(180)
def test_stores_benchmark_smoke(postgres_service: str) -> None:
    """benchmarks.stores at a tiny size: one record per store, every figure present."""
    _redis_or_skip()
    require_module("rq")
    cmd = [sys.executable, "-m", "benchmarks.stores", "-q", "rq", "-n", "40", "--tps-tasks", "2", "--tps-jobs", "10",
           "--per-message", "4", "--redis", REDIS, "--postgres", postgres_service, "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=170, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert [r["store"] for r in rows] == ["redis", "postgresql"]
    for r in rows:
        assert r["final_states"] == ["succeeded"] and r["runs_finished"] == "1/1"
        assert r["fanin_jobs_per_s"] > 0 and r["transitions_per_s"] > 0 and r["transitions"] == 40
        assert r["states_after"] == ["finalizing"]  # every job finished; the finalizer was not run
        assert r["bytes_per_job_finished"] > 0
    assert rows[1]["disk_bytes_per_job"] > 0 and rows[1]["wal_bytes_per_job"] > 0
