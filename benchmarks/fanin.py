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
``--create 0``: creating a 100,000-job task with no worker running (jobs/s, Redis and broker
memory), and with ``--million``: the same for 1,000,000 jobs.

    python benchmarks/fanin.py --jobs 10000                      # every queue, table
    python benchmarks/fanin.py -q dramatiq-redis --jobs 50 --repeat 1 --create 0 --json
    nox -s bench -- --jobs 10000 --queue rq

Uses Redis DB 10 (``--redis``), which it flushes; RabbitMQ queues it purges are its own
(``fanin_*`` and ``multistep.fanin*``). Nothing here is a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# this checkout's code first (core, adapters), here and in the workers (see QueueBench.env)
CODE_PATHS = [str(ROOT), str(ROOT / "adapters")]
for _p in reversed(CODE_PATHS):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from benchmarks import common  # noqa: E402

QUEUES = ["rq", "celery-redis", "celery-amqp", "dramatiq-redis", "dramatiq-amqp"]


def log(msg: str) -> None:
    print(f"[fanin {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- measuring helpers ---------------------------------------------------------------------
class Monitor:
    """Samples Redis ``used_memory`` (and optionally another number) in a thread; keeps peaks."""

    def __init__(self, r: Any, interval: float = 0.02, extra: Callable[[], int] | None = None,
                 extra_interval: float = 0.25) -> None:
        self.r = r
        self.interval = interval
        self.extra = extra
        self.extra_interval = extra_interval
        self.base = int(r.info("memory")["used_memory"])
        self.peak = self.base
        self.extra_peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        next_extra = 0.0
        while not self._stop.wait(self.interval):
            try:
                self.peak = max(self.peak, int(self.r.info("memory")["used_memory"]))
                if self.extra is not None and time.monotonic() >= next_extra:
                    self.extra_peak = max(self.extra_peak, self.extra())
                    next_extra = time.monotonic() + self.extra_interval
            except Exception:  # a sample lost is not a reason to stop measuring
                pass

    def __enter__(self) -> Monitor:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        with contextlib.suppress(Exception):
            self.peak = max(self.peak, int(self.r.info("memory")["used_memory"]))

    @property
    def delta(self) -> int:
        return self.peak - self.base


def rabbit_memory() -> int | None:
    """RabbitMQ's total Erlang memory (bytes), via ``rabbitmqctl`` (None when unavailable)."""
    exe = shutil.which("rabbitmqctl")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "eval", "erlang:memory(total)."], capture_output=True, text=True, timeout=30)
        return int(out.stdout.strip().splitlines()[-1])
    except Exception:
        return None


