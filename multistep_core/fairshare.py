"""Fair share between the tasks of a queue: the scheduling state a store keeps per queue.

A queue message is a *ticket*: "take the next job of queue Q". Which job is decided by the
store when a worker presents the ticket (late binding), so a small task created after a big
one is served at the next free worker, not after everything queued before it.

The choice is weighted fair queuing in two levels (start-time fair queuing): the queue picks
the *group* with the least virtual time (service received divided by weight), then the group
picks its *task* with the least virtual time. A task without a group is a group of its own.
A group or task that starts waiting joins at the current virtual clock, so it neither starves
the others with credit saved up nor waits behind them. ``max_concurrency`` (per task) and
``group_max_concurrency`` (per group) are caps on running jobs, counted in the same atomic
transition that starts and finishes jobs.

The broker holds at most ``window`` tickets per queue: the store issues tickets as jobs end
(inside the finish transition it makes anyway), never one per job at creation. Every issued
ticket is in the queue's ledger until a worker takes it; a ticket not taken within the ticket
timeout is presumed lost (a message lost by the broker, or taken by a worker that died before
its first store call) and sent again, with exponential backoff so an idle queue with no
workers does not fill the broker with copies. A ticket the store no longer knows (taken, or a
duplicate delivery) is skipped; a ticket that finds only capped work is *parked* and released
when a running job of the queue ends.

This module holds the rows and the pure logic; :class:`multistep_core.store.RowStore` applies
it inside its transactions, and the Redis store's Lua (``redis/lua/fair.lua``) is its twin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Tickets in the broker per queue, at most. Keep half of it above the total concurrency of
#: the workers serving the queue (the broker holds at least half while jobs wait; see
#: :data:`REFILL_AT`), so none of them waits for a ticket.
DEFAULT_WINDOW = 64
#: Jobs a worker goes on to after a ticket's job, without a ticket (the ``go_on=`` option;
#: docs/fairness.md, "Going on"); 0: one job per ticket.
DEFAULT_GO_ON = 32
#: A ticket not taken within this many leases is presumed lost and sent again.
TICKET_TIMEOUT_LEASES = 2.0
#: Re-sends of one ticket back off exponentially, up to this many timeouts apart (so a queue
#: with no workers does not fill the broker with copies, yet a ticket lost again and again while
#: workers churn is back within 4 timeouts once they are up: the window waits for no longer).
MAX_TICKET_BACKOFF = 4
#: The window is refilled when the tickets held (in the broker or parked) fall to this share of
#: it. While they are above it no ticket is sent: a worker finishing a job of a deep backlog finds
#: the broker still holding at least half a window, so nobody waits, and the tickets of the
#: refill go out in one send. A short backlog (half a window or less) is topped up at once as
#: before, so a few waiting jobs never wait for a refill.
REFILL_AT = 0.5


def solo_group(task_id: str) -> str:
    """The group key of a task that names no group ("=" is not allowed in group names)."""
    return "=" + task_id


@dataclass
class GroupRow:
    vt: float = 0.0  # virtual time: service received / weight
    clock: float = 0.0  # virtual clock among the group's tasks
    running: int = 0  # running jobs of the group's tasks
    weight: float = 1.0
    limit: int = 0  # group_max_concurrency; 0 = no cap
    tasks: dict[str, float] = field(default_factory=dict)  # task id -> virtual time (tasks with jobs waiting)

    def to_dict(self) -> dict[str, Any]:
        return {"vt": self.vt, "clock": self.clock, "running": self.running, "weight": self.weight,
                "limit": self.limit, "tasks": dict(self.tasks)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GroupRow:
        return cls(vt=d["vt"], clock=d["clock"], running=d["running"], weight=d["weight"], limit=d["limit"],
                   tasks=dict(d["tasks"]))


@dataclass
class QueueRow:
    name: str
    seq: int = 0  # the last ticket number issued
    clock: float = 0.0  # virtual clock among the groups
    waiting: int = 0  # jobs waiting for a ticket, over every task of the queue
    parked: int = 0  # tickets taken that found only capped work, owed back when a job ends
    tickets: dict[int, tuple[float, int]] = field(default_factory=dict)  # ticket -> (issued at, re-sends)
    groups: dict[str, GroupRow] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "seq": self.seq, "clock": self.clock, "waiting": self.waiting,
            "parked": self.parked, "tickets": {str(k): list(v) for k, v in self.tickets.items()},
            "groups": {k: g.to_dict() for k, g in self.groups.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QueueRow:
        return cls(
            name=d["name"], seq=d["seq"], clock=d["clock"], waiting=d["waiting"], parked=d["parked"],
            tickets={int(k): (float(v[0]), int(v[1])) for k, v in d["tickets"].items()},
            groups={k: GroupRow.from_dict(g) for k, g in d["groups"].items()},
        )

    # -- tickets -------------------------------------------------------------------------
    def issue(self, n: int, now: float) -> tuple[int, ...]:
        out = []
        for _ in range(max(n, 0)):
            self.seq += 1
            self.tickets[self.seq] = (now, 0)
            out.append(self.seq)
        return tuple(out)

    def top_up(self, window: int, now: float) -> tuple[int, ...]:
        """Issue tickets until the broker holds one per waiting job, at most ``window``
        (parked tickets count as held: they come back when a running job ends), once it holds
        half the window or less: a deep backlog is refilled in batches of half a window, one
        send per ``window // 2`` finished jobs instead of one per job (:data:`REFILL_AT`)."""
        self.owe_at_most_waiting()
        held = len(self.tickets) + self.parked
        if held > window * REFILL_AT:
            return ()
        return self.issue(min(window, self.waiting) - held, now)

    def unpark(self, now: float) -> tuple[int, ...]:
        """A running job ended: a ticket parked on capped work may go out again."""
        self.owe_at_most_waiting()
        if self.parked <= 0:
            return ()
        self.parked -= 1
        return self.issue(1, now)

    def owe_at_most_waiting(self) -> None:
        """A parked ticket is owed to a waiting job: no more are owed than jobs wait. (A worker
        going on takes the room a job's end opened, so the ticket that end sent back parks again;
        without this, tickets owed to work that is gone would hold the window's share, and with
        no job running never come back.)"""
        self.parked = min(self.parked, max(self.waiting, 0))

    def expired_tickets(self, now: float, timeout: float) -> tuple[int, ...]:
        """Tickets presumed lost: re-send each (same number) and back off its next re-send."""
        out = []
        for t, (at, resends) in sorted(self.tickets.items()):
            if at + timeout * min(2**resends, MAX_TICKET_BACKOFF) <= now:
                self.tickets[t] = (now, resends + 1)
                out.append(t)
        return tuple(out)

    # -- groups and tasks ------------------------------------------------------------------
    def group(self, key: str, weight: float, limit: int) -> GroupRow:
        g = self.groups.get(key)
        if g is None:
            g = self.groups[key] = GroupRow(vt=self.clock, weight=weight, limit=limit)
        else:
            g.weight, g.limit = weight, limit
        return g

    def join(self, key: str, g: GroupRow, task_id: str, task_vt: float) -> None:
        """A task has jobs waiting again (or for the first time)."""
        if not g.tasks:
            g.vt = max(g.vt, self.clock)
        if task_id not in g.tasks:
            g.tasks[task_id] = max(task_vt, g.clock)

    def leave(self, key: str, task_id: str) -> float | None:
        """A task has no job waiting any more: return its virtual time (kept on the task)."""
        g = self.groups.get(key)
        if g is None:
            return None
        vt = g.tasks.pop(task_id, None)
        self.forget_if_idle(key)
        return vt

    def forget_if_idle(self, key: str) -> None:
        g = self.groups.get(key)
        if g is not None and not g.tasks and g.running <= 0:
            del self.groups[key]

    def order(self) -> list[tuple[str, GroupRow]]:
        """Groups with waiting tasks and room under their cap, fairest first."""
        gs = [(k, g) for k, g in self.groups.items() if g.tasks and (g.limit <= 0 or g.running < g.limit)]
        gs.sort(key=lambda kg: (kg[1].vt, kg[0]))
        return gs

    def charge(self, g: GroupRow, task_id: str, task_weight: float) -> None:
        """One job of ``task_id`` starts: advance the virtual times."""
        self.clock = g.vt
        g.vt += 1.0 / g.weight
        g.clock = g.tasks[task_id]
        g.tasks[task_id] += 1.0 / task_weight
