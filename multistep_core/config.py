"""Choosing a backend: one string, found in a fixed order.

1. the argument to :func:`connect` (``connect("sqlite:///tasks.db")``),
2. the ``MULTISTEP_BACKEND`` environment variable,
3. ``backend = "..."`` under ``[tool.multistep]`` in the nearest ``pyproject.toml``, or at the
   top of the nearest ``multistep.toml`` (searched from the working directory upwards),
4. ``memory`` (the embedded backend).

The string is one of

* an alias: ``memory``, ``eager``, ``sqlite``, ``redis``, ``rq``, ``celery``, ``dramatiq``;
* a URL whose scheme names the backend: ``sqlite:///path/tasks.db``, ``redis://host:6379/0``,
  ``rq+redis://host:6379/0``, ``celery+amqp://guest:guest@host:5672//``,
  ``dramatiq+redis://...``; query parameters become options (``?threads=8&lease=10``);
* ``package.module:factory`` (a callable ``factory(url, **options) -> Backend``);
* the name of a third-party backend registered under the entry-point group
  ``multistep.backends``.

Other keys of the config table, and keyword arguments to :func:`connect`, are options
passed to the backend (``threads``, ``lease``, ...); an unknown option is an error.

A relative SQLite path in a config file (``backend = "sqlite:///tasks.db"``, or a ``store=``
naming one) is relative to the directory of that file, not to the working directory.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlencode, urlsplit

from .errors import BackendDriverMissing, BackendNotFound, ConfigurationError
from .options import split_options, sqlite_path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_VAR = "MULTISTEP_BACKEND"
ENTRY_POINT_GROUP = "multistep.backends"
DEFAULT_BACKEND = "memory"

#: alias -> (import string of the factory, pip extra that brings its driver, or None)
ALIASES: dict[str, tuple[str, str | None]] = {
    "memory": ("multistep_core.embedded.factory:memory_backend", None),
    "eager": ("multistep_core.embedded.factory:eager_backend", None),
    "sqlite": ("multistep_core.embedded.factory:sqlite_backend", None),
    "redis": ("multistep_core.embedded.factory:redis_backend", "redis"),
    "postgresql": ("multistep_core.postgres.factory:postgres_backend", "postgres"),
    "postgres": ("multistep_core.postgres.factory:postgres_backend", "postgres"),
    "rq": ("multistep_rq:backend_from_url", "rq"),
    "celery": ("multistep_celery:backend_from_url", "celery"),
    "dramatiq": ("multistep_dramatiq:backend_from_url", "dramatiq"),
}

Factory = Callable[..., Any]


def _find_upwards(name: str, start: Path) -> Path | None:
    for d in (start, *start.parents):
        p = d / name
        if p.is_file():
            return p
    return None


def config_from_files(cwd: Path | None = None) -> tuple[dict[str, Any], str] | None:
    """The ``[tool.multistep]`` table of the nearest pyproject.toml that has one, or the nearest
    multistep.toml, with the path it came from."""
    start = (cwd or Path.cwd()).resolve()
    for d in (start, *start.parents):
        py = d / "pyproject.toml"
        if py.is_file():
            try:
                table = tomllib.loads(py.read_text("utf-8")).get("tool", {}).get("multistep")
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigurationError(f"cannot read {py}: {exc}") from None
            if isinstance(table, dict):
                return dict(table), str(py)
        ms = d / "multistep.toml"
        if ms.is_file():
            try:
                return tomllib.loads(ms.read_text("utf-8")), str(ms)
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigurationError(f"cannot read {ms}: {exc}") from None
    return None


def resolve(backend: str | None = None, cwd: Path | None = None) -> tuple[str, dict[str, Any], str]:
    """Return ``(backend string, options from config, where it came from)``."""
    if backend:
        return backend, {}, "argument"
    env = os.environ.get(ENV_VAR)
    if env:
        return env, {}, f"${ENV_VAR}"
    found = config_from_files(cwd)
    if found is not None:
        table, path = found
        opts = dict(table)
        name = opts.pop("backend", None)
        if name is not None:
            if not isinstance(name, str):
                raise ConfigurationError(f"'backend' in {path} must be a string")
            return name, opts, path
        return DEFAULT_BACKEND, opts, path
    return DEFAULT_BACKEND, {}, "default"


def backend_name(url: str) -> str:
    """The name that selects the factory: the alias, or a URL scheme's first part."""
    if "://" in url:
        scheme = urlsplit(url).scheme
        return scheme.split("+", 1)[0]
    return url


