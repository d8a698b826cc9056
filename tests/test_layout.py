"""The layout rules of the codebase: no import circles between modules or between packages (counting imports inside
functions), no file over 500 lines.

Imports are read from the source with `ast`, so a circle hidden behind a function-level (lazy) import counts
too: a reader still has to jump back and forth between the two files. Between packages the rule is stricter: if
any module of package A imports package B, no module of B may import A (imports flow one way, ARCHITECTURE.md:
CLIs -> generation / metrics / experiments -> training -> dataprep / deep3drecon -> torch_utils).
"""

from __future__ import annotations

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("torch_utils", "training", "deep3drecon", "metrics", "dataprep", "generation", "experiments")
MAX_LINES = 500


def project_modules() -> dict[str, str]:
    """{dotted module name: file path} for every .py file of the project's packages."""
    modules = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(REPO, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    dotted = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                    modules[dotted.removesuffix(".__init__")] = path
    return modules


def imported_modules(path: str, module: str, known: dict[str, str]) -> set[str]:
    """Project modules that `module` imports anywhere in its file (top level or inside functions)."""
    tree = ast.parse(open(path).read(), filename=path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (iterative DFS with colours)."""
    state: dict[str, int] = {}
    for root in sorted(graph):
        if state.get(root):
            continue
        stack = [(root, iter(sorted(graph[root])))]
        path = [root]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph.get(child, ())))))
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_circles():
    cycle = find_cycle(module_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def module_graph() -> dict[str, set[str]]:
    """{module: project modules it imports}, without a package's own children and a module's own parents."""
    known = project_modules()
    # A package's __init__ importing its own submodules is not a circle a reader follows; drop package -> child.
    graph = {m: {d for d in imported_modules(p, m, known) if not d.startswith(m + ".")} for m, p in known.items()}
    # A submodule importing its own package name means importing __init__, which is only a docstring here.
    return {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """{top-level package: other top-level packages its modules import} from a module graph."""
    top = lambda name: name.split(".")[0]  # noqa: E731
    packages: dict[str, set[str]] = {}
    for module, deps in graph.items():
        packages.setdefault(top(module), set()).update(top(d) for d in deps if top(d) != top(module))
    return packages


def test_package_cycle_finder_finds_a_planted_cycle():
    # training.loop -> metrics.context is allowed alone; metrics.registry -> training.rep is allowed alone; together
    # they are a package circle even though no two modules import each other.
    planted = {"training.loop": {"metrics.context"}, "metrics.context": set(),
               "metrics.registry": {"training.rep"}, "training.rep": set()}
    assert find_cycle(package_graph(planted)) == ["metrics", "training", "metrics"]
    real = package_graph(module_graph())
    assert find_cycle(real) is None
    real["torch_utils"].add("training")  # the lowest package importing the method core closes a circle
    assert find_cycle(real) is not None


def test_no_import_circles_between_packages():
    cycle = find_cycle(package_graph(module_graph()))
    assert cycle is None, "package import circle: " + " -> ".join(cycle)


def test_no_file_over_500_lines():
    paths = list(project_modules().values())
    for folder, _, files in os.walk(REPO):
        if folder == REPO:
            paths += [os.path.join(folder, f) for f in files if f.endswith(".py")]
    too_long = {os.path.relpath(p, REPO): n for p in paths if (n := sum(1 for _ in open(p))) > MAX_LINES}
    assert not too_long, f"files over {MAX_LINES} lines: {too_long}"
