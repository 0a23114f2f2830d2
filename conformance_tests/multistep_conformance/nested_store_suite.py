"""Nested tasks at the store (docs/nested.md): a child's end counts in its parent inside the same
transition, once, however many callers race or repeat it. Mixed into :class:`StoreTests`."""

from __future__ import annotations

import threading
import time
from typing import Any

from multistep_core import Store, TaskOptions, TaskState
from multistep_core.model import Dispatch

SPEC = '{"fn":"conformance.ping","args":[]}'


def _refs(d: Dispatch, task_id: str) -> list[str]:
    return [r for p in d.parts() if p.task_id == task_id for r in p.refs]


class NestedStoreTests:
    def _tree(self, store: Store, jobs: int = 1, fins: int = 1, children: int = 1, child_jobs: int = 2,
               child_fins: int = 1, **child_opts: Any) -> tuple[str, list[str]]:
        from .store_suite import fresh_id

        now = time.time()
        parent = fresh_id("nest")
        store.create_task(parent, TaskOptions(), now)
        if jobs:
            store.add_jobs(parent, "j", [SPEC] * jobs, now)
        if fins:
            store.add_jobs(parent, "f", [SPEC] * fins, now)
        kids: list[str] = []
        for _ in range(children):
            child = f"{parent}.c{len(kids)}"  # not in the suite's list: deleted with its root
            store.add_subtask(parent, child, TaskOptions(**child_opts), "fail", now)
            if child_jobs:
                store.add_jobs(child, "j", [SPEC] * child_jobs, now)
            if child_fins:
                store.add_jobs(child, "f", [SPEC] * child_fins, now)
            store.seal(child, now)
            kids.append(child)
        store.seal(parent, now)
        return parent, kids

    def _run(self, store: Store, task_id: str, ref: str) -> Dispatch:
        s = store.start(task_id, ref, time.time())
        assert s.run, (task_id, ref, s)
        return store.finish(task_id, ref, s.attempt, time.time())

    def test_a_childs_end_counts_in_its_parent_in_the_same_transition_once(self, store: Store) -> None:
        parent, (child,) = self._tree(store)
        p = store.progress(parent)
        assert p is not None and (p.total, p.running, p.succeeded) == (2, 1, 0)  # the slot runs at once
        self._run(store, parent, "j0")
        self._run(store, child, "j0")
        self._run(store, child, "j1")
        s = store.start(child, "f0", time.time())
        assert s.run
        d = store.finish(child, "f0", s.attempt, time.time())
        # Then the same call ended the child, counted it in the parent and asks for the parent's f0
        assert _refs(d, parent) == ["f0"]
        p = store.progress(parent)
        assert p is not None and (p.state, p.succeeded, p.running) == (TaskState.FINALIZING, 2, 0)
        # And a repeat of the child's last finish (a redelivery) changes nothing
        assert not store.finish(child, "f0", s.attempt, time.time())
        assert store.start(child, "f0", time.time()).run is False
        p2 = store.progress(parent)
        assert p2 is not None and (p2.succeeded, p2.total) == (2, 2)

    def test_the_slot_never_starts_and_recovery_never_touches_it(self, store: Store) -> None:
        parent, _kids = self._tree(store, jobs=0)
        assert store.start(parent, "j0", time.time()).run is False
        later = time.time() + 1.0  # (not far ahead: the store may be shared with other tests)
        for d in store.claim_due(later):
            assert "j0" not in _refs(d, parent)
        assert store.job_states(parent)["j0"] == "running"
        p = store.progress(parent)
        assert p is not None and p.state == TaskState.RUNNING and p.running == 1

    def test_children_ending_at_once_count_exactly_once_and_finalize_once(self, store: Store) -> None:
        parent, kids = self._tree(store, jobs=0, children=16, child_jobs=1, child_fins=0)
        starts = {c: store.start(c, "j0", time.time()) for c in kids}
        out: list[Dispatch] = []
        barrier = threading.Barrier(len(kids))

        def end(c: str) -> None:
            barrier.wait()
            out.append(store.finish(c, "j0", starts[c].attempt, time.time()))
            out.append(store.finish(c, "j0", starts[c].attempt, time.time()))  # and a duplicate

        threads = [threading.Thread(target=end, args=(c,)) for c in kids]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(_refs(d, parent).count("f0") for d in out) == 1
        p = store.progress(parent)
        assert p is not None and (p.succeeded, p.failed, p.running, p.state) == (16, 0, 0, TaskState.FINALIZING)

    def test_cancel_of_the_parent_cascades_and_retry_resumes_only_failed_children(self, store: Store) -> None:
        from .store_suite import err

        parent, kids = self._tree(store, jobs=0, fins=1, children=2, child_jobs=1, child_fins=0)
        self._run(store, kids[0], "j0")
        s = store.start(kids[1], "j0", time.time())
        store.finish(kids[1], "j0", s.attempt, time.time(), error=err("j0", s.attempt))
        p = store.progress(parent)
        assert p is not None and (p.state, p.succeeded, p.failed) == (TaskState.FAILED, 1, 1)
        d = store.retry(parent, time.time())
        assert store.progress(kids[1]).state == TaskState.RUNNING  # type: ignore[union-attr]
        assert store.progress(kids[0]).state == TaskState.SUCCEEDED  # type: ignore[union-attr]
        assert store.job_states(parent)["j1"] == "running" and store.job_states(kids[1])["j0"] == "pending"
        assert d is not None
        assert store.cancel(parent, "nested store suite", time.time()) is True
        assert store.progress(kids[1]).state == TaskState.CANCELLED  # type: ignore[union-attr]
        assert store.progress(kids[0]).state == TaskState.SUCCEEDED  # type: ignore[union-attr]

    def test_a_forged_finish_or_renew_of_the_slot_changes_nothing(self, store: Store) -> None:
        parent, (child,) = self._tree(store, jobs=0, fins=0)
        for attempt in (0, 1, 2):
            assert store.renew(parent, "j0", attempt, time.time()) is False
            assert not store.finish(parent, "j0", attempt, time.time())
            assert not store.finish(parent, "j0", attempt, time.time(), result="1")
        p = store.progress(parent)
        assert p is not None and (p.state, p.running, p.succeeded) == (TaskState.RUNNING, 1, 0)
        assert store.job_states(parent)["j0"] == "running"
        assert store.progress(child).state == TaskState.RUNNING  # type: ignore[union-attr]
