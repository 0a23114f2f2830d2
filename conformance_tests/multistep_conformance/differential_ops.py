"""The operations of the differential test, one row per store call: a table, not a script.

Each :class:`Op` says how to draw its arguments from the run (:class:`Run`: the logical
clock, and the reference's current state, which aims the arguments at refs a worker would
use now), how to apply them to one store at the logical time ``now``, how to turn the
answer into something comparable, and what the run learns from the reference's answer.
The differential machine (:mod:`multistep_conformance.differential`) draws one row per
step, in proportion to its ``weight``; the chosen-sequence tests call rows by name.

A new transition of the Store protocol is one new row, appended to :data:`OPS` (or to a
test class's ``ops``); a transition only some stores have says so with ``supported``, and
is left out for the others::

    PEEK = Op(
        "peek",
        args=lambda run, draw: {"queue": run.queue(draw(st.sampled_from(QUEUES)))},
        apply=lambda store, now, a: store.peek(a["queue"], now),
        supported=lambda store: hasattr(store, "peek"),
        weight=4,
    )

The value generators (job specs with floats, booleans, huge and negative numbers, unicode
with astral characters and quotes, missing and unknown keys, every kind of ``"retries"``)
and the reference store the test uses (:class:`ReferenceStore`) are here too.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar, cast

from hypothesis import strategies as st

from multistep_core.embedded.memory import MemoryStore
from multistep_core.fairshare import QueueRow
from multistep_core.model import Dispatch, Failure, Policy, Start, TaskOptions, TaskState
from multistep_core.store import Store, Txn

T = TypeVar("T")
Draw = Callable[[st.SearchStrategy[T]], T]
Args = dict[str, Any]

CLOCK_START = 1_000_000_000.0
"""Where the logical clock starts (September 2001). Far in the past on purpose: a
``claim_due(now)`` of the test never reaches the due times of real tasks that may share
the store, and its own times never look recent to anyone else."""

RETENTION = 1.0e9
"""Retention of every task of the run: longer than the logical clock ever moves, and long
enough that a finished task (expiring ``CLOCK_START + RETENTION`` on the wall clock, in
2033) stays readable. Expiry follows the wall clock in the reads and in Redis' TTLs, so it
is out of this test's reach."""

TASK_NAMES = ("a", "b", "c")
REFS = ("j0", "j1", "j2", "j5", "f0", "f1", "x0", "x1")  # every kind; some never exist
QUEUES = ("default", "q.2", "Q_3-x")  # each run uses its own copies (Run.queue): ticket numbers are per queue
GROUPS = ("", "", "g1", "G.2")
MAX_LISTED = 10_000


def ref_key(ref: str) -> tuple[str, int]:
    """Sort refs by kind, then number (``j2`` before ``j10``)."""
    try:
        return ref[0], int(ref[1:])
    except (IndexError, ValueError):
        return ref, -1


# ---------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------

ODD_TEXT = (
    '"', "'", "\\", '"quoted" \\"twice\\"', "é", "ß", "中文", "😀", "\U0001f600\U00010348𝄞", "\u2028\u2029",
    "\x00", "\n\t", "%s%d", "{}", "\ufeff", "\uffff", "Ω≈ç√", "", " ", "null", "true", "1",
)
"""Strings every text argument may be; none holds a lone surrogate (see ``text``)."""


@functools.cache
def text(max_size: int = 8) -> st.SearchStrategy[str]:
    """Unicode text without lone surrogates: such text cannot be stored by a store that
    keeps UTF-8 (Redis raises UnicodeEncodeError), and inside a JSON spec an escaped one
    makes Lua's cjson refuse the whole spec (both reported as disagreements, tested on
    their own)."""
    return st.sampled_from(ODD_TEXT) | st.text(st.characters(exclude_categories=["Cs"]), max_size=max_size)


HUGE_INTS = (10**30, -(10**30), 2**53 + 1, 2**63, -(2**63) - 1, 10**400)


@functools.cache
def json_values() -> st.SearchStrategy[Any]:
    """Any JSON value: null, booleans, ints (negative, huge), finite floats, unicode, nesting."""
    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.sampled_from(HUGE_INTS)
        | st.floats(allow_nan=False, allow_infinity=False)
        | text()
    )
    return st.recursive(scalars, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(text(), kids, max_size=2),
                        max_leaves=4)


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


