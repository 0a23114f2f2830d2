"""The ``postgresql://`` backend: state in PostgreSQL, jobs on threads of this process."""

from __future__ import annotations

from typing import Any

from ..backend import Backend
from ..embedded.threads import ThreadQueue
from ..kit import GO_ON, WINDOW, check_options, flag, integer, seconds, text
from .store import DEFAULT_URL, PostgresStore

OPTIONS = {
    "threads": integer(4, minimum=1),
    "lease": seconds(30.0),
    "window": WINDOW,
    "go_on": GO_ON,
    "prefix": text("ms", empty=False, what="a table prefix"),
    "upgrade": flag(True),
    "retry_for": seconds(60.0, zero=True),
}


def postgres_backend(url: str = "postgresql", **options: Any) -> Backend:
    """``postgresql://user@host:5432/db``: durable state in PostgreSQL (tables ``<prefix>_*``,
    created or migrated on connect unless ``upgrade=false``), jobs on ``threads`` threads of
    this process. ``retry_for``: seconds a transition retries while the server is unreachable.
    (``postgresql`` alone: the local default database ``multistep``.)"""
    opts = check_options("postgresql", options, OPTIONS)
    store = PostgresStore(
        url if "://" in url else DEFAULT_URL, prefix=opts["prefix"], lease=opts["lease"],
        upgrade=opts["upgrade"], retry_for=opts["retry_for"], window=opts["window"],
    )
    return Backend(store, ThreadQueue(opts["threads"]), name="postgresql", go_on=opts["go_on"])
