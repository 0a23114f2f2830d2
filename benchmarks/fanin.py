"""Fan-in benchmark: multistep against each queue's raw throughput and its own fan-in.

For each queue (``rq``, ``celery-redis``, ``celery-amqp``, ``dramatiq-redis``,
``dramatiq-amqp``) and N no-op jobs, against the same Redis / RabbitMQ, with two worker
processes of the same concurrency on each side:

* **raw**: N jobs enqueued the queue's ordinary way (one ``enqueue``/``send``/``delay`` per
  job), each doing one Redis round trip (``INCR`` + the job's end time), until all ran;
* **native**: the same jobs under the queue's own fan-in (RQ ``depends_on=[...]``, Celery
  ``chord``, Dramatiq ``group(...).add_completion_callback`` with ``GroupCallbacks`` and a
  Redis rate-limiter backend) and one callback;
* **multistep**: the same jobs as one task with one finalizer.

Reported per side (median over ``--repeat`` runs): enqueue seconds, seconds until the
callback/finalizer started (raw: until the last job ended), jobs/s, fan-in latency (callback
start minus the last job's end, both ``time.time()`` on this machine), peak Redis memory
(``INFO memory`` sampled every 20 ms, minus the value before the run), and for multistep the
task's own Redis bytes per job while running (peak) and after it finished. Also, unless
``--create 0``: creating a task of ``--create`` jobs (100,000 by default) with no worker
running (jobs/s, Redis and broker memory), and with ``--million``: the same for 1,000,000.

    python benchmarks/fanin.py --jobs 10000                      # every queue, table
    python benchmarks/fanin.py -q dramatiq-redis --jobs 50 --repeat 1 --create 0 --json
    python -m benchmarks.fanin --table-from benchmarks/results-2026-11-28.jsonl
    nox -s bench -- --jobs 10000 --queue rq

``python benchmarks/fanin.py`` and ``python -m benchmarks.fanin`` are the same. Both need
this checkout installed editable (``pip install -e ".[all]"``, as for the tests), which puts
the repository root and ``adapters/`` on ``sys.path``: ``benchmarks``, ``multistep_core`` and
the adapters are then imported from here, in this process and in the workers, and nothing
patches ``sys.path``. A run checks it first (``benchmarks.procs.check_checkout``). The
modules: see ``benchmarks/__init__.py``.

Uses Redis DB 10 (``--redis``), which it flushes; RabbitMQ queues it purges are its own
(``fanin_*`` and ``multistep.fanin*``). Nothing here is a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks import report
from benchmarks.compare import bench_queue
from benchmarks.measure import machine
from benchmarks.procs import check_checkout, log
from benchmarks.queues import QUEUES


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queue", "-q", action="append", choices=QUEUES, help="queue(s) to run (default: all)")
    p.add_argument("--jobs", "-n", type=int, action="append", help="N jobs (repeatable; default 10000)")
    p.add_argument("--repeat", "-r", type=int, default=3, help="runs per side (medians are reported)")
    p.add_argument("--workers", type=int, default=2, help="worker processes per side")
    p.add_argument("--concurrency", "-c", type=int, default=4,
                   help="threads/processes per worker (Dramatiq threads, Celery pool size; RQ runs 1 job per worker)")
    p.add_argument("--celery-pool", default="prefork", choices=["prefork", "threads"],
                   help="Celery pool of every Celery worker (raw, native and multistep)")
    p.add_argument("--sides", nargs="+", default=["raw", "native", "multistep", "multistep1"],
                   choices=["raw", "native", "multistep", "multistep1"],
                   help="multistep: with --per-message jobs per message; multistep1: one job per message")
    p.add_argument("--per-message", type=int, default=16, help="multistep jobs per queue message (add_jobs per_message)")
    p.add_argument("--timeout", type=float, default=900, help="seconds a raw or multistep run may take")
    p.add_argument("--native-timeout", type=float, default=300,
                   help="seconds a native fan-in run may take; beyond, it is reported as 'did not finish'")
    p.add_argument("--rq-native-jobs", type=int, default=1000,
                   help="RQ's depends_on is O(N^2) (hours at 10k parents): its native run uses at most this many jobs")
    p.add_argument("--create", type=int, default=100_000, help="also create a task this big with no worker (0: skip)")
    p.add_argument("--million", action="store_true", help="also create a 1,000,000-job task (slow; memory)")
    p.add_argument("--broker-memory", action="store_true",
                   help="also read RabbitMQ's memory after each timed enqueue (rabbitmqctl costs ~0.7 s of CPU "
                        "while the workers run; the create runs always read it)")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/10", help="Redis (flushed!) for everything")
    p.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/", help="RabbitMQ")
    p.add_argument("--json", action="store_true", help="one JSON object per configuration on stdout")
    p.add_argument("--keep-logs", action="store_true", help="keep the workers' logs (path printed)")
    p.add_argument("--table-from", metavar="JSONL", help="only print the table of results saved with --json")
    args = p.parse_args(argv)
    if args.table_from:
        saved = report.load(args.table_from)
        if saved:
            print(report.header(saved))
        print(report.table(saved))
        return 0
    check_checkout()
    queues = args.queue or QUEUES
    sizes = args.jobs or [10_000]
    logdir = Path(tempfile.mkdtemp(prefix="fanin-"))
    log(f"{machine()}; worker logs in {logdir}")
    results = []
    try:
        for n in sizes:
            for q in queues:
                o = bench_queue(q, n, args, logdir)
                o["machine"] = machine()
                results.append(o)
                if args.json:
                    print(json.dumps(o), flush=True)
    finally:
        if not args.keep_logs:
            shutil.rmtree(logdir, ignore_errors=True)
    if not args.json:
        print(f"\n{machine()}; {args.workers} worker processes per side, concurrency {args.concurrency}; "
              f"medians of {args.repeat} runs\n")
        print(report.table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