ABSENT: Any = _Absent()
"""A key left out of a spec."""

RETRIES: tuple[Any, ...] = (
    ABSENT, 1, 1.0, 2.5, True, -1, "1", 10**30, None, 0, 2, 3.0, -0.0, 100.0, False, 0.5, 2**53 + 1, [1], {"n": 1},
)
"""Every kind of ``"retries"`` a spec may carry (``ABSENT``: no such key). Only whole numbers
>= 0 count (``model.retries_value``); the rest fall back to the task's ``max_retries``."""

RAW_SPECS = (
    "", "not json", "[]", "null", '"text"', "17", "[{\"retries\": 3}]", '{"fn": "m:a", "retries": 2',
    '{"fn":"m:a","retries":0,"retries":2}', ' {"fn":"m:a","retries":1.0e0} ', '{"retries":1E0,"fn":"m:a"}',
    '{"fn":"\\ud83d\\ude00","retries":2}', '{"fn":"m:\\"a\\"","args":["\\u00e9"],"retries":1}',
)
"""Spec texts a JSON encoder would not write: not JSON, not an object, duplicate keys,
exponents, surrogate-pair escapes. Both stores must read ``fn`` and ``retries`` alike."""


@st.composite
def _specs(draw: st.DrawFn, retries_kinds: tuple[int, ...]) -> str:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from(RAW_SPECS))
    d: dict[str, Any] = {}
    if draw(st.integers(0, 2)) == 0:
        d.update(draw(st.dictionaries(text(), json_values(), max_size=2)))  # unknown keys (overwritten below)
    fn = draw(st.sampled_from(["m:a", "pkg.mod:fn", ABSENT, "text", 5, None]))
    if fn == "text":
        fn = draw(text())
    if fn is not ABSENT:
        d["fn"] = fn
    args = draw(st.sampled_from(["list", "absent", "other"]))
    if args == "list":
        d["args"] = draw(st.lists(json_values(), max_size=2))
    elif args == "other":
        d["args"] = draw(json_values())
    if draw(st.integers(0, 3)) == 0:
        d["kwargs"] = draw(st.dictionaries(text(), json_values(), max_size=2))
    retries = RETRIES[draw(st.sampled_from(retries_kinds))]
    if retries is ABSENT:
        d.pop("retries", None)
    else:
        d["retries"] = retries
    compact = draw(st.booleans())
    return json.dumps(d, ensure_ascii=draw(st.booleans()), separators=(",", ":") if compact else None)


@functools.cache
def specs(retries_kinds: tuple[int, ...] = tuple(range(len(RETRIES)))) -> st.SearchStrategy[str]:
    """A job spec as stored (JSON text): usually an object with ``fn`` and ``args``, but keys
    may be missing, of the wrong type, unknown, and ``retries`` of every kind (of the kinds
    ``RETRIES[i]`` for ``i`` in ``retries_kinds``: a sequence that uses only a few kinds
    fails jobs of those kinds often enough to see what each does)."""
    return _specs(retries_kinds)


@functools.cache
def task_options() -> st.SearchStrategy[TaskOptions]:
    """Valid task options of every kind (the retention is fixed: see :data:`RETENTION`)."""
    return st.builds(
        TaskOptions,
        policy=st.sampled_from(list(Policy)),
        max_retries=st.sampled_from([0, 0, 1, 2, 3]),
        backoff=st.sampled_from([0.0, 0.5, 1.0, 2.5, 0.1]),
        backoff_max=st.sampled_from([300.0, 2.0, 0.25]),
        max_lost=st.integers(0, 2),
        keep_results=st.booleans(),
        retention=st.just(RETENTION),
        queue=st.sampled_from(QUEUES),
        group=st.sampled_from(GROUPS),
        weight=st.sampled_from([1.0, 1.0, 2.0, 0.5, 3.0, 0.1]),
        max_concurrency=st.sampled_from([0, 0, 1, 2]),
        group_max_concurrency=st.sampled_from([0, 0, 1, 3]),
    )


# ---------------------------------------------------------------------------------------
# The reference
# ---------------------------------------------------------------------------------------


