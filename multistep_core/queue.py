"""The queue protocol: carrying messages to workers.

A queue only transports. Every message is the small JSON text made by
:func:`~multistep_core.model.encode_message`; a worker hands each one it receives,
unchanged, to :meth:`multistep_core.runner.Runner.handle`, and acknowledges it when
``handle`` returns (``handle`` never raises for a bad message: it records it).

Required: :meth:`Queue.enqueue` (bulk), and :attr:`Queue.in_process` set right. Optional
capabilities are runtime-checkable protocols, used when present: without
:class:`SupportsWorkers` the conformance suite skips its worker-kill tests and names the
capability in the skip reason; without :class:`SupportsRawPublish` it sends its hand-made
bodies with ``enqueue``; without :class:`SupportsPurge` it relies on its fresh queue name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .runner import Runner


class Queue(ABC):
    """Transport from whoever creates work to the workers."""

    #: True when jobs run inside the process that enqueues them (embedded, eager): the backend
    #: then runs recovery in that process. False (the default) means separate worker processes,
    #: each running recovery beside its consumer (``Backend.run_worker``).
    in_process: bool = False

    @abstractmethod
    def enqueue(self, queue: str, messages: Sequence[str]) -> None:
        """Send each message to the named queue, at least once. Called with up to a few
        thousand messages at a time; send them in as few round trips as the queue allows."""

    def bind(self, runner: Runner) -> None:  # noqa: B027 - optional hook
        """Called once by the backend. In-process queues keep the runner to run jobs; queues
        served by separate worker processes ignore it (each worker builds its own)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and stop in-process workers."""


@runtime_checkable
class SupportsWorkers(Protocol):
    """The queue can run a blocking worker for ``multistep worker``."""

    def run_worker(self, modules: Sequence[str], queues: Sequence[str], concurrency: int) -> int:
        """Serve the queues until stopped (SIGTERM/SIGINT); return an exit code.
        ``modules`` are imported first (by the CLI); they register the job functions."""
        ...


@runtime_checkable
class SupportsPurge(Protocol):
    """The queue can drop every waiting message of a queue (used by tests and ``multistep``)."""

    def purge(self, queue: str) -> int: ...


@runtime_checkable
class SupportsRawPublish(Protocol):
    """The queue can publish a raw body by hand, as an operator or a bug would (tests use it
    to send duplicates and forged messages through the real transport)."""

    def publish_raw(self, queue: str, body: str) -> None: ...
