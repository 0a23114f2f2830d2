"""The one backend of a worker process (:class:`ProcessBackend`)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from ..backend import Backend

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
