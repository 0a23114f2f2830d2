"""A store that keeps connections per process: after ``fork`` (RQ's work horse, a prefork pool)
the child must open its own and never use, nor close, the parent's."""

from __future__ import annotations

import os
import weakref
from typing import Protocol


class ForgetsConnections(Protocol):
    def _forget_connections(self) -> None: ...


def forget_connections_in_children(store: ForgetsConnections) -> None:
    """Call ``store._forget_connections()`` in every child this process forks from now on."""
    if not hasattr(os, "register_at_fork"):
        return
    ref = weakref.ref(store)

    def after_fork_in_child() -> None:
        s = ref()
        if s is not None:
            s._forget_connections()

    os.register_at_fork(after_in_child=after_fork_in_child)
