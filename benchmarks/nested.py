"""Nested fan-in benchmark: a tree of C children x J jobs, multistep against Celery's chord of chords.

One parent task with ``--children`` subtasks of ``--jobs`` no-op jobs each; every subtask has a
finalizer, the parent has one. Measured per level, from the marks the jobs leave in Redis
(``benchmarks.nested_jobs``, ``time.time()`` on this machine):

* **level 1** (child): a child's finalizer start minus the end of that child's last job, for each
  child (p50 / p95 / max over the children);
* **level 2** (parent): the parent's finalizer start minus the end of the last child's finalizer;
* **total**: from the start of building the tree to the parent's finalizer start.

Celery's side is the same tree as a chord whose header holds chords (``benchmarks.nested_celery``),
on a Redis broker and on RabbitMQ (result backend: Redis, as a chord needs), with its own worker
processes. multistep runs on each ``--multistep`` backend string: an in-process one (``memory``,
``sqlite``: jobs on threads of this process) or one with workers (``rq+redis://...``,
``celery+redis://...``: worker processes are started here).

    python benchmarks/nested.py --redis redis://127.0.0.1:6379/11          # defaults: a few minutes
    python benchmarks/nested.py --children 10 --jobs 10 --multistep memory --celery redis --json

Uses the Redis DB of ``--redis``, which it flushes. Nothing here is a test: numbers depend on the
machine (and on what else runs on it).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks import nested_jobs
from benchmarks.procs import Workers, log, wait_for


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def figures(marks: dict[str, Any], t0: float, children: int) -> dict[str, Any]:
    """Per-level latencies (ms) from one run's marks."""
    lvl1 = [
        1000 * (marks["child_start"][c] - marks["leaf_end"][c])
        for c in marks["child_start"] if c in marks["leaf_end"]
    ]
    parent = float(marks["parent"]["start"])
    return {
        "children_finalized": len(marks["child_start"]),
        "parent_calls": int(marks["parent"].get("calls", 0)),
        "level1_p50_ms": round(statistics.median(lvl1), 2) if lvl1 else None,
        "level1_p95_ms": round(_pct(lvl1, 0.95), 2) if lvl1 else None,
        "level1_max_ms": round(max(lvl1), 2) if lvl1 else None,
        "level2_ms": round(1000 * (parent - float(marks["last_child_end"])), 2),
        "total_s": round(parent - t0, 3),
        "complete": len(marks["child_start"]) == children,
    }


def _done(r: Any) -> bool:
    return bool(r.hget(nested_jobs.PARENT, "start"))


# -- multistep ----------------------------------------------------------------------------
def run_multistep(url: str, args: argparse.Namespace, r: Any, logdir: Path) -> dict[str, Any]:
    from multistep_core import connect

    queue = f"nested_{uuid.uuid4().hex[:6]}"
    in_process = url.split("?")[0].split(":")[0] in ("memory", "sqlite", "eager")
    if url.startswith("sqlite") and url in ("sqlite", "sqlite://"):
        url = f"sqlite:///{logdir / 'nested.db'}"
    if in_process:
        url += ("&" if "?" in url else "?") + f"threads={args.workers * args.concurrency}"
    backend = connect(url)
    workers = None
    if not backend.queue.in_process:
        cmd = [sys.executable, "-m", "multistep_core", "--backend", url, "worker", "benchmarks.nested_jobs",
               "-q", queue, "-c", str(args.concurrency)]
        workers = Workers("multistep", cmd, dict(os.environ), args.workers, logdir).__enter__()
    try:
        runs = []
        for k in range(args.repeat + 1):  # the first run warms up (imports, connections, scripts)
            c, j = (2, 2) if k == 0 else (args.children, args.jobs)
            for key in nested_jobs.KEYS:
                r.delete(key)
            t0 = time.time()
            with backend.create_task(queue=queue) as root:
                for ci in range(c):
                    with root.add_subtask() as sub:
                        sub.add_jobs(nested_jobs.ms_leaf, [(ci, i) for i in range(j)])
                        sub.add_finalization_job(nested_jobs.ms_child_done, ci)
                root.add_finalization_job(nested_jobs.ms_parent_done)
            if not wait_for(lambda: _done(r), args.timeout, 0.01):
                log(f"multistep {url}: no parent finalizer after {args.timeout}s: {root.progress(deep=True)}")
                return {"side": "multistep", "backend": url, "error": "did not finish"}
            root.wait(timeout=30)
            if k:
                runs.append(figures(nested_jobs.read(r), t0, c))
            root.delete()
        return {"side": "multistep", "backend": url, "runs": runs}
    finally:
        if workers is not None:
            workers.__exit__(None, None, None)
        backend.close()


