"""Every error multistep raises derives from :class:`MultistepError`.

Built-in exception types are mixed in where they help callers that already catch
them: a missing task is also a ``KeyError``, bad input is also a ``ValueError``
or ``TypeError``, a timeout is also a ``TimeoutError``.
"""

from __future__ import annotations


class MultistepError(Exception):
    """Root of every multistep exception."""


class ConfigurationError(MultistepError, ValueError):
    """The backend string or an option is not usable."""


class BackendNotFound(ConfigurationError, LookupError):
    """No backend is known under the given name.

    The message carries a "did you mean" suggestion when a known name is close.
    """


class BackendDriverMissing(ConfigurationError, ImportError):
    """A known backend's queue library is not installed; the message says what to pip install."""


class BackendConnectionError(MultistepError, ConnectionError):
    """The store or the queue could not be reached. Adapters map their driver errors to this."""


class StoreError(MultistepError, RuntimeError):
    """The store failed an operation for a reason that is not the caller's (a script the
    server refused, a row it cannot decode). The message names the store and the cause."""


class StoreLost(StoreError):
    """The store lost its data since this process connected (a Redis server restarted without
    persistence, or flushed): the tasks it held are gone and will not finish."""


class InvalidTaskId(MultistepError, ValueError):
    """A task id is empty, too long or has characters outside the allowed set."""


class TaskExists(MultistepError, ValueError):
    """A task with this id already exists; ids are never silently reused."""


class TaskNotFound(MultistepError, KeyError):
    """No task has this id (it never existed, was deleted, or its retention expired)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "task not found"


class InvalidJob(MultistepError, TypeError):
    """``add_job`` was given something that cannot become a job: an unregistered
    function, a lambda or closure, or an argument that is not JSON."""


class InvalidMessage(MultistepError, ValueError):
    """A queue message, job ref or stored spec does not decode; the message says what is wrong.
    Workers record such messages as rejected instead of raising."""


class InvalidTransition(MultistepError, RuntimeError):
    """The task's state does not allow this operation (adding to a finished task,
    retrying a task that has not failed, ...)."""


class TaskFailed(MultistepError, RuntimeError):
    """Raised by ``Task.wait(raise_on_failure=True)`` when the task ends failed or cancelled."""


class WaitTimeout(MultistepError, TimeoutError):
    """``Task.wait`` ran out of time before the task reached a terminal state."""
