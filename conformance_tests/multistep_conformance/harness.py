"""Everything the suite needs around a backend: connecting, worker processes, journals.

Tests inspect outcomes through the journal (what ran, in which order, how often) and
through the store (what was recorded), never only through the API under test.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from multistep_core import Backend, Task, connect
from multistep_core.queue import SupportsPurge, SupportsRawPublish, SupportsWorkers

from . import jobs

DEFAULT_LEASE = 2.0
DEFAULT_TIMEOUT = 60.0


def with_option(url: str, key: str, value: object) -> str:
    """``url`` with one more query option (also ``package.module:factory?dir=x``: connect()
    passes query options of an import string to the factory as keyword arguments)."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}{key}={value}"


def eventually(check: Callable[[], Any], timeout: float = DEFAULT_TIMEOUT, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def _ancestors(pid: int) -> set[int]:
    """The parent, grandparent, ... of process ``pid`` (empty where they cannot be read)."""
    out: set[int] = set()
    for _ in range(32):
        try:
            out_ps = subprocess.run(["ps", "-o", "ppid=", "-p", str(pid)], capture_output=True, text=True, timeout=10)
            pid = int(out_ps.stdout.strip() or 0)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            break
        if pid <= 1 or pid in out:
            break
        out.add(pid)
    return out


def group_pids(pgid: int) -> list[int]:
    """The live processes of process group ``pgid`` (Linux /proc)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(name))
    return out


class Journal:
    """A file jobs append lines to."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.path = str(self.dir / f"journal-{uuid.uuid4().hex[:8]}.log")
        Path(self.path).touch()

    def lines(self) -> list[str]:
        with open(self.path) as f:
            return [line.rstrip("\n") for line in f if line.strip()]

    def count(self, label: str) -> int:
        return sum(1 for line in self.lines() if line == label)

    def starting(self, prefix: str) -> list[str]:
        return [line for line in self.lines() if line.startswith(prefix)]

    def flag(self, name: str) -> str:
        return str(self.dir / f"{name}-{uuid.uuid4().hex[:6]}.flag")


class Harness:
    """A connected client backend plus, for backends whose jobs run in other processes,
    the worker processes serving the suite's private queue."""

    def __init__(self, backend_string: str, *, workers: int = 2, concurrency: int = 2, lease: float = DEFAULT_LEASE) -> None:
        self.backend_string = backend_string
        self.lease = lease
        self.concurrency = concurrency
        self.queue = f"msconf-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.worker_url = with_option(backend_string, "lease", lease)
        self.backend: Backend = connect(backend_string, lease=lease)
        self.external = not self.backend.queue.in_process
        #: The suite runs jobs on worker processes it started itself (and may kill): the queue is
        #: not ``in_process`` and implements ``SupportsWorkers``; checked by :meth:`wait_ready`.
        self.separate = self.external and isinstance(self.backend.queue, SupportsWorkers)
        self.logdir = Path(tempfile.mkdtemp(prefix="msconf-workers-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self._serial = itertools.count()
        if self.external:
            if isinstance(self.backend.queue, SupportsPurge):
                self.backend.queue.purge(self.queue)
            try:
                if self.separate:
                    for _ in range(workers):
                        self.start_worker()
                self.wait_ready()
            except BaseException:
                self.stop()  # workers and connections of a harness that never became ready
                raise

    def no_separate_workers(self) -> str:
        """Why the worker-kill tests cannot run here ("" when they can)."""
        q = type(self.backend.queue).__name__
        if not self.external:
            return f"capability: separate worker processes ({q}.in_process is True: jobs run in the test process)"
        if not self.separate:
            return (f"capability: SupportsWorkers ({q} has no run_worker, so the suite cannot start and kill "
                    "worker processes of its own)")
        return ""

    # -- workers ---------------------------------------------------------------------
    def start_worker(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start one more worker; ``env``: extra environment (a crash point to arm)."""
        log = open(self.logdir / f"worker-{next(self._serial)}.log", "wb")
        cmd = [
            sys.executable, "-m", "multistep_core", "--backend", self.worker_url, "worker", jobs.__name__,
            "-q", self.queue, "-c", str(self.concurrency),
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        self.procs.append(proc)
        return proc

    def worker_logs(self) -> str:
        out = []
        for p in sorted(self.logdir.glob("worker-*.log")):
            out.append(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}")
        return "\n".join(out)

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Run one job and learn where it ran. A queue that says its jobs run elsewhere
        (``in_process = False``) but ran this one in the test process is declared wrong, and
        the suite stops here with what to change, before any test could kill its own process."""
        where = self.logdir / f"ready-{uuid.uuid4().hex[:6]}.pid"
        task = self.task()
        task.add_job(jobs.where, str(where))
        task.seal()
        try:
            task.wait(timeout=timeout)
        except Exception as exc:
            dead = [p.args for p in self.procs if p.poll() is not None]
            hint = "" if self.separate else (
                f" ({type(self.backend.queue).__name__} has no run_worker: start workers serving the queue "
                f"{self.queue!r} yourself, or implement SupportsWorkers)"
            )
            raise AssertionError(
                f"workers did not become ready ({exc}){hint}; exited: {dead}\n{self.worker_logs()}"
            ) from exc
        pid = int(where.read_text().split()[0])
        if pid == os.getpid():
            q = type(self.backend.queue).__name__
            raise AssertionError(
                f"{q}.in_process is False, but the suite's job ran in the test process itself (pid {pid}). A queue "
                f"whose jobs run in the process that enqueues them must set `in_process = True` (class attribute): "
                "the backend then runs recovery in that process (retries after a backoff, lost jobs and follow-ups "
                "are sent by recovery), and the suite skips its worker-kill tests instead of killing itself"
            )

    def kill_worker_of(self, pid: int) -> None:
        """SIGKILL the whole worker (process group) that runs process ``pid``: only a worker
        this harness started, never the test process or its group."""
        pgid = os.getpgid(pid)
        ours = {p.pid for p in self.procs}
        if pid == os.getpid() or pgid == os.getpgid(0) or not (ours & ({pid, pgid} | _ancestors(pid))):
            raise AssertionError(
                f"refusing to kill process {pid} (group {pgid}): it is not a worker this suite started, nor one "
                f"of their children (workers: {sorted(ours)}; the test process: {os.getpid()}, group {os.getpgid(0)})"
            )
        os.killpg(pgid, signal.SIGKILL)
        for p in self.procs:
            if p.pid == pgid:
                p.wait(timeout=10)
        self.procs = [p for p in self.procs if p.pid != pgid]

    def replace_workers(self, env: dict[str, str] | None = None, n: int | None = None) -> None:
        """Stop every worker (SIGTERM, as an operator would) and start ``n`` (default: as many)
        new ones with ``env`` added to their environment."""
        n = len(self.procs) if n is None else n
        self.stop_workers()
        for _ in range(n):
            self.start_worker(env)

    def restart_dead(self, n: int, env: dict[str, str] | None = None) -> int:
        """Forget the workers that exited and start new ones until ``n`` run; returns how many started."""
        self.procs = [p for p in self.procs if p.poll() is None]
        started = 0
        while len(self.procs) < n:
            self.start_worker(env)
            started += 1
        return started

    def stop(self) -> None:
        self.stop_workers()
        self.backend.close()

    def stop_workers(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 15
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=10)
        self.procs = []

    # -- tasks -----------------------------------------------------------------------
    def task(self, task_id: str | None = None, **options: Any) -> Task:
        options.setdefault("queue", self.queue)
        return self.backend.create_task(f"conf-{uuid.uuid4().hex[:12]}" if task_id is None else task_id, **options)

    def publish_raw(self, body: str) -> None:
        """Put a body on the suite's queue by hand, bypassing the task API: with
        ``publish_raw`` when the queue has it (:class:`SupportsRawPublish`), else with
        ``enqueue``, which carries any string unchanged."""
        q = self.backend.queue
        if isinstance(q, SupportsRawPublish):
            q.publish_raw(self.queue, body)
        else:
            q.enqueue(self.queue, [body])
