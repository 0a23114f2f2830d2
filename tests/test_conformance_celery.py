"""The shared conformance suite on Celery, with real `multistep worker` processes (each a Celery
worker, prefork pool by default), on both brokers, and once with the threads pool. Redis DB 14 is
Celery's; the RabbitMQ variant keeps its state in the same DB under another key prefix so the
runs never collide."""

from __future__ import annotations

import pytest
from multistep_conformance import BackendTests, StoreTests
from services import REDIS_ADDR, require_module

require_module("celery")

REDIS = f"celery+redis://{REDIS_ADDR}/14"
AMQP = f"celery+amqp://guest:guest@127.0.0.1:5672//?store=redis://{REDIS_ADDR}/14&prefix=msamqp"


@pytest.mark.usefixtures("redis_service")
class TestCeleryRedisStore(StoreTests):
    # Its own store prefix: the Recovery threads of the workers started by the classes below
    # must not pick up the store-level tests' tasks and send them to a queue nobody serves.
    backend_string = REDIS + "?prefix=msstore"


@pytest.mark.usefixtures("redis_service")
class TestCeleryRedis(BackendTests):
    backend_string = REDIS
    # kombu's Redis transport loses a message its consumer process took (BRPOP) when that process is
    # SIGKILLed before it recorded the message as unacked (a whole-worker kill: chaos, threads pool).


@pytest.mark.usefixtures("redis_service")
class TestCeleryRedisThreadsPool(BackendTests):
    backend_string = REDIS + "?pool=threads&prefix=msthreads"


@pytest.mark.usefixtures("redis_service", "rabbitmq_service")
class TestCeleryRabbitmq(BackendTests):
    backend_string = AMQP
