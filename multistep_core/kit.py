"""The adapter kit: what every queue adapter needs besides its queue library.

A queue adapter (``multistep_rq``, ``multistep_celery``, ``multistep_dramatiq``, or a third
party's) builds a :class:`~multistep_core.backend.Backend` from a store and a
:class:`~multistep_core.queue.Queue`. The parts the adapters share live here, so that each
adapter is only its transport. Nothing here imports a queue library (redis-py is imported
only by the functions that talk to Redis).

Backend strings and options
    * :func:`broker_url` splits ``rq+redis://h:6379/0`` into the broker's kind and URL, with an
      error that shows the right form.
    * :func:`check_options` checks every option against the adapter's :class:`Option` table:
      an unknown name gets a "did you mean" and the list of every option the backend takes; a
      bad value a :class:`ConfigurationError` naming option, value and expected type.
      :func:`seconds`, :func:`integer`, :func:`flag`, :func:`text`, :func:`choice`,
      :func:`log_level` build the entries; :data:`STORE_OPTIONS` are the three every adapter takes.
    * :func:`store_url` is the store of a backend (``store=``, else the broker's Redis; required
      for other brokers), :func:`store_from_url` builds it.
    * :func:`driver_missing` is the error for a queue library that is not installed.

Connections
    * :func:`reaching` turns the driver's connection errors into :class:`BackendConnectionError`
      naming what could not be reached, where (password redacted) and why.
    * :func:`probe_redis` is the quick connect-time check of a Redis server (short timeouts), and
      :func:`warn_if_evicting` warns (:class:`EvictionWarning`) when its ``maxmemory-policy``
      may evict keys: an evicted key is a lost task or message.

Worker processes
    * :class:`ProcessBackend`: the one backend of a worker process, built once from a spec
      (handed to child processes in an environment variable).
    * :class:`Supervisor`: ``multistep worker -c N`` running N worker processes: forwards
      SIGTERM/SIGINT, replaces a dead one (with backoff) and keeps serving, returns an exit code.
    * :func:`watch_parent`: a worker process stops when its supervisor is gone.
    * :class:`GracefulStop`: SIGTERM/SIGINT handling for a worker process that runs its queue
      library's consumer itself (the same signal twice within 2 s is one stop).

A third-party adapter's factory, with the kit::

    from multistep_core import Backend
    from multistep_core import kit

    OPTIONS = {**kit.STORE_OPTIONS, "prefetch": kit.integer(10, minimum=1)}

    def backend_from_url(url: str = "mine", **options) -> Backend:
        opts = kit.check_options("mine", options, OPTIONS)
        kind, broker = kit.broker_url(url, "mine", {"redis": "redis", "rediss": "redis"})
        kit.probe_redis(broker, "the mine broker")
        store = kit.store_url("mine", kind, broker, opts["store"])
        queue = MyQueue(broker, prefetch=opts["prefetch"])
        return Backend(kit.store_from_url(store, prefix=opts["prefix"], lease=opts["lease"]), queue, name=f"mine+{kind}")
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, overload

from .errors import BackendConnectionError, BackendDriverMissing, ConfigurationError
from .options import redact_url, reject_unknown, sqlite_path

if TYPE_CHECKING:
    from .backend import Backend

log = logging.getLogger("multistep.worker")

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
#: Environment variable a :class:`Supervisor` sets in its children: its own pid.
SUPERVISOR_ENV = "MULTISTEP_SUPERVISOR"
PROBE_TIMEOUT = 3.0  # seconds: connect-time checks of a broker or store


# -- backend strings and options -----------------------------------------------------------
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


def driver_missing(adapter: str, exc: ImportError, extra: str | None = None) -> BackendDriverMissing:
    """The error for a queue library that is not installed, with the pip line that installs it."""
    return BackendDriverMissing(
        f"the {adapter!r} backend needs packages that are not installed ({exc.name or adapter}); "
        f'install them with: pip install "multistep[{extra or adapter}]"'
    )


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


#: The options every adapter takes: where task state lives, its key prefix, the lease.
STORE_OPTIONS: dict[str, Option] = {
    "store": text(None, empty=False, what="a store URL", example="redis://127.0.0.1:6379/0"),
    "prefix": text("ms", empty=False, what="a key prefix"),
    "lease": seconds(30.0),
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


def store_url(adapter: str, kind: str, broker: str, store: str | None) -> str:
    """The store of a backend: ``store=``, else (a Redis broker) the broker's own Redis. Task
    state is never put silently on some other server: other brokers need ``store=`` (or
    ``$MULTISTEP_STORE``)."""
    if store:
        return store
    if kind == "redis":
        return broker
    env = os.environ.get("MULTISTEP_STORE")
    if env:
        return env
    host = redact_url(broker).split("@")[-1].split("/")[0].split(":")[0] or "host"
    raise ConfigurationError(
        f"the {adapter}+{kind} backend needs a store for its task state: add store= to the backend string, "
        f"e.g. {adapter}+{redact_url(broker)}?store=redis://{host}:6379/0 (or store=sqlite:///tasks.db), "
        "or set $MULTISTEP_STORE"
    )


def store_from_url(store_url: str, *, prefix: str, lease: float, probe: bool = True) -> Any:
    """The store a ``store=`` option names: ``redis://``, ``rediss://``, ``unix://`` (the Redis
    store; checked with :func:`probe_redis` first unless ``probe`` is false, e.g. because it is
    the broker's Redis, checked already), ``sqlite:///path`` (the SQLite store) or
    ``postgresql://`` (the PostgreSQL store; checked as it connects)."""
    if store_url.startswith(("redis://", "rediss://", "unix://")):
        try:
            from .redis import RedisStore
        except ImportError as exc:  # pragma: no cover - redis comes with every adapter's extra
            raise BackendDriverMissing(f'the Redis store needs redis-py: pip install "multistep[redis]" ({exc})') from exc
        if probe:
            probe_redis(store_url, "the Redis store")
        return RedisStore(store_url, prefix=prefix, lease=lease)
    if store_url.startswith("sqlite:"):
        from .embedded.sqlite import SQLiteStore

        return SQLiteStore(sqlite_path(store_url), lease=lease)
    if store_url.startswith(("postgresql://", "postgres://")):
        try:
            from .postgres import PostgresStore
        except ImportError as exc:
            raise BackendDriverMissing(
                f'the PostgreSQL store needs psycopg 3: pip install "multistep[postgres]" ({exc})'
            ) from exc
        return PostgresStore(store_url, prefix=prefix, lease=lease)
    raise ConfigurationError(
        f"store must be a redis://, sqlite:/// or postgresql:// URL, not {redact_url(store_url)!r}"
    )


