"""Backend strings and their options: ``rq+redis://h:6379/0?prefix=x`` split into the broker's
kind and URL, and every option checked against the adapter's :class:`Option` table."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, overload

from ..errors import ConfigurationError
from ..fairshare import DEFAULT_GO_ON, DEFAULT_WINDOW
from ..options import redact_url, reject_unknown

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


class BrokerURL(NamedTuple):
    kind: str  # the broker family: "redis" or "amqp"
    url: str  # the broker's own URL (the adapter prefix stripped)


_EXAMPLES = {"redis": "{a}+redis://host:6379/0", "amqp": "{a}+amqp://user:pass@host:5672/"}


@overload
def broker_url(url: str, adapter: str, kinds: Mapping[str, str], *, default: str = DEFAULT_REDIS) -> BrokerURL: ...
@overload
def broker_url(url: str, adapter: str, kinds: Mapping[str, str], *, default: None) -> BrokerURL | None: ...


def broker_url(url: str, adapter: str, kinds: Mapping[str, str], *, default: str | None = DEFAULT_REDIS) -> BrokerURL | None:
    """``rq+redis://h:6379/0`` -> ``BrokerURL("redis", "redis://h:6379/0")``. ``kinds`` maps each
    accepted URL scheme to its broker family. The bare adapter name (``rq``) is ``default``
    (``None`` when ``default`` is None: the adapter finds its broker some other way)."""
    if "://" not in url:
        if url != adapter:
            raise ConfigurationError(f"not a {adapter} backend string: {redact_url(url)!r}")
        return None if default is None else BrokerURL(kinds[default.split("://", 1)[0]], default)
    scheme, _, rest = url.partition("://")
    head, _, scheme = scheme.partition("+")
    if head != adapter or scheme not in kinds:
        forms = " or ".join(_EXAMPLES[k].format(a=adapter) for k in dict.fromkeys(kinds.values()))
        schemes = ", ".join(f"{adapter}+{s}://" for s in kinds)
        raise ConfigurationError(f"{adapter} backend strings look like {forms} ({schemes}); not {redact_url(url)!r}")
    return BrokerURL(kinds[scheme], f"{scheme}://{rest}")


@dataclass(frozen=True)
class Option:
    """One option an adapter takes: its default, what a value must be, and how it is read."""

    default: Any
    expected: str  # "a number of seconds greater than 0"
    parse: Callable[[Any], Any]  # the value to use; raises ValueError or TypeError when unusable
    example: str = ""


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(value)
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(value)
    return out


def seconds(default: float | None, *, minimum: float = 0.0, zero: bool = False) -> Option:
    """A number of seconds above ``minimum`` (``zero``: 0 is allowed too, meaning "off")."""
    def parse(value: Any) -> float:
        out = _number(value)
        if not (out > minimum or (zero and out == 0)):
            raise ValueError(value)
        return out

    what = f"a number of seconds greater than {minimum:g}" + (" (0: off)" if zero else "")
    return Option(default, what, parse, "30" if default is None else f"{default:g}")


def integer(default: int | None, *, minimum: int | None = None, maximum: int | None = None,
            also: Sequence[int] = (), what: str = "") -> Option:
    """An integer from ``minimum`` to ``maximum``, or one of ``also``."""
    def parse(value: Any) -> int:
        out = _number(value)
        if not out.is_integer():
            raise ValueError(value)
        n = int(out)
        if n not in also and ((minimum is not None and n < minimum) or (maximum is not None and n > maximum)):
            raise ValueError(value)
        return n

    span = " to ".join(str(x) for x in (minimum, maximum) if x is not None)
    bounds = f" from {span}" if minimum is not None and maximum is not None else (f" >= {minimum}" if minimum is not None else "")
    desc = what or "an integer" + bounds + "".join(f" or {x}" for x in also)
    return Option(default, desc, parse, str(default if default is not None else (minimum or 1)))


def flag(default: bool = False) -> Option:
    """``true``/``false`` (also ``1``/``0``, ``yes``/``no``, ``on``/``off``)."""
    words = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}

    def parse(value: Any) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, str)) and str(value).lower() in words:
            return words[str(value).lower()]
        raise ValueError(value)

    return Option(default, "true or false", parse, "true")


def text(default: str | None, *, empty: bool = True, what: str = "a string", example: str = "") -> Option:
    """A string (numbers written in a query string, ``?prefix=7``, are taken as their text)."""
    def parse(value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise TypeError(value)
        out = str(value)
        if not out and not empty:
            raise ValueError(value)
        return out

    return Option(default, what + ("" if empty else " (not empty)"), parse, example or default or "x")


def choice(default: str, *values: str) -> Option:
    def parse(value: Any) -> str:
        if value not in values:
            raise ValueError(value)
        return str(value)

    return Option(default, "one of " + ", ".join(values), parse, default)


def log_level(default: str = "INFO") -> Option:
    levels = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

    def parse(value: Any) -> str:
        if not isinstance(value, str) or value.upper() not in levels:
            raise ValueError(value)
        return value.upper()

    return Option(default, "a log level: " + ", ".join(levels), parse, default)


#: Tickets per queue in the broker, at most (docs/fairness.md): clients and workers of a queue
#: give the same value.
WINDOW = integer(DEFAULT_WINDOW, minimum=2, maximum=1_000_000)
#: Jobs a worker goes on to after a ticket's job, without a ticket (0: one job per ticket); a
#: worker's own setting (docs/fairness.md, "Going on").
GO_ON = integer(DEFAULT_GO_ON, minimum=0, maximum=100_000)
#: The options every adapter takes: where task state lives, its key prefix, the lease, the
#: window, how far a worker goes on.
STORE_OPTIONS: dict[str, Option] = {
    "store": text(None, empty=False, what="a store URL", example="redis://127.0.0.1:6379/0"),
    "prefix": text("ms", empty=False, what="a key prefix"),
    "lease": seconds(30.0),
    "window": WINDOW,
    "go_on": GO_ON,
}


def check_options(adapter: str, given: Mapping[str, Any], table: Mapping[str, Option]) -> dict[str, Any]:
    """Every option of ``table`` with its value: the given one, checked, or the default (also for
    a given ``None``). Unknown names and unusable values raise :class:`ConfigurationError`."""
    reject_unknown(dict(given), set(table), adapter)
    out: dict[str, Any] = {}
    for name, opt in table.items():
        value = given.get(name)
        if value is None:
            out[name] = opt.default
            continue
        try:
            out[name] = opt.parse(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigurationError(
                f"the {adapter} option {name}={value!r} ({type(value).__name__}) must be {opt.expected}, "
                f"e.g. {name}={opt.example}"
            ) from None
    return out
