"""A third-party backend, written from docs/writing-a-backend.md alone: a spool-directory queue.

Features
    Messages are files in ``<dir>/<queue>/``. ``multistep worker`` (``run_worker``) serves the
    queues with ``concurrency`` threads: a thread claims a file by renaming it (atomic on one
    file system), hands the body to ``backend.runner.handle`` and deletes the file. A worker
    killed mid-job leaves its claimed file behind; the job's lease expires and the core's
    recovery sends it again. Task state lives in the store named by ``store=`` (SQLite here).

Backend string
    ``spoolq:backend_from_url?dir=/var/spool/app&store=sqlite:////var/lib/app/tasks.db``

Options
    ``dir`` (the spool directory, required), ``store``, ``prefix``, ``lease`` (the kit's three),
    ``poll`` (seconds between scans of an empty queue, 0.02).

Also here: :func:`inprocess_backend`, the same transport consumed by threads of the process
that enqueues (``in_process = True``) over :class:`DictStore`, a :class:`RowStore` of plain
dicts; and :func:`misdeclared_backend`, that variant with ``in_process`` left False, which the
conformance harness must refuse without killing its own process.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from multistep_core import Backend, Queue, RowStore, kit
from multistep_core.errors import ConfigurationError
from multistep_core.fairshare import QueueRow
from multistep_core.faults import crash_point
from multistep_core.model import JobState, Rejected, TaskState
from multistep_core.nesting import delete_tree
from multistep_core.runner import Runner
from multistep_core.store import JobRow, TaskRow, Txn

OPTIONS = {
    **kit.STORE_OPTIONS,
    "dir": kit.text(None, empty=False, what="a spool directory", example="/var/spool/app"),
    "poll": kit.seconds(0.02),
}


class SpoolQueue(Queue):
    """One directory per queue, one file per message."""

    in_process = False  # jobs run in `multistep worker` processes

    def __init__(self, root: str, poll: float = 0.02) -> None:
        self.root = Path(root)
        self.poll = poll
        self._runner: Runner | None = None

    def bind(self, runner: Runner) -> None:
        self._runner = runner  # each worker process binds its own backend's runner

    def _dir(self, queue: str) -> Path:
        d = self.root / queue
        d.mkdir(parents=True, exist_ok=True)
        return d

    def enqueue(self, queue: str, messages: Sequence[str]) -> None:
        d = self._dir(queue)
        for body in messages:
            name = f"{time.time_ns():020d}-{uuid.uuid4().hex}"
            tmp = d / f".{name}.tmp"
            tmp.write_text(body, "utf-8")
            os.rename(tmp, d / f"{name}.msg")  # visible to workers only once whole

    # -- capabilities --------------------------------------------------------------------
    def publish_raw(self, queue: str, body: str) -> None:  # SupportsRawPublish
        self.enqueue(queue, [body])

    def purge(self, queue: str) -> int:  # SupportsPurge
        n = 0
        for f in self._dir(queue).glob("*.msg"):
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
                n += 1
        return n

    def run_worker(self, modules: Sequence[str], queues: Sequence[str], concurrency: int) -> int:  # SupportsWorkers
        assert self._runner is not None, "run_worker before the backend bound the queue"
        runner = self._runner
        stop = kit.GracefulStop().install()
        dirs = [self._dir(q) for q in queues]
        slots = threading.Semaphore(concurrency)

        def run(claimed: Path) -> None:
            try:
                crash_point("message.received")  # the crash tests' points on a queue's own path
                runner.handle(claimed.read_text("utf-8"))
                crash_point("message.handled")
            finally:
                claimed.unlink(missing_ok=True)  # acknowledged
                slots.release()

        with ThreadPoolExecutor(concurrency) as pool:
            while not stop.requested.is_set():
                found = False
                for d in dirs:
                    for f in sorted(d.glob("*.msg")):
                        if stop.requested.is_set():
                            break
                        claimed = f.with_suffix(f".taken-{os.getpid()}")
                        try:
                            os.rename(f, claimed)  # only one worker wins a file
                        except FileNotFoundError:
                            continue
                        found = True
                        slots.acquire()
                        pool.submit(run, claimed)
                if not found:
                    stop.requested.wait(self.poll)
        return 0


def backend_from_url(url: str = "spoolq", **options: Any) -> Backend:
    """The factory: ``connect("spoolq:backend_from_url?dir=...&store=sqlite:///...")``."""
    opts = kit.check_options("spoolq", options, OPTIONS)
    if opts["dir"] is None or opts["store"] is None:
        raise ConfigurationError(
            "the spoolq backend needs dir= (the spool directory) and store= (e.g. store=sqlite:////var/lib/app/tasks.db)"
        )
    store = kit.store_from_url(opts["store"], prefix=opts["prefix"], lease=opts["lease"], window=opts["window"])
    return Backend(store, SpoolQueue(opts["dir"], poll=opts["poll"]), name="spoolq", go_on=opts["go_on"])


# -- the in-process variant: a RowStore of dicts, threads of this process -------------------
class _DictTxn(Txn):
    """Row primitives over the store's dicts; the store's lock makes a transaction atomic."""

    def __init__(self, store: DictStore) -> None:
        self.s = store

    def get_task(self, task_id: str) -> TaskRow | None:
        return self.s.tasks_by_id.get(task_id)

    def put_task(self, row: TaskRow, *, new: bool = False) -> None:
        if new:  # a task created now: its job table starts empty
            self.s.jobs_by_task[row.id] = {}
        self.s.tasks_by_id[row.id] = row

    def get_job(self, task_id: str, ref: str) -> JobRow | None:
        return self.s.jobs_by_task.get(task_id, {}).get(ref)

    def put_job(self, task_id: str, row: JobRow, *, new: bool = False) -> None:
        self.s.jobs_by_task[task_id][row.ref] = row

    def put_jobs_new(self, task_id: str, rows: Sequence[JobRow]) -> None:
        for r in rows:
            self.s.jobs_by_task[task_id][r.ref] = r

    def jobs(self, task_id: str, states: Sequence[JobState] | None = None) -> list[JobRow]:
        rows = list(self.s.jobs_by_task.get(task_id, {}).values())
        return rows if states is None else [r for r in rows if r.state in states]

    def due(self, now: float, limit: int) -> list[tuple[str, str]]:
        hits = [(r.due_at, tid, r.ref) for tid, rows in self.s.jobs_by_task.items() for r in rows.values()
                if r.due_at is not None and r.due_at <= now]
        return [(tid, ref) for _, tid, ref in sorted(hits)[:limit]]  # earliest due first

    def tasks(self, state: TaskState | None, limit: int) -> list[TaskRow]:
        rows = [replace(t) for t in self.s.tasks_by_id.values() if state is None or t.state == state]
        return sorted(rows, key=lambda t: t.created_at, reverse=True)[:limit]  # newest first

    def delete_task(self, task_id: str) -> bool:
        self.s.jobs_by_task.pop(task_id, None)
        return self.s.tasks_by_id.pop(task_id, None) is not None

    def add_rejected(self, item: Rejected) -> None:
        self.s.rejected_items.append(item)
        del self.s.rejected_items[:-1000]

    def list_rejected(self, limit: int) -> list[Rejected]:
        return self.s.rejected_items[::-1][:limit]  # newest first

    def purge_expired(self, now: float) -> None:
        for tid in [t.id for t in self.s.tasks_by_id.values() if t.expires_at is not None and t.expires_at <= now]:
            delete_tree(self, tid)  # a subtask never expires alone: it goes with its root

    def get_queue(self, name: str) -> QueueRow | None:
        return self.s.queue_rows.get(name)

    def put_queue(self, row: QueueRow) -> None:
        self.s.queue_rows[row.name] = row

    def queues(self) -> list[str]:
        return list(self.s.queue_rows)


class DictStore(RowStore):
    """Task state in dicts of this process. The names are chosen not to shadow RowStore's."""

    def __init__(self, *, lease: float = 30.0) -> None:
        super().__init__(lease=lease)
        self.lock = threading.RLock()
        self.tasks_by_id: dict[str, TaskRow] = {}
        self.jobs_by_task: dict[str, dict[str, JobRow]] = {}
        self.rejected_items: list[Rejected] = []
        self.queue_rows: dict[str, QueueRow] = {}  # fair share: one scheduling row per queue

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Txn]:
        with self.lock:
            yield _DictTxn(self)


