"""The Celery app: the one the adapter builds (and caches) when you bring none, or yours.

Why each setting: docs/adapters/celery.md, "Settings the adapter relies on".
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any

from multistep_core import kit
from multistep_core.errors import ConfigurationError
from multistep_core.options import redact_url

DEFAULT_QUEUE_PREFIX = "multistep.celery."
DEFAULT_VISIBILITY_TIMEOUT = 10.0
DEFAULT_RESTORE_INTERVAL = 1.0


def require_celery() -> Any:
    """The celery package, or :class:`BackendDriverMissing` with the pip line."""
    try:
        import celery
        import kombu  # noqa: F401
    except ImportError as exc:
        raise kit.driver_missing("celery", exc) from exc
    return celery


def kind_of(broker: str) -> str:
    """``redis`` or ``amqp``: the kind of a Celery broker URL."""
    scheme = broker.split("://", 1)[0].split("+")[0]
    if scheme in ("redis", "rediss", "unix", "sentinel"):
        return "redis"
    if scheme in ("amqp", "amqps", "pyamqp"):
        return "amqp"
    raise ConfigurationError(f"the multistep Celery adapter supports Redis and RabbitMQ brokers, not {redact_url(broker)!r}")


def transport_options(kind: str, visibility_timeout: float, restore_interval: float, confirm: bool = False) -> dict[str, Any]:
    """``broker_transport_options`` of the adapter's own app."""
    if kind != "redis":
        return {"confirm_publish": True} if confirm else {}
    return {
        "visibility_timeout": float(visibility_timeout),
        "unacked_restore_interval": float(restore_interval),
        "unacked_restore_throttle": 1,
        "unacked_key": "multistep.unacked",
        "unacked_index_key": "multistep.unacked_index",
        "unacked_mutex_key": "multistep.unacked_mutex",
    }


def worker_transport_options(visibility_timeout: float | None, restore_interval: float | None) -> dict[str, Any]:
    """What ``multistep worker`` changes on a user's app with a Redis broker, and only when
    ``visibility_timeout=`` or ``restore_interval=`` was given (the unacked keys stay the app's)."""
    if visibility_timeout is None and restore_interval is None:
        return {}
    opts = transport_options(
        "redis",
        DEFAULT_VISIBILITY_TIMEOUT if visibility_timeout is None else visibility_timeout,
        DEFAULT_RESTORE_INTERVAL if restore_interval is None else restore_interval,
    )
    return {k: v for k, v in opts.items() if k in ("visibility_timeout", "unacked_restore_interval", "unacked_restore_throttle")}


def make_app(broker: str, *, visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT,
             restore_interval: float = DEFAULT_RESTORE_INTERVAL, heartbeat: float | None = None,
             confirm: bool = False) -> Any:
    """The Celery app the adapter builds when you do not bring your own."""
    celery = require_celery()
    kind = kind_of(broker)
    app = celery.Celery("multistep", broker=broker, set_as_current=False)
    conf: dict[str, Any] = {
        # $CELERY_BROKER_URL would override broker_url (Celery 5.7 reads the environment first):
        # the backend string must decide, so pin the read and write URLs too.
        "broker_read_url": broker,
        "broker_write_url": broker,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "result_backend": None,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_acks_on_failure_or_timeout": True,
        "task_reject_on_worker_lost": True,
        "task_default_queue": f"{DEFAULT_QUEUE_PREFIX}default",
        "task_create_missing_queues": True,
        "task_send_sent_event": False,
        "worker_send_task_events": False,
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": True,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": transport_options(kind, visibility_timeout, restore_interval, confirm),
    }
    if kind == "redis":
        conf["worker_disable_prefetch"] = True
    if heartbeat is not None and kind == "amqp":
        conf["broker_heartbeat"] = float(heartbeat)
    app.conf.update(conf)
    return app


def load_app(target: Any) -> Any:
    """``celery_app=``: a Celery app, or ``package.module:app`` naming one."""
    if not isinstance(target, str):
        return target
    module, sep, attr = target.partition(":")
    if not sep:
        module, _, attr = target.rpartition(".")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigurationError(f"celery_app={target!r}: cannot import it ({exc}); give 'package.module:app'") from None
    if not hasattr(obj, "send_task") or not hasattr(obj, "conf"):
        raise ConfigurationError(f"celery_app={target!r} is not a Celery app")
    return obj


class AppCache:
    """The adapter's own apps, one per broker and transport settings, shared by every backend
    of the process that uses the same ones; their connections are closed with the last user."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._apps: dict[tuple[Any, ...], Any] = {}
        self._users: dict[int, int] = {}  # id(app) -> open queues using it

    def get(self, key: tuple[Any, ...], make: Callable[[], Any]) -> Any:
        with self.lock:
            app = self._apps.get(key)
            if app is None:
                app = self._apps[key] = make()
            return app

    def hold(self, app: Any) -> None:
        with self.lock:
            self._users[id(app)] = self._users.get(id(app), 0) + 1

    def release(self, app: Any) -> bool:
        """One user fewer; True when it was the last (the caller closes the connections)."""
        with self.lock:
            left = self._users.get(id(app), 1) - 1
            if left > 0:
                self._users[id(app)] = left
                return False
            self._users.pop(id(app), None)
            for key, cached in list(self._apps.items()):
                if cached is app:
                    del self._apps[key]
            return True


APPS = AppCache()


def close_connections(app: Any) -> None:
    """Close the pooled broker connections of one of the adapter's own apps."""
    from kombu import pools

    conn = app.connection_for_write()
    for group in (pools.producers, pools.connections):
        pool = group.pop(conn, None)
        if pool is not None:
            pool.force_close_all()
    app._pool = None
    app.amqp._producer_pool = None
