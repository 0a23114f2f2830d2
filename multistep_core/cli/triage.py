"""Failure triage for ``multistep show``: identical failures grouped, one traceback per group.

Failures are identical when they have the same exception type and message; a group lists how
many failed, which refs and functions, the arguments of the first few (truncated), and the
traceback of its first member. Groups are ordered by size, largest first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.panel import Panel
from rich.text import Text

from ..model import Failure
from .base import when

ARGS_SHOWN = 3  # arguments of the first few failures of a group
ARGS_WIDTH = 60  # characters of one job's arguments on screen (one line of an 80-column panel)
TRACEBACK_LINES = 40  # last lines of a group's traceback on screen


@dataclass
class FailureGroup:
    type: str
    message: str
    failures: list[Failure] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.failures)

    @property
    def resolved(self) -> int:
        return sum(1 for f in self.failures if f.resolved)

    def to_dict(self, refs: int = 50) -> dict[str, Any]:
        first = self.failures[0]
        return {
            "type": self.type,
            "message": self.message,
            "count": self.count,
            "resolved": self.resolved,
            "functions": sorted({f.fn for f in self.failures}),
            "refs": [f.ref for f in self.failures[:refs]],
            "args": [f.args for f in self.failures[:ARGS_SHOWN]],
            "traceback": first.traceback,
        }


def group_failures(failures: Sequence[Failure]) -> list[FailureGroup]:
    """Identical failures (type and message) together, largest group first."""
    groups: dict[tuple[str, str], FailureGroup] = {}
    for f in failures:
        key = (f.type, f.message)
        if key not in groups:
            groups[key] = FailureGroup(f.type, f.message)
        groups[key].failures.append(f)
    return sorted(groups.values(), key=lambda g: -g.count)  # stable: first seen first among equals


def truncate(text: str, width: int = ARGS_WIDTH) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _refs(group: FailureGroup, shown: int = 8) -> str:
    refs = [f.ref for f in group.failures]
    more = f" and {len(refs) - shown} more" if len(refs) > shown else ""
    return ", ".join(refs[:shown]) + more


def group_panel(group: FailureGroup) -> Panel:
    first = group.failures[0]
    body = Text()
    body.append(f"{group.type}: {group.message}\n", style="bold red")
    fns = sorted({f.fn for f in group.failures})
    body.append(f"{group.count} failed: {_refs(group)}  ({', '.join(fns)})\n", style="dim")
    if group.resolved:
        body.append(f"{group.resolved} of them resolved by a later attempt\n", style="green")
    for f in group.failures[:ARGS_SHOWN]:
        body.append(f"  {f.ref} args {truncate(f.args) if f.args else '(not recorded)'}\n")
    body.append(f"first: attempt {first.attempt}, {when(first.at) if first.at else 'time unknown'}\n", style="dim")
    if first.traceback:
        lines = first.traceback.rstrip().splitlines()
        if len(lines) > TRACEBACK_LINES:
            lines = [f"... ({len(lines) - TRACEBACK_LINES} lines cut; show --json has it whole)", *lines[-TRACEBACK_LINES:]]
        body.append("\n" + "\n".join(lines))
    title = f"{group.count} x {group.type}" if group.count > 1 else f"{first.ref} {first.fn}"
    style = "green" if group.resolved == group.count else "red"
    return Panel(body, title=title, title_align="left", border_style=style)
