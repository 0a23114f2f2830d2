"""Plain Dramatiq actors of the benchmark, with the GroupCallbacks middleware its group
completion callbacks need (a Redis rate-limiter backend holds the barrier).

``$FANIN_BROKER`` is the broker URL (redis://... or amqp://...), ``$FANIN_REDIS`` the Redis
for the barrier and the marks. Workers: ``python -m dramatiq benchmarks.dramatiq_app``.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.middleware import GroupCallbacks
from dramatiq.rate_limits.backends import RedisBackend as BarrierBackend

from benchmarks import common

BROKER_URL = os.environ.get("FANIN_BROKER", "redis://127.0.0.1:6379/10")
REDIS_URL = os.environ.get("FANIN_REDIS", "redis://127.0.0.1:6379/10")
QUEUE = os.environ.get("FANIN_DQ", "fanin_raw")

if BROKER_URL.startswith("amqp"):
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=BROKER_URL)
else:
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=BROKER_URL)
broker.add_middleware(GroupCallbacks(BarrierBackend(url=REDIS_URL), barrier_ttl=86_400_000))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0, time_limit=3_600_000)
def work(i: int) -> None:
    common.work(i)


@dramatiq.actor(queue_name=QUEUE, max_retries=0, time_limit=3_600_000)
def callback() -> None:
    common.callback()
