"""The connect-time check of a Redis server: reachable (short timeouts), and not configured to
evict keys (an evicted key is a lost task or message). redis-py is imported only when called."""

from __future__ import annotations

import warnings
from typing import Any

from ..errors import ConfigurationError
from ..options import redact_url
from .connect import PROBE_TIMEOUT, reaching


def redis_errors() -> tuple[type[BaseException], ...]:
    """redis-py's connection errors (authentication errors included)."""
    import redis

    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


class EvictionWarning(UserWarning):
    """A Redis server multistep uses may evict keys when it is full."""


def warn_if_evicting(client: Any, where: str) -> None:
    """Warn when the Redis server of ``client`` has a ``maxmemory-policy`` other than
    ``noeviction`` (nothing is checked where CONFIG is not allowed)."""
    import redis

    try:
        raw = client.config_get("maxmemory-policy")
    except redis.exceptions.ResponseError:  # CONFIG renamed or forbidden (managed Redis)
        return
    policy = {(k.decode() if isinstance(k, bytes) else k): v for k, v in dict(raw).items()}.get("maxmemory-policy")
    policy = policy.decode() if isinstance(policy, bytes) else policy
    if policy and policy != "noeviction":
        warnings.warn(EvictionWarning(
            f"Redis at {redact_url(where)} has maxmemory-policy {policy}: when it reaches maxmemory it evicts "
            "keys, and an evicted key is a lost task, job or message. Set maxmemory-policy to noeviction "
            "(CONFIG SET maxmemory-policy noeviction, and in redis.conf) so that a full Redis refuses writes instead"
        ), stacklevel=3)


def probe_redis(url: str, what: str) -> None:
    """Connect to the Redis at ``url`` once with short timeouts: raise
    :class:`BackendConnectionError` if it cannot be reached, warn if it may evict keys."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=PROBE_TIMEOUT, socket_timeout=PROBE_TIMEOUT)
    except ValueError as exc:
        raise ConfigurationError(f"bad Redis URL {redact_url(url)!r} for {what}: {exc}") from None
    try:
        with reaching(what, url, redis_errors()):
            client.ping()
            warn_if_evicting(client, url)
    finally:
        client.close()
