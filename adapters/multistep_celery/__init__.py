"""multistep on Celery: ``pip install "multistep[celery]"``. The manual is docs/adapters/celery.md.

Features
    Every multistep message is the one JSON argument of one Celery task, ``multistep.run``
    (``acks_late``, ``reject_on_worker_lost``, no result backend, no Celery retries), on the
    Celery queue ``multistep.celery.<queue>``; counting, retries and fan-in are the core's.
    ``multistep worker -c N`` is a Celery worker with N pool slots (prefork: a dead child is
    replaced by Celery). Your own app works too: :func:`attach` or ``celery_app=``.

Backend string
    ``celery+redis://127.0.0.1:6379/0`` (also ``rediss://``; ``celery`` is the local Redis, or
    the broker of an attached app): task state in the same Redis unless ``store=`` names another.
    ``celery+amqp://guest:guest@host:5672//?store=redis://host:6379/0``: RabbitMQ needs ``store=``.

Options
    ``store``, ``prefix`` (``ms``), ``lease`` (30 s), ``celery_app``, ``queue_prefix``
    (``multistep.celery.``), ``pool`` (``prefork`` | ``threads`` | ``solo``), ``visibility_timeout``
    (10 s), ``restore_interval`` (1 s), ``heartbeat``, ``loglevel`` (``INFO``),
    ``max_tasks_per_child``, ``confirm``.
"""

from __future__ import annotations

from typing import Any

from multistep_core import kit
from multistep_core.backend import Backend
from multistep_core.errors import ConfigurationError
from multistep_core.options import redact_url

from .app import (
    APPS,
    DEFAULT_RESTORE_INTERVAL,
    DEFAULT_VISIBILITY_TIMEOUT,
    kind_of,
    load_app,
    make_app,
    require_celery,
    worker_transport_options,
)
from .queue import QUEUE_OPTIONS, CeleryQueue
from .task import TASK_NAME, _state, attach, get_backend, set_backend

__all__ = ["OPTIONS", "TASK_NAME", "CeleryQueue", "attach", "backend_from_url", "broker_url", "get_backend",
           "make_app", "set_backend"]


def _app_option(value: Any) -> Any:
    if isinstance(value, str) or (hasattr(value, "send_task") and hasattr(value, "conf")):
        return value
    raise TypeError(value)


#: Every option of a celery backend string.
OPTIONS: dict[str, kit.Option] = {
    **kit.STORE_OPTIONS,
    "celery_app": kit.Option(None, "'package.module:app' or a Celery app", _app_option, "proj.celery:app"),
    **QUEUE_OPTIONS,
    "visibility_timeout": kit.seconds(None),
    "restore_interval": kit.seconds(None),
    "heartbeat": kit.seconds(None),
    "confirm": kit.flag(False),
}
KINDS = {"redis": "redis", "rediss": "redis", "amqp": "amqp", "amqps": "amqp", "pyamqp": "amqp"}


def broker_url(url: str) -> tuple[str | None, str | None]:
    """``celery+redis://h/0`` -> ``("redis", "redis://h/0")``; bare ``celery`` -> ``(None, None)``
    (the local Redis, or the broker of ``celery_app``)."""
    found = kit.broker_url(url, "celery", KINDS, default=None)
    return (None, None) if found is None else (found.kind, found.url)


def _user_app(app: Any, burl: str | None) -> str:
    """The broker of a user's app, which the backend string may name too but not contradict."""
    app_broker = str(app.conf.broker_url or "")
    if burl is not None and app_broker and app_broker.rstrip("/") != burl.rstrip("/"):
        raise ConfigurationError(
            f"the backend string names the broker {redact_url(burl)!r} but the Celery app uses "
            f"{redact_url(app_broker)!r}; use the backend string 'celery' to take the app's broker"
        )
    if burl is not None and not app_broker:
        app.conf.broker_url = burl
    return str(app.conf.broker_url or burl or kit.DEFAULT_REDIS)


def backend_from_url(url: str = "celery", **options: Any) -> Backend:
    """Build a Celery backend from ``celery+redis://...`` or ``celery+amqp://...?store=...``."""
    opts = kit.check_options("celery", options, OPTIONS)
    require_celery()
    _kind, burl = broker_url(url)
    vt, ri = opts["visibility_timeout"], opts["restore_interval"]
    app = load_app(opts["celery_app"]) if opts["celery_app"] is not None else _state.default_app
    own = app is None
    if app is None:
        broker = burl = burl or kit.DEFAULT_REDIS
        key = (broker, vt or DEFAULT_VISIBILITY_TIMEOUT, ri or DEFAULT_RESTORE_INTERVAL, opts["heartbeat"], opts["confirm"])
        app = APPS.get(key, lambda: make_app(broker, visibility_timeout=key[1], restore_interval=key[2],
                                            heartbeat=opts["heartbeat"], confirm=opts["confirm"]))
        worker_transport: dict[str, Any] = {}
    else:
        burl = _user_app(app, burl)
        worker_transport = worker_transport_options(vt, ri) if kind_of(burl) == "redis" else {}
    kind = kind_of(burl)
    store = kit.store_url("celery", kind, burl, opts["store"])
    given = {k: v for k, v in opts.items() if k in options and options[k] is not None}
    spec_opts = {**given, "store": store, "prefix": opts["prefix"], "lease": opts["lease"]}
    if not own:
        spec_opts["celery_app"] = app
    queue = CeleryQueue(app, spec=(url, spec_opts), own_app=own, worker_transport_options=worker_transport,
                        **{k: opts[k] for k in QUEUE_OPTIONS})
    try:
        queue.probe()
        st = kit.store_from_url(store, prefix=opts["prefix"], lease=opts["lease"], probe=store != burl,
                                window=opts["window"])
    except BaseException:
        queue.close()
        raise
    return Backend(st, queue, name=f"celery+{kind}", go_on=opts["go_on"])
