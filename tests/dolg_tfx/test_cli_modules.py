"""The CLI's modules import one way: `cli` registers the `cli_*` commands, which never import it."""
import pathlib
import subprocess
import sys

import pytest

COMMAND_MODULES = sorted(p.stem for p in (pathlib.Path(__file__).resolve().parents[2] / "dolg_tfx").glob("cli_*.py"))


@pytest.mark.parametrize("name", COMMAND_MODULES)
def test_a_command_module_imports_alone_without_the_group(name):
    probe = (f"import sys, dolg_tfx.{name}; "
             "assert 'dolg_tfx.cli' not in sys.modules, 'imports the group: a cycle'")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]


def test_every_command_module_is_registered():
    from dolg_tfx.cli import main

    registered = {cmd.callback.__module__ for cmd in main.commands.values()}
    assert {f"dolg_tfx.{n}" for n in COMMAND_MODULES} <= registered
