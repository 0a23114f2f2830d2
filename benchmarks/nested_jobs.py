"""Jobs of the nested fan-in benchmark (``benchmarks/nested.py``), for multistep and for Celery.

Every mark goes to ``$FANIN_REDIS``: a leaf records its end time under its child (``ZADD GT``,
so the key holds the latest end); a child's finalizer (a chord's callback on Celery) records
when it started and ended; the parent's finalizer when it started. One round trip each.
"""

from __future__ import annotations

import os
import time
from typing import Any

from benchmarks.common import client

LEAF_END = "nested:leaf_end"  # zset: child -> latest leaf end
CHILD_START = "nested:child_start"  # hash: child -> its finalizer's first start
CHILD_END = "nested:child_end"  # zset: "t" -> latest child finalizer end
PARENT = "nested:parent"  # hash: start, calls
KEYS = (LEAF_END, CHILD_START, CHILD_END, PARENT)


def leaf(child: int, i: int = 0) -> None:
    client().zadd(LEAF_END, {str(child): time.time()}, gt=True)


def child_done(child: int) -> None:
    start = time.time()
    p = client().pipeline(transaction=False)
    p.hsetnx(CHILD_START, str(child), repr(start))
    p.zadd(CHILD_END, {"t": time.time()}, gt=True)
    p.execute()


def parent_done() -> None:
    start = time.time()
    p = client().pipeline(transaction=False)
    p.hsetnx(PARENT, "start", repr(start))
    p.hincrby(PARENT, "calls", 1)
    p.execute()


def read(r: Any) -> dict[str, Any]:
    """The marks of one run: per child (leaf end, finalizer start), the last child end, the parent."""
    ends = {k.decode(): v for k, v in r.zrange(LEAF_END, 0, -1, withscores=True)}
    starts = {k.decode(): float(v) for k, v in r.hgetall(CHILD_START).items()}
    last_child = r.zscore(CHILD_END, "t")
    parent = {k.decode(): v.decode() for k, v in r.hgetall(PARENT).items()}
    return {"leaf_end": ends, "child_start": starts, "last_child_end": last_child, "parent": parent}


# -- multistep --------------------------------------------------------------------------
if os.environ.get("NESTED_NO_MULTISTEP") != "1":
    from multistep_core import job

    @job(name="nested.leaf")
    def ms_leaf(child: int, i: int) -> None:
        leaf(child, i)

    @job(name="nested.child_done")
    def ms_child_done(child: int) -> None:
        child_done(child)

    @job(name="nested.parent_done")
    def ms_parent_done() -> None:
        parent_done()
