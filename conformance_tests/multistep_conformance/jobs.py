"""Job functions the conformance suite runs. Workers under test import this module
(``multistep worker multistep_conformance.jobs``).

Jobs report what they did by appending one line to a journal file whose path they are
given: that works the same whether they run in a thread of the test process or in a
worker process on the same machine, and it is read without going through the API under
test.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from multistep_core import current_job, current_task, job


def note(path: str, line: str) -> None:
    """Append one line atomically (O_APPEND, one write)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@job(name="conformance.ping")
def ping() -> str:
    return "pong"


@job(name="conformance.where")
def where(path: str) -> None:
    """Write the pid of the process running this job (the harness learns where jobs run)."""
    with open(path, "w") as f:
        f.write(f"{os.getpid()}\n")


@job(name="conformance.record")
def record(path: str, label: str, seconds: float = 0.0) -> None:
    if seconds:
        time.sleep(seconds)
    note(path, label)


@job(name="conformance.record_run")
def record_run(path: str, label: str, seconds: float = 0.0) -> None:
    """Note ``<label>:run`` when called, then (after ``seconds``) ``label``: a journal of every
    execution, also of those a killed worker never finished."""
    note(path, f"{label}:run")
    if seconds:
        time.sleep(seconds)
    note(path, label)


@job(name="conformance.square")
def square(path: str, n: int) -> int:
    note(path, f"sq{n}")
    return n * n


@job(name="conformance.fail_until")
def fail_until(path: str, label: str, failing_attempts: int) -> None:
    """Fail on the first ``failing_attempts`` attempts, then succeed."""
    attempt = current_job().attempt
    note(path, f"{label}:attempt:{attempt}:{time.time():.4f}")
    if attempt <= failing_attempts:
        raise RuntimeError(f"{label} fails on attempt {attempt}")


@job(name="conformance.fail_unless_file")
def fail_unless_file(path: str, label: str, flag: str) -> None:
    note(path, f"{label}:run")
    if not os.path.exists(flag):
        raise ValueError(f"boom {label}: {flag} does not exist yet")
    note(path, f"{label}:ok")


@job(name="conformance.always_fail")
def always_fail(path: str, label: str, seconds: float = 0.0, gate: str | None = None) -> None:
    """Fail, after ``seconds`` and once ``gate`` (a file) exists, if given."""
    if seconds:
        time.sleep(seconds)
    deadline = time.monotonic() + 120
    while gate is not None and not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    note(path, label)
    raise ValueError(f"boom {label}")


@job(name="conformance.spawn")
def spawn(path: str, label: str, n: int) -> None:
    """Add ``n`` jobs to the running job's own task."""
    task = current_task()
    for i in range(n):
        task.add_job(record, path, f"{label}.{i}")
    note(path, label)


@job(name="conformance.snapshot")
def snapshot(path: str, label: str) -> None:
    """A finalizer that writes what it can see of its task."""
    task = current_task()
    p = task.progress()
    results = task.results()
    note(
        path,
        label + "=" + json.dumps(
            {
                "state": p.state.value,
                "total": p.total,
                "succeeded": p.succeeded,
                "failed": p.failed,
                "finalizers_done": p.finalizers_done,
                "failures": sorted(f.ref for f in task.failures()),
                "results_sum": sum(v for v in results.values() if isinstance(v, int)),
                "results_count": len(results),
            },
            sort_keys=True,
        ),
    )


@job(name="conformance.block")
def block(path: str, label: str, gate: str, timeout: float = 120.0) -> None:
    """Note the start (with attempt and pid), then wait until ``gate`` exists."""
    note(path, f"{label}:start:{current_job().attempt}:{os.getpid()}")
    deadline = time.monotonic() + timeout
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} never opened")
        time.sleep(0.02)
    note(path, f"{label}:done")


@job(name="conformance.block_or_record")
def block_or_record(path: str, label: str, gate: str | None) -> None:
    """:func:`block` when given a gate, else :func:`record`."""
    if gate is None:
        note(path, label)
    else:
        block(path, label, gate)


@job(name="conformance.echo")
def echo(value: Any) -> Any:
    return value


@job(name="conformance.span")
def span(path: str, label: str, seconds: float) -> None:
    """Note ``label:start:<t>`` and ``label:end:<t>`` around a sleep (for running-at-once checks)."""
    note(path, f"{label}:start:{time.time():.6f}")
    time.sleep(seconds)
    note(path, f"{label}:end:{time.time():.6f}")


@job(name="conformance.spawn_subtask")
def spawn_subtask(path: str, label: str, n: int) -> None:
    """Add a subtask of ``n`` jobs (and a finalizer ``<label>.fin``) to the running job's task."""
    with current_task().add_subtask(f"{current_task().id}.{label}") as sub:
        for i in range(n):
            sub.add_job(record, path, f"{label}.{i}")
        sub.add_finalization_job(record, path, f"{label}.fin")
    note(path, label)


@job(name="conformance.tree_snapshot")
def tree_snapshot(path: str, label: str) -> None:
    """A finalizer that writes its task's direct and deep progress, failures and results."""
    task = current_task()
    p, deep = task.progress(), task.progress(deep=True)
    note(
        path,
        label + "=" + json.dumps(
            {
                "total": p.total, "succeeded": p.succeeded, "failed": p.failed,
                "deep_total": deep.total, "deep_succeeded": deep.succeeded, "deep_failed": deep.failed,
                "failures": sorted(f"{f.ref}:{f.type}" for f in task.failures()),
                "results": task.results(),
            },
            sort_keys=True,
        ),
    )
