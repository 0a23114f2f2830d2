"""Loading the store's Lua scripts (``lua/*.lua``, shipped as package data).

A *store script* is ``lib.lua``, ``fair.lua`` and ``flow.lua`` followed by its own file: a
*task script* starts from one task's keys, a *queue script* from one queue's (it may visit
several tasks); a *plain script* is its file alone. Scripts run by SHA (``EVALSHA``) and are loaded
again once if Redis forgot them (a restart, ``SCRIPT FLUSH``). A Redis error inside a script
names a line of the text Redis ran; :func:`explain` maps it back to the file and line.
"""

from __future__ import annotations

import hashlib
import re
from functools import cache
from importlib import resources
from typing import Any

TASK_SCRIPTS = ("create", "add", "seal", "start", "finish", "take_next", "cancel", "retry", "delete", "subtask")
QUEUE_SCRIPTS = ("take", "release", "claim")
STORE_SCRIPTS = (*TASK_SCRIPTS, *QUEUE_SCRIPTS)
COMMON = ("lib", "fair", "flow", "nest")  # prepended to every store script, in this order
PLAIN_SCRIPTS = ("renew", "job_states", "failures", "zrem_if")


@cache
def lua_file(name: str) -> str:
    """The text of ``lua/<name>.lua``."""
    return (resources.files(__package__) / "lua" / f"{name}.lua").read_text("utf-8")


@cache
def source(name: str) -> str:
    """The text Redis runs for script ``name``."""
    if name in STORE_SCRIPTS:
        return "".join(lua_file(c) for c in COMMON) + lua_file(name)
    return lua_file(name)


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


_LINE = re.compile(r"user_script:(\d+)")


def explain(message: str) -> str:
    """Append ``(at <file>.lua:<line>)`` to a Redis script error that names a line."""
    m = _LINE.search(message)
    if not m:
        return message
    line = int(m.group(1))
    for name in (*STORE_SCRIPTS, *PLAIN_SCRIPTS):
        if sha1(source(name)) in message or f"f_{sha1(source(name))}" in message:
            if name in STORE_SCRIPTS:
                for part in COMMON:
                    n = lua_file(part).count("\n")
                    if line <= n:
                        return f"{message} (at {part}.lua:{line})"
                    line -= n
            return f"{message} (at {name}.lua:{line})"
    return message


class Scripts:
    """The store's scripts on one client: ``sha[name]``, loaded with :meth:`load`."""

    def __init__(self) -> None:
        self.sha: dict[str, str] = {name: sha1(source(name)) for name in (*STORE_SCRIPTS, *PLAIN_SCRIPTS)}

    def load(self, client: Any) -> None:
        pipe = client.pipeline(transaction=False)
        for name in self.sha:
            pipe.script_load(source(name))
        for name, sha in zip(self.sha, pipe.execute(), strict=True):
            self.sha[name] = sha.decode() if isinstance(sha, bytes) else sha
