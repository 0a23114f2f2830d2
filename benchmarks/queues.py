"""The five queues of the benchmark: each one's raw enqueue, native fan-in, workers and URLs."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from benchmarks.procs import ROOT, Workers
from benchmarks.queue_bench import QueueBench


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

QUEUES = list(BENCHES)
