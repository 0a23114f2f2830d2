"""Crash points: named places where a test can make a worker SIGKILL itself.

Every step boundary of a message's life (see docs/reliability.md) calls
:func:`crash_point` with the point's name. Nothing happens unless the process was started
with the point armed by an explicit test setting, read once at import::

    MULTISTEP_CRASH=job.called               # die the first time any thread gets there
    MULTISTEP_CRASH=job.called:3             # ... the third time (counted in this process)
    MULTISTEP_CRASH=job.called,recovery.claimed:2
    MULTISTEP_CRASH_ONCE=/tmp/markers        # optional: a directory; the first process of a
                                             # whole fleet to reach a point creates
                                             # <dir>/<point> and dies there, every other
                                             # process (and the same one later) goes on

Unarmed, a call costs one comparison with ``None``. The process writes one line to
stderr (``multistep crash point <name> hit <n>: SIGKILL pid <pid>``) and to the marker file
before it kills itself, so a test can gate on the marker instead of sleeping.

The points a job's kind distinguishes (``started``, ``called``, ``finished``) are named
after the kind of the ref: ``job.called`` for a job, ``finalizer.called`` for a finalizer,
``callback.called`` for the failure callback.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from .errors import ConfigurationError

#: Every point a test may arm, and where it is (the table in docs/reliability.md).
POINTS: dict[str, str] = {
    "message.received": "an adapter's worker got a message from its queue; no store call made yet",
    "job.started": "start() took the lease of a job; its function is not called yet",
    "job.called": "the job's function returned; finish() is not called yet",
    "job.finished": "finish() recorded the job; what it decided is not dispatched yet",
    "message.handled": "the runner returned (every follow-up dispatched); the queue has not acknowledged yet",
    "packed.between": "a packed message: one ref finished and the next one started; its function is not called",
    "finalizer.started": "start() took the lease of a finalizer; its function is not called yet",
    "finalizer.called": "a finalizer's function returned; finish() is not called yet",
    "finalizer.finished": "finish() recorded a finalizer; the next one is not dispatched (nor run inline) yet",
    "callback.started": "start() took the lease of the failure callback",
    "callback.called": "the failure callback returned; finish() is not called yet",
    "callback.finished": "finish() recorded the failure callback",
    "add_jobs.written": "add_jobs/add_job: the store holds the new jobs; nothing is enqueued yet",
    "add_jobs.between_batches": "a dispatch of many messages: one bulk enqueue done, the next not",
    "recovery.claimed": "a recovery pass claimed a due item in the store; its message is not enqueued yet",
}

_KINDS = {"j": "job", "f": "finalizer", "x": "callback"}


def _parse(text: str | None) -> dict[str, int] | None:
    if not text or not text.strip():
        return None
    armed: dict[str, int] = {}
    for item in text.split(","):
        name, _, nth = item.strip().partition(":")
        if name not in POINTS:
            raise ConfigurationError(
                f"MULTISTEP_CRASH names an unknown crash point {name!r}; the points are: {', '.join(POINTS)}"
            )
        try:
            n = int(nth) if nth else 1
        except ValueError:
            n = 0
        if n < 1:
            raise ConfigurationError(f"MULTISTEP_CRASH: {item!r}: the count after ':' must be an integer >= 1")
        armed[name] = n
    return armed


#: The armed points (name -> the hit that kills), or None: read once, at import.
ARMED: dict[str, int] | None = _parse(os.environ.get("MULTISTEP_CRASH"))
ONCE_DIR: str | None = os.environ.get("MULTISTEP_CRASH_ONCE") or None
_hits: dict[str, int] = {}
_lock = threading.Lock()
_local = threading.local()


def crash_point(name: str, ref: str | None = None) -> None:
    """SIGKILL this process if ``name`` is armed and this is its nth hit. With ``ref``,
    ``name`` is a suffix (``"called"``) and the point is named after the ref's kind."""
    if ARMED is None:
        return
    _hit(name, ref)


def _hit(name: str, ref: str | None) -> None:
    if ref is not None:
        _local.kind = _KINDS.get(ref[:1], "job")
        name = f"{_local.kind}.{name}"
    elif name in ("started", "called", "finished"):  # a runner step that knows no ref: the last one's
        name = f"{getattr(_local, 'kind', 'job')}.{name}"
    assert ARMED is not None
    nth = ARMED.get(name)
    if nth is None:
        return
    with _lock:
        _hits[name] = n = _hits.get(name, 0) + 1
        if n != nth:
            return
        line = f"multistep crash point {name} hit {n}: SIGKILL pid {os.getpid()} at {time.time():.3f}\n"
        if ONCE_DIR is not None:
            try:
                fd = os.open(os.path.join(ONCE_DIR, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return  # another process of the fleet died here already
            os.write(fd, line.encode())
            os.close(fd)
        sys.stderr.write(line)
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
