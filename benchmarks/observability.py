"""What tracing and metrics cost: one task of N no-op jobs and one finalizer, timed from the
first ``add_jobs`` until the task succeeded, in each observability mode:

* ``off``: ``MULTISTEP_OTEL=off``, no metrics (the baseline);
* ``api``: ``opentelemetry-api`` importable, no SDK configured (the default when installed:
  nothing is connected);
* ``api-on``: the same with ``MULTISTEP_OTEL=on`` (spans made through the API's no-op tracer);
* ``sdk``: the SDK with a batch span processor and an exporter that drops spans;
* ``prometheus``: ``multistep worker --metrics-port`` (tracing off; with ``--backend eager``,
  ``MULTISTEP_PROMETHEUS=1`` in the producer).

``--backend rq`` (default) runs ``multistep worker -c 2`` on RQ against ``--redis`` (keys under
a fresh prefix, nothing flushed); ``--backend eager`` runs each job inside the producer (no
queue: the per-job CPU cost of the hooks alone). Each mode runs in a fresh process, so its
environment decides what is imported; ``--rounds`` goes through the modes that many times,
interleaved. The table gives the median and the best of all runs of a mode and their ratios to
``off`` (on a busy machine the best is the steadier figure).

    python -m benchmarks.observability --jobs 2000 --repeat 2 --rounds 3
    python -m benchmarks.observability --backend eager --jobs 20000 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

MODES = {
    "off": {"MULTISTEP_OTEL": "off"},
    "api": {"MULTISTEP_OTEL": "auto"},
    "api-on": {"MULTISTEP_OTEL": "on"},
    "sdk": {"MULTISTEP_OTEL": "auto", "OBS_BENCH_SDK": "1"},
    "prometheus": {"MULTISTEP_OTEL": "off", "MULTISTEP_PROMETHEUS": "1"},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_mode(mode: str, backend_kind: str, jobs: int, repeat: int, redis: str) -> list[float]:
    """In the child process of one mode: the seconds of each repetition."""
    from benchmarks import obs_jobs
    from multistep_core import connect

    worker = None
    if backend_kind == "eager":
        url = "eager://"
    else:
        url = f"rq+redis://{redis}?prefix=obsbench{uuid.uuid4().hex[:6]}"
        cmd = [sys.executable, "-m", "multistep_core", "--backend", url, "worker", "benchmarks.obs_jobs",
               "-q", "obsbench", "-c", "2"]
        if mode == "prometheus":
            cmd += ["--metrics-port", str(_free_port())]
        worker = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    backend = connect(url)
    times: list[float] = []
    try:
        for i in range(repeat + (1 if worker is not None else 0)):  # the first run warms the workers up
            t0 = time.perf_counter()
            with backend.create_task(queue="obsbench") as task:
                task.add_jobs(obs_jobs.noop, range(jobs))
                task.add_finalization_job(obs_jobs.fin)
            p = task.wait(timeout=600, poll=0.005)
            assert p.state == "succeeded", p
            if worker is None or i > 0:
                times.append(time.perf_counter() - t0)
            task.delete()
    finally:
        backend.close()
        if worker is not None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=60)
    return times


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=["rq", "eager"], default="rq")
    ap.add_argument("--jobs", "-n", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3, help="runs per mode in each round")
    ap.add_argument("--rounds", type=int, default=1, help="rounds through every mode (interleaved)")
    ap.add_argument("--redis", default=os.environ.get("MULTISTEP_TEST_REDIS", "127.0.0.1:6379"),
                    help="host:port of the Redis for --backend rq (DB 0, a fresh key prefix)")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--json", action="store_true", help="print one JSON line per mode instead of a table")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_mode(args.child, args.backend, args.jobs, args.repeat, args.redis)))
        return
    modes = args.modes.split(",")
    runs: dict[str, list[float]] = {m: [] for m in modes}
    for _round in range(args.rounds):  # modes interleaved, so a burst of load hits them alike
        for mode in modes:
            env = dict(os.environ, **MODES[mode])
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.observability", "--child", mode, "--backend", args.backend,
                 "--jobs", str(args.jobs), "--repeat", str(args.repeat), "--redis", args.redis],
                env=env, capture_output=True, text=True, check=False,
            )
            if out.returncode != 0:
                raise SystemExit(f"mode {mode} failed:\n{out.stderr}")
            runs[mode] += json.loads(out.stdout.strip().splitlines()[-1])
    rows: list[dict[str, Any]] = [
        {"mode": m, "backend": args.backend, "jobs": args.jobs, "seconds": statistics.median(t), "best": min(t),
         "runs": t} for m, t in runs.items()
    ]
    base = rows[0] if rows and rows[0]["mode"] == "off" else None
    for r in rows:
        r["jobs_per_s"] = round(r["jobs"] / r["seconds"])
        r["ratio"] = round(r["seconds"] / base["seconds"], 3) if base else None
        r["ratio_best"] = round(r["best"] / base["best"], 3) if base else None
        if args.json:
            print(json.dumps(r))
    if not args.json:
        print(f"| mode ({args.backend}, {args.jobs} jobs) | seconds (median) | jobs/s | vs off | best | best vs off |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for r in rows:
            print(f"| {r['mode']} | {r['seconds']:.3f} | {r['jobs_per_s']} | {r['ratio']} | {r['best']:.3f} "
                  f"| {r['ratio_best']} |")


if __name__ == "__main__":
    main()
