"""One configuration of the benchmark (a queue at N jobs): every side run, then one record.

The record is what ``--json`` prints, one line per configuration, and what the tables are
rendered from (``benchmarks.report``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.measure import Run, summarize
from benchmarks.procs import log
from benchmarks.queue_bench import QueueBench
from benchmarks.queues import BENCHES


@dataclass
class Sides:
    """The runs of each side of one configuration (empty: side not run)."""

    raw: list[Run]
    native: list[Run]
    ms: list[Run]  # multistep, --per-message jobs per message
    ms1: list[Run]  # multistep, one job per message


def flush(bench: QueueBench) -> None:
    bench.r.flushdb()
    bench.purge()


def bench_queue(name: str, n: int, args: argparse.Namespace, logdir: Path) -> dict[str, Any]:
    """Run every side of ``--sides`` on one queue at N jobs; the result record (one JSON line)."""
    b = BENCHES[name](args, logdir)
    flush(b)
    sides = set(args.sides)
    raw: list[Run] = []
    native: list[Run] = []
    ms: list[Run] = []
    ms1: list[Run] = []
    create: dict[str, Any] = {}
    if sides & {"raw", "native"}:
        raw, native = queue_sides(b, n, args, sides)
        flush(b)
    if sides & {"multistep", "multistep1"}:
        ms, ms1, create = multistep_sides(b, n, args, sides)
        flush(b)
    return record(b, n, args, Sides(raw, native, ms, ms1), create)


def queue_sides(b: QueueBench, n: int, args: argparse.Namespace, sides: set[str]) -> tuple[list[Run], list[Run]]:
    """The queue's own sides (raw, native) under its own workers."""
    name, nn = b.name, b.native_jobs(n)
    raw: list[Run] = []
    native: list[Run] = []
    with b.queue_workers() as w:
        b.workers = w
        if "raw" in sides:
            b.run_raw(min(20, n), 60)  # warm-up: workers up, imports done
            for k in range(args.repeat):
                log(f"{name}: raw {n} jobs, run {k + 1}/{args.repeat}")
                raw.append(b.run_raw(n, args.timeout))
                log(f"{name}: raw {raw[-1]}")
        if "native" in sides:
            if "raw" not in sides:
                b.run_raw(min(20, n), 60)
            for k in range(args.repeat):
                log(f"{name}: native {nn} jobs, run {k + 1}/{args.repeat}")
                native.append(b.run_native(nn, args.native_timeout))
                log(f"{name}: native {native[-1]}")
                if native[-1].total_s is None:
                    log(f"{name}: native fan-in did not finish in {args.native_timeout} s; not repeating it")
                    break
        if not w.alive():
            log(f"{name}: a queue worker died; see {b.logdir}")
    b.workers = None
    return raw, native


def multistep_sides(b: QueueBench, n: int, args: argparse.Namespace,
                    sides: set[str]) -> tuple[list[Run], list[Run], dict[str, Any]]:
    """multistep with --per-message jobs per message and with one, then the create-only runs."""
    from multistep_core import connect

    name, pm = b.name, args.per_message
    ms: list[Run] = []
    ms1: list[Run] = []
    create: dict[str, Any] = {}
    backend = connect(b.multistep_url())
    try:
        with b.multistep_workers() as w:
            b.workers = w
            b.run_multistep(backend, min(20, n), 60, "warm", pm)
            for k in range(args.repeat):
                if "multistep" in sides:
                    log(f"{name}: multistep {n} jobs ({pm} per message), run {k + 1}/{args.repeat}")
                    ms.append(b.run_multistep(backend, n, args.timeout, str(k), pm))
                    log(f"{name}: multistep {ms[-1]}")
                if "multistep1" in sides and pm != 1:
                    log(f"{name}: multistep {n} jobs (1 per message), run {k + 1}/{args.repeat}")
                    ms1.append(b.run_multistep(backend, n, args.timeout, f"one{k}", 1))
                    log(f"{name}: multistep (1 per message) {ms1[-1]}")
            if not w.alive():
                log(f"{name}: a multistep worker died; see {b.logdir}")
        b.workers = None
        for size in ([args.create] if args.create else []) + ([1_000_000] if args.million else []):
            flush(b)
            log(f"{name}: creating a {size}-job task with no worker running")
            create[str(size)] = b.create_only(backend, size, pm)
            log(f"{name}: {create[str(size)]}")
    finally:
        backend.close()
    return ms, ms1, create