class LocalSpoolQueue(SpoolQueue):
    """The spool consumed by threads of the process that enqueues."""

    in_process = True

    def __init__(self, root: str, threads: int = 4) -> None:
        super().__init__(root, poll=0.01)
        self.threads = threads
        self._stop = threading.Event()
        self._started: list[threading.Thread] = []

    def bind(self, runner: Runner) -> None:
        super().bind(runner)
        for i in range(self.threads):
            t = threading.Thread(target=self._consume, name=f"spoolq-{i}", daemon=True)
            t.start()
            self._started.append(t)

    def _consume(self) -> None:
        assert self._runner is not None
        while not self._stop.is_set():
            found = False
            for d in [p for p in self.root.iterdir() if p.is_dir()] if self.root.exists() else []:
                for f in sorted(d.glob("*.msg")):
                    claimed = f.with_suffix(f".taken-{threading.get_ident()}")
                    try:
                        os.rename(f, claimed)
                    except FileNotFoundError:
                        continue
                    found = True
                    try:
                        self._runner.handle(claimed.read_text("utf-8"))
                    finally:
                        claimed.unlink(missing_ok=True)
            if not found:
                self._stop.wait(self.poll)

    def close(self) -> None:
        self._stop.set()
        for t in self._started:
            t.join(timeout=10)


class MisdeclaredSpoolQueue(LocalSpoolQueue):
    """The mistake the guide warns about: jobs run here, but in_process says otherwise."""

    in_process = False


def inprocess_backend(url: str = "spoolq-local", **options: Any) -> Backend:
    opts = kit.check_options("spoolq-local", options, {"dir": OPTIONS["dir"], "lease": kit.seconds(30.0)})
    return Backend(DictStore(lease=opts["lease"]), LocalSpoolQueue(opts["dir"]), name="spoolq-local")


def misdeclared_backend(url: str = "spoolq-wrong", **options: Any) -> Backend:
    opts = kit.check_options("spoolq-wrong", options, {"dir": OPTIONS["dir"], "lease": kit.seconds(30.0)})
    return Backend(DictStore(lease=opts["lease"]), MisdeclaredSpoolQueue(opts["dir"]), name="spoolq-wrong")
