"""The Redis Cluster store: ``redis+cluster://host:7000,host:7001/`` (docs/stores.md).

A Lua script on a cluster may touch the keys of one hash slot only, and every store script
touches a task's keys, its queue's keys (fair-share scheduling) and the due index. So a
**queue is the unit of a slot**: :class:`RedisClusterStore` is a router over per-queue
*shards*, each one the single-server :class:`~multistep_core.redis.store.RedisStore` (the same
Lua, unchanged) with the key prefix ``<prefix>:{<queue>}``. Redis hashes only the text
between the first ``{`` and the ``}`` after it, so every key a shard makes
(``ms:{Q}:{T}:meta``, ``ms:{Q}:{Q}:q``, ``ms:{Q}:due-tasks``, ``ms:{Q}:tasks``) lies in the
slot of ``Q``, and each transition stays one script in one round trip.

Keys of the router itself (the tags hold ``!``, which no queue name does):

* ``<prefix>:{!tq<k>}:task-queue``  hash: task id → queue, in 64 buckets (``k`` = CRC-32 of
  the id mod 64, so that no slot is hot); written before a task is created, removed when it
  is deleted, and cached in the process (a task's queue never changes)
* ``<prefix>:{!registry}:queues``   set: the queues (shards) that ever held a task, for
  recovery and the reads that span tasks (they fan out per shard and merge)
* ``<prefix>:{!registry}:rejected`` list: refused messages (one fixed slot: rarely written)

A subtask lives in its root's slot: it must be on the root's queue (the default: a subtask
inherits its parent's queue). ``wait=N`` sends ``WAIT N wait_timeout`` after every write
script, on the same connection, in the same round trip (a pipeline).
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from ..errors import (
    BackendConnectionError,
    ConfigurationError,
    StoreError,
    TaskExists,
    TaskNotFound,
)
from ..fairshare import DEFAULT_WINDOW, QueueRow
from ..listing import MAX_PAGE, JobDetail, TaskPage, TaskQuery, page_of
from ..model import Dispatch, Failure, Progress, Rejected, Start, TaskOptions, TaskState
from ..options import redact_url
from ..store import DEFAULT_LEASE, Store
from .base import DEFAULT_PREFIX, MAX_REJECTED, _s, check_prefix, redis_driver
from .cluster_url import DEFAULT_CLUSTER_URL, _int_option, parse_cluster_url
from .rows import rejected_entries
from .scripts import PLAIN_SCRIPTS, STORE_SCRIPTS, Scripts, explain, source
from .store import RedisStore

log = logging.getLogger("multistep.redis.cluster")

BUCKETS = 64  # buckets of the task → queue index
NOWHERE = "!none"  # the shard unknown task ids are routed to (no queue is named so: it holds nothing)
RETRY_FOR = 30.0  # seconds a transition keeps retrying while a slot has no reachable primary
WAIT_TIMEOUT_MS = 500
READ_ONLY = frozenset({"failures", "job_states"})  # scripts that write nothing (no WAIT after them)
WRITES = frozenset({"HSETNX", "HSET", "HDEL", "SADD", "LPUSH"})  # the router's own writes (WAIT after them)
CACHE_MAX = 200_000  # task ids whose queue this process remembers



class _Shard(RedisStore):
    """The single-server store on the keys of one queue's slot (prefix ``<prefix>:{<queue>}``).
    Its pipelines (every script) go to the primary serving that slot, through the router."""

    _hash_tagged_prefix = True

    def __init__(self, owner: RedisClusterStore, queue: str) -> None:
        self._owner = owner
        self.queue = queue
        self._ready = False
        super().__init__(owner.url, prefix=f"{owner.prefix}:{{{queue}}}", lease=owner.lease, client=owner.r,
                         max_rejected=owner.max_rejected, window=owner.window)
        self._k_rejected = owner._k_rejected
        self.slot = owner.r.keyslot(self._k_due)
        self._ready = True

    def _load_scripts(self) -> None:
        if self._ready:  # Redis forgot them (a restart, a promoted replica): every primary again
            self._owner._load_scripts()
        self._scripts = self._owner._scripts

    def _pipe(self, build: Any, *, transaction: bool = False) -> list[Any]:
        return self._owner._on_slot(self.slot, build, transaction=transaction, queue=self.queue)

    def _sweep(self, batch: list[tuple[str, float]]) -> None:
        super()._sweep(batch)

        def build(pipe: Any) -> None:
            for tid, _ in batch:
                pipe.exists(self.keys(tid)[0])

        # tasks that expired leave the task → queue index too (each while it still names this queue)
        gone = [tid for (tid, _), n in zip(batch, self._pipe(build), strict=True) if not int(n)]
        if gone:
            self._owner._forget(gone, self.queue)


class RedisClusterStore(Store):
    """Task state on a Redis Cluster: a router over per-queue shards (module documentation)."""

    #: the epoch watch (multistep_core/epoch.py) notices a cluster that lost its data too
    keeps_epoch = True

    def __init__(
        self,
        url: str = DEFAULT_CLUSTER_URL,
        *,
        prefix: str = DEFAULT_PREFIX,
        lease: float = DEFAULT_LEASE,
        window: int = DEFAULT_WINDOW,
        wait: int | None = None,
        wait_timeout: int | None = None,
        retry_for: float | None = None,
        client: Any = None,
        max_rejected: int = MAX_REJECTED,
    ) -> None:
        redis = redis_driver("the Redis Cluster store")
        from redis.cluster import ClusterNode, RedisCluster

        check_prefix(prefix)
        nodes, opts, user, password = parse_cluster_url(url)
        self.url = url
        self.prefix = prefix
        self.lease = float(lease)
        self.window = int(window)
        self.max_rejected = int(max_rejected)
        self.wait = _int_option("wait", opts.get("wait", 0) if wait is None else wait, 0, "a whole number of replicas, 0 or more")
        self.wait_timeout = _int_option(
            "wait_timeout", opts.get("wait_timeout", WAIT_TIMEOUT_MS) if wait_timeout is None else wait_timeout, 0,
            "milliseconds, 0 or more (0 waits without end)")
        rf = opts.get("retry_for", RETRY_FOR) if retry_for is None else retry_for
        try:
            self.retry_for = float(rf)
        except ValueError:
            self.retry_for = -1.0
        if not self.retry_for >= 0:
            raise ConfigurationError(f"retry_for={rf!r} for the Redis Cluster store: it must be seconds, 0 or more")
        #: write scripts whose WAIT saw fewer replicas than ``wait`` (each one is logged)
        self.unacknowledged = 0
        self._where = redact_url(url.split("?")[0])
        self._redis = redis
        exc_ = redis.exceptions
        self._conn_errors: tuple[type[BaseException], ...] = (exc_.ConnectionError, exc_.TimeoutError)
        # errors after which the topology is read again and the call retried (nothing ran)
        self._moved: tuple[type[BaseException], ...] = (
            exc_.MovedError, exc_.AskError, exc_.TryAgainError, exc_.ClusterDownError, exc_.SlotNotCoveredError,
            exc_.ExecAbortError, exc_.ReadOnlyError,
        )
        if client is None:
            from redis.backoff import ExponentialWithJitterBackoff
            from redis.retry import Retry

            try:
                client = RedisCluster(
                    startup_nodes=[ClusterNode(h, p) for h, p in nodes],  # type: ignore[no-untyped-call]
                    username=user, password=password,
                    socket_connect_timeout=2.0, require_full_coverage=True,
                    retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), max(3, int(self.retry_for) + 3)),
                )
            except exc_.RedisClusterException as exc:
                raise ConfigurationError(
                    f"{self._where} is not a usable Redis Cluster ({exc}); for a single Redis server use redis://host:port/0"
                ) from exc
            except self._conn_errors as exc:
                raise BackendConnectionError(f"cannot reach the Redis Cluster at {self._where}: {exc}") from exc
        self.r = client
        self._k_registry = f"{prefix}:{{!registry}}:queues"
        self._k_rejected = f"{prefix}:{{!registry}}:rejected"
        self._scripts = Scripts()
        self._write_shas: frozenset[str] = frozenset()
        self._lock = threading.Lock()
        self._shards: dict[str, _Shard] = {}
        self._registered: set[str] = set()
        self._task_queue: dict[str, str] = {}
        self._claim_turn = 0
        self._load_scripts()
        self._nowhere = self._shard(NOWHERE)

    # -- plumbing ------------------------------------------------------------------------
    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except self._conn_errors as exc:
            raise BackendConnectionError(f"cannot reach the Redis Cluster at {self._where}: {exc}") from exc
        except self._moved as exc:
            raise BackendConnectionError(f"the Redis Cluster at {self._where} cannot serve a slot now: {exc}") from exc

    def _load_scripts(self) -> None:
        """Every script on every primary (one pipeline per primary)."""

        def load() -> None:
            for node in self.r.get_primaries():
                pipe = self.r.get_redis_connection(node).pipeline(transaction=False)
                for name in self._scripts.sha:
                    pipe.script_load(source(name))
                for name, sha in zip(self._scripts.sha, pipe.execute(), strict=True):
                    self._scripts.sha[name] = _s(sha)

        self._retrying(load, "load the store's scripts")
        self._write_shas = frozenset(
            sha for name, sha in self._scripts.sha.items()
            if name not in READ_ONLY and (name in STORE_SCRIPTS or name in PLAIN_SCRIPTS)
        )

    def _retrying(self, fn: Callable[[], Any], what: str) -> Any:
        """``fn()``, again after a fresh look at the topology while the cluster fails over
        (connection refused, MOVED, CLUSTERDOWN, ...), for up to ``retry_for`` seconds."""
        deadline = time.monotonic() + self.retry_for
        pause = 0.05
        while True:
            try:
                return fn()
            except (*self._conn_errors, *self._moved) as exc:
                if time.monotonic() + pause > deadline:
                    raise BackendConnectionError(
                        f"the Redis Cluster at {self._where} did not serve the slot within retry_for={self.retry_for:g}s "
                        f"(cannot {what}): {exc}"
                    ) from exc
                time.sleep(pause)
                pause = min(pause * 2, 0.5)
                try:
                    self.r.nodes_manager.initialize()
                except Exception:  # still failing over: the next try says so
                    pass

    def _on_slot(self, slot: int, build: Any, *, transaction: bool = False, queue: str = "") -> list[Any]:
        """A pipeline built by ``build(pipe)`` on the primary of ``slot`` (a plain client: a
        cluster pipeline refuses EVALSHA), with ``WAIT`` after it when it runs a write script and
        ``wait`` is set; retried while the cluster fails over, the scripts loaded again once if
        the primary lost them."""
        noscript = self._redis.exceptions.NoScriptError
        reloaded = False

        def once() -> list[Any]:
            node = self.r.nodes_manager.get_node_from_slot(slot)
            # MULTI/EXEC spelled out in a plain pipeline, so that WAIT can follow the EXEC on
            # the same connection (WAIT counts the writes of its own connection)
            pipe = self.r.get_redis_connection(node).pipeline(transaction=False)
            if transaction:
                pipe.execute_command("MULTI")
            build(pipe)
            n = len(pipe.command_stack) - (1 if transaction else 0)
            writes = self.wait > 0 and any(
                args[1] in self._write_shas if str(args[0]).upper() == "EVALSHA" else str(args[0]).upper() in WRITES
                for args, _ in pipe.command_stack
            )
            if transaction:
                pipe.execute_command("EXEC")
            if writes:
                pipe.execute_command("WAIT", self.wait, self.wait_timeout)
            res = pipe.execute()
            if writes:
                self._acknowledged(int(res.pop()), queue, node.name)
            if transaction:
                res = list(res[n + 1])
                for x in res:
                    if isinstance(x, Exception):
                        raise x
            return [_s(x) for x in res]

        while True:
            try:
                return list(self._retrying(once, f"run a store script for queue {queue!r}"))
            except noscript:
                if reloaded:
                    raise
                reloaded = True
                self._load_scripts()
            except self._redis.exceptions.ResponseError as exc:
                if reloaded or "NOSCRIPT" not in str(exc):
                    raise StoreError(
                        f"the Redis Cluster at {self._where} refused a store script: {explain(str(exc))}"
                    ) from exc
                reloaded = True
                self._load_scripts()

    def _acknowledged(self, replicas: int, queue: str, node: str) -> None:
        if replicas >= self.wait:
            return
        self.unacknowledged += 1
        log.warning(
            "a write to queue %r was acknowledged by %d replica(s) of %s within %d ms, not %d: it stands on the "
            "primary, and a failover before it replicates would lose it (docs/stores.md, Redis Cluster)",
            queue, replicas, node, self.wait_timeout, self.wait,
        )

    def _shard(self, queue: str) -> _Shard:
        s = self._shards.get(queue)
        if s is None:
            with self._lock:
                s = self._shards.get(queue)
                if s is None:
                    s = self._shards[queue] = _Shard(self, queue)
        return s

    def _register(self, queue: str) -> _Shard:
        """The shard of ``queue``, listed in the registry (before its first task is created)."""
        if queue not in self._registered:
            self._on_slot(self.r.keyslot(self._k_registry), lambda pipe: pipe.sadd(self._k_registry, queue))
            self._registered.add(queue)
        return self._shard(queue)

    def queues(self) -> list[str]:
        """Every queue (shard) that ever held a task, sorted."""
        with self._errors():
            return sorted(_s(q) for q in self.r.smembers(self._k_registry))

    def _shards_all(self) -> list[_Shard]:
        return [self._shard(q) for q in self.queues()]

    def bucket_key(self, task_id: str) -> str:
        return f"{self.prefix}:{{!tq{zlib.crc32(task_id.encode('utf-8')) % BUCKETS}}}:task-queue"

    def queue_of(self, task_id: str) -> str | None:
        """The queue of a task (None: no such task). The index answers; an id it does not
        hold is looked for in every shard (its entry may have been lost in a failover: then it
        is written again), so that no task becomes unreachable."""
        q = self._task_queue.get(task_id)
        if q is None:
            with self._errors():
                q = _s(self.r.hget(self.bucket_key(task_id), task_id))
            if q is None:
                q = self._find(task_id)
            if q is not None:
                self._remember(task_id, q)
        return q

    def _find(self, task_id: str) -> str | None:
        queues = self.queues()
        if not queues:
            return None
        with self._errors():
            pipe = self.r.pipeline(transaction=False)
            for q in queues:
                pipe.exists(f"{self.prefix}:{{{q}}}:{{{task_id}}}:meta")
            found = [q for q, n in zip(queues, pipe.execute(), strict=True) if int(n)]
        if len(found) != 1:
            return None
        key = self.bucket_key(task_id)
        self._on_slot(self.r.keyslot(key), lambda pipe: pipe.hsetnx(key, task_id, found[0]))
        log.warning("task %r was missing from the task → queue index (lost in a failover?): found on queue %r, "
                    "written again", task_id, found[0])
        return found[0]

    def _remember(self, task_id: str, queue: str) -> None:
        if len(self._task_queue) >= CACHE_MAX:
            self._task_queue.clear()
        self._task_queue[task_id] = queue

    def _route(self, task_id: str) -> _Shard:
        q = self.queue_of(task_id)
        return self._nowhere if q is None else self._shard(q)

    def _fresh(self, task_id: str, shard: _Shard) -> _Shard | None:
        """After a 'not found' through a remembered route: the task's shard as the index says
        now, if another (the id was deleted and created again on another queue)."""
        if self._task_queue.pop(task_id, None) is None:
            return None
        again = self._route(task_id)
        return again if again is not shard else None

    def _call(self, task_id: str, fn: Callable[[_Shard], Any]) -> Any:
        shard = self._route(task_id)
        try:
            return fn(shard)
        except TaskNotFound:
            other = self._fresh(task_id, shard)
            if other is None:
                raise
            return fn(other)

    def _claim_id(self, task_id: str, queue: str) -> None:
        """Write ``task_id → queue`` into the index before the task is created; raise
        :class:`TaskExists` if the id belongs to a task of another queue that still exists
        (a stale entry, whose task is gone, is overwritten)."""
        key = self.bucket_key(task_id)
        slot = self.r.keyslot(key)
        if self._on_slot(slot, lambda pipe: pipe.hsetnx(key, task_id, queue))[0]:
            self._task_queue.pop(task_id, None)
            return
        with self._errors():
            cur = _s(self.r.hget(key, task_id))
        if cur is not None and cur != queue:
            m = self._shard(cur)._meta(task_id)
            if m is not None and not ("expires_at" in m and float(m["expires_at"]) <= time.time()):
                raise TaskExists(f"a task with id {task_id!r} already exists ({m['state']})")
        if cur != queue:
            self._on_slot(slot, lambda pipe: pipe.hset(key, task_id, queue))
        self._task_queue.pop(task_id, None)

    def _forget(self, ids: Sequence[str], queue: str) -> None:
        """Drop index entries of deleted or expired tasks, each only while it names ``queue``."""
        with self._errors():
            for tid in ids:
                key = self.bucket_key(tid)
                if _s(self.r.hget(key, tid)) == queue:
                    self.r.hdel(key, tid)
                self._task_queue.pop(tid, None)

    # -- writing -------------------------------------------------------------------------
    def create_task(self, task_id: str, options: TaskOptions, now: float) -> None:
        shard = self._register(options.queue)
        self._claim_id(task_id, options.queue)
        shard.create_task(task_id, options, now)
        self._remember(task_id, options.queue)

    def add_jobs(self, task_id: str, kind: str, specs: Sequence[str], now: float, per_message: int = 1) -> list[str]:
        return list(self._call(task_id, lambda s: s.add_jobs(task_id, kind, specs, now, per_message)))

    def release(self, queue: str, now: float) -> Dispatch:
        return self._shard(queue).release(queue, now)

    def seal(self, task_id: str, now: float) -> Dispatch:
        return self._call(task_id, lambda s: s.seal(task_id, now))  # type: ignore[no-any-return]

    def start(self, task_id: str, ref: str, now: float) -> Start:
        shard = self._route(task_id)
        st = shard.start(task_id, ref, now)
        if not st.run and st.reason == "task-missing":  # remembered a queue the id has left?
            other = self._fresh(task_id, shard)
            if other is not None:
                return other.start(task_id, ref, now)
        return st

    def take(self, queue: str, ticket: int, now: float) -> Start:
        st = self._shard(queue).take(queue, ticket, now)
        if st.run and st.task_id:  # the job's finish goes by task id: to this queue's shard
            self._remember(st.task_id, queue)
        return st

    def renew(self, task_id: str, ref: str, attempt: int, now: float) -> bool:
        return self._route(task_id).renew(task_id, ref, attempt, now)

    def finish(self, task_id: str, ref: str, attempt: int, now: float, *, result: str | None = None,
               error: Failure | None = None) -> Dispatch:
        return self._route(task_id).finish(task_id, ref, attempt, now, result=result, error=error)

    def take_next(self, task_id: str, ref: str, attempt: int, now: float, *, result: str | None = None,
                  error: Failure | None = None, go_on: bool = False) -> tuple[Dispatch, Start]:
        return self._route(task_id).take_next(task_id, ref, attempt, now, result=result, error=error, go_on=go_on)

    def cancel(self, task_id: str, by: str, now: float) -> bool:
        return self.cancel_and_dispatch(task_id, by, now)[0]

    def cancel_and_dispatch(self, task_id: str, by: str, now: float) -> tuple[bool, Dispatch]:
        return self._call(task_id, lambda s: s.cancel_and_dispatch(task_id, by, now))  # type: ignore[no-any-return]

    def add_subtask(self, parent_id: str, child_id: str, options: TaskOptions, on_failure: str, now: float) -> str:
        queue = self.queue_of(parent_id)
        if queue is None:
            return self._nowhere.add_subtask(parent_id, child_id, options, on_failure, now)  # raises: no such task
        if options.queue != queue:
            raise ConfigurationError(
                f"subtask {child_id!r} is on queue {options.queue!r} but its parent {parent_id!r} is on queue {queue!r}: "
                "on a Redis Cluster a tree of tasks lives in one hash slot, its queue's; leave the subtask's queue "
                f"unset (it inherits {queue!r}) or give it queue={queue!r} (docs/stores.md)"
            )
        shard = self._shard(queue)
        self._claim_id(child_id, queue)
        ref = shard.add_subtask(parent_id, child_id, options, on_failure, now)
        self._remember(child_id, queue)
        return ref

    def tree(self, task_id: str) -> Any:
        return self._route(task_id).tree(task_id)

    def retry(self, task_id: str, now: float) -> Dispatch:
        return self._call(task_id, lambda s: s.retry(task_id, now))  # type: ignore[no-any-return]

    def delete(self, task_id: str) -> bool:
        shard = self._route(task_id)
        gone = shard.delete(task_id)
        if gone:
            self._forget([task_id], shard.queue)
        return gone

    def reject(self, raw: str, reason: str, now: float) -> None:
        import json

        item = json.dumps({"raw": raw[:4096], "reason": reason, "at": now}, separators=(",", ":"))

        def build(pipe: Any) -> None:
            pipe.lpush(self._k_rejected, item)
            pipe.ltrim(self._k_rejected, 0, self.max_rejected - 1)

        self._on_slot(self.r.keyslot(self._k_rejected), build, transaction=True)

    def claim_due(self, now: float, limit: int = 1000) -> list[Dispatch]:
        """Every shard's recovery in turn: each queue's lost and owed tickets always, and due
        rows until ``limit`` of them over all shards. The first shard rotates from call to call,
        so that a small limit serves every queue; within the limit, rows are taken in due order
        per shard, not over all shards (docs/stores.md)."""
        shards = self._shards_all()
        out: list[Dispatch] = []
        if not shards:
            return out
        self._claim_turn = (self._claim_turn + 1) % len(shards)
        rows = 0
        for s in shards[self._claim_turn:] + shards[: self._claim_turn]:
            got = s.claim_due(now, max(int(limit) - rows, 0))
            rows += sum(len(d.refs) for d in got)
            for d in got:
                if d.task_id:
                    self._remember(d.task_id, s.queue)
            out += got
        return out

    # -- reading -------------------------------------------------------------------------
    def progress(self, task_id: str) -> Progress | None:
        shard = self._route(task_id)
        p = shard.progress(task_id)
        if p is None:
            other = self._fresh(task_id, shard)
            if other is not None:
                return other.progress(task_id)
        return p

    def failures(self, task_id: str) -> list[Failure]:
        return self._route(task_id).failures(task_id)

    def results(self, task_id: str) -> dict[str, Any]:
        return self._route(task_id).results(task_id)

    def job_states(self, task_id: str) -> dict[str, str]:
        return self._route(task_id).job_states(task_id)

    def job_details(self, task_id: str, refs: Sequence[str]) -> dict[str, JobDetail]:
        return self._route(task_id).job_details(task_id, refs)

    def memory_usage(self, task_id: str) -> int:
        return self._route(task_id).memory_usage(task_id)

    def queue_state(self, queue: str) -> QueueRow | None:
        return self._shard(queue).queue_state(queue)

    def list_tasks(self, state: TaskState | None = None, limit: int = 1000) -> list[Progress]:
        found: list[Progress] = []
        for s in self._shards_all():
            found += s.list_tasks(state, limit)
        found.sort(key=lambda p: (p.created_at, p.task_id), reverse=True)
        return found[: max(limit, 0)]

    def page_tasks(self, query: TaskQuery) -> TaskPage:
        if query.ids is not None:
            by_shard: dict[str, list[str]] = {}
            for tid in dict.fromkeys(query.ids):
                q = self.queue_of(tid)
                if q is not None:
                    by_shard.setdefault(q, []).append(tid)
            found: list[Progress] = []
            for q, ids in by_shard.items():
                sub = replace(query, ids=tuple(ids), offset=0, limit=min(len(ids), MAX_PAGE), count=False)
                found += self._shard(q).page_tasks(sub).items
            return page_of(query, found)
        want = query.offset + query.limit
        merged: list[Progress] = []
        total: int | None = 0
        more = False
        for s in self._shards_all():
            items, t, m = _first(s, query, want)
            merged += items
            total = None if total is None or t is None else total + t
            more = more or m
        merged.sort(key=lambda p: (p.created_at, p.task_id), reverse=query.newest_first)
        page = merged[query.offset : want]
        return TaskPage(page, query.offset, query.limit, total if query.count else None, more or len(merged) > want)

    def rejected(self, limit: int = 100) -> list[Rejected]:
        if limit <= 0:
            return []
        with self._errors():
            return rejected_entries(self.r.lrange(self._k_rejected, 0, limit - 1))

    def close(self) -> None:
        try:
            self.r.close()
        except Exception:  # pragma: no cover - closing must not raise
            pass


def _first(shard: _Shard, query: TaskQuery, want: int) -> tuple[list[Progress], int | None, bool]:
    """The first ``want`` tasks of ``query`` (its filters and order) on one shard, the shard's
    total (if the query counts and the shard can say) and whether more follow."""
    items: list[Progress] = []
    total: int | None = None
    offset = 0
    while True:
        n = min(MAX_PAGE, max(want - offset, 1))
        page = shard.page_tasks(replace(query, offset=offset, limit=n))
        items += page.items
        total = page.total
        offset += n
        if not page.has_more or offset >= want:
            return items[:want], total, page.has_more
