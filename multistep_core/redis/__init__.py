"""Redis store: every transition is one Lua script (one round trip).

``redis://host:6379/0`` in a backend string (jobs on threads of the calling process), or
``store=redis://...`` for a queue adapter. The scripts are in ``lua/`` (``lib.lua``,
``fair.lua`` and ``flow.lua`` hold what every store script shares); ``docs/redis.md`` has the
key layout, what each script does, and the figures.

Keys of task ``T`` (prefix ``ms``), all with the hash tag ``{T}``:

* ``ms:{T}:meta``  hash: state, counters, timestamps, options, dispatch fields (next, batch, vt)
* ``ms:{T}:spec``  hash: ref → spec JSON, for every job not (yet) succeeded, finalizers, callback
* ``ms:{T}:rows``  hash: ref → ``"<state>,<attempt>,<fails>,<lost>"`` for rows that are not
  plain "pending, never started" (absent = pending/0/0/0)
* ``ms:{T}:done``  bitmap: bit *i* set ⇔ job ``j<i>`` succeeded (its spec and row are deleted)
* ``ms:{T}:err``   hash: ref → failure JSON of rows that failed for good
* ``ms:{T}:res``   hash: ref → result JSON (tasks that keep results)
* ``ms:{T}:due``   zset: ref → due time (lease expiry, retry time, follow-up grace)
* ``ms:{T}:line``  list: refs back in line for a ticket

Keys of queue ``Q`` (hash tag ``{Q}``; ``lua/fair.lua``): ``ms:{Q}:q`` (counters),
``q-tickets`` and ``q-resends`` (the ticket ledger), ``q-groups`` (groups by virtual time),
``q-g:<group>`` and ``q-gt:<group>`` (a group and its tasks by virtual time), ``q-gall``.

Global keys:

* ``ms:tasks``      zset: task id → created_at (for ``list_tasks``; pruned lazily)
* ``ms:due-tasks``  zset: task id → a lower bound of the task's earliest due time
* ``ms:queues``     set: queues with scheduling state
* ``ms:rejected``   list: refused messages, newest first, capped

On a Redis Cluster (:mod:`.cluster`) each queue ``Q`` is a store of its own with the prefix
``ms:{Q}``: every key above then carries the hash tag ``{Q}`` (``ms:{Q}:{T}:meta``,
``ms:{Q}:{Q}:q``, ``ms:{Q}:due-tasks``) and lies in the queue's slot.

Modules: :mod:`.base` (connection, scripts, keys), :mod:`.store` (the transitions),
:mod:`.index` (recovery and the due index), :mod:`.reads`, :mod:`.scripts` (loading ``lua/``),
:mod:`.cluster` (the Redis Cluster store: a router over per-queue stores).
"""

from __future__ import annotations

from .base import DEFAULT_PREFIX, DEFAULT_URL
from .store import RedisStore

__all__ = ["DEFAULT_PREFIX", "DEFAULT_URL", "RedisStore"]
