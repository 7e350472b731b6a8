"""The package's import structure: no module imports itself back through others (an import cycle), counting
imports inside functions too, since they run just the same when called."""
import ast
from pathlib import Path

import paddle_belle

PACKAGE = Path(paddle_belle.__file__).parent


def import_graph() -> dict[str, set[str]]:
    """Module -> the paddle_belle modules it imports (importing a.b.c also runs a.b's __init__, unless the importer
    lives inside a.b, which is then already being imported)."""
    modules = {}
    for file in PACKAGE.rglob("*.py"):
        parts = list(file.relative_to(PACKAGE.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file

    def known(name):  # the longest module prefix of a dotted name: "a.b.func" -> "a.b"
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for module, file in modules.items():
        package = module if file.name == "__init__.py" else module.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                target = known(name) if name.split(".")[0] == "paddle_belle" else ""
                while target:
                    if target != module and not module.startswith(target + "."):
                        targets.add(target)
                    target = target.rpartition(".")[0]
        graph[module] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (a list of modules, the first repeated at the end), or None."""
    state = {}  # module -> "open" while on the current path, "done" once fully explored

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [module, target] if target in path else [module, target]
            if target not in state:
                cycle = visit(target, path + [module])
                if cycle:
                    return cycle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module, [])
            if cycle:
                return cycle
    return None


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert len(graph) > 40 and "paddle_belle.models.base" in graph["paddle_belle.models.bloom"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
