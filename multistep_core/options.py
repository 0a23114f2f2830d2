"""Option and URL helpers: the leaf every layer may import (stores, queues, adapters, config).

Nothing here imports another multistep module but :mod:`multistep_core.errors`, so a store or
an adapter can use these without pulling in the backend or the configuration layer.
"""

from __future__ import annotations

import difflib
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from .errors import ConfigurationError


def _coerce(value: str) -> Any:
    low = value.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def split_options(url: str) -> tuple[str, dict[str, Any]]:
    """Strip the query string off a backend URL and return it as options."""
    if "?" not in url:
        return url, {}
    base, _, query = url.partition("?")
    return base, {k: _coerce(v) for k, v in parse_qsl(query, keep_blank_values=True)}


def reject_unknown(options: dict[str, Any], known: set[str], backend: str) -> None:
    """Raise :class:`ConfigurationError` naming any option the backend does not take."""
    unknown = sorted(set(options) - known)
    if unknown:
        close = {u: difflib.get_close_matches(u, sorted(known), n=1) for u in unknown}
        parts = [f"{u!r}" + (f" (did you mean {c[0]!r}?)" if c else "") for u, c in close.items()]
        raise ConfigurationError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(parts)} for the {backend} backend; "
            f"it takes: {', '.join(sorted(known)) or 'no options'}"
        )


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for messages and logs."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def sqlite_path(url: str) -> str:
    """``sqlite:///rel.db`` → ``rel.db``; ``sqlite:////abs.db`` → ``/abs.db``; ``sqlite`` or
    ``sqlite://`` → ``multistep.db``; ``sqlite:///:memory:`` → ``:memory:``. ``sqlite://rel.db``
    (two slashes: a host, no path) raises :class:`ConfigurationError` showing the right form."""
    if "://" not in url:
        return "multistep.db"
    parts = urlsplit(url)
    if parts.netloc:  # sqlite://tasks.db: "tasks.db" is the URL's host, not a path
        raise ConfigurationError(
            f"{url!r} names no file: with two slashes, {parts.netloc!r} is read as a host. A SQLite path "
            f"takes three slashes: sqlite:///{parts.netloc}{parts.path} (relative to the working directory) "
            "or four for an absolute path: sqlite:////var/lib/tasks.db"
        )
    path = parts.path
    if path.startswith("/"):
        path = path[1:]
    return path or "multistep.db"