class _TiesInOrder:
    """A Txn whose ``due`` lists rows due at the same instant in (task, ref) order; every
    other primitive is the wrapped one's."""

    def __init__(self, tx: Txn) -> None:
        self._tx = tx

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tx, name)

    def due(self, now: float, limit: int) -> list[tuple[str, str]]:
        def when(key: tuple[str, str]) -> tuple[float, str, str]:
            row = self._tx.get_job(*key)
            return (row.due_at if row is not None and row.due_at is not None else now), key[0], key[1]

        return sorted(self._tx.due(now, 1 << 62), key=when)[:limit]


class ReferenceStore(MemoryStore):
    """The reference of the differential test: a :class:`MemoryStore` (RowStore logic) whose
    ``claim_due`` handles rows due at the same instant in (task, ref) order, as the Redis
    store does. A plain MemoryStore handles them in the order they first got a due time, and
    the order can matter (which task's follow-up issues which ticket)."""

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Txn]:
        with super().transaction() as tx:
            yield cast(Txn, _TiesInOrder(tx))


# ---------------------------------------------------------------------------------------
# What a run knows
# ---------------------------------------------------------------------------------------


@functools.cache
def _weighted(weights: tuple[int, ...]) -> st.SearchStrategy[int]:
    return st.sampled_from([i for i, w in enumerate(weights) for _ in range(w)])


def one_of(draw: Draw[Any], items: Sequence[T]) -> T:
    """One of ``items`` (shrinking goes towards the first)."""
    index: int = draw(st.integers(0, len(items) - 1))
    return items[index]


def pick(draw: Draw[Any], pools: Sequence[Sequence[T]], weights: Sequence[int]) -> T:
    """One item of ``pools[i]``, ``i`` drawn in proportion to ``weights``, or of the next
    non-empty pool after it (the draw means the same whatever the pools hold; shrinking
    goes towards the first pool's first item)."""
    i = draw(_weighted(tuple(weights)))
    for pool in [*pools[i:], *pools[:i]]:
        if pool:
            return one_of(draw, pool)
    raise ValueError("nothing to pick from")


def _eps(k: int) -> float:
    """The clock's step after the k-th transition: 1-2 ms, never the same twice, so that no two
    transitions share an instant (tasks created at one instant list in any order) and due times
    set by different transitions never meet by accident."""
    return 0.001 + 0.001 * ((k * 0.6180339887498949) % 1.0)


@dataclass
class TaskView:
    """One task as the reference has it now (both stores agree on it, or the run has stopped)."""

    state: str | None  # None: no such task
    jobs: dict[str, str]  # ref → job state
    fin_done: int = 0

    def refs_in(self, *states: str) -> list[str]:
        return sorted((r for r, s in self.jobs.items() if s in states), key=ref_key)

    def startable(self) -> list[str]:
        """Pending refs a start would run now."""
        out = []
        for ref in self.refs_in("pending"):
            kind, index = ref_key(ref)
            if ((kind == "j" and self.state in ("open", "running"))
                    or (kind == "f" and self.state == "finalizing" and index == self.fin_done)
                    or (kind == "x" and self.state == "failed")):
                out.append(ref)
        return out


