"""The ``multistep`` command line: run the demo, run a worker, inspect and control tasks.

    multistep demo                              # a sample task on the embedded backend
    multistep -b sqlite:///tasks.db ls          # tasks in a SQLite store
    multistep -b redis://localhost/0 show ID    # one task: progress, options, failures
    multistep -b rq+redis://localhost/0 worker myapp.jobs -q default -c 8

Modules: :mod:`.base` (the group, exit codes, output helpers, connecting), :mod:`.run`
(``demo``, ``worker``), :mod:`.inspect` (``ls``, ``show``, ``rejected``), :mod:`.control`
(``watch``, ``retry``, ``cancel``, ``delete``), :mod:`.triage` (grouping failures for ``show``);
``web`` comes from :mod:`multistep_core.web.cli`.
The console script is ``multistep_core.cli:main``.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import control, inspect, run  # noqa: F401  (each registers its commands on the group)
from .base import (
    EXIT_ERROR,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_TIMEOUT,
    MEMORY_HINT,
    cli,
)

__all__ = [
    "EXIT_ERROR", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_NOT_FOUND", "EXIT_OK", "EXIT_TIMEOUT",
    "MEMORY_HINT", "cli", "main",
]


# web: the dashboard (multistep_core/web/cli.py; uvicorn and Starlette load only when it runs)
from ..web.cli import web as _web

cli.add_command(_web)

# metrics: the store-level Prometheus exporter (multistep_core/cli/metrics.py)
from .metrics import metrics as _metrics  # noqa: E402

cli.add_command(_metrics)

# recover: send again what a task waits for (multistep_core/cli/recover.py)
from .recover import recover as _recover  # noqa: E402

cli.add_command(_recover)

# db: the PostgreSQL store's schema (multistep_core/postgres/commands.py)
from ..postgres.commands import db as _db  # noqa: E402

cli.add_command(_db)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="multistep")
