"""Worker processes of the benchmark: starting and stopping them, waiting on a condition.

Every worker runs with the repository root as its working directory, so ``python -m ...``
workers import ``benchmarks.*`` (and this checkout's ``multistep_core``) from it; the
adapters come from the editable install (``pip install -e ".[all]"``), which is also what
makes ``benchmarks`` importable to the benchmark process itself.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(f"[fanin {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def check_checkout() -> None:
    """Fail unless ``multistep_core`` and the adapters are imported from this checkout.

    The benchmark measures the code next to it; a copy of multistep installed some other way
    would be measured instead, in this process and in the workers.
    """
    for name, where in (("multistep_core", ROOT), ("multistep_rq", ROOT / "adapters")):
        spec = importlib.util.find_spec(name)
        path = Path(spec.origin).resolve().parent.parent if spec and spec.origin else None
        if path != where:
            raise SystemExit(f"{name} resolves to {path}, not to this checkout ({where}): "
                             f'install it editable (pip install -e ".[all]")')


def wait_for(pred: Callable[[], Any], timeout: float, interval: float = 0.005) -> Any:
    """``pred()``'s first true value, polled every ``interval`` s; None after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


class Workers:
    """``count`` copies of ``cmd``, each in its own process group; stopped with killpg."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], count: int, logdir: Path) -> None:
        self.name = name
        self.cmd = cmd
        self.env = env
        self.count = count
        self.logdir = logdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Workers:
        for k in range(self.count):
            out = open(self.logdir / f"{self.name}-{k}.log", "wb")
            cmd = [a.replace("{k}", str(k)) for a in self.cmd]  # e.g. a node name of its own
            self.procs.append(
                subprocess.Popen(cmd, env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
            )
            out.close()
        return self

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in self.procs:  # whatever is left of each group (children of a CLI too)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
