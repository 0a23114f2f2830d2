"""The data of a multi-step task: states, job references, options, snapshots, messages.

Everything here is plain data that crosses process boundaries as JSON. A *ref* names
one job inside its task: ``j7`` is the eighth job, ``f0`` the first finalizer, ``x0``
the failure callback. Counting, retries and failure records are keyed by ref, never
by delivery.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from .errors import InvalidMessage, InvalidTaskId


class TaskState(str, Enum):
    OPEN = "open"
    RUNNING = "running"
    FINALIZING = "finalizing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED)

    def __str__(self) -> str:
        return self.value


class JobState(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    RETRY_WAIT = "retry_wait"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


class Policy(str, Enum):
    FAIL = "fail"
    CONTINUE = "continue"
    FAIL_FAST = "fail_fast"

    def __str__(self) -> str:
        return self.value


JOB = "j"
FINALIZER = "f"
CALLBACK = "x"
_REF_RE = re.compile(r"^([jfx])(0|[1-9][0-9]{0,9})$")
_TASK_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,127}$")
MAX_TASK_ID = 128


def validate_task_id(task_id: object) -> str:
    """Return ``task_id`` if it is a valid id, else raise :class:`InvalidTaskId` saying why."""
    if not isinstance(task_id, str):
        raise InvalidTaskId(f"task id must be a string, not {type(task_id).__name__}")
    if not task_id:
        raise InvalidTaskId("task id must not be empty")
    if len(task_id) > MAX_TASK_ID:
        raise InvalidTaskId(f"task id is {len(task_id)} characters long; the limit is {MAX_TASK_ID}")
    if not _TASK_ID_RE.match(task_id):
        bad = sorted({c for c in task_id if not re.match(r"[A-Za-z0-9._@:-]", c)})
        if bad:
            shown = ", ".join(repr(c) for c in bad)
            raise InvalidTaskId(
                f"task id {task_id!r} has characters that are not allowed: {shown} "
                "(use letters, digits and . _ @ : -)"
            )
        raise InvalidTaskId(f"task id {task_id!r} must start with a letter or digit")
    return task_id


def parse_ref(ref: object) -> tuple[str, int]:
    """Split ``"j7"`` into ``("j", 7)``; raise :class:`InvalidMessage` for anything else."""
    if not isinstance(ref, str):
        raise InvalidMessage(f"job ref must be a string, not {type(ref).__name__}")
    m = _REF_RE.match(ref)
    if not m:
        raise InvalidMessage(f"{ref!r} is not a job ref (expected j<N>, f<N> or x0)")
    return m.group(1), int(m.group(2))


def retries_value(r: object) -> int | None:
    """The one rule for a spec's ``"retries"``: a whole number >= 0 (``1`` and ``1.0`` alike,
    since JSON and Lua's cjson cannot tell them apart); anything else (booleans, fractions,
    negatives, strings) is no valid count and gives None. The Redis store's Lua
    (``spec_retries`` in lib.lua) applies the same rule."""
    if isinstance(r, bool) or not isinstance(r, (int, float)):
        return None
    if isinstance(r, float) and not r.is_integer():
        return None
    return int(r) if r >= 0 else None


@dataclass(frozen=True)
class JobSpec:
    """What to call: a registered function's name and JSON arguments."""

    fn: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    retries: int | None = None  # per-job override of the task's max_retries

    def to_json(self) -> str:
        d: dict[str, Any] = {"fn": self.fn, "args": self.args}
        if self.kwargs:
            d["kwargs"] = self.kwargs
        if self.retries is not None:
            d["retries"] = self.retries
        return json.dumps(d, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        """Decode a stored spec; raise :class:`InvalidMessage` naming what is wrong."""
        try:
            d = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise InvalidMessage(f"job spec is not valid JSON: {exc}") from None
        if not isinstance(d, dict) or not isinstance(d.get("fn"), str):
            raise InvalidMessage("job spec must be an object with a string 'fn'")
        args = d.get("args", [])
        kwargs = d.get("kwargs", {})
        if not isinstance(args, list):
            raise InvalidMessage("job spec 'args' must be a list")
        if not isinstance(kwargs, dict):
            raise InvalidMessage("job spec 'kwargs' must be an object")
        retries = d.get("retries")
        if retries is not None:
            retries = retries_value(retries)
            if retries is None:
                raise InvalidMessage(f"job spec 'retries' must be a whole number >= 0, not {d['retries']!r}")
        return cls(fn=d["fn"], args=args, kwargs=kwargs, retries=retries)


@dataclass(frozen=True)
class TaskOptions:
    """Per-task options, fixed at creation."""

    policy: Policy = Policy.FAIL
    max_retries: int = 0
    backoff: float = 1.0  # seconds before the first retry; doubles each time
    backoff_max: float = 300.0
    max_lost: int = 3  # how often a job may lose its worker (lease expiry) before it fails
    keep_results: bool = False
    retention: float = 7 * 24 * 3600.0  # seconds a finished task is kept
    queue: str = "default"
    # fair share (docs/fairness.md): the task's share of its queue, and caps on running jobs
    group: str = ""  # tasks of one group share one share of the queue; "" = a group of its own
    weight: float = 1.0  # share relative to the other tasks of the group (of the queue, if no group)
    max_concurrency: int = 0  # running jobs of this task at any moment, over all workers; 0 = no cap
    group_max_concurrency: int = 0  # running jobs of the whole group; 0 = no cap (the latest task sets it)
    trace: str = ""  # W3C traceparent of the span that created the task, when tracing (multistep_core.otel)

    def __post_init__(self) -> None:
        object.__setattr__(self, "policy", Policy(self.policy))
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ValueError(f"max_retries must be a non-negative integer, not {self.max_retries!r}")
        if self.backoff < 0 or self.backoff_max < 0:
            raise ValueError("backoff and backoff_max must not be negative")
        if not isinstance(self.max_lost, int) or self.max_lost < 0:
            raise ValueError(f"max_lost must be a non-negative integer, not {self.max_lost!r}")
        if self.retention < 0:
            raise ValueError("retention must not be negative")
        if not isinstance(self.queue, str) or not re.match(r"^[A-Za-z0-9._-]{1,64}$", self.queue):
            raise ValueError(f"queue name {self.queue!r} must be 1-64 letters, digits, . _ -")
        if not isinstance(self.group, str) or (self.group and not _TASK_ID_RE.match(self.group)):
            raise ValueError(
                f"group {self.group!r} must be up to 128 letters, digits and . _ @ : - "
                "(starting with a letter or digit), or empty for a group of its own"
            )
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w <= 1e6 or w != w:
            raise ValueError(f"weight must be a number above 0 (1 = an equal share), not {w!r}")
        object.__setattr__(self, "weight", float(w))
        if self.trace and not (isinstance(self.trace, str) and _TRACEPARENT.match(self.trace)):
            raise ValueError(f"trace must be a W3C traceparent or empty, not {self.trace!r}")
        for name in ("max_concurrency", "group_max_concurrency"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be a whole number >= 0 (0 = no cap), not {v!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["policy"] = self.policy.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskOptions:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def backoff_for(self, failures: int) -> float:
        """Delay before the retry that follows the ``failures``-th failure."""
        if self.backoff <= 0:
            return 0.0
        return float(min(self.backoff * (2 ** max(failures - 1, 0)), self.backoff_max))


@dataclass
class Failure:
    """A job's failure as recorded: exception type, message and traceback."""

    ref: str
    fn: str
    type: str
    message: str
    traceback: str = ""
    attempt: int = 0
    at: float = 0.0
    args: str = ""  # the job's arguments as JSON, truncated (ARGS_PREVIEW characters)
    resolved: bool = False  # a later attempt succeeded (history kept for the operator)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Failure:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Progress:
    """A consistent snapshot of one task, read in one store call."""

    task_id: str
    state: TaskState
    total: int
    pending: int
    running: int
    succeeded: int
    failed: int
    finalizers_total: int
    finalizers_done: int
    created_at: float
    sealed_at: float | None = None
    finished_at: float | None = None
    cancelled_by: str | None = None
    cancelled_at: float | None = None
    options: TaskOptions = field(default_factory=TaskOptions)
    parent: str | None = None  # the task this one is a step of (docs/nested.md), None at the top

    @property
    def done(self) -> int:
        return self.succeeded + self.failed

    @property
    def fraction(self) -> float:
        """Share of the task's work that has ended, jobs and finalizers together, in [0, 1]: 1.0
        exactly when the task has ended (succeeded, failed or cancelled: what will never run counts
        as ended), below 1.0 while it may still change."""
        if self.state.terminal:
            return 1.0
        units = self.total + self.finalizers_total
        if units == 0:
            return 0.0
        return min(0.999, (self.done + self.finalizers_done) / units)

    @property
    def skipped(self) -> int:
        """Jobs that never started because the task ended first (``fail_fast`` failed it, or it was
        cancelled): its pending jobs once it is failed or cancelled. They do not run unless a failed
        task is retried."""
        return self.pending if self.state in (TaskState.FAILED, TaskState.CANCELLED) else 0

    @property
    def percent(self) -> float:
        """:attr:`fraction` in percent with one decimal, rounded down (100.0 only at the end): the
        one figure ``show``, ``watch``, ``watch --json`` and the demo print."""
        return math.floor(1000 * self.fraction) / 10

    @property
    def elapsed(self) -> float | None:
        if self.finished_at is None:
            return None
        return self.finished_at - self.created_at

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["state"] = self.state.value
        d["options"] = self.options.to_dict()
        d["percent"] = self.percent
        d["skipped"] = self.skipped
        return d


@dataclass(frozen=True)
class Dispatch:
    """Messages a transition asks the caller to enqueue: ``refs`` of one task (a finalizer,
    the failure callback) and ``tickets`` of one queue (each a message that lets a worker
    take a job of that queue: see docs/fairness.md)."""

    task_id: str = ""
    queue: str = "default"
    refs: tuple[str, ...] = ()
    tickets: tuple[int, ...] = ()
    also: tuple[Dispatch, ...] = ()  # of other tasks or queues (a child's end advanced its parent)

    def __bool__(self) -> bool:
        return bool(self.refs or self.tickets or self.also)

    def parts(self) -> list[Dispatch]:
        """This dispatch and those in ``also``, each of one task and one queue (empty ones left out)."""
        out = [self] if self.refs or self.tickets else []
        for d in self.also:
            out.extend(d.parts())
        return out

    def messages(self, trace: str = "") -> list[str]:
        """The message bodies to enqueue on ``queue``, tickets first. ``trace``: optional members
        (``,"tp":"00-…"``, ``,"tl":"00-…"``: W3C traceparents, see :mod:`multistep_core.otel`)
        appended to the messages naming a ref (a ticket belongs to no task: the worker takes the
        task's trace from the task itself); their size does not depend on the task's."""
        out = [encode_ticket(self.queue, t) for t in self.tickets]
        for r in self.refs:
            m = encode_message(self.task_id, r)
            out.append(m[:-1] + trace + "}" if trace else m)
        return out


NOTHING = Dispatch()


@dataclass(frozen=True)
class Start:
    """The store's answer to "may I run this delivery?"."""

    run: bool
    reason: str = ""  # why not, when run is False
    spec: str = ""  # the job's spec as stored (JSON text)
    attempt: int = 0
    keep_results: bool = False
    task_id: str = ""  # which job was started (a ticket names none until the store picks one)
    ref: str = ""
    batch: int = 1  # jobs of this task the worker may run on this message (``per_message``)


@dataclass(frozen=True)
class Rejected:
    """A message refused by a worker, kept so that nothing is lost silently."""

    raw: str
    reason: str
    at: float


# --- messages -------------------------------------------------------------------------

MESSAGE_VERSION = 1
MAX_MESSAGE_BYTES = 4096
MAX_PER_MESSAGE = 64  # jobs a worker may run on one ticket
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}\Z")


def encode_message(task_id: str, ref: str) -> str:
    """The one message format every queue carries: which job of which task to run.

    It never names a function: the function and its arguments live in the store, so a
    message cannot make a worker call anything the task did not register.
    (Byte for byte what ``json.dumps({"v":1,"task":...,"ref":...}, separators=(",", ":"))``
    gives; built by hand because large tasks encode one per job.)
    """
    return f'{{"v":{MESSAGE_VERSION},"task":{json.dumps(task_id)},"ref":{json.dumps(ref)}}}'


def encode_ticket(queue: str, ticket: int) -> str:
    """A ticket: "take the next job of ``queue``" (the store picks which, fairly). Its size
    never depends on any task's size."""
    return f'{{"v":{MESSAGE_VERSION},"queue":{json.dumps(queue)},"ticket":{int(ticket)}}}'


@dataclass(frozen=True)
class Message:
    """A decoded message: a ticket (``queue`` and ``ticket``) or one job ref of a task."""

    task_id: str = ""
    ref: str = ""
    queue: str = ""
    ticket: int = 0
    tp: str = ""  # optional W3C traceparents (see multistep_core.otel): the sending span,
    tl: str = ""  # and a linked one

    @property
    def is_ticket(self) -> bool:
        return bool(self.queue)


def decode_message(raw: object) -> tuple[str, str]:
    """Return ``(task_id, ref)`` of a one-job message or raise :class:`InvalidMessage` naming
    what is wrong (a ticket is refused here: see :func:`decode`)."""
    m = decode(raw)
    if m.is_ticket:
        raise InvalidMessage("message is a ticket, not a job ref")
    return m.task_id, m.ref


_QUEUE_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def decode(raw: object) -> Message:
    """Decode a ticket (``{"v":1,"queue":Q,"ticket":N}``) or a job message
    (``{"v":1,"task":T,"ref":R}``), or raise :class:`InvalidMessage` naming what is wrong."""
    if isinstance(raw, (bytes, bytearray)):
        if len(raw) > MAX_MESSAGE_BYTES:
            raise InvalidMessage(f"message is {len(raw)} bytes; multistep messages are small")
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidMessage("message is not UTF-8 text") from None
    if isinstance(raw, str):
        if len(raw) > MAX_MESSAGE_BYTES:
            raise InvalidMessage(f"message is {len(raw)} characters; multistep messages are small")
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise InvalidMessage(f"message is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidMessage(f"message must be a JSON object, not {type(raw).__name__}")
    extra = sorted(set(raw) - {"v", "task", "ref", "queue", "ticket", "tp", "tl"})
    if extra:
        raise InvalidMessage(
            f"message has unexpected field(s) {', '.join(map(repr, extra))}: multistep messages "
            "name a task and a job ref, or a queue and a ticket, never a function or arguments"
        )
    if raw.get("v") != MESSAGE_VERSION:
        raise InvalidMessage(f"message version {raw.get('v')!r} is not supported (expected {MESSAGE_VERSION})")
    for k in ("tp", "tl"):  # optional trace context: W3C traceparent text
        if k in raw and not (isinstance(raw[k], str) and _TRACEPARENT.match(raw[k])):
            raise InvalidMessage(f"message field {k!r} must be a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)")
    if "queue" in raw or "ticket" in raw:
        if "task" in raw or "ref" in raw:
            raise InvalidMessage("message must be a ticket (queue, ticket) or a job (task, ref), not both")
        q, t = raw.get("queue"), raw.get("ticket")
        if not isinstance(q, str) or not _QUEUE_RE.match(q):
            raise InvalidMessage(f"ticket names no valid queue: {q!r}")
        if isinstance(t, bool) or not isinstance(t, int) or not 0 < t < 2**53:
            raise InvalidMessage(f"ticket number must be a positive whole number, not {t!r}")
        return Message(queue=q, ticket=t)
    task_id = validate_task_id(raw.get("task"))
    ref = raw.get("ref")
    parse_ref(ref)
    assert isinstance(ref, str)
    return Message(task_id=task_id, ref=ref, tp=raw.get("tp", ""), tl=raw.get("tl", ""))
