"""The house's floors: no import cycles, and no package importing one on a floor above it.

Every ``app`` module's imports are read from its source (function-level ones too: an import
deferred to dodge a cycle is still a cycle; ``if TYPE_CHECKING:`` blocks are left out, since
they never run). A package may use its own floor and those below, never one above.
"""

from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "app"

# Bottom to top. The request flows down these floors and back up once.
FLOORS: list[set[str]] = [
    {"app.config"},  # settings: the ground floor
    {"app.core"},  # the maths and the model, pure PyTorch
    {"app.store", "app.assets", "app.web", "app.datasets", "app.evaluation", "app.viz", "app.training",
     "app.experiments"},  # weights on disk, shipped files, figures, research
    {"app.engine"},  # the serving engine: runners, batcher, pixel work, the device process's wire
    {"app.imaging"},  # image I/O
    {"app.pipeline"},  # bytes → decode → engine → compose → encode → bytes
    {"app.video", "app.jobs"},  # what runs the pipeline over many frames, in the background
    {"app.observability"},  # metrics, and the observers that feed them
    {"app.api", "app.main"},  # HTTP, the page
    {"app.cli", "app.serve", "app.device_process"},  # command-line tools and launchers
]


def modules() -> dict[str, Path]:
    found = {}
    for path in APP.rglob("*.py"):
        name = ".".join(path.relative_to(APP.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The ``app`` modules ``path`` imports, at any depth but under ``if TYPE_CHECKING:``."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {name for name in found if name in known}


def floor(module: str) -> int:
    for level, packages in enumerate(FLOORS):
        if any(module == p or module.startswith(p + ".") for p in packages):
            return level
    raise AssertionError(f"{module} is on no floor: add its package to FLOORS")


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) - {name} for name, path in known.items()}


def test_every_module_is_on_a_floor() -> None:
    for name in modules():
        if name != "app":
            floor(name)


def test_no_package_imports_a_floor_above_it() -> None:
    upward = {(a, b) for a, targets in graph().items() for b in targets
              if a != "app" and b != "app" and floor(b) > floor(a)}
    assert upward == set(), "imports that point up a floor"


def test_no_import_cycles() -> None:
    edges = graph()
    cycles: set[frozenset[str]] = set()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def strongconnect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.add(frozenset(component))

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    assert cycles == set(), "import cycles"
