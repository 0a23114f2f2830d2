"""Store benchmark: the same queue with its task state in one Redis, in PostgreSQL, and (with
``--cluster``) on a Redis Cluster, also with ``wait=1`` (each write acknowledged by a replica).

For one queue (``rq`` by default; any of the fan-in benchmark's), in one run:

* **fan-in**: N no-op jobs as one task with one finalizer, through that queue's workers (two
  ``multistep worker`` processes), the task state in the broker's Redis, then in PostgreSQL
  (``store=postgresql://...``): seconds until the finalizer started, jobs/s;
* **transitions/s**: ``start`` + ``finish`` of every job of M tasks straight on the store from
  ``--threads`` threads of this process (no queue), per store;
* **bytes per job**: Redis ``MEMORY USAGE`` of the task's keys (on a cluster too: they are in
  the slot of the task's queue); PostgreSQL the task's rows
  (``pg_column_size``), the growth of its tables on disk with their indexes
  (``pg_total_relation_size``, dead row versions included until vacuum), and the WAL written,
  per job.

    python -m benchmarks.stores --jobs 2000 --repeat 1 --async-commit
    python -m benchmarks.stores -q dramatiq-redis --jobs 5000 --postgres postgresql://db/bench --json
    python -m benchmarks.stores --cluster redis+cluster://127.0.0.1:7000,127.0.0.1:7001 --json

Uses (flushes) Redis DB 10 (``--redis``) like the fan-in benchmark, and tables of a fresh
prefix in ``--postgres`` (dropped at the end). Numbers depend on the machine: nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.compare import flush
from benchmarks.measure import machine, median
from benchmarks.procs import check_checkout, log
from benchmarks.queue_bench import QueueBench
from benchmarks.queues import BENCHES, QUEUES

SPEC = '{"fn":"benchmarks.jobs_module:work","args":[0]}'


def with_store(url: str, store: str, prefix: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}store={store}&prefix={prefix}"


class PgSizes:
    """On-disk size of a prefix's tables (with indexes and TOAST) and the server's WAL position."""

    def __init__(self, url: str, prefix: str) -> None:
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True)
        self.prefix = prefix

    def disk(self) -> int:
        p = self.prefix
        row = self.conn.execute(
            f"SELECT pg_total_relation_size('{p}_tasks') + pg_total_relation_size('{p}_jobs')").fetchone()
        return int(row[0]) if row else 0

    def wal(self) -> int:
        row = self.conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')").fetchone()
        return int(row[0]) if row else 0


def fanin(b: QueueBench, url: str, n: int, args: argparse.Namespace, sizes: PgSizes | None) -> dict[str, Any]:
    """The multistep side of the fan-in benchmark on ``url``'s store: medians of --repeat runs."""
    from multistep_core import connect

    bench = type(f"{type(b).__name__}Store", (type(b),), {"multistep_url": lambda self: url})(b.args, b.logdir)
    flush(bench)
    backend = connect(url)
    runs, disk, wal = [], [], []
    try:
        with bench.multistep_workers() as w:
            bench.workers = w
            bench.run_multistep(backend, min(20, n), 60, "warm", args.per_message)
            for k in range(args.repeat):
                d0, w0 = (sizes.disk(), sizes.wal()) if sizes else (0, 0)
                r = bench.run_multistep(backend, n, args.timeout, f"s{k}", args.per_message)
                if sizes:
                    disk.append((sizes.disk() - d0) / n)
                    wal.append((sizes.wal() - w0) / n)
                log(f"{bench.name} on {url.split('store=')[-1].split('&')[0] if 'store=' in url else 'redis'}: {r}")
                runs.append(r)
            bench.workers = None
    finally:
        backend.close()
        flush(bench)
    done = [r for r in runs if r.total_s is not None]
    return {
        "fanin_jobs_per_s": median([r.jobs_per_s for r in done]),
        "fanin_total_s": median([r.total_s for r in done]),
        "fanin_latency_ms_p50": median([r.fanin_ms for r in done if r.fanin_ms is not None]),
        "final_states": sorted({r.extra.get("state") or "?" for r in done}),
        "runs_finished": f"{len(done)}/{len(runs)}",
        "bytes_per_job_running": median([r.extra.get("bytes_per_job_running") for r in done]),
        "bytes_per_job_finished": median([r.extra.get("bytes_per_job_finished") for r in done]),
        "disk_bytes_per_job": median(disk) if sizes else None,
        "wal_bytes_per_job": median(wal) if sizes else None,
    }


