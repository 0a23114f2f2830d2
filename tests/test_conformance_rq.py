"""The shared conformance suite on RQ, with real `multistep worker` processes running RQ workers
(two workers of two RQ worker processes each), with the default non-forking worker class and
with RQ's forking Worker. Redis DB 15 is RQ's in the project's test run."""

from __future__ import annotations

import pytest
from multistep_conformance import BackendTests, StoreTests
from services import REDIS_ADDR, require_module

require_module("rq")

RQ = f"rq+redis://{REDIS_ADDR}/15"


@pytest.mark.usefixtures("redis_service")
class TestRQStore(StoreTests):
    # Its own store prefix: the Recovery threads of the workers started by the classes below
    # must not pick up the store-level tests' tasks and send them to a queue nobody serves.
    backend_string = RQ + "?prefix=msstore"


@pytest.mark.usefixtures("redis_service")
class TestRQ(BackendTests):
    backend_string = RQ
    # RQ never redelivers a message its worker took; a worker killed before the runner's first
    # store call loses that ticket, and the ticket ledger sends it again (docs/fairness.md).


@pytest.mark.usefixtures("redis_service")
class TestRQForkingWorker(BackendTests):
    backend_string = RQ + "?worker_class=fork"