def _entry_points() -> dict[str, metadata.EntryPoint]:
    try:
        eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
    except Exception:  # a broken distribution must not break connect()
        return {}
    return {ep.name: ep for ep in eps}


def known_names() -> list[str]:
    return sorted(set(ALIASES) | set(_entry_points()))


def _import(target: str, hint: str | None, name: str) -> Factory:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if hint is not None:
            missing = getattr(exc, "name", None) or module_name
            raise BackendDriverMissing(
                f"the {name!r} backend needs packages that are not installed ({missing}); "
                f'install them with: pip install "multistep[{hint}]"'
            ) from exc
        raise BackendNotFound(f"cannot import {module_name!r} for backend {name!r}: {exc}") from exc
    obj = module
    for part in attr.split(".") if attr else []:
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise BackendNotFound(f"{module_name!r} has no attribute {attr!r} (backend {name!r})") from None
    if not callable(obj):
        raise BackendNotFound(f"{target!r} is not callable; a backend factory takes (url, **options)")
    from_url = getattr(obj, "from_url", None)
    return from_url if callable(from_url) else obj


def load_factory(url: str) -> Factory:
    """Find the factory for a backend string, or raise a specific, helpful error."""
    name = backend_name(url)
    if name in ALIASES:
        target, hint = ALIASES[name]
        return _import(target, hint, name)
    eps = _entry_points()
    if name in eps:
        try:
            obj = eps[name].load()
        except ImportError as exc:
            raise BackendDriverMissing(f"the third-party backend {name!r} failed to import: {exc}") from exc
        from_url = getattr(obj, "from_url", None)
        return cast(Factory, from_url if callable(from_url) else obj)
    if ":" in url and "://" not in url:
        return _import(url, None, url)
    close = difflib.get_close_matches(name, known_names(), n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    raise BackendNotFound(
        f"unknown backend {name!r}{hint} Known: {', '.join(known_names())}; or give "
        "'package.module:factory', or register one under the entry-point group "
        f"{ENTRY_POINT_GROUP!r}"
    )


def _anchor_sqlite(url: Any, directory: Path) -> Any:
    """A relative SQLite path named in a config file, made absolute from the file's directory
    (``sqlite:///tasks.db`` in ``/srv/app/pyproject.toml`` is ``/srv/app/tasks.db``, whatever the
    working directory). Absolute paths, ``:memory:`` and other URLs are returned unchanged."""
    if not isinstance(url, str) or not (url == "sqlite" or url.startswith("sqlite:")):
        return url
    base, sep, query = url.partition("?")
    path = sqlite_path(base)
    if path == ":memory:" or os.path.isabs(path):
        return url
    return f"sqlite:///{(directory / path).as_posix()}{sep}{query}"


def _anchored(url: str, options: dict[str, Any], source: str) -> tuple[str, dict[str, Any]]:
    """Resolve relative SQLite paths (the backend's, and a ``store=`` option's) against the
    directory of the config file they came from."""
    if source in ("argument", f"${ENV_VAR}", "default"):
        return url, options
    directory = Path(source).parent
    base, opts = split_options(url)
    if "store" in opts:
        opts["store"] = _anchor_sqlite(opts["store"], directory)
        url = base + "?" + urlencode(opts)
    url = _anchor_sqlite(url, directory)
    if "store" in options:
        options = {**options, "store": _anchor_sqlite(options["store"], directory)}
    return url, options


def connect(backend: str | None = None, **options: Any) -> Any:
    """Build the configured backend. See the module documentation for the search order."""
    url, file_opts, source = resolve(backend)
    url, file_opts = _anchored(url, file_opts, source)
    base, url_opts = split_options(url)
    factory = load_factory(base)
    merged = {**file_opts, **url_opts, **options}
    return factory(base, **merged)