def transitions(store: Any, tasks: int, jobs: int, threads: int) -> dict[str, Any]:
    """start + finish of every job of ``tasks`` tasks from ``threads`` threads: transitions/s."""
    from multistep_core import TaskOptions

    now = time.time()
    ids = [f"tps-{uuid.uuid4().hex[:10]}" for _ in range(tasks)]
    for tid in ids:
        store.create_task(tid, TaskOptions(retention=3600.0), now)
        store.add_jobs(tid, "j", [SPEC] * jobs, now)
        store.add_jobs(tid, "f", [SPEC], now)
        store.seal(tid, now)
    work = [(tid, f"j{j}") for j in range(jobs) for tid in ids]
    parts = [work[i::threads] for i in range(threads)]
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    took: list[float] = []  # seconds of each call (list.append is atomic)

    def run(part: list[tuple[str, str]]) -> None:
        barrier.wait()
        clock = time.perf_counter
        try:
            for tid, ref in part:
                t0 = clock()
                s = store.start(tid, ref, time.time())
                t1 = clock()
                store.finish(tid, ref, s.attempt, time.time())
                took.extend((t1 - t0, clock() - t1))
        except BaseException as exc:  # reported, not swallowed
            errors.append(exc)

    ts = [threading.Thread(target=run, args=(p,)) for p in parts]
    for t in ts:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    dt = time.perf_counter() - t0
    if errors:
        raise errors[0]
    states = {store.progress(tid).state.value for tid in ids}
    for tid in ids:
        store.delete(tid)
    took.sort()
    return {"transitions": 2 * len(work), "seconds": dt, "transitions_per_s": 2 * len(work) / dt,
            "threads": threads, "states_after": sorted(states),
            "transition_ms_p50": 1000 * took[len(took) // 2], "transition_ms_p99": 1000 * took[len(took) * 99 // 100]}


def table(rows: list[dict[str, Any]]) -> str:
    def f(v: Any, nd: int = 0) -> str:
        return "-" if v is None else (f"{v:,.{nd}f}" if isinstance(v, (int, float)) else str(v))

    out = ["| store | fan-in jobs/s | fan-in latency ms | transitions/s | bytes/job (task, finished) | "
           "disk bytes/job | WAL bytes/job |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(
            f"| {r['store']} | {f(r['fanin_jobs_per_s'])} | {f(r['fanin_latency_ms_p50'], 1)} | "
            f"{f(r['transitions_per_s'])} | {f(r['bytes_per_job_finished'])} | {f(r['disk_bytes_per_job'])} | "
            f"{f(r['wal_bytes_per_job'])} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queue", "-q", default="rq", choices=QUEUES, help="the queue (one)")
    p.add_argument("--jobs", "-n", type=int, default=2000, help="jobs of the fan-in task")
    p.add_argument("--repeat", "-r", type=int, default=1, help="fan-in runs per store (medians reported)")
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    p.add_argument("--concurrency", "-c", type=int, default=4, help="threads/processes per worker")
    p.add_argument("--per-message", type=int, default=16, help="jobs per queue message")
    p.add_argument("--celery-pool", default="prefork", choices=["prefork", "threads"])
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--tps-tasks", type=int, default=10, help="tasks of the transitions/s run")
    p.add_argument("--tps-jobs", type=int, default=200, help="jobs per task of the transitions/s run")
    p.add_argument("--threads", type=int, default=4, help="threads of the transitions/s run")
    p.add_argument("--tps-repeat", type=int, default=1, help="rounds of the transitions/s run over all stores (median)")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/10", help="Redis (flushed!): broker and Redis store")
    p.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/", help="RabbitMQ (amqp queues)")
    p.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/multistep",
                   help="PostgreSQL database (tables of a fresh prefix, dropped at the end)")
    p.add_argument("--cluster", default=None,
                   help="a Redis Cluster (redis+cluster://host:port,...): also the cluster store, and with wait=1")
    p.add_argument("--async-commit", action="store_true",
                   help="also PostgreSQL with synchronous_commit=off (a server crash may lose the last commits)")
    p.add_argument("--json", action="store_true", help="one JSON object per store on stdout")
    args = p.parse_args(argv)
    args.broker_memory = False
    args.rq_native_jobs = 0
    args.sides = ["multistep"]
    check_checkout()
    from multistep_core import connect
    from multistep_core.postgres import PostgresStore, schema

    prefix = f"bench_{uuid.uuid4().hex[:8]}"
    logdir = Path(tempfile.mkdtemp(prefix="stores-"))
    log(f"{machine()}; worker logs in {logdir}")
    b = BENCHES[args.queue](args, logdir)
    base = b.multistep_url()
    stores = {"redis": base, "postgresql": with_store(base, args.postgres, prefix)}
    if args.async_commit:  # libpq's options= in the store's URL, its "=" escaped for both parsers
        stores["postgresql, synchronous_commit=off"] = with_store(
            base, args.postgres + ("&" if "?" in args.postgres else "?") + "options=-csynchronous_commit%253Doff", prefix)
    if args.cluster:  # ("?wait=1": the store's own option, inside the backend string's store=)
        cluster = args.cluster.rstrip("/")
        stores["redis cluster"] = with_store(base, cluster + "/", prefix)
        stores["redis cluster, wait=1"] = with_store(base, cluster + "/?wait=1", prefix)
    PostgresStore(args.postgres, prefix=prefix).close()  # the tables, before the workers start
    sizes = PgSizes(args.postgres, prefix)
    rows = []
    try:
        for name, url in stores.items():
            log(f"{args.queue}: fan-in of {args.jobs} jobs, state in {name}")
            row: dict[str, Any] = {"store": name, "queue": args.queue, "jobs": args.jobs, "repeat": args.repeat,
                                   "per_message": args.per_message, "workers": args.workers}
            row.update(fanin(b, url, args.jobs, args, sizes if name.startswith("postgresql") else None))
            rows.append(row)
        # transitions/s: rounds that take every store in turn, so that a machine whose load
        # changes during the run weighs on every store alike; the median of the rounds
        tps: dict[str, list[dict[str, Any]]] = {name: [] for name in stores}
        for k in range(args.tps_repeat):
            for name, url in stores.items():
                log(f"{name}: {args.tps_tasks} tasks x {args.tps_jobs} jobs, start + finish from {args.threads} "
                    f"threads (round {k + 1} of {args.tps_repeat})")
                backend = connect(url)
                backend.stop_recovery()
                try:
                    tps[name].append(transitions(backend.store, args.tps_tasks, args.tps_jobs, args.threads))
                finally:
                    backend.close()
                flush(b)
        for row in rows:
            got = tps[row["store"]]
            row.update(got[-1])
            row["seconds"] = median([t["seconds"] for t in got])
            row["transitions_per_s"] = median([t["transitions_per_s"] for t in got])
            row["transitions_per_s_rounds"] = [round(t["transitions_per_s"]) for t in got]
            row["transition_ms_p50"] = median([t["transition_ms_p50"] for t in got])
            row["transition_ms_p99"] = median([t["transition_ms_p99"] for t in got])
            row["machine"] = machine()
            if args.json:
                print(json.dumps(row), flush=True)
    finally:
        with sizes.conn:
            schema.drop(sizes.conn, prefix)
        shutil.rmtree(logdir, ignore_errors=True)
    if not args.json:
        print(f"\n{machine()}; {args.queue}, {args.workers} worker processes x {args.concurrency}, "
              f"{args.jobs} jobs ({args.per_message} per message), medians of {args.repeat}; transitions/s: "
              f"{args.threads} threads, median of {args.tps_repeat} rounds\n")
        print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
