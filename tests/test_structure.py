"""The import structure of multistep_core that docs/architecture.md describes, read from the code.

Imports are read as text (``ast``), so nothing is imported: an import under ``if TYPE_CHECKING:``
is left out (it never runs), an import inside a function is kept (it runs when called), and
importing ``a.b.c`` also counts as importing the packages ``a.b`` and ``a`` that it runs first.
"""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "multistep_core"

# The stores decide and never talk to a queue: no store module imports these.
QUEUE_SIDE = ("backend", "runner", "queue", "config", "kit", "cli", "demo", "embedded.threads", "embedded.factory")
STORES = ("store", "embedded.memory", "embedded.sqlite", "redis", "postgres.store", "postgres.txn", "postgres.schema",
          "postgres.notify")


def _modules() -> dict[str, Path]:
    out = {}
    for path in CORE.rglob("*.py"):
        parts = ["multistep_core", *path.relative_to(CORE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def _imports() -> dict[str, set[str]]:
    """module -> the modules of multistep_core it imports when it runs."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _type_checking_nodes(tree)
        found: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    found.add(sub if sub in mods else target)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        deps: set[str] = set()
        for target in found:
            parts = target.split(".")
            for i in range(1, len(parts) + 1):  # a.b.c runs a and a.b first
                t = ".".join(parts[:i])
                if t in mods and t != name and not name.startswith(t + "."):
                    deps.add(t)
        graph[name] = deps
    return graph


def _under(module: str, names: tuple[str, ...]) -> bool:
    return any(module == f"multistep_core.{n}" or module.startswith(f"multistep_core.{n}.") for n in names)


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_reader_sees_the_known_imports() -> None:
    # Given the core's imports as read here, the ones the architecture page draws are found
    graph = _imports()
    assert "multistep_core.runner" in graph["multistep_core.backend"]
    assert "multistep_core.store" in graph["multistep_core.redis.base"]
    assert "multistep_core.redis" in graph["multistep_core.kit.store"]  # inside a function: kept
    assert "multistep_core.embedded" in graph["multistep_core.kit.store"]  # the package runs first
    # and a type-checking-only import is not an edge
    assert "multistep_core.backend" not in graph["multistep_core.runner"]


def test_no_import_circle_in_the_core() -> None:
    # When the core's runtime imports are followed, no module comes back to itself
    assert _circles(_imports()) == []


def test_stores_never_import_the_queue_side() -> None:
    # A store decides and returns what to send; it never imports the backend, runner, queues
    # or configuration
    graph = _imports()
    stores = [m for m in graph if _under(m, STORES)]
    assert "multistep_core.redis.store" in stores
    wrong = {m: sorted(d for d in graph[m] if _under(d, QUEUE_SIDE)) for m in stores}
    assert {m: d for m, d in wrong.items() if d} == {}