def wait_for(pred: Callable[[], Any], timeout: float, interval: float = 0.005) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# -- worker processes -----------------------------------------------------------------------
class Workers:
    """``count`` copies of ``cmd``, each in its own process group; stopped with killpg."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], count: int, logdir: Path) -> None:
        self.name = name
        self.cmd = cmd
        self.env = env
        self.count = count
        self.logdir = logdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Workers:
        for k in range(self.count):
            out = open(self.logdir / f"{self.name}-{k}.log", "wb")
            cmd = [a.replace("{k}", str(k)) for a in self.cmd]  # e.g. a node name of its own
            self.procs.append(
                subprocess.Popen(cmd, env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
            )
            out.close()
        return self

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in self.procs:  # whatever is left of each group (children of a CLI too)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)


# -- one queue ------------------------------------------------------------------------------
@dataclass
class Run:
    """One measured run of one side."""

    enqueue_s: float
    total_s: float | None  # t0 -> callback start (raw: -> last job end); None = did not finish
    jobs: int
    fanin_ms: float | None = None
    peak_redis: int = 0
    broker_mem: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def jobs_per_s(self) -> float | None:
        return self.jobs / self.total_s if self.total_s else None


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
        self.env["PYTHONPATH"] = os.pathsep.join([*CODE_PATHS, self.env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
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


class RQBench(QueueBench):
    name = "rq"

    def multistep_url(self) -> str:
        return "rq+" + self.redis_url + "?log_level=WARNING"

    def native_jobs(self, n: int) -> int:
        return min(n, self.args.rq_native_jobs)

    def _q(self) -> Any:
        from rq import Queue

        return Queue(self.raw_q, connection=self.r)

    def queue_workers(self) -> Workers:
        cmd = [sys.executable, "-m", "rq.cli", "worker", "--url", self.redis_url, "--worker-class",
               "rq.SimpleWorker", "--quiet", "--path", str(ROOT), self.raw_q]
        return Workers("rq-raw", cmd, self.env, self.args.workers, self.logdir)

    def raw_enqueue(self, n: int) -> None:
        q = self._q()
        for i in range(n):
            q.enqueue("benchmarks.rq_jobs.work", i, result_ttl=0)

    def native_enqueue(self, n: int) -> None:
        q = self._q()
        parents = [q.enqueue("benchmarks.rq_jobs.work", i, result_ttl=0) for i in range(n)]
        q.enqueue("benchmarks.rq_jobs.callback", depends_on=parents, result_ttl=0)


class DramatiqBench(QueueBench):
    name = "dramatiq-redis"

    def __init__(self, args: argparse.Namespace, logdir: Path) -> None:
        super().__init__(args, logdir)
        self.env["FANIN_DQ"] = self.raw_q
        self.env["dramatiq_queue_prefetch"] = str(args.concurrency)  # what multistep's workers use
        self.env["dramatiq_worker_timeout"] = "250"
        self._broker: Any = None

    def multistep_url(self) -> str:
        return "dramatiq+" + self.redis_url

    def broker(self) -> Any:
        if self._broker is None:
            from dramatiq.middleware import GroupCallbacks
            from dramatiq.rate_limits.backends import RedisBackend

            url = self.broker_url()
            if url.startswith("amqp"):
                from dramatiq.brokers.rabbitmq import RabbitmqBroker

                b = RabbitmqBroker(url=url)
            else:
                from dramatiq.brokers.redis import RedisBroker

                b = RedisBroker(url=url)
            b.add_middleware(GroupCallbacks(RedisBackend(url=self.redis_url), barrier_ttl=86_400_000))
            b.declare_queue(self.raw_q)
            self._broker = b
        return self._broker

    def _msg(self, actor: str, *args: Any) -> Any:
        import dramatiq

        return dramatiq.Message(queue_name=self.raw_q, actor_name=actor, args=args, kwargs={}, options={})

    def queue_workers(self) -> Workers:
        cmd = [sys.executable, "-m", "dramatiq", "benchmarks.dramatiq_app", "--processes", "1", "--threads",
               str(self.args.concurrency), "--path", str(ROOT), "--queues", self.raw_q]
        return Workers(f"{self.name}-raw", cmd, self.env, self.args.workers, self.logdir)

    def raw_enqueue(self, n: int) -> None:
        b = self.broker()
        for i in range(n):  # what actor.send(i) does
            b.enqueue(self._msg("work", i))

    def native_enqueue(self, n: int) -> None:
        from dramatiq import group

        b = self.broker()
        g = group((self._msg("work", i) for i in range(n)), broker=b)
        g.add_completion_callback(self._msg("callback"))
        g.run()

    def purge(self) -> None:
        if self.amqp:
            b = self.broker()
            for q in (self.raw_q, f"{self.raw_q}.DQ", f"{self.raw_q}.XQ"):
                with contextlib.suppress(Exception):
                    b.channel.queue_purge(q)


class DramatiqAmqpBench(DramatiqBench):
    name = "dramatiq-amqp"
    amqp = True

    def broker_url(self) -> str:
        return self.args.amqp

    def multistep_url(self) -> str:
        return "dramatiq+" + self.args.amqp + "?store=" + self.redis_url


class CeleryBench(QueueBench):
    name = "celery-redis"

    def __init__(self, args: argparse.Namespace, logdir: Path) -> None:
        super().__init__(args, logdir)
        self.env["FANIN_CQ"] = self.raw_q
        self._app: Any = None

    def multistep_url(self) -> str:
        return f"celery+{self.redis_url}?loglevel=WARNING&pool={self.args.celery_pool}"

    def app(self) -> Any:
        if self._app is None:
            os.environ["FANIN_BROKER"] = self.broker_url()
            os.environ["FANIN_CQ"] = self.raw_q
            import importlib

            import benchmarks.celery_app as ca

            ca = importlib.reload(ca)
            self._app = ca
        return self._app

    def queue_workers(self) -> Workers:
        cmd = [sys.executable, "-m", "celery", "-A", "benchmarks.celery_app", "worker", "-Q", self.raw_q,
               "-c", str(self.args.concurrency), "-P", self.args.celery_pool, "-l", "WARNING",
               "--without-gossip", "--without-mingle", "--without-heartbeat",
               "-n", f"fanin-{self.name}-{{k}}@%h"]  # a node name each: on RabbitMQ a shared one kills the 2nd
        return Workers(f"{self.name}-raw", cmd, self.env, self.args.workers, self.logdir)

    def raw_enqueue(self, n: int) -> None:
        work = self.app().work
        for i in range(n):
            work.delay(i)

    def native_enqueue(self, n: int) -> None:
        from celery import chord

        ca = self.app()
        chord(ca.work_chord.s(i) for i in range(n))(ca.callback.s())

    def purge(self) -> None:
        if self.amqp:
            with contextlib.suppress(Exception):
                self.app().app.control.purge()


class CeleryAmqpBench(CeleryBench):
    name = "celery-amqp"
    amqp = True

    def broker_url(self) -> str:
        return self.args.amqp

    def multistep_url(self) -> str:
        return f"celery+{self.args.amqp}?store={self.redis_url}&loglevel=WARNING&pool={self.args.celery_pool}"


BENCHES: dict[str, type[QueueBench]] = {
    "rq": RQBench,
    "celery-redis": CeleryBench,
    "celery-amqp": CeleryAmqpBench,
    "dramatiq-redis": DramatiqBench,
    "dramatiq-amqp": DramatiqAmqpBench,
}


# -- one configuration ----------------------------------------------------------------------
def summarize(runs: list[Run]) -> dict[str, Any]:
    finished = [r for r in runs if r.total_s is not None]
    out: dict[str, Any] = {
        "runs": len(runs),
        "finished": len(finished),
        "jobs": runs[0].jobs if runs else None,
        "enqueue_s": median([r.enqueue_s for r in runs]),
        "total_s": median([r.total_s for r in finished]) if finished else None,
        "jobs_per_s": median([r.jobs_per_s for r in finished]) if finished else None,
        "fanin_latency_ms_p50": median([r.fanin_ms for r in finished if r.fanin_ms is not None]),
        "peak_redis_bytes": max((r.peak_redis for r in runs), default=None),
        "broker_bytes_after_enqueue": median([r.broker_mem for r in runs if r.broker_mem is not None]),
    }
    if runs and len(finished) < len(runs):
        out["did_not_finish_in_s"] = max(r.extra.get("timeout_s", 0) for r in runs if r.total_s is None)
        out["jobs_done_at_timeout"] = max(r.extra.get("jobs_done", 0) for r in runs if r.total_s is None)
    for key in ("bytes_per_job_running", "bytes_per_job_finished"):
        vals = [r.extra[key] for r in finished if key in r.extra]
        if vals:
            out[key] = median(vals)
    saw = [r.extra.get("callback_saw") for r in finished if "callback_saw" in r.extra]
    if saw:
        out["callback_saw_min"] = min(saw)
    states = {r.extra.get("state") for r in finished if "state" in r.extra}
    if states:
        out["final_states"] = sorted(s for s in states if s)
    return out


def flush(bench: QueueBench) -> None:
    bench.r.flushdb()
    bench.purge()


def bench_queue(name: str, n: int, args: argparse.Namespace, logdir: Path) -> dict[str, Any]:
    from multistep_core import connect

    b = BENCHES[name](args, logdir)
    flush(b)
    raw: list[Run] = []
    native: list[Run] = []
    ms: list[Run] = []
    ms1: list[Run] = []
    nn = b.native_jobs(n)
    sides = set(args.sides)
    if sides & {"raw", "native"}:
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
                log(f"{name}: a queue worker died; see {logdir}")
        b.workers = None
        flush(b)
    pm = args.per_message
    if sides & {"multistep", "multistep1"}:
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
                    log(f"{name}: a multistep worker died; see {logdir}")
            b.workers = None
            create: dict[str, Any] = {}
            for size in ([args.create] if args.create else []) + ([1_000_000] if args.million else []):
                flush(b)
                log(f"{name}: creating a {size}-job task with no worker running")
                create[str(size)] = b.create_only(backend, size, pm)
                log(f"{name}: {create[str(size)]}")
        finally:
            backend.close()
        flush(b)
    else:
        create = {}
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
    out["create_100k_jobs_per_s"] = create.get(str(args.create), {}).get("jobs_per_s") if args.create else None
    return out


# -- output ---------------------------------------------------------------------------------
def fmt(v: Any, spec: str = ".0f") -> str:
    if v is None:
        return "-"
    if isinstance(v, (int, float)):
        return format(v, spec)
    return str(v)


def mb(v: Any) -> str:
    return "-" if v is None else f"{v / 1e6:.1f}"


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| queue | N | side | enqueue s | s to callback | jobs/s | fan-in ms p50 | peak Redis MB |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for o in results:
        n = o["jobs"]
        ran = " (all ran)" if o["raw_total_s"] else ""
        lines.append(f"| {o['queue']} | {n} | raw | {fmt(o['raw_enqueue_s'], '.2f')} | "
                     f"{fmt(o['raw_total_s'], '.2f')}{ran} | {fmt(o['raw_jobs_per_s'])} | - | "
                     f"{mb(o['raw_peak_redis_bytes'])} |")
        nt = fmt(o["native_total_s"], ".2f")
        if o.get("native_did_not_finish_in_s") is not None:
            nt = f"did not finish in {o['native_did_not_finish_in_s']:.0f} s ({o['native_jobs_done_at_timeout']} jobs ran)"
        njps = fmt(o["native_jobs_per_s"])
        if o.get("native_jobs_per_s_upper_bound") is not None:
            njps = f"< {o['native_jobs_per_s_upper_bound']:.0f}"
        lines.append(f"| {o['queue']} | {o['native_jobs']} | native | {fmt(o['native_enqueue_s'], '.2f')} | {nt} | "
                     f"{njps} | {fmt(o['native_fanin_latency_ms_p50'], '.1f')} | {mb(o['native_peak_redis_bytes'])} |")
        lines.append(f"| {o['queue']} | {n} | multistep ({o['per_message']}/msg) | {fmt(o['multistep_enqueue_s'], '.2f')} | "
                     f"{fmt(o['multistep_total_s'], '.2f')} | {fmt(o['multistep_jobs_per_s'])} | "
                     f"{fmt(o['fanin_latency_ms_p50'], '.1f')} | {mb(o['multistep_peak_redis_bytes'])} |")
        if o.get("multistep1_total_s") is not None:
            lines.append(f"| {o['queue']} | {n} | multistep (1/msg) | {fmt(o['multistep1_enqueue_s'], '.2f')} | "
                         f"{fmt(o['multistep1_total_s'], '.2f')} | {fmt(o['multistep1_jobs_per_s'])} | "
                         f"{fmt(o['multistep1_fanin_latency_ms_p50'], '.1f')} | {mb(o['multistep1_peak_redis_bytes'])} |")
    lines += ["", "| queue | multistep/raw | multistep/native | (1/msg) /raw | (1/msg) /native | B/job running "
              "| B/job finished | create 100k jobs/s |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for o in results:
        rn = fmt(o["ratio_multistep_native"], ".2f")
        if o.get("ratio_multistep_native_is_lower_bound"):
            rn = "> " + rn
        if o["native_jobs"] != o["jobs"] and o["ratio_multistep_native"] is not None:
            rn += f" (native at N={o['native_jobs']})"
        lines.append(f"| {o['queue']} | {fmt(o['ratio_multistep_raw'], '.2f')} | {rn} | "
                     f"{fmt(o.get('ratio_multistep1_raw'), '.2f')} | {fmt(o.get('ratio_multistep1_native'), '.2f')} | "
                     f"{fmt(o['multistep_bytes_per_job_running'], '.1f')} | "
                     f"{fmt(o['multistep_bytes_per_job_finished'], '.2f')} | {fmt(o['create_100k_jobs_per_s'])} |")
    creates = [(o["queue"], k, o[k]) for o in results for k in ("create_100k", "create_1m") if k in o]
    if creates:
        lines += ["", "| queue | create | seconds | jobs/s | peak Redis MB | task state MB | broker MB (RabbitMQ) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for q, _k, c in creates:
            lines.append(f"| {q} | {c['jobs']} | {c['seconds']:.2f} | {c['jobs_per_s']:.0f} | "
                         f"{mb(c['peak_redis_bytes'])} | {mb(c['task_store_bytes'])} | {mb(c['broker_bytes'])} |")
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(Exception):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{platform.node()}: {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, {platform.system()}"


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
        saved = [json.loads(line) for line in Path(args.table_from).read_text().splitlines() if line.strip()]
        if saved:
            conc = max(o["concurrency"] for o in saved)
            print(f"{saved[0].get('machine', '')}; {saved[0]['workers']} worker processes per side, concurrency "
                  f"{conc} (RQ: 1); medians of {saved[0]['repeat']} runs\n")
        print(table(saved))
        return 0
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
        print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
