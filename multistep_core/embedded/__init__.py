"""The embedded backend: no server needed.

State lives in memory (:class:`MemoryStore`) or in a SQLite file (:class:`SQLiteStore`,
durable, readable from other processes), and jobs run on a pool of threads inside the
process (:class:`ThreadQueue`), or inline in eager mode (:class:`EagerQueue`) for users'
own unit tests. It is the default backend and the reference implementation that the
conformance suite is written against.
"""

from .memory import MemoryStore
from .sqlite import SQLiteStore
from .threads import EagerQueue, ThreadQueue

__all__ = ["EagerQueue", "MemoryStore", "SQLiteStore", "ThreadQueue"]
