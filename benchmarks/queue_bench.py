"""One queue's side of the benchmark: how it runs raw jobs, its own fan-in and a multistep task.

``QueueBench`` holds what every queue shares: the three measured sides (``run_raw``,
``run_native``, ``run_multistep``), creating a task with no worker (``create_only``), the
multistep workers, and the marks the jobs leave in Redis (``benchmarks.common``). A subclass
per queue (``benchmarks.queues``) says how that queue enqueues, starts its own workers and is
purged.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.measure import Monitor, Run, rabbit_memory
from benchmarks.procs import Workers, log, wait_for


class QueueBench:
    """How one queue enqueues raw jobs and its own fan-in, runs its workers, and is cleaned."""

    name = ""
    amqp = False

    def __init__(self, args: argparse.Namespace, logdir: Path) -> None:
        import redis

        self.args = args
        self.logdir = logdir
        self.redis_url = args.redis
        self.r = redis.Redis.from_url(self.redis_url)
        self.env = dict(os.environ)
        self.env["FANIN_REDIS"] = self.redis_url
        self.env["FANIN_BROKER"] = self.broker_url()
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        os.environ["FANIN_REDIS"] = self.redis_url
        # queue names of our own per configuration (Celery and Dramatiq declare RabbitMQ
        # queues with different arguments, so they must never share one)
        self.raw_q = "fanin_raw_" + self.name.replace("-", "_")  # the queue's own runs
        self.ms_q = "fanin_" + self.name.replace("-", "_")  # the multistep queue

    # to override
    def broker_url(self) -> str:
        return self.redis_url

    def multistep_url(self) -> str:
        raise NotImplementedError

    def native_jobs(self, n: int) -> int:
        return n

    def queue_workers(self) -> Workers:
        raise NotImplementedError

    def raw_enqueue(self, n: int) -> None:
        raise NotImplementedError

    def native_enqueue(self, n: int) -> None:
        raise NotImplementedError

    def purge(self) -> None:
        """Drop whatever the queue's own broker holds for us (the Redis DB is flushed apart)."""

    # shared
    def multistep_workers(self) -> Workers:
        cmd = [sys.executable, "-m", "multistep_core", "--backend", self.multistep_url(), "worker",
               "benchmarks.jobs_module", "-q", self.ms_q, "-c", str(self.args.concurrency)]
        return Workers(f"{self.name}-multistep", cmd, self.env, self.args.workers, self.logdir)

    workers: Workers | None = None

    def wait(self, pred: Callable[[], Any], timeout: float, interval: float = 0.005) -> Any:
        """``wait_for``, giving up early if a worker process died."""
        dead = {"v": False}

        def check() -> Any:
            v = pred()
            if not v and self.workers is not None and not self.workers.alive():
                dead["v"] = True
                return True
            return v

        v = wait_for(check, timeout, interval)
        if dead["v"]:
            log(f"{self.name}: a worker process died; see {self.logdir}")
            return None
        return v

    def reset_marks(self) -> None:
        self.r.delete(common.COUNT, common.LAST_END, common.CALLBACK)

    def broker_memory(self) -> int | None:
        return rabbit_memory() if self.amqp else None

    def last_end(self) -> float | None:
        v = self.r.zscore(common.LAST_END, "t")
        return float(v) if v is not None else None

    def callback_mark(self) -> dict[str, float] | None:
        h = self.r.hgetall(common.CALLBACK)
        if b"start" not in h:
            return None
        return {"start": float(h[b"start"]), "seen": float(h.get(b"seen", 0)), "calls": float(h.get(b"calls", 0))}

    def count(self) -> int:
        return int(self.r.get(common.COUNT) or 0)

    # the three sides ------------------------------------------------------------------
    def run_raw(self, n: int, timeout: float) -> Run:
        self.reset_marks()
        with Monitor(self.r) as mon:
            t0 = time.time()
            self.raw_enqueue(n)
            enq = time.time() - t0
            bmem = self.broker_memory() if self.args.broker_memory else None
            done = self.wait(lambda: self.count() >= n, timeout)
        end = self.last_end()
        return Run(enq, (end - t0) if done and end else None, n, None, mon.delta, bmem)

    def run_native(self, n: int, timeout: float) -> Run:
        self.reset_marks()
        with Monitor(self.r) as mon:
            t0 = time.time()
            self.native_enqueue(n)
            enq = time.time() - t0
            bmem = self.broker_memory() if self.args.broker_memory else None
            cb = self.wait(self.callback_mark, timeout, 0.002)
        if cb is None:
            return Run(enq, None, n, None, mon.delta, bmem, {"jobs_done": self.count(), "timeout_s": timeout})
        end = self.last_end()
        return Run(enq, cb["start"] - t0, n, (cb["start"] - end) * 1000 if end else None, mon.delta, bmem,
                   {"callback_saw": int(cb["seen"])})

    def run_multistep(self, backend: Any, n: int, timeout: float, tag: str, per_message: int = 1) -> Run:
        from benchmarks import jobs_module

        self.reset_marks()
        tid = f"fanin-{tag}-{os.getpid()}-{time.monotonic_ns()}"
        store = backend.store
        with Monitor(self.r, extra=lambda: store.memory_usage(tid)) as mon:
            t0 = time.time()
            with backend.create_task(tid, queue=self.ms_q) as task:
                task.add_jobs(jobs_module.work, range(n), per_message=per_message)
                task.add_finalization_job(jobs_module.final)
            enq = time.time() - t0
            bmem = self.broker_memory() if self.args.broker_memory else None
            cb = self.wait(self.callback_mark, timeout, 0.002)
            state = None
            if cb is not None:
                with contextlib.suppress(Exception):
                    state = task.wait(timeout=30).state.value
        if cb is None:
            return Run(enq, None, n, None, mon.delta, bmem, {"jobs_done": self.count(), "timeout_s": timeout})
        end = self.last_end()
        finished = store.memory_usage(tid)
        return Run(enq, cb["start"] - t0, n, (cb["start"] - end) * 1000 if end else None, mon.delta, bmem,
                   {"callback_saw": int(cb["seen"]), "state": state,
                    "bytes_per_job_running": mon.extra_peak / n, "bytes_per_job_finished": finished / n})

    def create_only(self, backend: Any, n: int, per_message: int = 1) -> dict[str, Any]:
        """Create an n-job task with no worker running: jobs/s, Redis and broker memory."""
        from benchmarks import jobs_module

        tid = f"fanin-create-{n}-{os.getpid()}"
        b0 = self.broker_memory()
        with Monitor(self.r, interval=0.05) as mon:
            t0 = time.perf_counter()
            with backend.create_task(tid, queue=self.ms_q) as task:
                task.add_jobs(jobs_module.work, range(n), per_message=per_message)
                task.add_finalization_job(jobs_module.final)
            dt = time.perf_counter() - t0
        b1 = self.broker_memory()
        task_bytes = backend.store.memory_usage(tid)
        out = {"jobs": n, "seconds": dt, "jobs_per_s": n / dt, "peak_redis_bytes": mon.delta,
               "task_store_bytes": task_bytes,
               "broker_bytes": (b1 - b0) if (b0 is not None and b1 is not None) else None}
        backend.queue.purge(self.ms_q)
        task.delete()
        return out
