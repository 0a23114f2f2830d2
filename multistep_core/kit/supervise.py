"""Worker processes under a supervisor: :class:`Supervisor` (``multistep worker -c N``),
:func:`watch_parent` (a child stops when its supervisor is gone) and :class:`GracefulStop`
(SIGTERM/SIGINT in a child that runs its queue library's consumer itself)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError

log = logging.getLogger("multistep.worker")

#: Environment variable a :class:`Supervisor` sets in its children: its own pid.
SUPERVISOR_ENV = "MULTISTEP_SUPERVISOR"


def _terminate_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def watch_parent(pid: int | None = None, *, interval: float = 1.0,
                 on_gone: Callable[[], None] = _terminate_self) -> threading.Thread | None:
    """In a worker process: call ``on_gone`` (default: SIGTERM to this process, a graceful
    stop) once the process ``pid`` (default: ``$MULTISTEP_SUPERVISOR``) is gone, e.g. after it
    alone was SIGKILLed, instead of serving on as an orphan. Checks every ``interval`` s."""
    if pid is None:
        pid = int(os.environ.get(SUPERVISOR_ENV) or 0)
    if pid <= 0:
        return None
    direct = os.getppid() == pid  # our parent: reparenting is the sign (immune to pid reuse)

    def gone() -> bool:
        if direct:
            return os.getppid() != pid
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # pragma: no cover - the pid now belongs to another user
            return True
        return False

    def loop() -> None:
        while not gone():
            time.sleep(interval)
        log.warning("the supervising process %d is gone; stopping process %d", pid, os.getpid())
        on_gone()

    thread = threading.Thread(target=loop, name="multistep-parent-watch", daemon=True)
    thread.start()
    return thread


class GracefulStop:
    """SIGTERM/SIGINT for a worker process that runs its queue library's consumer itself: the
    first signal requests a graceful stop (:attr:`requested`); the same signal again within
    ``window`` seconds is the same stop (``kill -TERM -<pgid>`` reaches a child directly and
    again through its supervisor); a later one calls ``on_second`` (default: exit 1 now,
    abandoning running jobs; the core's lease brings them back)."""

    def __init__(self, window: float = 2.0, on_second: Callable[[], None] | None = None) -> None:
        self.window = window
        self.requested = threading.Event()
        self._first = 0.0
        self._on_second = on_second

    def install(self) -> GracefulStop:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        now = time.monotonic()
        if not self.requested.is_set():
            self._first = now
            self.requested.set()
            log.info("process %d: stopping gracefully (running jobs finish)", os.getpid())
        elif now - self._first >= self.window:
            log.warning("process %d: second stop signal; exiting now", os.getpid())
            if self._on_second is not None:
                self._on_second()
            else:
                raise SystemExit(1)

    def wait(self) -> None:
        while not self.requested.wait(0.5):
            pass


@dataclass
class _Slot:
    proc: subprocess.Popen[bytes] | None
    started: float
    delay: float = 0.0
    restart_at: float | None = None
    signalled: bool = False


class Supervisor:
    """Keep ``n`` processes running ``cmd`` (``multistep worker -c N``).

    SIGTERM/SIGINT to the supervisor is forwarded to every child (a second one too: the
    children decide what a second signal means) and :meth:`run` returns once all have exited,
    with the highest positive exit code (0 if none). A child that dies while no stop was asked
    for is replaced: 0.2 s later if it had run for ``stable`` seconds, else after a delay that
    doubles from 1 s up to ``max_delay`` while replacements keep dying young. Children find the
    supervisor's pid in ``$MULTISTEP_SUPERVISOR`` and should call :func:`watch_parent`, so they
    stop when the supervisor is killed alone."""

    def __init__(self, cmd: Sequence[str], n: int, *, env: Mapping[str, str] | None = None, what: str = "worker process",
                 stable: float = 30.0, max_delay: float = 30.0, poll: float = 0.1) -> None:
        if n < 1:
            raise ConfigurationError(f"a supervisor needs at least one process, not {n}")
        self.cmd = list(cmd)
        self.n = n
        self.env = dict(os.environ if env is None else env)
        self.what = what
        self.stable, self.max_delay, self.poll = stable, max_delay, poll
        self.slots: list[_Slot] = []
        self.stopping = 0  # the signal that asked for the stop

    def pids(self) -> list[int]:
        return [s.proc.pid for s in self.slots if s.proc is not None and s.proc.poll() is None]

    def _spawn(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(self.cmd, env={**self.env, SUPERVISOR_ENV: str(os.getpid())})
        log.info("started %s %d", self.what, proc.pid)
        return proc

    def _forward(self, signum: int, frame: Any = None, *, only_new: bool = False) -> None:
        self.stopping = signum
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None and not (only_new and slot.signalled):
                slot.signalled = True
                try:
                    slot.proc.send_signal(signum)
                except ProcessLookupError:  # pragma: no cover - exited meanwhile
                    pass

    def _tend(self, slot: _Slot, now: float) -> None:
        if slot.restart_at is not None:
            if now >= slot.restart_at and not self.stopping:
                slot.proc, slot.started, slot.restart_at, slot.signalled = self._spawn(), now, None, False
            return
        code = None if slot.proc is None else slot.proc.poll()
        if code is None or self.stopping:
            return
        young = now - slot.started < self.stable
        slot.delay = min(max(slot.delay * 2, 1.0), self.max_delay) if young else 0.0
        slot.restart_at = now + (slot.delay or 0.2)
        log.warning("%s %d exited with code %s; starting another in %.1f s",
                    self.what, slot.proc.pid if slot.proc else 0, code, slot.delay or 0.2)
        slot.proc = None

    def run(self) -> int:
        old = {s: signal.signal(s, self._forward) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for _ in range(self.n):
                if not self.stopping:
                    self.slots.append(_Slot(self._spawn(), time.monotonic()))
            while not self.stopping:
                now = time.monotonic()
                for slot in self.slots:
                    self._tend(slot, now)
                time.sleep(self.poll)
            self._forward(self.stopping, only_new=True)  # a child started while the signal arrived
            codes = [s.proc.wait() for s in self.slots if s.proc is not None]
            return max((c for c in codes if c > 0), default=0)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            for slot in self.slots:
                if slot.proc is not None and slot.proc.poll() is None:  # pragma: no cover - an error above
                    slot.proc.kill()
