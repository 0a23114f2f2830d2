"""Two changes to kombu/py-amqp internals on the publish path, and why.

Both only touch objects the adapter holds exclusively (a producer taken from the app's pool
for one chunk of messages), both check that the internal they rely on exists and do nothing
otherwise, so another kombu or py-amqp keeps working, only slower. Written and tested against
kombu 5.7.0 and py-amqp 5.4.2 (the versions pinned by the test environment); check the three
internals named below when upgrading.

* :func:`reuse_redis_client` (kombu's Redis transport): ``Channel.conn_or_acquire()`` builds a
  new ``redis.Redis`` object from ``Channel._create_client()`` for every publish (and every
  publish batch), about half of the cost of a single message.
* :func:`coalesced_writes` (py-amqp): ``Transport.write`` sends each frame with its own
  ``sendall`` (``Transport._write``); the frames of a chunk of publishes go out in one.

:func:`batch_errors` is kombu 5.7's ``BatchPublishError`` (what ``Producer.batch`` raises when a
flush fails), or nothing on older kombu, which has no ``Producer.batch``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def batch_errors() -> tuple[type[BaseException], ...]:
    try:
        from kombu.exceptions import BatchPublishError  # kombu >= 5.7
    except ImportError:  # pragma: no cover
        return ()
    return (BatchPublishError,)


def reuse_redis_client(channel: Any) -> None:
    """Give a producer's Redis channel one client (on the same connection pool) for all its
    publishes. A producer's channel is used by one thread at a time: the producer is held
    exclusively while it publishes."""
    if channel.__dict__.get("_multistep_client") is not None or not hasattr(channel, "_create_client"):
        return
    client = channel._create_client()

    @contextlib.contextmanager
    def conn_or_acquire(client_: Any = None) -> Iterator[Any]:
        yield client_ or client

    channel.conn_or_acquire = conn_or_acquire
    channel._multistep_client = client


@contextlib.contextmanager
def coalesced_writes(channel: Any) -> Iterator[None]:
    """Collect the frames py-amqp writes inside the block and send them with one ``sendall``
    at its end (the producer holds its connection exclusively, and nothing in a chunk of
    publishes waits for a reply). Frames are copied: py-amqp hands over a view of a buffer it
    reuses. Without the internal (another transport, another py-amqp), writes go as usual."""
    transport: Any = getattr(getattr(channel, "connection", None), "transport", None)
    write = vars(transport).get("_write") if transport is not None else None
    if transport is None or write is None or not callable(write):
        yield
        return
    frames: list[bytes] = []
    transport._write = lambda data: frames.append(bytes(data))
    try:
        yield
    finally:
        transport._write = write
        if frames:
            transport.write(b"".join(frames))