@dataclass
class Run:
    """One sequence: the logical clock, and what aims the next arguments. The reference's
    current state (``view``) says which refs a start would run and which are running; the
    run remembers the attempts starts began and the leases they took."""

    lease: float
    reference: Store | None = None
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    now: float = CLOCK_START
    transitions: int = 0
    running: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)  # → attempt, lease end
    attempts: dict[tuple[str, str], int] = field(default_factory=dict)
    specs: tuple[str, ...] = ('{"fn":"m:a","args":[]}',)  # the specs its jobs have (drawn once per sequence)
    tickets: dict[str, set[int]] = field(default_factory=dict)  # queue → tickets seen issued
    _views: dict[str, TaskView] = field(default_factory=dict)

    @property
    def ids(self) -> tuple[str, ...]:
        """The run's task ids (unique to the run, so stores may be shared between runs)."""
        return tuple(self.tid(n) for n in TASK_NAMES)

    def tid(self, name: str) -> str:
        return f"d{self.token}.{name}"

    def queue(self, name: str) -> str:
        """The run's own copy of queue ``name`` (the stores' ticket counters are per queue)."""
        return name if name.endswith(f"-{self.token}") else f"{name}-{self.token}"

    @property
    def queues(self) -> tuple[str, ...]:
        return tuple(self.queue(q) for q in QUEUES)

    def own(self, options: TaskOptions) -> TaskOptions:
        """``options`` on the run's copy of its queue."""
        return replace(options, queue=self.queue(options.queue))

    def note_tickets(self, result: Any) -> None:
        """Remember the tickets an answer issued (a take presents one of them)."""
        items = result if isinstance(result, (list, tuple)) else [result]
        for d in items:
            if isinstance(d, Dispatch) and d.tickets:
                self.tickets.setdefault(d.queue, set()).update(d.tickets)

    def pick_ticket(self, draw: Draw[Any]) -> tuple[str, int]:
        """A queue of the run and a ticket: mostly one seen issued (maybe taken since),
        sometimes one never issued."""
        seen = sorted((q, t) for q, ts in self.tickets.items() for t in ts)
        if seen and draw(st.integers(0, 7)) > 0:
            return one_of(draw, seen)
        return self.queue(draw(st.sampled_from(QUEUES))), int(draw(st.sampled_from([1, 2, 3, 7, 64, 10**6])))

    def advance(self) -> None:
        self.transitions += 1
        self.now += _eps(self.transitions)
        self._views.clear()

    def clock(self) -> str:
        return f"+{self.now - CLOCK_START:.4f}"

    # -- the reference's state ---------------------------------------------------------------
    def view(self, tid: str) -> TaskView:
        v = self._views.get(tid)
        if v is None:
            p = self.reference.progress(tid) if self.reference is not None else None
            if p is None:
                v = TaskView(None, {})
            else:
                v = TaskView(p.state.value, self.reference.job_states(tid) if self.reference else {}, p.finalizers_done)
            self._views[tid] = v
        return v

    def live(self) -> list[str]:
        return [t for t in self.ids if self.view(t).state is not None]

    def tasks_where(self, want: Callable[[TaskView], Any]) -> list[str]:
        return [t for t in self.ids if self.view(t).state is not None and want(self.view(t))]

    def any_task(self, want: Callable[[TaskView], Any]) -> bool:
        return bool(self.tasks_where(want))

    # -- choosing arguments --------------------------------------------------------------
    def pick_task(self, draw: Draw[Any], want: Callable[[TaskView], Any] | None = None, *, new: bool = False) -> str:
        """Mostly a task ``want`` likes (``new``: one that does not exist), else one that
        exists, sometimes any of the run's."""
        if new:
            return str(pick(draw, [[t for t in self.ids if t not in self.live()], list(self.ids)], [5, 1]))
        liked = self.tasks_where(want) if want is not None else []
        return str(pick(draw, [liked, self.live(), list(self.ids)], [8, 2, 1]))

    def pick_ref(self, draw: Draw[Any], tid: str, prefer: str = "start") -> str:
        """A ref of ``tid``: mostly one a worker would use now (``start``: one a start would
        run; ``running``: a running one), else any of its refs, sometimes any of :data:`REFS`."""
        v = self.view(tid)
        preferred = v.startable() if prefer == "start" else v.refs_in("running")
        return str(pick(draw, [preferred, sorted(v.jobs, key=ref_key), list(REFS)], [12, 2, 1]))

    def pick_attempt(self, draw: Draw[Any], tid: str, ref: str) -> int:
        """Mostly the current attempt; sometimes a stale, future or nonsense one."""
        cur = self.attempts.get((tid, ref), 0)
        return int(draw(st.sampled_from([cur] * 12 + [cur - 1, cur + 1, 0, -1])))

    # -- learning from the reference's answers -----------------------------------------
    def learn_start(self, tid: str, ref: str, s: Any, now: float) -> None:
        if isinstance(s, Start) and s.run:
            self.running[(tid, ref)] = (s.attempt, now + self.lease)
            self.attempts[(tid, ref)] = s.attempt

    def forget(self, tid: str) -> None:
        for d in (self.running, self.attempts):
            for k in [k for k in d if k[0] == tid]:
                del d[k]

    def lease_ends(self) -> list[float]:
        return sorted(end for _, end in self.running.values())

    def something_due(self) -> bool:
        """A lease the run knows of has ended, or a job waits for its retry."""
        return any(end <= self.now for _, end in self.running.values()) or self.any_task(
            lambda v: v.refs_in("retry_wait"))


