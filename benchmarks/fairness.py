"""Fair share between tasks, measured per queue: ``python benchmarks/fairness.py --queue Q [--json]``.

For each queue (rq, celery-redis, celery-amqp, dramatiq-redis, dramatiq-amqp, embedded) with
two worker processes (the embedded backend: two threads), in one run:

- ``small_alone_s`` / ``small_beside_s`` / ``slowdown``: a 20-job task alone, then created right
  after a big task (``--big`` jobs, default 20,000), each job sleeping ``--ms`` (2 ms);
- ``jain_index``: 8 equal tasks started together, per-task completed jobs sampled every 0.1 s
  while all 8 run; Jain's index of each sample (1.0 = perfectly even), the mean and the minimum;
- ``weight_ratio``: completed jobs of a weight-3 task over a weight-1 task started together,
  sampled when the first of them ends (ideal 3.0);
- ``max_running_seen`` / ``max_concurrency``: a task capped at 3, jobs noting start and end;
  the most that ran at one moment, counted from those notes (not from the store);
- ``big_ratio``: a task of ``--big-ratio-jobs`` jobs alone: this checkout's throughput over the
  previous release's (``--previous REF``, checked out in a temporary worktree and run the same
  way; ``--big-ratio-rounds`` alternating runs of each, medians), or null without it;
- ``broker_messages_peak``: messages sent to the queue for a 100,000-job task with no worker
  running (counted at the producer, and what the broker held, by purging it, where it can).

Everything runs against ``--redis`` (a database of its own; keys under a fresh prefix) and the
local RabbitMQ.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
QUEUES = ("embedded", "rq", "celery-redis", "celery-amqp", "dramatiq-redis", "dramatiq-amqp")


def log(msg: str) -> None:
    print(f"[fairness {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def backend_url(queue: str, redis: str, amqp: str, prefix: str) -> str:
    store = f"store={redis}&prefix={prefix}"
    return {
        "embedded": "memory?threads=2",
        "rq": f"rq+{redis}?prefix={prefix}",
        "celery-redis": f"celery+{redis}?prefix={prefix}",
        "celery-amqp": f"celery+{amqp}?{store}",
        "dramatiq-redis": f"dramatiq+{redis}?prefix={prefix}",
        "dramatiq-amqp": f"dramatiq+{amqp.rstrip('/')}/?{store}",  # pika: "/" is the default vhost
    }[queue]


def env_for(checkout: Path) -> dict[str, str]:
    paths = [str(checkout), str(checkout / "adapters"), str(HERE)]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths), PYTHONUNBUFFERED="1")


class Workers:
    """Two ``multistep worker fair_jobs`` processes (process groups), for queue backends."""

    def __init__(self, url: str, qname: str, checkout: Path, logdir: Path) -> None:
        self.cmd = [sys.executable, "-m", "multistep_core", "--backend", url, "worker", "fair_jobs", "-q", qname, "-c", "1"]
        self.env, self.logdir, self.procs = env_for(checkout), logdir, []  # type: ignore[var-annotated]

    def __enter__(self) -> Workers:
        for i in range(2):
            out = open(self.logdir / f"worker-{len(self.procs)}-{i}.log", "wb")
            self.procs.append(subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                               start_new_session=True, cwd=tempfile.gettempdir()))
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def counting(backend: Any) -> list[int]:
    """Count the messages the producer sends (wraps the backend's queue.enqueue)."""
    sent = [0]
    enqueue = backend.queue.enqueue

    def wrapped(queue: str, messages: Any) -> None:
        sent[0] += len(messages)
        enqueue(queue, messages)

    backend.queue.enqueue = wrapped
    return sent


def jain(xs: list[float]) -> float:
    s, sq = sum(xs), sum(x * x for x in xs)
    return 1.0 if sq == 0 else s * s / (len(xs) * sq)


def wait_all(tasks: list[Any], timeout: float) -> None:
    for t in tasks:
        t.wait(timeout=timeout)


def small_task(backend: Any, q: str, ms: float) -> tuple[Any, float]:
    t0 = time.perf_counter()
    with backend.create_task(queue=q) as small:
        small.add_jobs("fair.work", [ms] * 20)
    small.wait(timeout=600)
    return small, time.perf_counter() - t0


def measure(backend: Any, q: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ms = args.ms
    small_task(backend, q, ms)  # warm up
    _, out["small_alone_s"] = small_task(backend, q, ms)
    with backend.create_task(queue=q) as big:
        big.add_jobs("fair.work", [ms] * args.big, per_message=1)
    _, out["small_beside_s"] = small_task(backend, q, ms)
    big.cancel(by="fairness benchmark")
    out["slowdown"] = out["small_beside_s"] / out["small_alone_s"]
    log(f"small alone {out['small_alone_s']:.3f}s, beside {args.big} jobs {out['small_beside_s']:.3f}s")
    time.sleep(1.0)  # let the cancelled task's running jobs end

    tasks = []
    for _ in range(8):
        with backend.create_task(queue=q) as t:
            t.add_jobs("fair.work", [ms] * args.equal)
        tasks.append(t)
    samples = []
    while True:
        ps = [t.progress() for t in tasks]
        if any(p.state.terminal for p in ps):
            break
        done = [p.succeeded for p in ps]
        if sum(done) > 8:
            samples.append(jain([float(d) for d in done]))
        time.sleep(0.1)
    wait_all(tasks, 600)
    out["jain_index"] = statistics.mean(samples) if samples else None
    out["jain_index_min"] = min(samples) if samples else None
    out["jain_samples"] = len(samples)

    with backend.create_task(queue=q, weight=3) as heavy:
        heavy.add_jobs("fair.work", [ms] * args.weighted)
    with backend.create_task(queue=q, weight=1) as light:
        light.add_jobs("fair.work", [ms] * args.weighted)
    while True:
        ph, pl = heavy.progress(), light.progress()
        if ph.state.terminal or pl.state.terminal or ph.succeeded >= args.weighted * 0.9:
            break
        time.sleep(0.02)
    out["weight_ratio"] = ph.succeeded / max(pl.succeeded, 1)
    wait_all([heavy, light], 600)

    path = str(tmp / f"spans-{uuid.uuid4().hex[:6]}")
    with backend.create_task(queue=q, max_concurrency=3) as capped:
        capped.add_jobs("fair.span", [(path, 5.0)] * args.capped)
    capped.wait(timeout=600)
    events = []
    for line in Path(path).read_text().splitlines():
        kind, t = line.split()
        events.append((float(t), 0 if kind == "e" else 1))
    most = cur = 0
    for _, k in sorted(events):
        cur += 1 if k else -1
        most = max(most, cur)
    out["max_running_seen"], out["max_concurrency"] = most, 3
    log(f"jain {out['jain_index']}, weight {out['weight_ratio']:.2f}, running at once {most}/3")
    return out


def broker_peak(url: str, q: str, n: int) -> dict[str, Any]:
    from multistep_core import connect
    from multistep_core.queue import SupportsPurge

    backend = connect(url)
    try:
        if backend.queue.in_process:
            backend.stop_recovery()
            held = backend.store.window  # nothing consumes before the threads start: tickets sent
            backend.queue.enqueue = lambda queue, messages: None  # type: ignore[method-assign]
            sent = counting(backend)  # counts what would have been sent; nothing runs
            with backend.create_task(queue=q) as t:
                t.add_jobs("fair.work", [1.0] * n)
            t.cancel(by="fairness benchmark")
            return {"broker_messages_peak": sent[0], "broker_held": None, "window": held}
        sent = counting(backend)
        with backend.create_task(queue=q) as t:
            t.add_jobs("fair.work", [1.0] * n)
        held = backend.queue.purge(q) if isinstance(backend.queue, SupportsPurge) else None
        t.cancel(by="fairness benchmark")
        return {"broker_messages_peak": sent[0], "broker_held": held, "window": backend.store.window}
    finally:
        backend.close()


BIG_RATIO_SCRIPT = """
import sys, time
import fair_jobs
from multistep_core import connect
url, q, n, ms = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
b = connect(url)
with b.create_task(queue=q) as w:
    w.add_jobs("fair.work", [ms] * 20)
w.wait(timeout=600)
t0 = time.perf_counter()
with b.create_task(queue=q) as t:
    t.add_jobs("fair.work", [ms] * n)
t.wait(timeout=1200)
print(n / (time.perf_counter() - t0))
b.close()
"""


def big_throughput(checkout: Path, url: str, q: str, args: argparse.Namespace, logdir: Path) -> float:
    env = env_for(checkout)
    cmd = [sys.executable, "-c", BIG_RATIO_SCRIPT, url, q, str(args.big_ratio_jobs), str(args.ms)]
    if "memory" in url:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800, cwd=tempfile.gettempdir())
    else:
        with Workers(url, q, checkout, logdir):
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800,
                                 cwd=tempfile.gettempdir())
    if res.returncode != 0:
        raise SystemExit(f"big-task run in {checkout} failed:\n{res.stderr[-3000:]}")
    return float(res.stdout.strip().splitlines()[-1])


