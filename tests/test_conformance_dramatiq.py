"""The shared conformance suite on Dramatiq, with real `multistep worker` (Dramatiq CLI) processes,
on both brokers. Redis DB 13 is Dramatiq's; the RabbitMQ variant keeps its state in the same
DB under another key prefix so the two runs never collide."""

from __future__ import annotations

import pytest
from multistep_conformance import BackendTests, StoreTests
from services import REDIS_ADDR

REDIS = f"dramatiq+redis://{REDIS_ADDR}/13"
AMQP = f"dramatiq+amqp://guest:guest@127.0.0.1:5672/?store=redis://{REDIS_ADDR}/13&prefix=msamqp"


@pytest.mark.usefixtures("redis_service")
class TestDramatiqRedisStore(StoreTests):
    backend_string = REDIS


@pytest.mark.usefixtures("redis_service")
class TestDramatiqRedis(BackendTests):
    backend_string = REDIS


@pytest.mark.usefixtures("redis_service", "rabbitmq_service")
class TestDramatiqRabbitmq(BackendTests):
    backend_string = AMQP
