"""Job functions and their registry.

Workers run only functions registered with :func:`job`. A job is stored as the
function's registered name plus JSON arguments; a worker looks the name up in its
own registry and never imports anything a message or a stored spec names.

    from multistep_core import job

    @job
    def reindex(post_id: int) -> None: ...

    @job(name="blog.commit")          # a stable name that survives moving the code
    def commit_index() -> None: ...
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, overload

from .errors import InvalidJob
from .model import JobSpec

F = TypeVar("F", bound=Callable[..., Any])

_lock = threading.Lock()
_registry: dict[str, Callable[..., Any]] = {}
_ATTR = "__multistep_name__"
_RETRIES_ATTR = "__multistep_retries__"


def _default_name(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}:{fn.__qualname__}"


def _check_plain_function(fn: Any) -> None:
    if not callable(fn):
        raise InvalidJob(f"{fn!r} is not callable")
    qualname = getattr(fn, "__qualname__", "")
    name = getattr(fn, "__name__", "")
    if name == "<lambda>":
        raise InvalidJob(
            "a lambda cannot be a job: workers in other processes cannot find it. "
            "Define a module-level function and decorate it with @job"
        )
    if "<locals>" in qualname:
        raise InvalidJob(
            f"{qualname} is a nested function or closure: workers in other processes cannot "
            "find it. Define it at module level and decorate it with @job"
        )
    if not hasattr(fn, "__module__") or not qualname:
        raise InvalidJob(f"{fn!r} has no importable name; use a module-level function")


@overload
def job(fn: F) -> F: ...
@overload
def job(*, name: str | None = None, retries: int | None = None) -> Callable[[F], F]: ...


def job(fn: Any = None, *, name: str | None = None, retries: int | None = None) -> Any:
    """Register a module-level function as a job (or finalizer, or failure callback).

    ``retries`` overrides the task's ``max_retries`` for this function. Registration
    happens at import time, so a worker must import the modules that define its jobs
    (``multistep worker myapp.jobs``).
    """
    if retries is not None and (not isinstance(retries, int) or isinstance(retries, bool) or retries < 0):
        raise InvalidJob(f"retries must be a non-negative integer, not {retries!r}")

    def register(f: F) -> F:
        _check_plain_function(f)
        key = name or _default_name(f)
        with _lock:
            other = _registry.get(key)
            if other is not None and other is not f and _default_name(other) != _default_name(f):
                raise InvalidJob(f"job name {key!r} is already registered to {_default_name(other)}")
            _registry[key] = f
        setattr(f, _ATTR, key)
        if retries is not None:
            setattr(f, _RETRIES_ATTR, retries)
        return f

    if fn is None:
        return register
    return register(fn)


def lookup(name: str) -> Callable[..., Any] | None:
    """The function registered under ``name`` in this process, or None."""
    with _lock:
        return _registry.get(name)


def registered_names() -> list[str]:
    with _lock:
        return sorted(_registry)


def name_of(fn: Any) -> str:
    """The registered name of ``fn``; raise :class:`InvalidJob` if it is not a registered job."""
    if isinstance(fn, str):
        if lookup(fn) is None:
            raise InvalidJob(f"no job is registered under the name {fn!r}; decorate the function with @job")
        return fn
    _check_plain_function(fn)
    key = getattr(fn, _ATTR, None)
    if key is None or lookup(key) is not fn:
        raise InvalidJob(
            f"{_default_name(fn)} is not a registered job; decorate it with @multistep_core.job "
            "so that workers may run it"
        )
    return str(key)


_JSON_SCALARS = (str, bool, type(None))


def check_json(value: Any, where: str) -> None:
    """Raise :class:`InvalidJob` naming ``where`` if ``value`` does not survive JSON unchanged.

    Accepted: dict with string keys, list, tuple (arrives as a list), str, int, float
    (finite), bool, None.
    """
    if isinstance(value, _JSON_SCALARS):
        return
    if isinstance(value, int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidJob(f"{where} is {value!r}, which JSON cannot represent")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_json(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                raise InvalidJob(f"{where} has a key {k!r} of type {type(k).__name__}; JSON keys are strings")
            check_json(item, f"{where}[{k!r}]")
        return
    if callable(value):
        raise InvalidJob(
            f"{where} is a function ({getattr(value, '__qualname__', value)!r}); arguments must be "
            "JSON data. Pass data and let the job call the function"
        )
    raise InvalidJob(
        f"{where} is of type {type(value).__name__}, which is not JSON "
        "(use dict, list, str, int, float, bool or None)"
    )


def make_spec(
    fn: Any, args: Sequence[Any], kwargs: Mapping[str, Any], retries: int | None = None
) -> JobSpec:
    """Validate a call and turn it into a :class:`JobSpec`, or raise :class:`InvalidJob`."""
    name = name_of(fn)
    for i, a in enumerate(args):
        check_json(a, f"argument {i} of {name}")
    for k, v in kwargs.items():
        check_json(v, f"argument {k!r} of {name}")
    if retries is not None and (not isinstance(retries, int) or isinstance(retries, bool) or retries < 0):
        raise InvalidJob(f"retries for {name} must be a non-negative integer, not {retries!r}")
    spec = JobSpec(fn=name, args=json.loads(json.dumps(list(args))), kwargs=dict(kwargs), retries=retries)
    return spec
