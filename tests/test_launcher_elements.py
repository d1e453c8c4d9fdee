"""The launcher never hands Beam a list that grows with the data: every ``beam.Create`` in the
product takes a literal list of constants (a start element), and workers list the files.

A job graph holding millions of elements is refused by Dataflow and held in memory by the
DirectRunner's launcher; what this test cannot see (a list built elsewhere and passed in) has
no ``beam.Create`` to pass it to.

Mutation that fails it: the gallery embedding of before issue 24,
``beam.Create(list(enumerate(candidates)))``.
"""
import ast

from conftest import REPO

PRODUCT = ("components", "pipeline", "dolg_tfx", "dolg_model", "schemas", "kubeflow")


def _creates(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name == "Create":
                yield node


def _literal_constants(node):
    return isinstance(node, (ast.List, ast.Tuple)) and all(isinstance(e, ast.Constant) for e in node.elts)


def test_every_beam_create_takes_a_literal_list_of_constants():
    found, bad = 0, []
    for folder in PRODUCT:
        for path in sorted((REPO / folder).rglob("*.py")):
            for call in _creates(ast.parse(path.read_text(encoding="utf-8"))):
                found += 1
                if not (len(call.args) == 1 and _literal_constants(call.args[0])):
                    bad.append(f"{path.relative_to(REPO)}:{call.lineno}: {ast.unparse(call)}")
    assert found >= 3, "the check saw no beam.Create at all: has the code moved?"
    assert not bad, bad


def test_the_check_catches_a_list_built_from_the_data():
    tree = ast.parse("beam.Create(list(enumerate(candidates)))\nbeam.Create([None])\n")
    calls = list(_creates(tree))
    assert [_literal_constants(c.args[0]) for c in calls] == [False, True]
