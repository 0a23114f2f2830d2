"""``multistep web``: serve the dashboard with uvicorn (imported only when the command runs)."""

from __future__ import annotations

import importlib
import ipaddress
import os
import sys
from typing import Any

import click

from .security import TOKEN_ENV

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8642


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command(name="web")
@click.option("--host", default=DEFAULT_HOST, show_default=True,
              help="Address to bind. Anything but loopback exposes the dashboard to the network.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535))
@click.option("--token", default=None, envvar=TOKEN_ENV, show_envvar=True, metavar="TEXT",
              help="Secret that allows retry, cancel and delete (at least 8 characters). Without it the "
              "dashboard is read-only.")
@click.option("-i", "--import", "modules", multiple=True, metavar="MODULE",
              help="Module defining job functions (embedded backends run retried jobs in this process).")
@click.option("--poll", default=0.5, show_default=True, type=click.FloatRange(0.05, 60),
              help="Seconds between two reads of the tasks a live page follows.")
@click.option("--root-path", default="", help="URL prefix when served behind a proxy under a sub-path.")
@click.pass_context
def web(ctx: click.Context, host: str, port: int, token: str | None, modules: tuple[str, ...], poll: float,
        root_path: str) -> None:
    """Serve the web dashboard: tasks, live progress, failures, retry/cancel/delete.

    Needs pip install "multistep[web]". Binds 127.0.0.1 unless --host says otherwise.
    """
    try:
        import jinja2  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise click.ClickException(f'the web dashboard needs {exc.name}; install it with: pip install "multistep[web]"') from None
    from ..config import connect
    from . import create_app

    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise click.ClickException(f"cannot import module {name!r}: {type(exc).__name__}: {exc}") from None
    obj: Any = ctx.obj
    backend = connect(getattr(obj, "backend_arg", None))
    backend.stop_recovery()  # never pick up another process's due jobs
    ctx.call_on_close(backend.close)
    app = create_app(backend, token=token, poll=poll)
    mode = "actions need the token" if token else "read-only (no --token)"
    if backend.name == "memory":
        click.echo("hint: the memory backend keeps state inside one process; this dashboard shows only its "
                   "own tasks (use sqlite:///file.db or a Redis backend, or mount create_app in your process)", err=True)
    if not _loopback(host) and not token:
        click.echo(f"warning: serving on {host}, reachable from the network", err=True)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"multistep web: {backend.name} backend on http://{shown}:{port}{root_path}/ ({mode})", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", root_path=root_path,
                timeout_graceful_shutdown=2, access_log=False)
