"""How ``multistep show ID --tree`` draws a task and its subtasks (docs/nested.md)."""

from __future__ import annotations

from rich.text import Text
from rich.tree import Tree

from .model import TaskState
from .nesting import TaskTree

_STYLE = {
    TaskState.SUCCEEDED: "green", TaskState.FAILED: "red", TaskState.CANCELLED: "yellow",
    TaskState.RUNNING: "cyan", TaskState.FINALIZING: "cyan", TaskState.OPEN: "blue",
}


def _label(node: TaskTree) -> Text:
    p = node.progress
    text = Text()
    if node.ref:
        text.append(f"{node.ref} ", style="dim")
    text.append(p.task_id, style="bold")
    text.append(f"  {p.state.value}", style=_STYLE.get(p.state, ""))
    text.append(f"  steps {p.done}/{p.total}")
    if p.failed:
        text.append(f" ({p.failed} failed)", style="red")
    text.append(f"  finalizers {p.finalizers_done}/{p.finalizers_total}")
    if node.ref and node.on_failure != "fail":
        text.append(f"  on failure: {node.on_failure}", style="dim")
    return text


def render(root: TaskTree) -> Tree:
    """A rich tree: one line per task, its step ref in the parent, state and counts."""
    deep = root.deep()
    out = Tree(_label(root))
    out.label.append(f"  (whole tree: {deep.done}/{deep.total} jobs, "  # type: ignore[union-attr]
                     f"{deep.finalizers_done}/{deep.finalizers_total} finalizers)", style="dim")
    stack: list[tuple[TaskTree, Tree]] = [(root, out)]
    while stack:
        node, branch = stack.pop()
        for child in node.children:
            stack.append((child, branch.add(_label(child))))
    return out