# -- connections ---------------------------------------------------------------------------
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


# -- worker processes ----------------------------------------------------------------------
class ProcessBackend:
    """The one backend of a worker process, built once, the first time a job needs it.

    Its spec comes from :attr:`spec` (set in this process) or from the JSON in the environment
    variable ``env_var`` (set by :meth:`environ` for a child process); ``build(spec)`` makes the
    backend; without any spec ``fallback()`` does (or a :class:`ConfigurationError` saying
    ``hint``). A forked child builds its own (``rebuild_after_fork``) or keeps using the one it
    inherited (RQ's work horse: one job, then it exits)."""

    def __init__(self, env_var: str | None, build: Callable[[Any], Backend], *, hint: str,
                 fallback: Callable[[], Backend] | None = None, rebuild_after_fork: bool = True) -> None:
        self.env_var = env_var
        self.spec: Any = None
        self._build = build
        self._fallback = fallback
        self._hint = hint
        self.rebuild_after_fork = rebuild_after_fork
        self._backend: Backend | None = None
        self._pid: int | None = None
        self._lock = threading.RLock()
        if hasattr(os, "register_at_fork"):  # a lock held by another thread at fork() stays held
            os.register_at_fork(after_in_child=self._new_lock)

    def _new_lock(self) -> None:
        self._lock = threading.RLock()

    @property
    def built_in(self) -> int | None:
        """The pid of the process that built (or set) the current backend."""
        return self._pid

    def environ(self, spec: Any) -> dict[str, str]:
        """The environment entry that hands ``spec`` (JSON) to a child process."""
        if self.env_var is None:
            raise ConfigurationError("this process backend has no environment variable to hand a spec over")
        return {self.env_var: json.dumps(spec)}

    def env_spec(self) -> Any:
        """The spec in the environment, or None."""
        raw = os.environ.get(self.env_var) if self.env_var else None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise ConfigurationError(f"${self.env_var} is not JSON: {raw[:80]!r}") from None

    def set(self, backend: Backend | None) -> None:
        """Make ``backend`` this process's (None: build one again at the next :meth:`get`)."""
        with self._lock:
            self._backend, self._pid = backend, (None if backend is None else os.getpid())

    def get(self) -> Backend:
        b = self._backend
        if b is not None and (self._pid == os.getpid() or not self.rebuild_after_fork):
            return b
        with self._lock:
            b = self._backend
            if b is not None and (self._pid == os.getpid() or not self.rebuild_after_fork):
                return b
            spec = self.spec if self.spec is not None else self.env_spec()
            if spec is not None:
                b = self._build(spec)
            elif self._fallback is not None:
                b = self._fallback()
            else:
                raise ConfigurationError(self._hint)
            self._backend, self._pid = b, os.getpid()
            return b

    def close(self) -> None:
        """Close the backend if this process built it."""
        with self._lock:
            b, mine = self._backend, self._pid == os.getpid()
            self._backend = self._pid = None
        if b is not None and mine:
            b.close()


