"""The shared conformance suite on Celery, with real `multistep worker` processes (each a Celery
worker with a prefork pool), on both brokers. Redis DB 14 is Celery's; the RabbitMQ variant
keeps its state in the same DB under another key prefix so the two runs never collide."""

from __future__ import annotations

import pytest
from multistep_conformance import BackendTests, StoreTests

pytest.importorskip("celery")

REDIS = "celery+redis://127.0.0.1:6379/14"
AMQP = "celery+amqp://guest:guest@127.0.0.1:5672//?store=redis://127.0.0.1:6379/14&prefix=msamqp"


@pytest.mark.usefixtures("redis_service")
class TestCeleryRedisStore(StoreTests):
    backend_string = REDIS


@pytest.mark.usefixtures("redis_service")
class TestCeleryRedis(BackendTests):
    backend_string = REDIS


@pytest.mark.usefixtures("redis_service", "rabbitmq_service")
class TestCeleryRabbitmq(BackendTests):
    backend_string = AMQP
