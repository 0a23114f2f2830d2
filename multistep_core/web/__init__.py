"""The multistep web dashboard: tasks, live progress, failures and actions in a browser.

Install with ``pip install "multistep[web]"`` (Starlette, uvicorn, Jinja2; the page's script
and style ship in the wheel, nothing is built at install time). Then either run it::

    multistep -b redis://127.0.0.1:6379/0 web --port 8642 --token "$TOKEN"

or mount it in an existing ASGI application (FastAPI, Starlette, Django's ASGI handler)::

    from multistep_core.web import create_app
    app.mount("/tasks", create_app("redis://127.0.0.1:6379/0", token=os.environ["TOKEN"]))

or serve it from a WSGI application (Flask, Django) through :func:`wsgi_app`.

Pages: the tasks list (state filter, id search, order, pagination; progress bars follow
the tasks live through server-sent events), one task (progress, timing, finalizers in order,
failures grouped by type and message with arguments and a traceback, results), rejected
messages. The JSON API under ``/api/`` is what the page itself uses; ``docs/web.md``
documents it with the security model (:mod:`.security`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from ..backend import Backend

__all__ = ["create_app", "wsgi_app"]


def _need_web() -> None:
    try:
        import jinja2  # noqa: F401
        import starlette  # noqa: F401
    except ImportError as exc:
        from ..errors import BackendDriverMissing

        raise BackendDriverMissing(
            f'the web dashboard needs {exc.name}; install it with: pip install "multistep[web]"'
        ) from None


def create_app(
    backend: Backend | str | None = None,
    *,
    token: str | None = None,
    poll: float = 0.5,
    title: str = "multistep",
) -> Starlette:
    """The dashboard as an ASGI application.

    ``backend``: a :class:`~multistep_core.backend.Backend`, or a backend string (connected
    here, read-only: this process never picks up another process's due jobs), or None for the
    configured one. ``token``: the secret that allows retry, cancel and delete (at least 8
    characters); None reads ``$MULTISTEP_WEB_TOKEN``, and without either the dashboard is
    read-only. ``poll``: seconds between two reads of the tasks a live page follows.
    """
    _need_web()
    from ..backend import Backend
    from ..config import connect
    from .app import build
    from .security import Auth, token_from_env

    if not isinstance(backend, Backend):
        b: Backend = connect(backend)
        b.stop_recovery()
        backend = b
    if not isinstance(poll, (int, float)) or not 0.05 <= poll <= 60:
        from ..errors import ConfigurationError

        raise ConfigurationError(f"poll must be between 0.05 and 60 seconds, not {poll!r}")
    return build(backend, Auth(token_from_env(token)), poll=float(poll), title=title)


def wsgi_app(backend: Backend | str | None = None, **options: Any) -> Any:
    """The dashboard as a WSGI application (for Flask or Django), through ``a2wsgi``:
    ``create_app(backend, **options)`` run on an event loop thread of its own. The live
    event stream holds one WSGI worker thread per open page."""
    try:
        from a2wsgi import ASGIMiddleware
    except ImportError:
        from ..errors import BackendDriverMissing

        raise BackendDriverMissing('the WSGI route needs a2wsgi; install it with: pip install "multistep[web]"') from None
    app: Any = create_app(backend, **options)  # a2wsgi's ASGI types are narrower than Starlette's
    return ASGIMiddleware(app)