def has_startable(v: TaskView) -> bool:
    return bool(v.startable())


def has_running(v: TaskView) -> bool:
    return bool(v.refs_in("running"))


def is_open(v: TaskView) -> bool:
    return v.state in ("open", "running")


def is_failed(v: TaskView) -> bool:
    return v.state == "failed"


# ---------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------

ArgsFn = Callable[[Run, Draw[Any]], Args]
ApplyFn = Callable[[Store, float, Args], Any]
CompareFn = Callable[[Any, Run], Any]
LearnFn = Callable[[Run, Args, Any, float], None]


def _same(value: Any, run: Run) -> Any:
    return value


def _nothing(run: Run, args: Args, result: Any, now: float) -> None:
    return None


def _always(store: Store) -> bool:
    return True


@dataclass(frozen=True)
class Op:
    """One row: a store call the differential test makes.

    ``args(run, draw)`` returns the keyword arguments (``draw`` takes a Hypothesis
    strategy); ``apply(store, now, args)`` makes the call on one store; ``compare(result,
    run)`` turns its answer into what must be equal between the stores; ``learn(run,
    args, result, now)`` records what the reference's answer tells the run (the attempt a
    start began; called only when the call did not raise); ``supported(store)`` says whether a store has the call at all.
    ``moves_clock``: a transition, after which the logical clock moves on by a millisecond
    or two (reads do not move it). ``weight``: how often the random sequences pick the row,
    relative to the others (a finish is 12, a delete 1), or a function of the run (a seal is
    likelier while a task is open with jobs)."""

    name: str
    args: ArgsFn
    apply: ApplyFn
    compare: CompareFn = _same
    learn: LearnFn = _nothing
    supported: Callable[[Store], bool] = _always
    moves_clock: bool = True
    weight: int | Callable[[Run], int] = 2

    def weight_in(self, run: Run) -> int:
        return self.weight(run) if callable(self.weight) else self.weight

    def describe(self, args: Args) -> str:
        shown = ", ".join(f"{k}={_short(v)}" for k, v in args.items())
        return f"{self.name}({shown})"


def _short(v: Any, limit: int = 160) -> str:
    r = repr(v)
    return r if len(r) <= limit else f"{r[:limit]}…[{len(r)} chars]"


def norm_dispatch(d: Any, run: Run | None = None) -> Any:
    """A Dispatch, its refs in (kind, number) order and its tickets in order: the order of
    messages inside one dispatch is not part of the contract (the caller enqueues them all)."""
    if isinstance(d, Dispatch):
        # what the same transition asked for other tasks (a subtask's end advanced its parent),
        # flattened, in a canonical order
        also = sorted((norm_dispatch(x) for x in d.also for x in x.parts()),
                      key=lambda x: (x.task_id, x.queue, [ref_key(r) for r in x.refs], x.tickets))
        return Dispatch(d.task_id, d.queue, tuple(sorted(d.refs, key=ref_key)), tuple(sorted(d.tickets)), tuple(also))
    return d


def norm_claims(ds: Any, run: Run) -> Any:
    """claim_due's dispatches of this run's tasks and queues, in a canonical order (a store
    hands them out in any order)."""
    if not isinstance(ds, list):
        return ds
    mine = [norm_dispatch(d) for d in ds
            if getattr(d, "task_id", None) in run.ids or (getattr(d, "task_id", None) == "" and d.queue in run.queues)]
    return sorted(mine, key=lambda d: (d.task_id, d.queue, [ref_key(r) for r in d.refs], d.tickets))


def norm_pair(r: Any, run: Run) -> Any:
    """take_next's answer: the dispatch normalized, the start as it is."""
    return (norm_dispatch(r[0]), r[1]) if isinstance(r, tuple) else r


def norm_listed(ps: Any, run: Run) -> Any:
    """list_tasks, restricted to this run's tasks (a shared store lists others too)."""
    if not isinstance(ps, list):
        return ps
    return [p for p in ps if getattr(p, "task_id", None) in run.ids]


def rejected_of(items: Any, run: Run) -> Any:
    if not isinstance(items, list):
        return items
    return [r for r in items if getattr(r, "raw", "").startswith(run.token)]


