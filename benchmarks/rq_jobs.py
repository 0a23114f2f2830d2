"""Plain RQ job functions of the benchmark (``rq worker`` imports them by dotted path)."""

from __future__ import annotations

from typing import Any

from benchmarks import common


def work(i: int) -> None:
    common.work(i)


def callback(*args: Any) -> None:
    common.callback()
