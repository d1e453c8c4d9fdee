"""Every benchmark module imports, and every Python script it runs in a child process compiles.

A cheap first line, beside the smoke run of every benchmark (``run_all --smoke`` in
tests/pipeline/test_pipeline_e2e.py), that catches in a second what broke ``make bench`` twice:
an import left behind by a move and a child script mangled by an edit
(``benchmarks/ingest_scale.py``'s ``_CHILD`` had an unindented import: an IndentationError only
``make bench`` saw).
"""
import ast
import importlib

import pytest

from conftest import REPO

MODULES = sorted(p.stem for p in (REPO / "benchmarks").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", MODULES)
def test_benchmark_imports_and_its_child_scripts_compile(name):
    module = importlib.import_module(f"benchmarks.{name}")
    tree = ast.parse((REPO / "benchmarks" / f"{name}.py").read_text(encoding="utf-8"))
    for node in tree.body:  # module-level NAME = "..." strings that hold code for a child process
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id.startswith("_CHILD"):
                    compile(getattr(module, target.id), f"benchmarks/{name}.py:{target.id}", "exec")


def test_the_child_scripts_are_found():
    """The check above looks at something: ingest_scale and first_request run child scripts."""
    found = set()
    for name in MODULES:
        tree = ast.parse((REPO / "benchmarks" / f"{name}.py").read_text(encoding="utf-8"))
        found |= {name for node in tree.body if isinstance(node, ast.Assign)
                  for t in node.targets if isinstance(t, ast.Name) and t.id.startswith("_CHILD")}
    assert {"ingest_scale", "first_request"} <= found