def failure(args: Args, now: float) -> Failure | None:
    """The Failure a ``finish`` row reports, or None for a success."""
    if args["outcome"] == "ok":
        return None
    return Failure(
        ref=args["ref"], fn="m:a", type="WorkerLost" if args["outcome"] == "lost" else args["error_type"],
        message=args["message"], traceback="Traceback (most recent call last):\n  ...", attempt=args["attempt"],
        at=now,
    )


# -- arguments ------------------------------------------------------------------------------


def _create_args(run: Run, draw: Draw[Any]) -> Args:
    return {"task_id": run.pick_task(draw, new=True), "options": run.own(draw(task_options()))}


def _seal_args(run: Run, draw: Draw[Any]) -> Args:
    return {"task_id": run.pick_task(draw, lambda v: v.state == "open")}


def _retry_args(run: Run, draw: Draw[Any]) -> Args:
    return {"task_id": run.pick_task(draw, is_failed)}


def _add_args(run: Run, draw: Draw[Any]) -> Args:
    # A callback is exactly one spec: other counts disagree (the RowStore raises ValueError),
    # and are a test of their own.
    kind = draw(st.sampled_from(["j"] * 4 + ["f"] * 2 + ["x", "z"]))
    n = 1 if kind == "x" else draw(st.sampled_from([1, 1, 2, 2, 3, 0, 4]))
    return {"task_id": run.pick_task(draw, is_open), "kind": kind, "specs": [one_of(draw, run.specs) for _ in range(n)],
            "per_message": draw(st.sampled_from([1, 1, 1, 2, 3]))}


def _start_args(run: Run, draw: Draw[Any]) -> Args:
    tid = run.pick_task(draw, has_startable)
    return {"task_id": tid, "ref": run.pick_ref(draw, tid)}


def _renew_args(run: Run, draw: Draw[Any]) -> Args:
    tid = run.pick_task(draw, has_running)
    ref = run.pick_ref(draw, tid, prefer="running")
    return {"task_id": tid, "ref": ref, "attempt": run.pick_attempt(draw, tid, ref)}


def _finish_args(run: Run, draw: Draw[Any]) -> Args:
    a = _renew_args(run, draw)
    a["outcome"] = outcome = draw(st.sampled_from(["ok"] * 5 + ["error"] * 3 + ["lost"]))
    if outcome == "ok":
        a["result"] = draw(st.none() | st.builds(json.dumps, json_values(), ensure_ascii=st.booleans()))
    else:
        a["error_type"] = draw(st.sampled_from(["ValueError", "KeyError", "WorkerLost"]))
        a["message"] = draw(text() | st.just("a lone \udcff surrogate, JSON-escaped on its way to any store"))
    return a


def _take_args(run: Run, draw: Draw[Any]) -> Args:
    queue, ticket = run.pick_ticket(draw)
    return {"queue": queue, "ticket": ticket}


def _release_args(run: Run, draw: Draw[Any]) -> Args:
    return {"queue": run.queue(draw(st.sampled_from(QUEUES)))}


def _subtask_args(run: Run, draw: Draw[Any]) -> Args:
    # a child among the run's ids that do not exist (so trees form among a, b and c)
    return {"parent": run.pick_task(draw, is_open), "child": run.pick_task(draw, new=True),
            "options": run.own(draw(task_options())), "on_failure": draw(st.sampled_from(["fail", "ignore", "continue"]))}


def _nests(store: Store) -> bool:
    return type(store).add_subtask is not Store.add_subtask


def _cancel_args(run: Run, draw: Draw[Any]) -> Args:
    return {"task_id": run.pick_task(draw, lambda v: v.state in ("running", "finalizing", "failed")), "by": draw(text())}


def _delete_args(run: Run, draw: Draw[Any]) -> Args:
    return {"task_id": run.pick_task(draw, lambda v: v.state in ("succeeded", "failed", "cancelled"))}


def _claim_args(run: Run, draw: Draw[Any]) -> Args:
    # With more than ``limit`` rows due, the reference handles the earliest of all tasks.
    return {"limit": draw(st.sampled_from([MAX_LISTED] * 5 + [0, 1, 3]))}


