"""The shared conformance suite with task state on a Redis Cluster (3 primaries, 3 replicas,
started for the session by the ``redis_cluster`` fixture): the ``redis+cluster://`` backend
itself (jobs on threads of this process), and the cluster as the ``store=`` of RQ (broker on
the tests' single Redis, DB 9) and of Celery on RabbitMQ, with real ``multistep worker``
processes. Each class has its own key prefix, so that no class's recovery claims another's
tasks.

``TestClusterAgainstTheReference`` is the differential test: the router (task → queue index,
per-queue shards, reads merged over shards) over the same Lua as the single-server store,
checked call for call against the memory reference. Its random subtasks are drawn on random
queues, which a cluster refuses by design (a tree lives in its root's slot), so that operation
is left out there (nested tasks on one queue are in the store and backend suites); and
``claim_due`` is drawn with a limit above the rows due only: with a smaller one the cluster
takes due rows in due order per queue, the reference over all queues (docs/stores.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import ClassVar

import pytest
from multistep_conformance import BackendTests, DifferentialTests, StoreTests
from multistep_conformance.differential_ops import MAX_LISTED, OPS
from services import REDIS_ADDR, require_module

require_module("redis")


class _OnCluster:
    """``backend_string`` made from the session cluster's URL (its ports are known at run time)."""

    template: ClassVar[str] = "{cluster}"
    backend_string: ClassVar[str | None] = None

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _cluster_url(cls, redis_cluster: str) -> Iterator[None]:
        cls.backend_string = cls.template.format(cluster=redis_cluster, redis=REDIS_ADDR)
        yield


class TestClusterStore(_OnCluster, StoreTests):
    template = "{cluster}/?prefix=mscstore"


class TestClusterBackend(_OnCluster, BackendTests):
    template = "{cluster}/?prefix=mscbackend"


class TestClusterAgainstTheReference(_OnCluster, DifferentialTests):
    template = "{cluster}/"
    examples = 15  # of 30 elsewhere: the Lua is the single store's (checked there); the router is what is new here
    ops = tuple(
        replace(op, args=lambda run, draw: {"limit": MAX_LISTED}) if op.name == "claim_due" else op
        for op in OPS if op.name != "add_subtask"
    )


# Worker kills: every crash test runs with each adapter in its own file; here only those where a
# crash meets a store transition (crash_scope), and the random kills once, under RQ.


@pytest.mark.usefixtures("redis_service")
class TestRQWithClusterStore(_OnCluster, BackendTests):
    template = "rq+redis://{redis}/9?store={cluster}/&prefix=mscrq"
    crash_scope = "store+chaos"


@pytest.mark.usefixtures("rabbitmq_service")
class TestCeleryRabbitmqWithClusterStore(_OnCluster, BackendTests):
    template = "celery+amqp://guest:guest@127.0.0.1:5672//?store={cluster}/&prefix=msccelery"
    crash_scope = "store"
