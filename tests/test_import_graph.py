"""The package's import graph has no cycle, so it reads top-down.

Every ``import sgnet_lightning...`` / ``from sgnet_lightning... import`` of every module under
``sgnet_lightning/`` is read with ``ast`` (not imported): at module level, and inside functions
(lazy imports, which still tie two modules together). No cycle may run through module-level imports
(it breaks at import time, depending on which module is imported first); no cycle may run through
lazy imports either, apart from the ones listed in ``KNOWN_LAZY_CYCLES``, each with why it is there.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sgnet_lightning"

# Cycles closed by a lazy import between the launchers and what they launch: a benchmark hands its
# runs to launch/, whose pickled task (launch.tasks.BenchmarkRuns, run in a submitit job) calls
# benchmark.run_one back; the executors and job records refer to each other the same way. Listed as sorted module sets; remove an entry when its cycle goes.
KNOWN_LAZY_CYCLES = {
    frozenset({"benchmark", "launch.tasks"}),
    frozenset({"benchmark", "launch.jobs", "launch.tasks"}),
    frozenset({"benchmark", "launch.executors", "launch.jobs", "launch.tasks"}),
    frozenset({"launch.executors", "launch.tasks"}),
    frozenset({"launch.executors", "launch.jobs"}),
    frozenset({"launch.executors", "launch.jobs", "launch.tasks"}),
}


def _modules() -> dict[str, Path]:
    """Dotted name under the package (``""`` for ``__init__``, ``data.cache``, ...) -> file."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _target(name: str, modules: dict[str, Path]) -> str | None:
    """The package module that ``sgnet_lightning.<name>`` (a module, or a name inside one) is."""
    while name not in modules:  # a name inside a module: the module ("" is the package's __init__)
        if not name:
            return None
        name = name.rpartition(".")[0]
    return name


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """``(module_level, lazy)``: module -> the package modules it imports, at module level and
    inside functions (or other nested blocks) respectively."""
    modules = _modules()
    module_level: dict[str, set[str]] = {m: set() for m in modules}
    lazy: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        top = {id(node) for node in tree.body}
        # `if TYPE_CHECKING:` imports are for annotations only and never run: not an import.
        typing_only = {id(inner) for node in tree.body if isinstance(node, ast.If)
                       and ast.unparse(node.test).endswith("TYPE_CHECKING") for inner in ast.walk(node)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                    and node.module.split(".")[0] == "sgnet_lightning":
                base = node.module.partition(".")[2]
                names = [f"{base}.{alias.name}".strip(".") for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name.partition(".")[2] for alias in node.names
                         if alias.name.split(".")[0] == "sgnet_lightning"]
            else:
                continue
            for name in names:
                target = _target(name, modules)
                if target is not None and target != module:
                    (module_level if id(node) in top else lazy)[module].add(target)
    return module_level, lazy


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle of ``graph``, each as the modules along it, starting at its smallest."""
    found: set[tuple[str, ...]] = set()

    def walk(start: str, node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                found.add(tuple(path))
            elif nxt > start and nxt not in path:  # each cycle once: from its smallest module
                walk(start, nxt, path + [nxt])

    for start in sorted(graph):
        walk(start, start, [start])
    return [list(c) for c in sorted(found)]


def _show(cycle: list[str]) -> str:
    return " -> ".join(f"sgnet_lightning.{m}".rstrip(".") for m in [*cycle, cycle[0]])


def test_no_cycle_through_module_level_imports():
    module_level, _ = import_graph()
    found = cycles(module_level)
    assert not found, "import cycle(s) at module level:\n" + "\n".join(map(_show, found))


def test_no_cycle_through_lazy_imports_but_the_known_ones():
    module_level, lazy = import_graph()
    both = {m: module_level[m] | lazy[m] for m in module_level}
    found = cycles(both)
    new = [c for c in found if frozenset(c) not in KNOWN_LAZY_CYCLES]
    assert not new, "import cycle(s), some through imports inside functions:\n" + "\n".join(map(_show, new))
    gone = KNOWN_LAZY_CYCLES - {frozenset(c) for c in found}
    assert not gone, f"no longer cycles, remove them from KNOWN_LAZY_CYCLES: {sorted(map(sorted, gone))}"


def test_the_graph_sees_lazy_and_module_level_imports():
    module_level, lazy = import_graph()
    assert "runs" in module_level["experiment"]  # from sgnet_lightning import runs
    assert "experiment" in lazy["gate_scan"]  # from sgnet_lightning.experiment import ... (in a function)
    assert "data.manifest" in lazy["runs"] and "config" in module_level["runs"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