def _reject_args(run: Run, draw: Draw[Any]) -> Args:
    pad = draw(st.sampled_from([0, 1, 4100]))  # the stores keep the first 4096 characters
    return {"raw": run.token + draw(text()) + "😀" * pad, "reason": draw(text())}


def _list_args(run: Run, draw: Draw[Any]) -> Args:
    return {"state": draw(st.sampled_from([None, *TaskState]))}


# -- calls ----------------------------------------------------------------------------------


def _finish(store: Store, now: float, a: Args) -> Dispatch:
    return store.finish(a["task_id"], a["ref"], a["attempt"], now, result=a.get("result"), error=failure(a, now))


def _take_next_args(run: Run, draw: Draw[Any]) -> Args:
    a = _finish_args(run, draw)
    a["go_on"] = draw(st.booleans())  # the same task's next job (per_message), or the queue's (going on)
    return a


def _take_next(store: Store, now: float, a: Args) -> tuple[Dispatch, Start]:
    return store.take_next(a["task_id"], a["ref"], a["attempt"], now, result=a.get("result"), error=failure(a, now),
                           go_on=a.get("go_on", False))


# -- what the run learns from the reference's answer -------------------------------------


def _learn_create(run: Run, a: Args, result: Any, now: float) -> None:
    run.forget(a["task_id"])  # attempts of an earlier task of that id


def _learn_create_child(run: Run, a: Args, result: Any, now: float) -> None:
    run.forget(a["child"])


def _learn_start(run: Run, a: Args, result: Any, now: float) -> None:
    run.learn_start(a["task_id"], a["ref"], result, now)


def _learn_take(run: Run, a: Args, result: Any, now: float) -> None:
    if isinstance(result, Start) and result.run:
        run.learn_start(result.task_id, result.ref, result, now)


def _learn_renew(run: Run, a: Args, result: Any, now: float) -> None:
    key = (a["task_id"], a["ref"])
    if result is True and key in run.running:
        run.running[key] = (run.running[key][0], now + run.lease)


def _learn_finish(run: Run, a: Args, result: Any, now: float) -> None:
    run.running.pop((a["task_id"], a["ref"]), None)


def _learn_take_next(run: Run, a: Args, result: Any, now: float) -> None:
    run.running.pop((a["task_id"], a["ref"]), None)
    if isinstance(result, tuple):
        _learn_take(run, a, result[1], now)


def _learn_claim(run: Run, a: Args, result: Any, now: float) -> None:
    for k in [k for k, (_, end) in run.running.items() if end <= now]:
        del run.running[k]  # claimed: declared lost, or handed back


def _learn_delete(run: Run, a: Args, result: Any, now: float) -> None:
    run.forget(a["task_id"])


# -- the rows -------------------------------------------------------------------------------

def _when(want: Callable[[TaskView], Any], often: int, rarely: int = 1) -> Callable[[Run], int]:
    """A weight: ``often`` while some task of the run is as ``want`` says, else ``rarely``."""
    return lambda run: often if run.any_task(want) else rarely


