"""The shared conformance suite with task state in PostgreSQL: the ``postgresql://`` backend
(jobs on threads of this process), and PostgreSQL as the store of RQ, Celery (RabbitMQ: no
Redis at all) and Dramatiq (Redis and RabbitMQ), with real ``multistep worker`` processes. Each class has its own
table prefix in the session's database (``postgres_service``), so that no class's recovery
claims another's tasks. Redis DB 8 is the brokers' here.

Every crash test runs with PostgreSQL under RQ (the queue that loses messages); under Celery
and Dramatiq only those where a crash meets a store transition (``crash_scope = "store"``):
the other points exercise the queue's side, which their own test files cover with each broker.

``TestPostgresAgainstTheReference`` is the differential test: PostgresStore is RowStore over
its own Txn primitives (statements batched, rows cached, task rows locked), checked call for
call against the memory reference.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from multistep_conformance import BackendTests, DifferentialTests, StoreTests
from services import POSTGRES_URL, REDIS_ADDR, require_module

from multistep_core import Store

require_module("psycopg")

PG = POSTGRES_URL


@pytest.mark.usefixtures("postgres_service")
class TestPostgresStore(StoreTests):
    backend_string = PG + "?prefix=msstore"


@pytest.mark.usefixtures("postgres_service")
class TestPostgresBackend(BackendTests):
    backend_string = PG + "?prefix=msbackend"


@pytest.mark.usefixtures("postgres_service")
class TestPostgresAgainstTheReference(DifferentialTests):
    @pytest.fixture(scope="class")
    @classmethod
    def native_store(cls, postgres_service: str) -> Iterator[Store]:
        from multistep_core.postgres import PostgresStore
        from multistep_core.postgres.schema import drop

        store = PostgresStore(postgres_service, prefix=f"msdiff_{uuid.uuid4().hex[:8]}", lease=cls.lease)
        try:
            yield store
        finally:
            conn = store.connect()
            drop(conn, store.prefix)
            conn.close()
            store.close()


@pytest.mark.usefixtures("postgres_service", "redis_service")
class TestRQWithPostgresStore(BackendTests):
    backend_string = f"rq+redis://{REDIS_ADDR}/8?store={PG}&prefix=msrq"


@pytest.mark.usefixtures("postgres_service", "rabbitmq_service")
class TestCeleryRabbitmqWithPostgresStore(BackendTests):
    backend_string = f"celery+amqp://guest:guest@127.0.0.1:5672//?store={PG}&prefix=mscelery"
    crash_scope = "store"


@pytest.mark.usefixtures("postgres_service", "redis_service")
class TestDramatiqWithPostgresStore(BackendTests):
    backend_string = f"dramatiq+redis://{REDIS_ADDR}/8?store={PG}&prefix=msdramatiq"
    crash_scope = "store"


@pytest.mark.usefixtures("postgres_service", "rabbitmq_service")
class TestDramatiqRabbitmqWithPostgresStore(BackendTests):
    backend_string = f"dramatiq+amqp://guest:guest@127.0.0.1:5672/?store={PG}&prefix=msdramatiqamqp"
    crash_scope = "store"
