"""Reading a ``redis+cluster://`` URL: the nodes, the credentials and the store's own options
(a leaf of :mod:`multistep_core.redis.cluster`)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, unquote

from ..errors import ConfigurationError
from ..options import redact_url

SCHEME = "redis+cluster"
DEFAULT_CLUSTER_URL = "redis+cluster://127.0.0.1:7000/"
#: options a ``redis+cluster://`` URL takes in its query
URL_OPTIONS = ("wait", "wait_timeout", "retry_for")


def _int_option(name: str, value: Any, low: int, what: str) -> int:
    try:
        v = int(str(value))
    except ValueError:
        v = low - 1
    if v < low:
        raise ConfigurationError(f"{name}={value!r} for the Redis Cluster store: it must be {what}")
    return v


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], dict[str, str], str | None, str | None]:
    """``redis+cluster://[user:password@]host:port[,host:port...][/][?options]`` → the nodes,
    the options of its query, the user name and the password. Raise :class:`ConfigurationError`
    saying what is wrong and what a good URL looks like."""
    example = "redis+cluster://127.0.0.1:7000,127.0.0.1:7001/"
    # the query parser of a backend string reads '+' as a space: 'redis cluster://' is the same URL
    if url.startswith("redis cluster://"):
        url = SCHEME + url[len("redis cluster"):]
    if not url.startswith(SCHEME + "://"):
        raise ConfigurationError(f"a Redis Cluster URL starts with {SCHEME}://, e.g. {example}; not {redact_url(url)!r}")
    rest = url[len(SCHEME) + 3:]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    if path.strip("/") not in ("", "0"):
        raise ConfigurationError(
            f"a Redis Cluster has database 0 only; remove /{path} from {redact_url(url)!r} (e.g. {example})"
        )
    user = password = None
    if "@" in netloc:
        auth, _, netloc = netloc.rpartition("@")
        if ":" in auth:
            u, _, p = auth.partition(":")
            user, password = (unquote(u) or None), unquote(p)
        else:
            password = unquote(auth)
    nodes: list[tuple[str, int]] = []
    for part in netloc.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not part.strip():
            continue
        if not sep:
            host, port = part.strip(), "6379"
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigurationError(
                f"{part!r} in {redact_url(url)!r} is not host:port; list one or more nodes of the cluster, e.g. {example}"
            )
        nodes.append((host.strip("[]"), int(port)))
    if not nodes:
        raise ConfigurationError(f"{redact_url(url)!r} names no node; list one or more nodes of the cluster, e.g. {example}")
    opts = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(opts) - set(URL_OPTIONS))
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) {', '.join(map(repr, unknown))} in the Redis Cluster URL {redact_url(url)!r}; "
            f"it takes: {', '.join(URL_OPTIONS)}"
        )
    return nodes, opts, user, password