def record(b: QueueBench, n: int, args: argparse.Namespace, runs: Sides, create: dict[str, Any]) -> dict[str, Any]:
    """The result record of one configuration: medians per side, ratios, the create runs."""
    name, nn, pm = b.name, b.native_jobs(n), args.per_message
    raw, native, ms, ms1 = runs.raw, runs.native, runs.ms, runs.ms1
    R, N_, M, M1 = summarize(raw), summarize(native), summarize(ms), summarize(ms1)
    out: dict[str, Any] = {
        "queue": name,
        "jobs": n,
        "native_jobs": nn,
        "workers": args.workers,
        "concurrency": 1 if name == "rq" else args.concurrency,
        "repeat": args.repeat,
        "raw_enqueue_s": R["enqueue_s"] if raw else None,
        "raw_total_s": R["total_s"] if raw else None,
        "raw_jobs_per_s": R["jobs_per_s"] if raw else None,
        "raw_peak_redis_bytes": R["peak_redis_bytes"] if raw else None,
        "native_enqueue_s": N_["enqueue_s"] if native else None,
        "native_total_s": N_["total_s"] if native else None,
        "native_jobs_per_s": N_["jobs_per_s"] if native else None,
        "native_fanin_latency_ms_p50": N_["fanin_latency_ms_p50"] if native else None,
        "native_peak_redis_bytes": N_["peak_redis_bytes"] if native else None,
        "native_did_not_finish_in_s": N_.get("did_not_finish_in_s"),
        "native_jobs_done_at_timeout": N_.get("jobs_done_at_timeout"),
        "per_message": pm,
        "multistep_enqueue_s": M["enqueue_s"] if ms else None,
        "multistep_total_s": M["total_s"] if ms else None,
        "multistep_jobs_per_s": M["jobs_per_s"] if ms else None,
        "fanin_latency_ms_p50": M["fanin_latency_ms_p50"] if ms else None,
        "multistep_peak_redis_bytes": M["peak_redis_bytes"] if ms else None,
        "multistep_bytes_per_job_running": M.get("bytes_per_job_running"),
        "multistep_bytes_per_job_finished": M.get("bytes_per_job_finished"),
        "multistep_final_states": sorted(set(M.get("final_states") or []) | set(M1.get("final_states") or [])),
        "multistep1_enqueue_s": M1["enqueue_s"] if ms1 else None,
        "multistep1_total_s": M1["total_s"] if ms1 else None,
        "multistep1_jobs_per_s": M1["jobs_per_s"] if ms1 else None,
        "multistep1_fanin_latency_ms_p50": M1["fanin_latency_ms_p50"] if ms1 else None,
        "multistep1_peak_redis_bytes": M1["peak_redis_bytes"] if ms1 else None,
        "broker_bytes_after_enqueue": {
            "raw": R.get("broker_bytes_after_enqueue"), "native": N_.get("broker_bytes_after_enqueue"),
            "multistep": M.get("broker_bytes_after_enqueue"),
        } if b.amqp and args.broker_memory else None,
        "callback_saw_min": {"native": N_.get("callback_saw_min"), "multistep": M.get("callback_saw_min")},
    }
    if N_.get("did_not_finish_in_s") is not None:
        # a lower bound on the time, so an upper bound on the rate
        out["native_jobs_per_s_upper_bound"] = nn / N_["did_not_finish_in_s"]
    mj, rj = out["multistep_jobs_per_s"], out["raw_jobs_per_s"]
    nj = out["native_jobs_per_s"] or out.get("native_jobs_per_s_upper_bound")
    out["ratio_multistep_raw"] = mj / rj if mj and rj else None
    out["ratio_multistep_native"] = mj / nj if mj and nj else None
    out["ratio_multistep_native_is_lower_bound"] = bool(out["native_jobs_per_s"] is None and nj)
    m1 = out["multistep1_jobs_per_s"]
    out["ratio_multistep1_raw"] = m1 / rj if m1 and rj else None
    out["ratio_multistep1_native"] = m1 / nj if m1 and nj else None
    for size, c in create.items():
        key = "create_100k" if size == "100000" else ("create_1m" if size == "1000000" else f"create_{size}")
        out[key] = c
    # the --create run (None when skipped): its size, and its rate for the summary table
    made = create.get(str(args.create)) if args.create else None
    out["create_jobs"] = made["jobs"] if made else None
    out["create_jobs_per_s"] = made["jobs_per_s"] if made else None
    return out