def _terminate_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def watch_parent(pid: int | None = None, *, interval: float = 1.0,
                 on_gone: Callable[[], None] = _terminate_self) -> threading.Thread | None:
    """In a worker process: call ``on_gone`` (default: SIGTERM to this process, a graceful
    stop) once the process ``pid`` (default: ``$MULTISTEP_SUPERVISOR``) is gone, e.g. after it
    alone was SIGKILLed, instead of serving on as an orphan. Checks every ``interval`` s."""
    if pid is None:
        pid = int(os.environ.get(SUPERVISOR_ENV) or 0)
    if pid <= 0:
        return None
    direct = os.getppid() == pid  # our parent: reparenting is the sign (immune to pid reuse)

    def gone() -> bool:
        if direct:
            return os.getppid() != pid
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # pragma: no cover - the pid now belongs to another user
            return True
        return False

    def loop() -> None:
        while not gone():
            time.sleep(interval)
        log.warning("the supervising process %d is gone; stopping process %d", pid, os.getpid())
        on_gone()

    thread = threading.Thread(target=loop, name="multistep-parent-watch", daemon=True)
    thread.start()
    return thread


class GracefulStop:
    """SIGTERM/SIGINT for a worker process that runs its queue library's consumer itself: the
    first signal requests a graceful stop (:attr:`requested`); the same signal again within
    ``window`` seconds is the same stop (``kill -TERM -<pgid>`` reaches a child directly and
    again through its supervisor); a later one calls ``on_second`` (default: exit 1 now,
    abandoning running jobs; the core's lease brings them back)."""

    def __init__(self, window: float = 2.0, on_second: Callable[[], None] | None = None) -> None:
        self.window = window
        self.requested = threading.Event()
        self._first = 0.0
        self._on_second = on_second

    def install(self) -> GracefulStop:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        now = time.monotonic()
        if not self.requested.is_set():
            self._first = now
            self.requested.set()
            log.info("process %d: stopping gracefully (running jobs finish)", os.getpid())
        elif now - self._first >= self.window:
            log.warning("process %d: second stop signal; exiting now", os.getpid())
            if self._on_second is not None:
                self._on_second()
            else:
                raise SystemExit(1)

    def wait(self) -> None:
        while not self.requested.wait(0.5):
            pass


