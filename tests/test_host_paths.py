"""The environment sees the host unchanged: paths, the working directory, the launcher, the
installed package's data. These tests run tools/devenv.sh again from inside the suite, with
the marker of "already inside" removed, so its whole entry path (on the rootfs path: a new
private mount namespace with the Debian 13 /usr over the host's) runs for real. A whole run
started from a folder outside the repository: tests/pipeline/test_pipeline_e2e.py."""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO

DEVENV = REPO / "tools" / "devenv.sh"


def outside_env():
    """The environment of a shell on the host: no marker, so devenv.sh enters afresh, on the
    path this suite runs on (native or rootfs)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DOLG_TFX_ENV_PATH", "PYTHONPATH", "VIRTUAL_ENV")}
    env["DOLG_TFX_ENV"] = os.environ.get("DOLG_TFX_ENV_PATH", "native")
    return env


def _mounts():
    with open("/proc/self/mountinfo") as f:
        return f.read()


def test_paths_outside_the_repo_and_the_working_directory_are_the_hosts(tmp_path):
    work = tmp_path / "my photos"   # a space in the name, outside the repository
    work.mkdir()
    (work / "note.txt").write_text("seen from inside")
    script = ("import os, sys, json; print(json.dumps({'cwd': os.getcwd(), 'note': open('note.txt').read(),"
              " 'prefix': sys.prefix, 'abs': os.path.exists(sys.argv[1])}))")
    before = _mounts()
    out = subprocess.run([str(DEVENV), "run", "python", "-c", script, str(work / "note.txt")],
                         cwd=work, env=outside_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["cwd"] == str(work)
    assert got["note"] == "seen from inside" and got["abs"] is True
    assert got["prefix"] == sys.prefix          # the same venv as the suite's
    assert _mounts() == before                  # the nested namespace left nothing behind


def test_launcher_runs_from_any_directory_and_passes_the_exit_status(tmp_path):
    bindir = tmp_path / "bin"
    subprocess.run([str(DEVENV), "install-launcher", str(bindir)], check=True, timeout=60,
                   capture_output=True)
    launcher = str(bindir / "dolg-tfx")
    env = outside_env()
    out = subprocess.run([launcher, "--version"], cwd="/", env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and "0.1.0" in out.stdout, out.stderr
    out = subprocess.run([launcher, "--help"], cwd="/", env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and "Usage" in out.stdout, out.stderr
    # click's usage error (2) names the missing path, and the launcher returns it unchanged.
    missing = tmp_path / "no such folder"
    out = subprocess.run([launcher, "run", "--data", str(missing), "--output", "out"], cwd="/",
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert str(missing) in out.stderr


def test_a_regular_wheel_ships_the_schema_and_create_pipeline_finds_it(tmp_path):
    """The local runner hands create_pipeline() the installed package's schema."""
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "outputs", "build", "dist", "*.egg-info", "__pycache__", "tests", "benchmarks"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, timeout=600,
                   capture_output=True)
    [wheel] = (tmp_path / "dist").glob("dolg_tfx-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "schemas/schema.pbtxt" in names and "schemas/__init__.py" in names
    assert (zipfile.ZipFile(wheel).read("schemas/schema.pbtxt")
            == (REPO / "schemas" / "schema.pbtxt").read_bytes())
    # Installed on its own (no repository on the path), the pipeline reads the wheel's copy.
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                    str(wheel)], check=True, timeout=600, capture_output=True)
    probe = ("import os, pipeline.local_runner as r; print(r.SCHEMA_FILE);"
             " assert os.path.isfile(r.SCHEMA_FILE)")
    env = dict(os.environ, PYTHONPATH=str(site))
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert pathlib.Path(out.stdout.strip().splitlines()[-1]) == site / "schemas" / "schema.pbtxt"
