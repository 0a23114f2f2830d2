"""The differential test: a native store against the reference, call for call.

A store that implements the transitions itself (a :class:`~multistep_core.store.Store`
subclass, as the Redis store does with Lua scripts) re-implements the logic of
:class:`~multistep_core.store.RowStore`. This test drives it and a fresh reference (a
:class:`~multistep_core.embedded.memory.MemoryStore`, RowStore's own logic: see
:class:`~multistep_conformance.differential_ops.ReferenceStore`) with the same operations
on a logical clock, and compares every answer: return values (Dispatch, Start, counts,
booleans), exception classes and messages, and after every step the reads (progress with
every field, failures, results, job states, the run's tasks in ``list_tasks``,
``rejected``). Time moves only when the test says so (``now`` is passed to every
transition): leases end, ``claim_due`` declares workers lost, backoffs pass, at exactly the
instant a step says.

Adopt it in a few lines::

    from multistep_conformance import DifferentialTests

    class TestMyStoreAgainstTheReference(DifferentialTests):
        backend_string = "mine+tcp://127.0.0.1:1234"

or hand it a store of your own, a fresh one (the test writes tasks and rejected messages
into it and claims whatever is due in it)::

    class TestMyStoreAgainstTheReference(DifferentialTests):
        @pytest.fixture(scope="class")
        @classmethod
        def native_store(cls) -> Iterator[Store]:
            store = MyStore(namespace=f"test-{uuid.uuid4().hex}", lease=cls.lease)
            yield store
            store.drop_namespace()

With ``backend_string``, the test connects with a throw-away ``prefix=`` option when the
backend takes one (the Redis store and the adapters do), stops the backend's recovery
thread, and removes that prefix's keys at the end. Each sequence's tasks have ids of their
own and are deleted after it; its clock runs in 2001, so that it never claims the leases of
real tasks (but a worker's recovery sharing the store would claim its: give it a store no
worker serves).

The random sequences come from a Hypothesis ``RuleBasedStateMachine`` that draws each
step from the operation table (:mod:`multistep_conformance.differential_ops`); a failing
sequence is shrunk to a minimal one and printed step by step, with both stores' answers.
More of them: ``--multistep-differential-examples=N`` (or
``$MULTISTEP_DIFFERENTIAL_EXAMPLES``); to replay a failure, the ``@reproduce_failure`` or
``--hypothesis-seed`` Hypothesis prints. Your own chosen sequences::

    def test_my_case(self, native_store: Store) -> None:
        with self.pair(native_store) as p:
            a = p.run.tid("a")  # an id of this sequence's own
            p.do("create_task", task_id=a, options=TaskOptions(retention=RETENTION))
            p.do("add_jobs", task_id=a, kind="j", specs=['{"fn":"m:a"}'])
            ...                 # each call compared, then the reads of the task it was about

(``RETENTION`` from :mod:`multistep_conformance.differential_ops`: with the clock in 2001, a
shorter retention would make finished tasks expire on the wall clock at once.)
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from multistep_core import ConfigurationError, Store, TaskOptions, TaskState, connect
from multistep_core.embedded.memory import MemoryStore
from multistep_core.model import Dispatch, Policy

from .differential_ops import (
    ABSENT,
    CLOCK_START,
    OPS,
    READS,
    RETENTION,
    RETRIES,
    Args,
    Draw,
    Op,
    ReferenceStore,
    Run,
    by_name,
    clock_targets,
    specs,
)

LEASE = 5.0
EXAMPLES = 30
STEPS = 100
EXAMPLES_ENV = "MULTISTEP_DIFFERENTIAL_EXAMPLES"
ROUND = 10  # random sequences per Hypothesis run while a time budget applies


class Disagreement(AssertionError):
    """The native store answered differently from the reference."""


def outcome(call: Callable[[], Any], messages: bool) -> tuple[Any, ...]:
    """``("ok", value)`` or ``("raised", "module.Class", message?)``: what a call did."""
    try:
        return ("ok", call())
    except Exception as exc:
        name = f"{type(exc).__module__}.{type(exc).__qualname__}"
        return ("raised", name, str(exc)) if messages else ("raised", name)


def _show(o: tuple[Any, ...]) -> str:
    return f"{o[0]} {o[1:] if o[0] == 'raised' else o[1]!r}"


class Pair:
    """The reference and the native store, driven together on one logical clock.

    :meth:`do` makes one call on both and returns the reference's answer (after checking
    the native one matches); :meth:`check_reads` compares the reads. Both raise
    :class:`Disagreement` with the whole sequence so far."""

    def __init__(self, native: Store, reference: Store, ops: Sequence[Op] = OPS, *, messages: bool = True) -> None:
        if reference.lease != native.lease:
            raise ValueError(f"the reference's lease {reference.lease} is not the native store's {native.lease}")
        self.native = native
        self.reference = reference
        self.ops = by_name(ops)
        self.messages = messages
        self.run = Run(lease=native.lease, reference=reference)
        self.log: list[str] = []
        self.created: set[str] = set()  # task ids some step created (their reads are compared)
        self.touched: set[str] = set()  # ...and those the last step may have changed
        self.last = ""  # the last step's row
        self.failed = False
        self.reads = [r for r in READS if r.supported(native)]

    # -- driving -----------------------------------------------------------------------
    def do(self, name: str, **args: Any) -> Any:
        """Call row ``name`` on both stores with ``args``, compare, then compare the reads of
        the tasks it was about."""
        result = self.step(self.ops[name], args)
        self.check_reads(every_read=True)
        return result

    def step(self, op: Op, args: Args) -> Any:
        run = self.run
        now = run.now
        if op.name == "create_task" and isinstance(args.get("options"), TaskOptions):
            args = {**args, "options": run.own(args["options"])}  # the run's own queues
        a = outcome(lambda: op.compare(op.apply(self.reference, now, args), run), self.messages)
        b = outcome(lambda: op.compare(op.apply(self.native, now, args), run), self.messages)
        self.log.append(f"{len(self.log) + 1:4d} {run.clock():>10}  {op.describe(args)}\n"
                        f"{'':16}-> {_show(a)}")
        if a != b:
            self.fail(f"{op.name} answered differently", a, b)
        if op.name == "create_task":
            self.created.add(args["task_id"])
        self.last = op.name
        self.touched = {args["task_id"]} if "task_id" in args else set(self.created)
        if a[0] == "ok":
            op.learn(run, args, a[1], now)
            run.note_tickets(a[1][0] if isinstance(a[1], tuple) else a[1])
        if op.moves_clock:
            run.advance()
        return a[1] if a[0] == "ok" else None

    def tick_to(self, when: float, why: str = "") -> None:
        """Move the logical clock to ``when`` (never backwards)."""
        if when < self.run.now:
            return
        self.run.now = when
        self.log.append(f"{len(self.log) + 1:4d} {self.run.clock():>10}  (clock moved{': ' + why if why else ''})")

    def check_reads(self, everything: bool = False, every_read: bool = False) -> None:
        """Compare the reads of the tasks the last step was about, those due after it (always
        the run's tasks in ``list_tasks``, with every progress field), or every read
        (``every_read``); ``everything``: every read of every task."""
        run = self.run
        tasks = sorted(self.created if everything else self.touched & self.created)
        for read in self.reads:
            if not (everything or every_read or read.after is None or self.last in read.after):
                continue
            for tid in tasks if read.per_task else [""]:
                a = outcome(lambda: read.apply(self.reference, run, tid), self.messages)  # noqa: B023
                b = outcome(lambda: read.apply(self.native, run, tid), self.messages)  # noqa: B023
                if a != b:
                    self.fail(f"then {read.name}({tid!r}) reads differently" if tid else f"then {read.name} differs",
                              a, b)

    def finale(self) -> None:
        """The end of a sequence: every read of every task, then once more after a claim_due
        with every lease and backoff long expired, and the list of tasks in every state."""
        self.check_reads(everything=True)
        if "claim_due" in self.ops:
            self.tick_to(self.run.now + 1000.0, "the end: every lease and backoff expired")
            self.step(self.ops["claim_due"], {"limit": 10_000})
            self.check_reads(everything=True)
        if "list_tasks" in self.ops:
            for state in TaskState:
                self.step(self.ops["list_tasks"], {"state": state})

    def fail(self, what: str, a: tuple[Any, ...], b: tuple[Any, ...]) -> None:
        self.failed = True
        raise Disagreement(
            f"{type(self.native).__name__} disagrees with the reference {type(self.reference).__name__}: {what}\n"
            f"  reference: {_show(a)}\n"
            f"  native:    {_show(b)}\n"
            f"the sequence (clock in seconds after {CLOCK_START:.0f}, lease {self.run.lease:g}s, "
            f"tasks d{self.run.token}.*):\n" + "\n".join(self.log)
        )

    def __enter__(self) -> Pair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        """Delete the run's tasks from both stores."""
        for tid in sorted({*self.run.ids, *self.created}):
            for s in (self.native, self.reference):
                try:
                    s.delete(tid)
                except Exception:  # pragma: no cover - best effort
                    pass


# ---------------------------------------------------------------------------------------
# The state machine: one rule per operation, plus the clock
# ---------------------------------------------------------------------------------------

TICKS = ("lease end", "just before lease end", "just after lease end", "0.3s", "1s", "2.6s", "lease+", "3 leases",
         "400s")
TICK_WEIGHT = 3
ALWAYS = frozenset({"create_task", "add_jobs", "seal", "start", "finish"})  # rows no sequence leaves out


class DifferentialMachine(RuleBasedStateMachine):
    """Random sequences on both stores. A sequence starts with a task; each step is one row
    of the operation table, drawn in proportion to its weight, or a move of the clock. Each
    sequence leaves some rows out, and its jobs have a handful of specs with a few kinds of
    ``"retries"`` (swarm testing: a sequence without deletes gets further, one whose specs
    say ``"retries": true`` fails such jobs often). :func:`machine_for` makes the concrete class
    for a store."""

    native: ClassVar[Store]
    reference: ClassVar[Callable[[float], Store]] = staticmethod(lambda lease: ReferenceStore(lease=lease))
    ops: ClassVar[tuple[Op, ...]] = OPS
    messages: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self.pair = Pair(self.native, type(self).reference(self.native.lease), self.ops, messages=self.messages)
        self.left_out: set[str] = set()
        self.mid_step = False

    @initialize(data=st.data())
    def choose_the_mix(self, data: st.DataObject) -> None:
        names = [op.name for op in self.ops if op.name not in ALWAYS]
        if names:
            self.left_out = data.draw(st.sets(st.sampled_from(names), max_size=len(names) // 2), label="rows left out")
        kinds = data.draw(st.sets(st.sampled_from(range(len(RETRIES))), min_size=1, max_size=3), label="retries kinds")
        self.pair.run.specs = tuple(data.draw(st.lists(specs(tuple(sorted(kinds))), min_size=1, max_size=8),
                                              label="the specs of its jobs"))
        if "create_task" in self.pair.ops:  # a sequence starts with a task
            create = self.pair.ops["create_task"]
            self.pair.step(create, create.args(self.pair.run, data.draw))

    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        self.mid_step = True  # until the step is over: Hypothesis may stop a sequence in a draw
        run = self.pair.run
        if run.live() or "create_task" not in self.pair.ops:
            menu = [op.name for op in self.ops if op.name not in self.left_out for _ in range(op.weight_in(run))]
            menu += ["tick"] * (TICK_WEIGHT + (4 if run.running else 0))
        else:
            menu = ["create_task"]
        name = data.draw(st.sampled_from(menu), label="step")
        if name == "tick":
            self.tick(data.draw(st.sampled_from(TICKS), label="how far"))
            self.mid_step = False
            return
        op = self.pair.ops[name]
        draw: Draw[Any] = data.draw
        self.pair.step(op, op.args(run, draw))
        self.mid_step = False

    def tick(self, how: str) -> None:
        run = self.pair.run
        lease = run.lease
        targets = clock_targets(run)
        exact = {"just before lease end": 0, "lease end": 1, "just after lease end": 2}
        if how in exact:
            when = targets[exact[how]] if targets else run.now + lease
        else:
            step = {"0.3s": 0.3, "1s": 1.0, "2.6s": 2.6, "lease+": lease + 0.01, "3 leases": 3 * lease, "400s": 400.0}
            when = run.now + step[how]
        self.pair.tick_to(when, how)

    @invariant()
    def reads_agree(self) -> None:
        self.pair.check_reads()

    def teardown(self) -> None:
        try:
            if not (self.pair.failed or self.mid_step):  # a sequence Hypothesis cut short is not compared further
                self.pair.finale()
        finally:
            self.pair.cleanup()


def machine_for(
    native: Store,
    ops: Sequence[Op] = OPS,
    *,
    reference: Callable[[float], Store] | None = None,
    messages: bool = True,
) -> type[DifferentialMachine]:
    """A state machine class driving ``native`` and the reference with the rows of ``ops``
    that the native store supports (``run_state_machine_as_test(machine_for(store))``)."""
    rows = tuple(op for op in by_name(ops).values() if op.supported(native))
    body: dict[str, Any] = {"native": native, "ops": rows, "messages": messages}
    if reference is not None:
        body["reference"] = staticmethod(reference)
    return type("DifferentialMachine", (DifferentialMachine,), body)


# ---------------------------------------------------------------------------------------
# Adoption
# ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def shrinking_for_at_most(seconds: int) -> Iterator[None]:
    """Bound the time Hypothesis spends shrinking a failing sequence (its own bound is five
    minutes, longer than a test may take here: each attempt replays a sequence on a real
    store). Uses a Hypothesis internal; without it, Hypothesis' own bound holds."""
    try:
        from hypothesis.internal.conjecture import engine
    except ImportError:  # pragma: no cover - Hypothesis moved it
        yield
        return
    old = getattr(engine, "MAX_SHRINKING_SECONDS", None)
    if old is None:  # pragma: no cover
        yield
        return
    engine.MAX_SHRINKING_SECONDS = seconds
    try:
        yield
    finally:
        engine.MAX_SHRINKING_SECONDS = old


def _drop_prefix(store: Store, prefix: str) -> None:
    """Remove the keys under the throw-away prefix the test gave a Redis-backed store."""
    client = getattr(store, "r", None)
    if getattr(store, "prefix", None) != prefix or client is None:
        return
    for key in list(client.scan_iter(match=f"{prefix}:*", count=1000)):
        client.delete(key)


class DifferentialTests:
    """Your native store against the reference. Set ``backend_string`` or override the
    ``native_store`` fixture (see the module documentation)."""

    backend_string: ClassVar[str | None] = None
    lease: ClassVar[float] = LEASE
    ops: ClassVar[Sequence[Op]] = OPS  # rows of the operation table to draw from
    examples: ClassVar[int] = EXAMPLES  # random sequences per run (see --multistep-differential-examples)
    steps: ClassVar[int] = STEPS  # steps per sequence, at most
    compare_error_messages: ClassVar[bool] = True  # False: exceptions compared by class only
    time_budget: ClassVar[float] = 30.0  # seconds of random sequences (then the round ends), unless their number was asked for
    shrink_seconds: ClassVar[int] = 90  # then the smallest failing sequence found so far is shown

    @pytest.fixture(scope="class")
    @classmethod
    def native_store(cls, request: pytest.FixtureRequest) -> Iterator[Store]:
        url = cls.backend_string or request.config.getoption("--multistep-backend")
        prefix = f"msdiff-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            backend = connect(url, lease=cls.lease, prefix=prefix)
        except ConfigurationError:  # the backend takes no prefix: its store as configured
            backend = connect(url, lease=cls.lease)
        backend.stop_recovery()  # an in-process backend's recovery would claim the test's leases on the wall clock
        try:
            yield backend.store
        finally:
            try:
                _drop_prefix(backend.store, prefix)
            finally:
                backend.close()

    @staticmethod
    def reference_store(lease: float) -> Store:
        """The reference: a fresh :class:`ReferenceStore` (a MemoryStore, RowStore logic) per
        sequence."""
        return ReferenceStore(lease=lease)

    def pair(self, native: Store) -> Pair:
        """A :class:`Pair` of ``native`` and a fresh reference, for a chosen sequence (a context
        manager that deletes the sequence's tasks at the end)."""
        reference = self.reference_store(native.lease)
        if type(native) is MemoryStore or type(native) is type(reference):
            pytest.skip(f"the store under test is the reference itself ({type(native).__name__})")
        return Pair(native, reference, self.ops, messages=self.compare_error_messages)

    def _examples(self, request: pytest.FixtureRequest) -> tuple[int, bool]:
        """How many random sequences, and whether they were asked for (then no time budget)."""
        asked = request.config.getoption("--multistep-differential-examples", default=None) or os.environ.get(
            EXAMPLES_ENV)
        return (int(asked), True) if asked else (self.examples, False)

    # -- random sequences ------------------------------------------------------------------
    def test_random_sequences_agree(self, native_store: Store, request: pytest.FixtureRequest) -> None:
        self.pair(native_store)  # skips when the store under test is the reference itself
        machine = machine_for(native_store, self.ops, reference=self.reference_store,
                              messages=self.compare_error_messages)
        examples, asked = self._examples(request)
        # Unless their number was asked for, the sequences run in rounds while the time budget
        # lasts: a slow or busy store must not turn the test into a timeout.
        until = None if asked else time.monotonic() + self.time_budget
        done = 0
        with shrinking_for_at_most(self.shrink_seconds):
            while done < examples and (until is None or time.monotonic() < until):
                n = examples if until is None else min(ROUND, examples - done)
                run_state_machine_as_test(machine, settings=settings(
                    max_examples=n, stateful_step_count=self.steps, deadline=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.data_too_large],
                ))
                done += n
        if done < examples:
            warnings.warn(f"differential test: {done} of {examples} random sequences ran within the "
                          f"{self.time_budget:g}s budget (a slow or busy store?)", stacklevel=1)

    # -- chosen sequences ------------------------------------------------------------------
    def test_spec_retries_one_point_zero_is_retried_exactly_once(self, native_store: Store) -> None:
        # Given a task that retries nothing, and a job whose spec says "retries": 1.0
        with self.pair(native_store) as p:
            a = p.run.tid("a")
            p.do("create_task", task_id=a, options=TaskOptions(max_retries=0, backoff=0.0, retention=RETENTION))
            p.do("add_jobs", task_id=a, kind="j", specs=['{"fn":"m:a","args":[],"retries":1.0}'])
            p.do("seal", task_id=a)
            # When it fails twice
            first = p.do("start", task_id=a, ref="j0")
            again = p.do("finish", task_id=a, ref="j0", attempt=1, outcome="error", error_type="ValueError",
                         message="first")
            second = p.do("start", task_id=a, ref="j0")
            end = p.do("finish", task_id=a, ref="j0", attempt=2, outcome="error", error_type="ValueError",
                       message="second")
            # Then both stores retried it exactly once: 1.0 counts as 1
            # (the retry puts j0 back in line: tickets for its queue, no message naming it)
            assert (first.attempt, again.refs, bool(again.tickets), second.attempt, end) == (1, (), True, 2, Dispatch())
            progress = p.reference.progress(a)
            assert progress is not None and progress.state == TaskState.FAILED
            assert [(f.ref, f.attempt, f.message) for f in p.native.failures(a)] == [("j0", 2, "second")]

    def test_every_kind_of_spec_retries_agrees(self, native_store: Store) -> None:
        """A job whose spec carries each kind of "retries" (and none), failing until it fails
        for good, under a task that retries nothing and one that retries twice."""
        for max_retries in (0, 2):
            for retries in RETRIES:
                with self.pair(native_store) as p:
                    a = p.run.tid("a")
                    spec = {"fn": "m:a", "args": []} | ({} if retries is ABSENT else {"retries": retries})
                    p.do("create_task", task_id=a,
                         options=TaskOptions(max_retries=max_retries, backoff=0.0, retention=RETENTION))
                    p.do("add_jobs", task_id=a, kind="j", specs=[json.dumps(spec)])
                    p.do("seal", task_id=a)
                    for attempt in range(1, 5):
                        if not p.do("start", task_id=a, ref="j0").run:
                            break
                        p.do("finish", task_id=a, ref="j0", attempt=attempt, outcome="error",
                             error_type="ValueError", message=f"attempt {attempt}")

    def test_failure_policies_callbacks_and_retries_agree(self, native_store: Store) -> None:
        """Each policy through failures, retries of jobs, of the callback and of a finalizer,
        and retries of the task, until it succeeds (steps a state makes pointless are still
        compared: a start the task refuses, say)."""
        script = [
            "j0 error", "j0 error", "j1 ok", "x0 error", "retry", "j0 error", "j0 error", "j1 ok", "x0 error",
            "x0 ok", "retry", "j0 ok", "f0 error", "f0 error", "x0 ok", "retry", "j0 ok", "f0 ok", "claim",
        ]
        for policy in Policy:
            with self.pair(native_store) as p:
                a = p.run.tid("a")
                p.do("create_task", task_id=a, options=TaskOptions(policy=policy, max_retries=1, backoff=0.0,
                                                                     retention=RETENTION))
                p.do("add_jobs", task_id=a, kind="j", specs=['{"fn":"m:a"}', '{"fn":"m:b"}'])
                p.do("add_jobs", task_id=a, kind="f", specs=['{"fn":"m:f"}'])
                p.do("add_jobs", task_id=a, kind="x", specs=['{"fn":"m:x"}'])
                p.do("seal", task_id=a)
                for step in script:
                    if step == "retry":
                        p.do("retry", task_id=a)
                    elif step == "claim":
                        p.tick_to(p.run.now + 1000.0)
                        p.do("claim_due", limit=1000)
                    else:
                        self._work(p, a, *step.split())
                for _ in range(5):  # then every job and finalizer succeeds
                    view = p.run.view(a)
                    if view.state == "failed":
                        p.do("retry", task_id=a)
                    for ref in view.startable():
                        self._work(p, a, ref, "ok")
                progress = p.reference.progress(a)
                assert progress is not None and progress.state == TaskState.SUCCEEDED, (policy, progress)

    @staticmethod
    def _work(p: Pair, task_id: str, ref: str, how: str) -> None:
        """A worker's start of ``ref`` and, if it may run, its outcome (``ok`` or ``error``)."""
        started = p.do("start", task_id=task_id, ref=ref)
        if started.run:
            p.do("finish", task_id=task_id, ref=ref, attempt=started.attempt, outcome=how, error_type="ValueError",
                 message=f"{ref} {how}", result="1")

    def test_lost_leases_and_backoff_on_the_logical_clock(self, native_store: Store) -> None:
        # Given a task whose jobs may fail once (backoff 2s) and lose their worker once, its
        # two jobs taken by tickets
        with self.pair(native_store) as p:
            a = p.run.tid("a")
            q = p.run.queue("default")
            lease = p.run.lease
            p.do("create_task", task_id=a, options=TaskOptions(policy=Policy.CONTINUE, max_retries=1, backoff=2.0,
                                                                 max_lost=1, retention=RETENTION))
            p.do("add_jobs", task_id=a, kind="j", specs=['{"fn":"m:a"}', '{"fn":"m:b","args":[1]}'])
            p.do("add_jobs", task_id=a, kind="f", specs=['{"fn":"m:fin"}'])
            p.do("seal", task_id=a)
            assert p.do("release", queue=q).tickets == (1, 2)
            t0 = p.run.now
            assert p.do("take", queue=q, ticket=1).ref == "j0"
            assert p.do("take", queue=q, ticket=1).reason == "stale-ticket"
            assert p.do("take", queue=q, ticket=2).ref == "j1"
            t_fail = p.run.now
            assert not p.do("finish", task_id=a, ref="j1", attempt=1, outcome="error", error_type="ValueError",
                            message="once")
            # When the clock reaches the backoff's end: j1 goes back in line (a ticket), not a moment earlier
            p.tick_to(t_fail + 2.0 - 1e-6)
            assert p.do("claim_due", limit=1000) == []
            p.tick_to(t_fail + 2.0)
            assert p.do("claim_due", limit=1000) == [Dispatch(a, q, (), (3,))]
            renewed = p.run.now
            assert p.do("renew", task_id=a, ref="j0", attempt=1)
            assert p.do("take", queue=q, ticket=3).attempt == 2
            assert not p.do("finish", task_id=a, ref="j1", attempt=2, outcome="ok", result='{"ok": "✓ 😀"}')
            # And j0's worker stops renewing: lost exactly at the renewed lease's end, back in line
            p.tick_to(t0 + lease)
            assert p.do("claim_due", limit=1000) == []
            p.tick_to(renewed + lease)
            assert p.do("claim_due", limit=1000) == [Dispatch(a, q, (), (4,))]
            # Then a second loss is one too many (max_lost=1): j0 fails for good, the finalizer is sent
            assert p.do("take", queue=q, ticket=4).attempt == 2
            p.tick_to(p.run.now + 3 * lease)
            assert p.do("claim_due", limit=1000) == [Dispatch(a, q, ("f0",))]
            assert [(f.ref, f.type) for f in p.native.failures(a)] == [("j0", "WorkerLost")]

    def test_caps_park_tickets_and_lost_tickets_are_sent_again(self, native_store: Store) -> None:
        """A task capped at one running job: the second ticket parks and comes back when the
        first job ends; a ticket nobody takes is sent again after two leases, then backs off."""
        with self.pair(native_store) as p:
            a, b = p.run.tid("a"), p.run.tid("b")
            q = p.run.queue("default")
            lease = p.run.lease
            p.do("create_task", task_id=a, options=TaskOptions(max_concurrency=1, retention=RETENTION))
            p.do("create_task", task_id=b, options=TaskOptions(group="g1", weight=2.0, group_max_concurrency=1,
                                                                 retention=RETENTION))
            p.do("add_jobs", task_id=a, kind="j", specs=['{"fn":"m:a"}'] * 3, per_message=2)
            p.do("add_jobs", task_id=b, kind="j", specs=['{"fn":"m:b"}'] * 2)
            assert p.do("release", queue=q).tickets == (1, 2, 3, 4, 5)
            first = p.do("take", queue=q, ticket=1)
            second = p.do("take", queue=q, ticket=2)
            assert {first.task_id, second.task_id} == {a, b}
            assert p.do("take", queue=q, ticket=3).reason == "capped"
            _, nxt = p.do("take_next", task_id=a, ref="j0", attempt=1, outcome="ok", result="1")
            assert nxt.run and nxt.ref == "j1"
            # going on: b's group is at its cap, so the queue's next job is a's last
            _, on = p.do("take_next", task_id=a, ref="j1", attempt=1, outcome="ok", go_on=True)
            assert on.run and on.task_id == a and on.ref == "j2"
            _, none = p.do("take_next", task_id=a, ref="j2", attempt=1, outcome="ok", go_on=True)
            assert not none.run and none.reason == "no-work"  # nothing waits: going on never parks
            p.do("finish", task_id=b, ref="j0", attempt=1, outcome="ok")
            p.tick_to(p.run.now + 2 * lease)
            p.do("claim_due", limit=1000)
            p.tick_to(p.run.now + 4 * lease)
            p.do("claim_due", limit=1000)
            p.do("cancel", task_id=b, by="tester")
            p.do("delete", task_id=a)
            p.do("release", queue=q)

    def test_a_late_success_leaves_nothing_in_line(self, native_store: Store) -> None:
        """A job declared lost goes back in line, then its slow worker reports success after
        all: once the task finalizes and ends, its queue counts no job waiting."""
        with self.pair(native_store) as p:
            a = p.run.tid("a")
            q = p.run.queue("default")
            p.do("create_task", task_id=a, options=TaskOptions(retention=RETENTION))
            p.do("add_jobs", task_id=a, kind="j", specs=['{"fn":"m:a"}'])
            p.do("add_jobs", task_id=a, kind="f", specs=['{"fn":"m:f"}'])
            p.do("seal", task_id=a)
            p.do("release", queue=q)
            assert p.do("take", queue=q, ticket=1).ref == "j0"
            p.tick_to(p.run.now + 2 * p.run.lease)
            assert p.do("claim_due", limit=1000) == [Dispatch(a, q, (), (2,))]
            assert p.do("finish", task_id=a, ref="j0", attempt=1, outcome="ok") == Dispatch(a, q, ("f0",))
            assert p.do("take", queue=q, ticket=2).reason == "no-work"
            f0 = p.do("start", task_id=a, ref="f0")
            p.do("finish", task_id=a, ref="f0", attempt=f0.attempt, outcome="ok")
            row = p.reference.queue_state(q)  # type: ignore[attr-defined]
            assert (row.waiting, row.parked, row.groups) == (0, 0, {})

    def test_deleting_a_task_with_running_jobs_frees_its_group(self, native_store: Store) -> None:
        """A group capped at one running job: deleting the task whose job runs lets the
        group's other task run (its parked ticket is owed again)."""
        with self.pair(native_store) as p:
            a, b = p.run.tid("a"), p.run.tid("b")
            q = p.run.queue("default")
            options = TaskOptions(group="tenant", group_max_concurrency=1, retention=RETENTION)
            for t in (a, b):
                p.do("create_task", task_id=t, options=options)
                p.do("add_jobs", task_id=t, kind="j", specs=['{"fn":"m:a"}'])
                p.do("seal", task_id=t)
            assert p.do("release", queue=q).tickets == (1, 2)
            assert p.do("take", queue=q, ticket=1).task_id == a
            assert p.do("take", queue=q, ticket=2).reason == "capped"
            p.do("delete", task_id=a)
            assert p.do("release", queue=q).tickets == (3,)
            assert p.do("take", queue=q, ticket=3).task_id == b

    def test_a_deep_backlog_is_refilled_in_half_windows(self, native_store: Store) -> None:
        """100 jobs, window 64: the first send is a window's worth; finishing jobs sends nothing
        while the broker holds more than half the window, then one send tops it up again; the
        last jobs (fewer waiting than half a window) are topped up one by one."""
        with self.pair(native_store) as p:
            a = p.run.tid("a")
            q = p.run.queue("default")
            p.do("create_task", task_id=a, options=TaskOptions(retention=RETENTION))
            p.do("add_jobs", task_id=a, kind="j", specs=['{"fn":"m:a"}'] * 100)
            p.do("seal", task_id=a)
            assert p.do("release", queue=q).tickets == tuple(range(1, 65))
            sent: list[tuple[int, ...]] = []
            for n in range(1, 33):  # take and finish 32 jobs: 32 tickets left, the refill point
                st = p.do("take", queue=q, ticket=n)
                sent.append(p.do("finish", task_id=a, ref=st.ref, attempt=st.attempt, outcome="ok").tickets)
            assert sent[:31] == [()] * 31 and sent[31] == tuple(range(65, 65 + 32)), sent
            # 68 jobs wait, 64 tickets out: the next finishes send nothing until 32 remain again
            for n in range(33, 101):
                st = p.do("take", queue=q, ticket=n)
                assert st.run, (n, st.reason)
                p.do("finish", task_id=a, ref=st.ref, attempt=st.attempt, outcome="ok")
            assert p.do("take", queue=q, ticket=101).reason in ("stale-ticket", "no-work")

    def test_a_large_add_agrees(self, native_store: Store) -> None:
        """One add_jobs of 4,500 specs (more than one script call on Redis), then a few of
        every transition."""
        with self.pair(native_store) as p:
            a = p.run.tid("a")
            p.do("create_task", task_id=a, options=TaskOptions(policy=Policy.CONTINUE, keep_results=True,
                                                                 retention=RETENTION, backoff=0.0))
            refs = p.do("add_jobs", task_id=a, kind="j", specs=[f'{{"fn":"m:a","args":[{i}]}}' for i in range(4500)])
            assert refs[-1] == "j4499"
            p.do("seal", task_id=a)
            queue = p.run.queue("default")
            assert p.do("release", queue=queue).tickets == tuple(range(1, 65))  # a window's worth
            p.do("start", task_id=a, ref="j4499")
            first = p.do("take", queue=queue, ticket=1)
            assert (first.ref, first.batch) == ("j0", 1)
            _, second = p.do("take_next", task_id=a, ref="j0", attempt=1, outcome="ok", result="[1]")
            p.do("finish", task_id=a, ref=second.ref, attempt=1, outcome="error", error_type="ValueError", message="x")
            p.do("finish", task_id=a, ref="j4499", attempt=1, outcome="ok", result="[2]")
            p.tick_to(p.run.now + 3 * p.run.lease)
            p.do("claim_due", limit=10_000)
            p.do("cancel", task_id=a, by="tester@host")