@dataclass
class _Slot:
    proc: subprocess.Popen[bytes] | None
    started: float
    delay: float = 0.0
    restart_at: float | None = None
    signalled: bool = False


class Supervisor:
    """Keep ``n`` processes running ``cmd`` (``multistep worker -c N``).

    SIGTERM/SIGINT to the supervisor is forwarded to every child (a second one too: the
    children decide what a second signal means) and :meth:`run` returns once all have exited,
    with the highest positive exit code (0 if none). A child that dies while no stop was asked
    for is replaced: 0.2 s later if it had run for ``stable`` seconds, else after a delay that
    doubles from 1 s up to ``max_delay`` while replacements keep dying young. Children find the
    supervisor's pid in ``$MULTISTEP_SUPERVISOR`` and should call :func:`watch_parent`, so they
    stop when the supervisor is killed alone."""

    def __init__(self, cmd: Sequence[str], n: int, *, env: Mapping[str, str] | None = None, what: str = "worker process",
                 stable: float = 30.0, max_delay: float = 30.0, poll: float = 0.1) -> None:
        if n < 1:
            raise ConfigurationError(f"a supervisor needs at least one process, not {n}")
        self.cmd = list(cmd)
        self.n = n
        self.env = dict(os.environ if env is None else env)
        self.what = what
        self.stable, self.max_delay, self.poll = stable, max_delay, poll
        self.slots: list[_Slot] = []
        self.stopping = 0  # the signal that asked for the stop

    def pids(self) -> list[int]:
        return [s.proc.pid for s in self.slots if s.proc is not None and s.proc.poll() is None]

    def _spawn(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(self.cmd, env={**self.env, SUPERVISOR_ENV: str(os.getpid())})
        log.info("started %s %d", self.what, proc.pid)
        return proc

    def _forward(self, signum: int, frame: Any = None, *, only_new: bool = False) -> None:
        self.stopping = signum
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None and not (only_new and slot.signalled):
                slot.signalled = True
                try:
                    slot.proc.send_signal(signum)
                except ProcessLookupError:  # pragma: no cover - exited meanwhile
                    pass

    def _tend(self, slot: _Slot, now: float) -> None:
        if slot.restart_at is not None:
            if now >= slot.restart_at and not self.stopping:
                slot.proc, slot.started, slot.restart_at, slot.signalled = self._spawn(), now, None, False
            return
        code = None if slot.proc is None else slot.proc.poll()
        if code is None or self.stopping:
            return
        young = now - slot.started < self.stable
        slot.delay = min(max(slot.delay * 2, 1.0), self.max_delay) if young else 0.0
        slot.restart_at = now + (slot.delay or 0.2)
        log.warning("%s %d exited with code %s; starting another in %.1f s",
                    self.what, slot.proc.pid if slot.proc else 0, code, slot.delay or 0.2)
        slot.proc = None

    def run(self) -> int:
        old = {s: signal.signal(s, self._forward) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for _ in range(self.n):
                if not self.stopping:
                    self.slots.append(_Slot(self._spawn(), time.monotonic()))
            while not self.stopping:
                now = time.monotonic()
                for slot in self.slots:
                    self._tend(slot, now)
                time.sleep(self.poll)
            self._forward(self.stopping, only_new=True)  # a child started while the signal arrived
            codes = [s.proc.wait() for s in self.slots if s.proc is not None]
            return max((c for c in codes if c > 0), default=0)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            for slot in self.slots:
                if slot.proc is not None and slot.proc.poll() is None:  # pragma: no cover - an error above
                    slot.proc.kill()