OPS: tuple[Op, ...] = (
    Op("create_task", _create_args, lambda s, now, a: s.create_task(a["task_id"], a["options"], now),
       learn=_learn_create, weight=lambda run: 2 if len(run.live()) < 2 else 1),
    Op("add_jobs", _add_args, lambda s, now, a: s.add_jobs(a["task_id"], a["kind"], a["specs"], now,
                                                           a.get("per_message", 1)),
       weight=_when(lambda v: is_open(v) and len(v.jobs) < 12, 6)),
    Op("seal", _seal_args, lambda s, now, a: s.seal(a["task_id"], now), norm_dispatch,
       weight=_when(lambda v: v.state == "open" and v.jobs, 4)),
    Op("start", _start_args, lambda s, now, a: s.start(a["task_id"], a["ref"], now), learn=_learn_start,
       weight=_when(has_startable, 12, 2)),
    Op("release", _release_args, lambda s, now, a: s.release(a["queue"], now), norm_dispatch, weight=3),
    Op("take", _take_args, lambda s, now, a: s.take(a["queue"], a["ticket"], now), learn=_learn_take,
       weight=lambda run: 14 if run.tickets else 2),
    Op("renew", _renew_args, lambda s, now, a: s.renew(a["task_id"], a["ref"], a["attempt"], now),
       learn=_learn_renew, weight=_when(has_running, 3)),
    Op("finish", _finish_args, _finish, norm_dispatch, _learn_finish, weight=_when(has_running, 12, 2)),
    Op("take_next", _take_next_args, _take_next, norm_pair, _learn_take_next, weight=_when(has_running, 5)),
    Op("cancel", _cancel_args, lambda s, now, a: s.cancel_and_dispatch(a["task_id"], a["by"], now),
       lambda r, run: (r[0], norm_dispatch(r[1])) if isinstance(r, tuple) else r, weight=1),
    Op("add_subtask", _subtask_args, lambda s, now, a: s.add_subtask(a["parent"], a["child"], a["options"],
                                                                     a["on_failure"], now),
       learn=_learn_create_child, supported=_nests, weight=_when(is_open, 3)),
    Op("retry", _retry_args, lambda s, now, a: s.retry(a["task_id"], now), norm_dispatch, weight=_when(is_failed, 4)),
    Op("claim_due", _claim_args, lambda s, now, a: s.claim_due(now, a["limit"]), norm_claims, _learn_claim,
       weight=lambda run: 8 if run.something_due() else 2),
    Op("delete", _delete_args, lambda s, now, a: s.delete(a["task_id"]), learn=_learn_delete, weight=1),
    Op("reject", _reject_args, lambda s, now, a: s.reject(a["raw"], a["reason"], now), weight=1),
    Op("list_tasks", _list_args, lambda s, now, a: s.list_tasks(a["state"], MAX_LISTED), norm_listed,
       moves_clock=False, weight=1),
)
"""The default rows: every transition of the Store protocol, and the state-filtered list."""


def by_name(ops: Iterable[Op]) -> dict[str, Op]:
    table = {op.name: op for op in ops}
    for name in table:
        if not name.isidentifier() or name.startswith("_"):
            raise ValueError(f"operation name {name!r} must be a public identifier (it names a Hypothesis rule)")
    return table


# ---------------------------------------------------------------------------------------
# Reads, compared after every step
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Read:
    """A read compared after a step: per task the step was about (``per_task``) or once,
    after every step or only after the rows named in ``after`` (and at the end of a
    sequence, and after every call of a chosen sequence)."""

    name: str
    apply: Callable[[Store, Run, str], Any]
    per_task: bool = True
    supported: Callable[[Store], bool] = _always
    after: frozenset[str] | None = None


def _has_job_states(store: Store) -> bool:
    return type(store).job_states is not Store.job_states


def _queue_states(store: Store, run: Run) -> Any:
    """The run's queues' scheduling state (a queue with none reads as an empty one)."""
    read = cast(Any, store).queue_state  # RowStore and the Redis store have it; not part of Store
    return {q: (read(q) or QueueRow(name=q)).to_dict() for q in run.queues}


READS: tuple[Read, ...] = (
    # progress of every task of the run is compared after every step through list_tasks
    Read("progress", lambda s, run, tid: s.progress(tid), after=frozenset()),
    Read("failures", lambda s, run, tid: s.failures(tid)),
    Read("results", lambda s, run, tid: s.results(tid), after=frozenset({"finish", "take_next"})),
    Read("job_states", lambda s, run, tid: s.job_states(tid), supported=_has_job_states),
    Read("list_tasks", lambda s, run, tid: norm_listed(s.list_tasks(None, MAX_LISTED), run), per_task=False),
    Read("queue_state", lambda s, run, tid: _queue_states(s, run), per_task=False,
         supported=lambda s: hasattr(s, "queue_state")),
    Read("rejected", lambda s, run, tid: rejected_of(s.rejected(1000), run), per_task=False,
         after=frozenset({"reject"})),
    Read("tree", lambda s, run, tid: s.tree(tid), supported=_nests,
         after=frozenset({"add_subtask", "finish", "take_next", "cancel", "retry", "seal", "delete", "claim_due"})),
)


def clock_targets(run: Run) -> Sequence[float]:
    """Instants worth moving the clock to: just before, exactly at and just after the
    earliest lease end the run knows of (the boundary: a lease ending at ``now`` is due)."""
    ends = [e for e in run.lease_ends() if e >= run.now]
    if not ends:
        return []
    e = ends[0]
    return [math.nextafter(e, -math.inf), e, e + 0.001]
