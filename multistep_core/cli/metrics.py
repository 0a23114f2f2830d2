"""The ``multistep metrics`` command and ``multistep worker --metrics-port`` (kept apart from
cli.py so the CLI's own layout can change around them).

``multistep metrics --port 9109`` serves the store-level gauges (``multistep_tasks{state}``,
``multistep_jobs_pending{queue}``) read every ``--interval`` seconds by a background thread;
``multistep worker --metrics-port 9108 ...`` serves the worker metrics of all its processes.
See :mod:`multistep_core.prometheus` and docs/observability.md.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import click

from ..errors import BackendDriverMissing, ConfigurationError


def _require_prometheus() -> None:
    import importlib.util

    if importlib.util.find_spec("prometheus_client") is None:
        raise BackendDriverMissing(
            "Prometheus metrics need prometheus-client: pip install 'multistep[prometheus]'"
        )


def metrics_port_option(f: Any) -> Any:
    return click.option(
        "--metrics-port", default=None, type=click.IntRange(1, 65535), metavar="PORT",
        help="Serve Prometheus metrics of every worker process on http://0.0.0.0:PORT/metrics.",
    )(f)


def start_worker_metrics(port: int | None) -> None:
    """Before the worker connects: prepare the shared metrics directory, then serve it."""
    if port is None:
        return
    _require_prometheus()
    from ..observe import prepare_worker_metrics

    prepare_worker_metrics()
    from ..prometheus import serve_worker_metrics

    try:
        serve_worker_metrics(port)
    except OSError as exc:
        raise ConfigurationError(f"cannot serve metrics on port {port}: {exc} (choose another --metrics-port)") from None


@click.command(name="metrics")
@click.option("--port", "-p", default=9109, show_default=True, type=click.IntRange(1, 65535),
              help="Serve on http://ADDR:PORT/metrics.")
@click.option("--addr", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option("--interval", default=15.0, show_default=True, type=click.FloatRange(0.05),
              help="Seconds between two reads of the store (a scrape never reads it).")
@click.pass_context
def metrics(ctx: click.Context, port: int, addr: str, interval: float) -> None:
    """Serve store-level Prometheus gauges: tasks by state, pending jobs by queue."""
    _require_prometheus()
    from ..prometheus import serve_store_metrics
    from .base import obj as _obj

    backend = _obj(ctx).connect(ctx)
    try:
        collector = serve_store_metrics(backend, port, addr, interval)
    except OSError as exc:
        raise ConfigurationError(f"cannot serve metrics on {addr}:{port}: {exc} (choose another --port)") from None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    click.echo(f"serving store metrics on http://{addr}:{port}/metrics (every {interval:g}s)", err=True)
    stop.wait()
    collector.stop()
