"""The shared conformance suite on Dramatiq, with real `multistep worker` (Dramatiq CLI) processes,
on both brokers. Redis DB 13 is Dramatiq's; the RabbitMQ variant keeps its state in the same
DB under another key prefix so the two runs never collide."""

from __future__ import annotations

import pytest
from multistep_conformance import BackendTests, StoreTests

REDIS = "dramatiq+redis://127.0.0.1:6379/13"
AMQP = "dramatiq+amqp://guest:guest@127.0.0.1:5672/?store=redis://127.0.0.1:6379/13&prefix=msamqp"


@pytest.mark.usefixtures("redis_service")
class TestDramatiqRedisStore(StoreTests):
    backend_string = REDIS


@pytest.mark.usefixtures("redis_service")
class TestDramatiqRedis(BackendTests):
    backend_string = REDIS


@pytest.mark.usefixtures("redis_service", "rabbitmq_service")
class TestDramatiqRabbitmq(BackendTests):
    backend_string = AMQP
