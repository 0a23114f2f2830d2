"""What a run measures: Redis and RabbitMQ memory, one run's figures, medians over runs."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class Monitor:
    """Samples Redis ``used_memory`` (and optionally another number) in a thread; keeps peaks."""

    def __init__(self, r: Any, interval: float = 0.02, extra: Callable[[], int] | None = None,
                 extra_interval: float = 0.25) -> None:
        self.r = r
        self.interval = interval
        self.extra = extra
        self.extra_interval = extra_interval
        self.base = int(r.info("memory")["used_memory"])
        self.peak = self.base
        self.extra_peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        next_extra = 0.0
        while not self._stop.wait(self.interval):
            try:
                self.peak = max(self.peak, int(self.r.info("memory")["used_memory"]))
                if self.extra is not None and time.monotonic() >= next_extra:
                    self.extra_peak = max(self.extra_peak, self.extra())
                    next_extra = time.monotonic() + self.extra_interval
            except Exception:  # a sample lost is not a reason to stop measuring
                pass

    def __enter__(self) -> Monitor:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        with contextlib.suppress(Exception):
            self.peak = max(self.peak, int(self.r.info("memory")["used_memory"]))

    @property
    def delta(self) -> int:
        return self.peak - self.base


def rabbit_memory() -> int | None:
    """RabbitMQ's total Erlang memory (bytes), via ``rabbitmqctl`` (None when unavailable)."""
    exe = shutil.which("rabbitmqctl")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "eval", "erlang:memory(total)."], capture_output=True, text=True, timeout=30)
        return int(out.stdout.strip().splitlines()[-1])
    except Exception:
        return None


@dataclass
class Run:
    """One measured run of one side."""

    enqueue_s: float
    total_s: float | None  # t0 -> callback start (raw: -> last job end); None = did not finish
    jobs: int
    fanin_ms: float | None = None
    peak_redis: int = 0
    broker_mem: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def jobs_per_s(self) -> float | None:
        return self.jobs / self.total_s if self.total_s else None


def median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(runs: list[Run]) -> dict[str, Any]:
    """The runs of one side: medians of the finished ones, peaks, what did not finish."""
    finished = [r for r in runs if r.total_s is not None]
    out: dict[str, Any] = {
        "runs": len(runs),
        "finished": len(finished),
        "jobs": runs[0].jobs if runs else None,
        "enqueue_s": median([r.enqueue_s for r in runs]),
        "total_s": median([r.total_s for r in finished]) if finished else None,
        "jobs_per_s": median([r.jobs_per_s for r in finished]) if finished else None,
        "fanin_latency_ms_p50": median([r.fanin_ms for r in finished if r.fanin_ms is not None]),
        "peak_redis_bytes": max((r.peak_redis for r in runs), default=None),
        "broker_bytes_after_enqueue": median([r.broker_mem for r in runs if r.broker_mem is not None]),
    }
    if runs and len(finished) < len(runs):
        out["did_not_finish_in_s"] = max(r.extra.get("timeout_s", 0) for r in runs if r.total_s is None)
        out["jobs_done_at_timeout"] = max(r.extra.get("jobs_done", 0) for r in runs if r.total_s is None)
    for key in ("bytes_per_job_running", "bytes_per_job_finished"):
        vals = [r.extra[key] for r in finished if key in r.extra]
        if vals:
            out[key] = median(vals)
    saw = [r.extra.get("callback_saw") for r in finished if "callback_saw" in r.extra]
    if saw:
        out["callback_saw_min"] = min(saw)
    states = {r.extra.get("state") for r in finished if "state" in r.extra}
    if states:
        out["final_states"] = sorted(s for s in states if s)
    return out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(Exception):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{platform.node()}: {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, {platform.system()}"
