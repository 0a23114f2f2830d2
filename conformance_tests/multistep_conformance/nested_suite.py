"""Nested tasks (docs/nested.md), end to end: a subtask's whole life is one step of its parent.

Mixed into :class:`~multistep_conformance.suite.BackendTests`. What ran, how often and in which
order is read from the journal the jobs write; counts from the store.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from multistep_core import InvalidJob, InvalidTransition, TaskState, WaitTimeout
from multistep_core.model import encode_message

from . import jobs
from .harness import DEFAULT_TIMEOUT, Harness, Journal, eventually

T = DEFAULT_TIMEOUT


def _done(task: Any, harness: Harness, timeout: float = T) -> Any:
    try:
        return task.wait(timeout=timeout)
    except WaitTimeout as exc:
        raise AssertionError(f"{exc}\n{harness.worker_logs() if harness.external else ''}") from exc


def _snap(journal: Journal, label: str) -> dict[str, Any]:
    (line,) = journal.starting(label + "=")
    return json.loads(line.split("=", 1)[1])  # type: ignore[no-any-return]


class NestedTests:
    """A subtask counts once in its parent, whatever the failure option, cascade or fault."""

    # -- shape and order ---------------------------------------------------------------
    def test_a_3x3x3_tree_finalizes_bottom_up_each_child_counted_once(self, harness: Harness, journal: Journal) -> None:
        # Given a root with 3 children of 3 grandchildren of 3 jobs each, a finalizer at every node
        with harness.task(keep_results=True) as root:
            for i in range(3):
                with root.add_subtask(f"{root.id}.c{i}", keep_results=True) as child:
                    for k in range(3):
                        with child.add_subtask(f"{root.id}.c{i}.g{k}", keep_results=True) as grand:
                            grand.add_jobs(jobs.square, [(journal.path, 100 * i + 10 * k + n) for n in range(3)])
                            grand.add_finalization_job(jobs.record, journal.path, f"fin.g{i}{k}")
                    child.add_finalization_job(jobs.record, journal.path, f"fin.c{i}")
            root.add_finalization_job(jobs.tree_snapshot, journal.path, "fin.root")
        p = _done(root, harness)
        # Then every leaf ran once and each finalizer once, after everything below it
        assert p.state == TaskState.SUCCEEDED
        lines = journal.lines()
        leaves = [x for x in lines if x.startswith("sq")]
        assert sorted(leaves) == sorted(f"sq{100 * i + 10 * k + n}" for i in range(3) for k in range(3) for n in range(3))
        for i in range(3):
            for k in range(3):
                assert lines.count(f"fin.g{i}{k}") == 1
                assert max(lines.index(f"sq{100 * i + 10 * k + n}") for n in range(3)) < lines.index(f"fin.g{i}{k}")
                assert lines.index(f"fin.g{i}{k}") < lines.index(f"fin.c{i}")
            assert lines.count(f"fin.c{i}") == 1
        assert len(journal.starting("fin.root=")) == 1 and lines[-1].startswith("fin.root=")
        # And the root counts its three direct steps; the deep view and the results see the tree
        assert (p.total, p.succeeded, p.failed, p.finalizers_done) == (3, 3, 0, 1)
        seen = _snap(journal, "fin.root")
        assert (seen["total"], seen["succeeded"], seen["deep_total"], seen["deep_succeeded"]) == (3, 3, 27, 27)
        assert seen["results"]["j1"]["j2"] == {"j0": 14400, "j1": 14641, "j2": 14884}  # c1.g2: 120..122 squared
        deep = root.progress(deep=True)
        assert (deep.total, deep.succeeded, deep.finalizers_total, deep.finalizers_done) == (27, 27, 13, 13)
        tree = root.tree()
        assert [c.task_id for c in tree.children] == [f"{root.id}.c{i}" for i in range(3)]
        assert [(c.ref, c.step, c.on_failure) for c in tree.children] == [(f"j{i}", "succeeded", "fail") for i in range(3)]
        assert sum(1 for _ in tree.walk()) == 13
        assert harness.backend.get_task(f"{root.id}.c1.g2").progress().parent == f"{root.id}.c1"

    def test_a_depth_4_chain_finalizes_from_the_bottom(self, harness: Harness, journal: Journal) -> None:
        # Given root > d1 > d2 > d3 > d4, each level with a job of its own and a finalizer
        with harness.task() as root:
            level = root
            stack = []
            for d in range(1, 5):
                level.add_job(jobs.record, journal.path, f"job.d{d - 1}")
                level.add_finalization_job(jobs.record, journal.path, f"fin.d{d - 1}")
                sub = level.add_subtask(f"{root.id}.d{d}")
                stack.append(sub)
                level = sub
            level.add_job(jobs.record, journal.path, "job.d4")
            level.add_finalization_job(jobs.record, journal.path, "fin.d4")
            for sub in reversed(stack):
                sub.seal()
        p = _done(root, harness)
        assert p.state == TaskState.SUCCEEDED and (p.total, p.succeeded) == (2, 2)
        fins = [x for x in journal.lines() if x.startswith("fin.")]
        assert fins == ["fin.d4", "fin.d3", "fin.d2", "fin.d1", "fin.d0"]
        assert all(journal.count(f"job.d{d}") == 1 for d in range(5))
        assert max(d for d, _ in root.tree().walk()) == 4
        deep = root.progress(deep=True)
        assert (deep.total, deep.succeeded, deep.finalizers_done) == (5, 5, 5)

    def test_a_running_job_adds_a_subtask_its_task_waits_for(self, harness: Harness, journal: Journal) -> None:
        with harness.task() as root:
            root.add_job(jobs.spawn_subtask, journal.path, "sub", 4)
            root.add_finalization_job(jobs.record, journal.path, "fin")
        p = _done(root, harness)
        assert p.state == TaskState.SUCCEEDED and (p.total, p.succeeded) == (2, 2)
        lines = journal.lines()
        assert lines.index("sub.fin") < lines.index("fin") and lines.count("fin") == 1
        assert sorted(x for x in lines if x.startswith("sub.") and x[4:].isdigit()) == [f"sub.{i}" for i in range(4)]

    # -- what a child's failure does ---------------------------------------------------
    def _failing_child(self, harness: Harness, journal: Journal, mode: str, **opts: Any) -> Any:
        with harness.task(**opts) as root:
            root.add_job(jobs.record, journal.path, "ok")
            with root.add_subtask(f"{root.id}.child", parent_on_failure=mode) as child:
                child.add_job(jobs.record, journal.path, "child.ok")
                child.add_job(jobs.always_fail, journal.path, "child.bad")
                child.add_finalization_job(jobs.record, journal.path, "child.fin")
            root.add_finalization_job(jobs.tree_snapshot, journal.path, "fin")
        return root

    def test_a_failed_child_fails_its_parent_by_default(self, harness: Harness, journal: Journal) -> None:
        root = self._failing_child(harness, journal, "fail")
        p = _done(root, harness)
        assert p.state == TaskState.FAILED and (p.succeeded, p.failed) == (1, 1)
        (f,) = root.failures()
        assert (f.ref, f.type) == ("j1", "SubtaskFailed") and root.id in f.message
        assert harness.backend.get_task(f"{root.id}.child").state == TaskState.FAILED
        time.sleep(harness.lease * 0.5)
        assert journal.count("child.fin") == 0 and journal.starting("fin=") == []

    def test_an_ignored_child_failure_counts_as_done(self, harness: Harness, journal: Journal) -> None:
        root = self._failing_child(harness, journal, "ignore")
        p = _done(root, harness)
        assert p.state == TaskState.SUCCEEDED and (p.succeeded, p.failed) == (2, 0)
        seen = _snap(journal, "fin")
        assert seen["failures"] == [] and seen["deep_failed"] == 1
        assert root.tree().children[0].step == "succeeded"

    def test_continue_runs_the_parent_finalizers_which_see_the_child_failed(self, harness: Harness, journal: Journal) -> None:
        # under the parent's default policy "fail": the child's failure still does not fail it
        root = self._failing_child(harness, journal, "continue")
        p = _done(root, harness)
        assert p.state == TaskState.SUCCEEDED and (p.succeeded, p.failed) == (1, 1)
        seen = _snap(journal, "fin")
        assert seen["failures"] == ["j1:SubtaskFailed"] and (seen["failed"], seen["deep_failed"]) == (1, 1)

    def test_fail_under_a_continue_parent_is_seen_by_its_finalizers(self, harness: Harness, journal: Journal) -> None:
        root = self._failing_child(harness, journal, "fail", policy="continue")
        p = _done(root, harness)
        assert p.state == TaskState.SUCCEEDED and p.failed == 1
        assert _snap(journal, "fin")["failures"] == ["j1:SubtaskFailed"]

    # -- cascades ------------------------------------------------------------------------
    def test_cancel_cascades_down_the_tree(self, harness: Harness, journal: Journal) -> None:
        gate = journal.flag("gate")
        with harness.task() as root:
            with root.add_subtask(f"{root.id}.c") as child:
                with child.add_subtask(f"{root.id}.c.g") as grand:
                    grand.add_job(jobs.block, journal.path, "g.block", gate)
                    grand.add_jobs(jobs.record, [(journal.path, f"g.later{i}") for i in range(50)])
                    grand.add_finalization_job(jobs.record, journal.path, "g.fin")
                child.add_finalization_job(jobs.record, journal.path, "c.fin")
            root.add_finalization_job(jobs.record, journal.path, "root.fin")
        eventually(lambda: journal.starting("g.block:start:"), what="the grandchild's job to start")
        assert root.cancel(by="the nested suite") is True
        open(gate, "w").close()
        for tid in (root.id, f"{root.id}.c", f"{root.id}.c.g"):
            p = harness.backend.get_task(tid).progress()
            assert p.state == TaskState.CANCELLED, tid
            assert p.cancelled_by is not None and "the nested suite" in p.cancelled_by
        time.sleep(harness.lease * 0.5)
        assert [journal.count(x) for x in ("g.fin", "c.fin", "root.fin")] == [0, 0, 0]

    def test_a_cancelled_child_under_continue_lets_the_parent_finalize(self, harness: Harness, journal: Journal) -> None:
        gate = journal.flag("gate")
        with harness.task() as root:
            root.add_job(jobs.record, journal.path, "ok")
            with root.add_subtask(f"{root.id}.c", parent_on_failure="continue") as child:
                child.add_job(jobs.block, journal.path, "c.block", gate)
            root.add_finalization_job(jobs.tree_snapshot, journal.path, "fin")
        eventually(lambda: journal.starting("c.block:start:"), what="the child's job to start")
        assert harness.backend.get_task(f"{root.id}.c").cancel() is True
        p = _done(root, harness)
        open(gate, "w").close()
        assert p.state == TaskState.SUCCEEDED
        assert _snap(journal, "fin")["failures"] == ["j1:SubtaskCancelled"]

    def test_retry_of_a_failed_parent_reruns_only_what_failed_below_it(self, harness: Harness, journal: Journal) -> None:
        # Given a tree where one grandchild job fails until a file exists
        flag = journal.flag("fixed")
        with harness.task() as root:
            for i in range(2):
                with root.add_subtask(f"{root.id}.c{i}") as child:
                    for k in range(2):
                        with child.add_subtask(f"{root.id}.c{i}.g{k}") as grand:
                            grand.add_jobs(jobs.record, [(journal.path, f"leaf{i}{k}{n}") for n in range(3)])
                            if (i, k) == (1, 0):
                                grand.add_job(jobs.fail_unless_file, journal.path, "flaky", flag)
                            grand.add_finalization_job(jobs.record, journal.path, f"fin.g{i}{k}")
                    child.add_finalization_job(jobs.record, journal.path, f"fin.c{i}")
            root.add_finalization_job(jobs.record, journal.path, "fin.root")
        p = _done(root, harness)
        assert p.state == TaskState.FAILED and (p.succeeded, p.failed) == (1, 1)
        assert [harness.backend.get_task(f"{root.id}.{x}").state for x in ("c1", "c1.g0", "c1.g1", "c0")] == [
            TaskState.FAILED, TaskState.FAILED, TaskState.SUCCEEDED, TaskState.SUCCEEDED,
        ]
        # When the cause is fixed and the root retried
        open(flag, "w").close()
        root.retry()
        p = _done(root, harness)
        # Then only the failed job ran again, and each finalizer ran once
        assert p.state == TaskState.SUCCEEDED and (p.succeeded, p.failed) == (2, 0)
        assert journal.count("flaky:run") == 2 and journal.count("flaky:ok") == 1
        assert all(journal.count(f"leaf{i}{k}{n}") == 1 for i in range(2) for k in range(2) for n in range(3))
        for label in ("fin.g00", "fin.g01", "fin.g10", "fin.g11", "fin.c0", "fin.c1", "fin.root"):
            assert journal.count(label) == 1, label
        lines = journal.lines()
        assert lines.index("flaky:ok") < lines.index("fin.g10") < lines.index("fin.c1") < lines.index("fin.root")

    def test_delete_removes_the_tree_and_retention_applies_to_it_whole(self, harness: Harness, journal: Journal) -> None:
        with harness.task(retention=4.0) as root:
            with root.add_subtask(f"{root.id}.c", retention=1.0) as child:
                child.add_job(jobs.record, journal.path, "c.job")
                with child.add_subtask(f"{root.id}.c.g", retention=1.0) as grand:
                    grand.add_job(jobs.record, journal.path, "g.job")
        _done(root, harness)
        store = harness.backend.store
        # the children never expire on their own (past their own retention), only with the root
        time.sleep(1.5)
        harness.backend.recover()
        if store.progress(root.id) is not None:  # (a machine slow enough may be past the root's too)
            assert store.progress(f"{root.id}.c") is not None and store.progress(f"{root.id}.c.g") is not None
        eventually(lambda: store.progress(root.id) is None, timeout=15, what="the root to expire")
        harness.backend.recover()
        eventually(lambda: store.progress(f"{root.id}.c.g") is None and store.progress(f"{root.id}.c") is None,
                   timeout=10, what="the tree to expire with its root")
        # And delete removes a whole tree; a running subtask cannot be deleted alone
        with harness.task() as other:
            with other.add_subtask(f"{other.id}.c") as c:
                c.add_job(jobs.record, journal.path, "x")
        _done(other, harness)
        assert other.delete() is True
        assert store.progress(f"{other.id}.c") is None
        running = harness.task()
        sub = running.add_subtask(f"{running.id}.c")
        with pytest.raises(InvalidTransition, match="subtask"):
            sub.delete()
        running.cancel()

    def test_top_level_listing_and_bad_input(self, harness: Harness, journal: Journal) -> None:
        with harness.task() as root:
            root.add_subtask(f"{root.id}.c").seal()
        _done(root, harness)
        top = {p.task_id for p in harness.backend.list_tasks(top_level=True)}
        every = {p.task_id for p in harness.backend.list_tasks()}
        assert root.id in top and f"{root.id}.c" not in top and f"{root.id}.c" in every
        with pytest.raises(InvalidTransition, match="succeeded"):
            root.add_subtask()
        fresh = harness.task()
        with pytest.raises(InvalidJob, match="parent_on_failure"):
            fresh.add_subtask(parent_on_failure="explode")
        with pytest.raises(InvalidJob, match="unknown option"):
            fresh.add_subtask(colour="red")
        assert fresh.progress().total == 0
        fresh.cancel()

    # -- exactly once at the boundary ------------------------------------------------------
    def test_duplicates_of_the_childs_last_finalizer_count_once_in_the_parent(
        self, harness: Harness, journal: Journal
    ) -> None:
        with harness.task() as root:
            with root.add_subtask(f"{root.id}.c") as child:
                child.add_jobs(jobs.record, [(journal.path, f"c{i}") for i in range(5)])
                child.add_finalization_job(jobs.record, journal.path, "c.fin", 0.05)
            root.add_finalization_job(jobs.record, journal.path, "root.fin")
        for _ in range(5):  # copies of the child's finalizer, some before, some after it ran
            harness.publish_raw(encode_message(child.id, "f0"))
            harness.publish_raw(encode_message(root.id, "j0"))  # and of the slot itself
        p = _done(root, harness)
        for _ in range(3):
            harness.publish_raw(encode_message(child.id, "f0"))
            harness.publish_raw(encode_message(root.id, "f0"))
        drain = harness.task()
        drain.add_job(jobs.record, journal.path, "drained")
        drain.seal()
        _done(drain, harness)
        time.sleep(0.3)
        assert p.state == TaskState.SUCCEEDED
        assert journal.count("c.fin") == 1 and journal.count("root.fin") == 1
        p = root.progress()
        assert (p.total, p.succeeded, p.failed, p.running, p.fraction) == (1, 1, 0, 0, 1.0)

    def test_worker_killed_in_the_childs_last_finalizer_counts_the_child_once(
        self, harness: Harness, journal: Journal
    ) -> None:
        if not harness.external:
            pytest.skip("capability: separate worker processes (this backend runs jobs in-process)")
        gate = journal.flag("gate")
        with harness.task() as root:
            with root.add_subtask(f"{root.id}.c") as child:
                child.add_job(jobs.record, journal.path, "c.job")
                child.add_finalization_job(jobs.block, journal.path, "c.fin", gate)
            root.add_finalization_job(jobs.record, journal.path, "root.fin")
        start = eventually(lambda: journal.starting("c.fin:start:1:"), what="the child's finalizer to start")
        harness.kill_worker_of(int(start[0].rsplit(":", 1)[1]))
        open(gate, "w").close()
        harness.start_worker()
        p = _done(root, harness)
        assert p.state == TaskState.SUCCEEDED and (p.total, p.succeeded) == (1, 1)
        assert len(journal.starting("c.fin:start:")) >= 2 and journal.count("root.fin") == 1

    def test_worker_killed_after_the_child_ended_before_its_message_was_acknowledged(
        self, harness: Harness, journal: Journal
    ) -> None:
        """The child's last finalizer succeeded and its store call ended the child and counted it
        in the parent (one transaction: there is no moment in between), then the worker runs the
        parent's finalizer right away, before acknowledging the child's message: SIGKILL it there.
        The child's message comes back (a duplicate: already finished), the parent's finalizer is
        handed out again by recovery, and the child counts once."""
        if not harness.external:
            pytest.skip("capability: separate worker processes (this backend runs jobs in-process)")
        gate = journal.flag("gate")
        with harness.task() as root:
            with root.add_subtask(f"{root.id}.c") as child:
                child.add_job(jobs.record, journal.path, "c.job")
                child.add_finalization_job(jobs.record, journal.path, "c.fin")
            root.add_finalization_job(jobs.block, journal.path, "root.fin0", gate)
            root.add_finalization_job(jobs.record, journal.path, "root.fin1")
        start = eventually(lambda: journal.starting("root.fin0:start:1:"), what="the parent's finalizer to start")
        assert journal.count("c.fin") == 1
        p = root.progress()
        assert (p.state, p.succeeded, p.running) == (TaskState.FINALIZING, 1, 0)  # counted, at once
        harness.kill_worker_of(int(start[0].rsplit(":", 1)[1]))
        open(gate, "w").close()
        harness.start_worker()
        p = _done(root, harness)
        assert p.state == TaskState.SUCCEEDED and (p.total, p.succeeded, p.failed) == (1, 1, 0)
        assert len(journal.starting("root.fin0:start:")) >= 2 and journal.count("root.fin1") == 1
        assert child.progress().state == TaskState.SUCCEEDED and child.progress().finalizers_done == 1