# -- Celery: a chord of chords ----------------------------------------------------------
def run_celery(broker: str, args: argparse.Namespace, r: Any, logdir: Path) -> dict[str, Any]:
    broker_url = args.redis if broker == "redis" else args.amqp
    queue = f"nested_celery_{broker}_{os.getpid()}"
    env = dict(os.environ, FANIN_BROKER=broker_url, FANIN_REDIS=args.redis, NESTED_CQ=queue,
               NESTED_NO_MULTISTEP="1")
    os.environ.update(FANIN_BROKER=broker_url, FANIN_REDIS=args.redis, NESTED_CQ=queue)
    from benchmarks import nested_celery

    nested_celery.app.conf.broker_url = broker_url
    nested_celery.app.conf.task_default_queue = queue
    cmd = [sys.executable, "-m", "celery", "-A", "benchmarks.nested_celery", "worker", "-Q", queue,
           "-c", str(args.concurrency), "--pool", "prefork", "-n", f"nested{{k}}-{os.getpid()}@%h",
           "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "WARNING"]
    runs = []
    handles = []  # Celery's AsyncResult objects, dropped while the interpreter still runs
    with Workers(f"celery-{broker}", cmd, env, args.workers, logdir) as w:
        for k in range(args.repeat + 1):
            c, j = (2, 2) if k == 0 else (args.children, args.jobs)
            for key in nested_jobs.KEYS:
                r.delete(key)
            t0 = time.time()
            handles.append(nested_celery.chord_of_chords(c, j))
            ok = wait_for(lambda: _done(r) or not w.alive(), args.timeout if k else 90, 0.01)
            if not ok or not _done(r):
                log(f"celery {broker}: no parent callback after {args.timeout}s")
                handles.clear()
                gc.collect()
                return {"side": "celery chord of chords", "broker": broker,
                        "error": f"did not finish in {args.timeout:g} s", "runs": runs}
            time.sleep(0.2)  # a second parent callback (a known chord bug) would show in 'calls'
            if k:
                runs.append(figures(nested_jobs.read(r), t0, c))
    handles.clear()
    gc.collect()
    consumer = getattr(nested_celery.app.backend, "result_consumer", None)
    if consumer is not None:  # or its __del__ hooks run at interpreter exit and print tracebacks
        consumer.subscribed_to = set()
        consumer._pending_unsubscribe = set()
    try:
        with nested_celery.app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)
    except Exception:  # the queue is ours; failing to drop it is not worth failing the run
        pass
    return {"side": "celery chord of chords", "broker": broker, "runs": runs}


def summary(res: dict[str, Any]) -> dict[str, Any]:
    runs = res.get("runs") or []
    out = {k: v for k, v in res.items() if k != "runs"}
    for key in ("level1_p50_ms", "level1_p95_ms", "level1_max_ms", "level2_ms", "total_s"):
        vals = [x[key] for x in runs if x.get(key) is not None]
        out[key] = round(statistics.median(vals), 3) if vals else None
    out["parent_calls"] = [x["parent_calls"] for x in runs]
    out["runs"] = len(runs)
    return out


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    head = (f"tree of {args.children} children x {args.jobs} jobs, {args.workers} workers x {args.concurrency}, "
            f"median of {args.repeat} run(s)\n\n")
    lines = ["| side | level 1 p50 / p95 / max (ms) | level 2 (ms) | total (s) | parent callbacks |",
             "|---|---|---|---|---|"]
    for x in rows:
        name = x["side"] + (f" ({x['backend']})" if "backend" in x else f" ({x['broker']} broker)")
        if x.get("error") and not x.get("runs"):
            lines.append(f"| {name} | {x['error']} | | | |")
            continue
        lines.append(f"| {name} | {x['level1_p50_ms']} / {x['level1_p95_ms']} / {x['level1_max_ms']} | "
                     f"{x['level2_ms']} | {x['total_s']} | {x['parent_calls']} |")
    return head + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--children", type=int, default=100)
    p.add_argument("--jobs", type=int, default=100, help="jobs per child")
    p.add_argument("--repeat", "-r", type=int, default=1, help="measured runs per side (after one warm-up)")
    p.add_argument("--workers", type=int, default=2, help="worker processes per side")
    p.add_argument("--concurrency", "-c", type=int, default=4)
    p.add_argument("--multistep", action="append", help="multistep backend string(s) (default: sqlite)")
    p.add_argument("--celery", action="append", choices=["redis", "amqp", "none"],
                   help="Celery broker(s) (default: both; none: no Celery side)")
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--redis", default="redis://127.0.0.1:6379/11", help="Redis (flushed!) for marks and results")
    p.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672//")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    import redis

    r = redis.Redis.from_url(args.redis)
    r.flushdb()
    os.environ["FANIN_REDIS"] = args.redis
    logdir = Path(tempfile.mkdtemp(prefix="nested-bench-"))
    rows = []
    for url in args.multistep or ["sqlite"]:
        log(f"multistep on {url}")
        rows.append(summary(run_multistep(url, args, r, logdir)))
    for broker in [b for b in args.celery or ["redis", "amqp"] if b != "none"]:
        log(f"celery chord of chords on {broker}")
        rows.append(summary(run_celery(broker, args, r, logdir)))
        r.flushdb()
    if args.json:
        for x in rows:
            print(json.dumps(x))
    else:
        print(table(rows, args))
    log(f"worker logs in {logdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
