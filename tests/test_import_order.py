"""Imports point one way: dolg_tfx (the CLI) > pipeline > components > dolg_model, schemas.

Every product module's imports are read from its source (``ast``), lazy ones inside functions
included, plus modules named as strings to ``importlib.import_module`` (the lazy attributes of
``components.image_example_gen``). A module may import its own package's modules and any
module of a package below its own; never one above or beside it, and no chain of imports may
come back to where it started (a cycle), even through lazy imports.
"""
import ast
import pathlib

from conftest import REPO

# Higher imports lower; equal rank across packages is not allowed either (beside).
RANK = {"dolg_tfx": 3, "pipeline": 2, "components": 1, "dolg_model": 0, "schemas": 0}


def _modules():
    found = {}
    for package in RANK:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _resolve(name, modules):
    """The product module an import of ``name`` loads last (``a.b.c`` -> ``a.b`` if c is an
    attribute), or None for anything outside the product."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imported_names(tree, module, is_package, modules):
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            # ``from package import module`` depends on the module, not on the package's
            # __init__ (every submodule's parent is loaded first anyway, as for any import).
            names = [f"{base}.{alias.name}" for alias in node.names]
            yield from names
            if not all(name in modules for name in names):
                yield base
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                yield node.args[0].value
        elif isinstance(node, ast.Dict) and any(isinstance(v, ast.Tuple) for v in node.values):
            # A table of lazy attributes: {"Name": ("package.module", "attr")}.
            for value in node.values:
                if isinstance(value, ast.Tuple) and value.elts and isinstance(value.elts[0], ast.Constant):
                    if isinstance(value.elts[0].value, str):
                        yield value.elts[0].value


def import_graph():
    """{module: set of product modules it imports}, for every module of the product."""
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets = {_resolve(name, modules) for name in _imported_names(tree, module, path.name == "__init__.py", modules)}
        graph[module] = {t for t in targets if t and t != module}
    return graph


def _against_order(graph):
    bad = []
    for module, targets in graph.items():
        top = module.split(".")[0]
        for target in targets:
            other = target.split(".")[0]
            if other != top and RANK[other] >= RANK[top]:
                bad.append(f"{module} -> {target}")
    return sorted(bad)


def _cycles(graph):
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]; counter[0] += 1
        stack.append(root); on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]; counter[0] += 1
                    stack.append(child); on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop(); on_stack.discard(member); component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def test_the_graph_sees_lazy_and_string_imports():
    """The reader itself: a lazy import inside a function and a module named to
    ``importlib.import_module`` through the lazy-attribute table are edges."""
    graph = import_graph()
    assert "components.image_example_gen.executor" in graph["components.image_example_gen"]
    assert "pipeline.trainer" in graph["pipeline.run_facts"]  # imported inside a function
    assert _against_order({"components.x": {"pipeline.y"}}) == ["components.x -> pipeline.y"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_against_the_order():
    assert _against_order(import_graph()) == []


def test_no_import_cycle():
    assert _cycles(import_graph()) == []