def run_queue(name: str, args: argparse.Namespace, prev: Path | None) -> dict[str, Any]:
    from multistep_core import connect

    prefix = f"fair{uuid.uuid4().hex[:6]}"
    url = backend_url(name, args.redis, args.amqp, prefix)
    q = f"fair-{uuid.uuid4().hex[:6]}"
    logdir = Path(tempfile.mkdtemp(prefix=f"fairness-{name}-"))
    row: dict[str, Any] = {"queue": name, "big_jobs": args.big, "job_ms": args.ms}
    log(f"{name}: {url}")
    row.update(broker_peak(url, q + "-peak", args.peak))
    backend = connect(url)
    try:
        if name == "embedded":
            row.update(measure(backend, q, args, logdir))
        else:
            with Workers(url, q, ROOT, logdir):
                row.update(measure(backend, q, args, logdir))
    finally:
        backend.close()
    if prev is not None:
        # alternate the two checkouts (now, previous, now, ...) and compare medians, so that a
        # change in the machine's load during the run weighs on both sides alike
        nows, befores = [], []
        for i in range(args.big_ratio_rounds):
            nows.append(big_throughput(ROOT, url, f"{q}-big{i}", args, logdir))
            befores.append(big_throughput(prev, url, f"{q}-prev{i}", args, logdir))
            log(f"big task round {i + 1}: {nows[-1]:.0f} jobs/s, previous release {befores[-1]:.0f} jobs/s")
        now, before = statistics.median(nows), statistics.median(befores)
        row.update(big_jobs_per_s=now, big_jobs_per_s_previous=before, big_ratio=now / before,
                   big_rounds=[[round(a, 1), round(b, 1)] for a, b in zip(nows, befores, strict=True)])
        log(f"big task {now:.0f} jobs/s, previous release {before:.0f} jobs/s (medians)")
    else:
        row["big_ratio"] = None
    shutil.rmtree(logdir, ignore_errors=True)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queue", action="append", choices=QUEUES, help="queue(s) to measure (default: all)")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/9")
    p.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672//")
    p.add_argument("--big", type=int, default=20_000, help="jobs of the big task (default 20,000)")
    p.add_argument("--ms", type=float, default=2.0, help="each job sleeps this long (default 2 ms)")
    p.add_argument("--equal", type=int, default=300, help="jobs of each of the 8 equal tasks")
    p.add_argument("--weighted", type=int, default=600, help="jobs of each weighted task")
    p.add_argument("--capped", type=int, default=150, help="jobs of the capped task")
    p.add_argument("--peak", type=int, default=100_000, help="jobs of the task for the broker count")
    p.add_argument("--previous", help="git ref of the previous release, for big_ratio")
    p.add_argument("--big-ratio-jobs", type=int, default=4000)
    p.add_argument("--big-ratio-rounds", type=int, default=3,
                   help="alternating runs of this checkout and --previous; big_ratio is over the medians")
    p.add_argument("--json", action="store_true", help="one JSON object per queue on stdout")
    args = p.parse_args(argv)
    sys.path[:0] = [str(ROOT), str(ROOT / "adapters"), str(HERE)]
    import fair_jobs  # noqa: F401 - registers the jobs this producer adds
    prev = None
    if args.previous:
        prev = Path(tempfile.mkdtemp(prefix="multistep-prev-"))
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(prev), args.previous],
                       check=True, capture_output=True)
    try:
        for name in args.queue or QUEUES:
            row = run_queue(name, args, prev)
            print(json.dumps(row) if args.json else _line(row), flush=True)
    finally:
        if prev is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(prev)], capture_output=True)
    return 0


def _line(row: dict[str, Any]) -> str:
    def f(v: Any) -> str:
        return "-" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v))

    keys = ("queue", "slowdown", "jain_index", "weight_ratio", "max_running_seen", "big_ratio", "broker_messages_peak")
    return "  ".join(f"{k}={f(row.get(k))}" for k in keys)


if __name__ == "__main__":
    raise SystemExit(main())
