"""Web dashboard benchmark: server time per request with 10,000 and 100,000 tasks in the store.

For each store (``sqlite``, ``redis``) and each size, the store is filled through its own API
(95 % succeeded, 4 % failed with one failed job, 0.9 % running, 0.1 % cancelled), then each
request below is sent ``--repeat`` times to the dashboard's ASGI application in this process
(httpx's ASGI transport: no network, so the time is the server's: routing, store reads, JSON
or template rendering). Reported: p50 and p95 in milliseconds, per request.

* ``list``: the tasks page (HTML), first page of 50, newest first, with the total count;
* ``list deep``: the same at page 1,000 (tasks 49,951-50,000; at 100,000 tasks only);
* ``api``: ``/api/tasks?limit=50``;
* ``api failed``: ``/api/tasks?state=failed&limit=50`` (a common state);
* ``api cancelled``: ``/api/tasks?state=cancelled&limit=50`` (a rare state: on Redis, a walk
  of the task index reading each task's state);
* ``api search``: ``/api/tasks?q=7777&limit=50`` (an id search);
* ``task``: one failed task's page (progress, finalizers, grouped failures with arguments).

    python benchmarks/web.py                                  # both stores, 10,000 and 100,000
    python benchmarks/web.py --sizes 10000 --stores sqlite --repeat 20
    python benchmarks/web.py --redis redis://127.0.0.1:6395/11 --json > results.jsonl
    python benchmarks/web.py --table-from benchmarks/results-web-2026-11-29.jsonl

Redis keys get a prefix of their own (``msbweb<random>``), deleted at the end; the SQLite file
is a temporary one. Nothing here is a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from typing import Any

from multistep_core.backend import Backend
from multistep_core.model import Failure, JobSpec, TaskOptions
from multistep_core.queue import Queue
from multistep_core.store import Store

SPEC = JobSpec("bench.work", [1, "two", {"three": 3}]).to_json()
REQUESTS = {
    "list": "/?page=1",
    "list deep": "/?page=1000",
    "api": "/api/tasks?limit=50",
    "api failed": "/api/tasks?state=failed&limit=50",
    "api cancelled": "/api/tasks?state=cancelled&limit=50",
    "api search": "/api/tasks?q=7777&limit=50",
    "task": "/tasks/{failed}",
}


class _NoQueue(Queue):
    """The dashboard only reads in this benchmark; nothing is ever enqueued."""

    in_process = False

    def enqueue(self, queue: str, messages: Sequence[str]) -> None:  # pragma: no cover - never called
        raise RuntimeError("the benchmark enqueues nothing")


def fill(store: Store, n: int) -> str:
    """``n`` tasks through the store's API; returns the id of one failed task."""
    failed_id = ""
    t0 = time.time() - n
    opts = TaskOptions(retention=30 * 24 * 3600.0)
    for i in range(n):
        tid = f"bench-{i:06d}"
        now = t0 + i
        store.create_task(tid, opts, now)
        kind = (950, 990, 999)[i] if i < 3 else i % 1000  # the first three: one of each rare kind
        if kind < 950:  # succeeded: an empty sealed task
            store.seal(tid, now)
        elif kind < 990:  # failed: one job that raised
            store.add_jobs(tid, "j", [SPEC], now)
            store.seal(tid, now)
            st = store.start(tid, "j0", now)
            err = Failure("j0", "bench.work", "ValueError", "boom", "Traceback ...", 1, now)
            store.finish(tid, "j0", st.attempt, now, error=err)
            failed_id = tid
        elif kind < 999:  # running: a job not started yet
            store.add_jobs(tid, "j", [SPEC], now)
            store.seal(tid, now)
        else:
            store.cancel(tid, "bench", now)
    return failed_id


def measure(backend: Backend, failed: str, repeat: int, names: list[str]) -> dict[str, dict[str, float]]:
    import httpx

    from multistep_core.web import create_app

    app = create_app(backend)

    async def run() -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            for name in names:
                path = REQUESTS[name].format(failed=failed)
                times = []
                for _ in range(repeat + 2):
                    t = time.perf_counter()
                    r = await client.get(path)
                    times.append((time.perf_counter() - t) * 1000)
                    if r.status_code != 200:
                        raise SystemExit(f"{name}: {path} answered {r.status_code}: {r.text[:300]}")
                times = sorted(times[2:])  # the first two warm caches
                out[name] = {"p50_ms": round(statistics.median(times), 2),
                             "p95_ms": round(times[min(len(times) - 1, int(0.95 * len(times)))], 2)}
        return out

    return asyncio.run(run())


def make_store(kind: str, redis_url: str, tmp: str) -> tuple[Store, Any]:
    if kind == "sqlite":
        from multistep_core.embedded.sqlite import SQLiteStore

        path = os.path.join(tmp, f"web-{uuid.uuid4().hex[:6]}.db")
        return SQLiteStore(path), None
    from multistep_core.redis import RedisStore

    prefix = f"msbweb{uuid.uuid4().hex[:6]}"
    store = RedisStore(redis_url, prefix=prefix)

    def cleanup() -> None:
        keys = list(store.r.scan_iter(match=f"{prefix}:*", count=5000))
        for i in range(0, len(keys), 5000):
            store.r.unlink(*keys[i : i + 5000])

    return store, cleanup


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stores", default="sqlite,redis", help="comma-separated: sqlite, redis")
    ap.add_argument("--sizes", default="10000,100000", help="comma-separated task counts")
    ap.add_argument("--repeat", type=int, default=30, help="requests per measurement")
    ap.add_argument("--redis", default=os.environ.get("MULTISTEP_BENCH_REDIS", "redis://127.0.0.1:6379/11"))
    ap.add_argument("--json", action="store_true", help="one JSON line per store and size")
    ap.add_argument("--table-from", metavar="FILE", help="print the table of saved --json lines, run nothing")
    args = ap.parse_args(argv)
    if args.table_from:
        with open(args.table_from) as f:
            print(table([json.loads(line) for line in f if line.strip()]))
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.stores.split(","):
            for n in (int(s) for s in args.sizes.split(",")):
                store, cleanup = make_store(kind.strip(), args.redis, tmp)
                try:
                    t = time.perf_counter()
                    failed = fill(store, n)
                    fill_s = time.perf_counter() - t
                    names = [k for k in REQUESTS if k != "list deep" or n >= 50_000]
                    res = measure(Backend(store, _NoQueue(), name=kind), failed, args.repeat, names)
                finally:
                    if cleanup is not None:
                        cleanup()
                    store.close()
                row = {"store": kind, "tasks": n, "fill_s": round(fill_s, 1), "repeat": args.repeat, "requests": res}
                rows.append(row)
                if args.json:
                    print(json.dumps(row), flush=True)
                else:
                    print(f"{kind} {n:,} tasks (filled in {fill_s:.1f} s):", file=sys.stderr)
                    for name, v in res.items():
                        print(f"  {name:14} p50 {v['p50_ms']:8.2f} ms   p95 {v['p95_ms']:8.2f} ms", file=sys.stderr)
    if not args.json:
        print(table(rows))
    return 0


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: one row per request, one column pair per store and size."""
    cols = [(r["store"], r["tasks"]) for r in rows]
    head = "| request | " + " | ".join(f"{s} {n:,} p50 / p95 ms" for s, n in cols) + " |"
    out = [head, "| --- |" + " --- |" * len(cols)]
    for name in REQUESTS:
        cells = []
        for r in rows:
            v = r["requests"].get(name)
            cells.append(f"{v['p50_ms']:.1f} / {v['p95_ms']:.1f}" if v else "-")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
