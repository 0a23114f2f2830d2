"""Redis store: every transition is one Lua script, every task lives in one hash slot.

``redis://host:6379/0`` in a backend string (jobs on threads of the calling process), or
``store=redis://...`` for a queue adapter. The scripts are in ``lua/`` (``lib.lua`` holds
the helpers every task script shares); ``docs/redis.md`` has the figures.

Keys of task ``T`` (prefix ``ms``), all with the hash tag ``{T}`` so that one script only
touches one slot (Redis Cluster compatible):

* ``ms:{T}:meta``  hash: state, counters, timestamps, options
* ``ms:{T}:spec``  hash: ref → spec JSON, for every job not (yet) succeeded, finalizers, callback
* ``ms:{T}:rows``  hash: ref → ``"<state>,<attempt>,<fails>,<lost>"`` for rows that are not
  plain "pending, never started" (absent = pending/0/0/0)
* ``ms:{T}:done``  bitmap: bit *i* set ⇔ job ``j<i>`` succeeded (its spec and row are deleted)
* ``ms:{T}:err``   hash: ref → failure JSON of rows that failed for good
* ``ms:{T}:res``   hash: ref → result JSON (tasks that keep results)
* ``ms:{T}:due``   zset: ref → due time (lease expiry, retry time, follow-up grace)

Global keys (each updated by its own command, never inside a task script):

* ``ms:tasks``      zset: task id → created_at (for ``list_tasks``; pruned lazily)
* ``ms:due-tasks``  zset: task id → a lower bound of the task's earliest due time
* ``ms:rejected``   list: refused messages, newest first, capped

Modules: :mod:`.base` (connection, scripts, keys), :mod:`.store` (the transitions),
:mod:`.index` (recovery and the due index), :mod:`.reads`, :mod:`.scripts` (loading ``lua/``).
"""

from __future__ import annotations

from .base import DEFAULT_PREFIX, DEFAULT_URL
from .store import RedisStore

__all__ = ["DEFAULT_PREFIX", "DEFAULT_URL", "RedisStore"]
