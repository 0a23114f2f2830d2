"""Connection errors: a queue library that is not installed, and a driver's connection errors
turned into :class:`~multistep_core.errors.BackendConnectionError` naming what could not be
reached, where (password redacted) and why."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import BackendConnectionError, BackendDriverMissing
from ..options import redact_url

PROBE_TIMEOUT = 3.0  # seconds: connect-time checks of a broker or store


def driver_missing(adapter: str, exc: ImportError, extra: str | None = None) -> BackendDriverMissing:
    """The error for a queue library that is not installed, with the pip line that installs it."""
    return BackendDriverMissing(
        f"the {adapter!r} backend needs packages that are not installed ({exc.name or adapter}); "
        f'install them with: pip install "multistep[{extra or adapter}]"'
    )

def reason(exc: BaseException) -> str:
    """``Type: message`` of a driver error, also when its message is empty (pika's errors
    carry the cause in their arguments)."""
    seen: BaseException | None = exc
    for _ in range(5):  # the error, then what it was raised from
        if seen is None:
            break
        msg = str(seen).strip() or "; ".join(str(a).strip() or repr(a) for a in seen.args)
        if msg:
            return f"{type(exc).__name__}: {msg}" if seen is exc else f"{type(exc).__name__} ({type(seen).__name__}: {msg})"
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__


@contextmanager
def reaching(what: str, url: str, errors: tuple[type[BaseException], ...]) -> Iterator[None]:
    """Turn ``errors`` raised inside the block into :class:`BackendConnectionError`:
    ``cannot reach <what> at <url, password redacted>: <reason>``."""
    try:
        yield
    except errors as exc:
        raise BackendConnectionError(f"cannot reach {what} at {redact_url(url)}: {reason(exc)}") from None
