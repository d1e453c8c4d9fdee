"""The environment sees the host unchanged: paths, the working directory, the launcher, the
installed package's data. These tests run tools/devenv.sh again from inside the suite, with
the marker of "already inside" removed, so its whole entry path (on the rootfs path: a new
private mount namespace with the Debian 13 /usr over the host's) runs for real. A whole run
started from a folder outside the repository: tests/pipeline/test_pipeline_e2e.py."""
import contextlib
import json
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import uuid
import zipfile

import pytest

from conftest import REPO

DEVENV = REPO / "tools" / "devenv.sh"
# What the wheel build does not read: the folders .gitignore names, and tests and benchmarks.
NOT_BUILT = (".git", ".venv", "outputs", "scratch", "build", "dist", "*.egg-info", "__pycache__",
             ".pytest_cache", "*.pyc", "tests", "benchmarks")


def outside_env():
    """The environment of a shell on the host: no marker, so devenv.sh enters afresh, on the
    path this suite runs on (native or rootfs)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DOLG_TFX_ENV_PATH", "PYTHONPATH", "VIRTUAL_ENV")}
    env["DOLG_TFX_ENV"] = os.environ.get("DOLG_TFX_ENV_PATH", "native")
    return env


def copy_checkout(repo, dest):
    """The checkout's files as they are in the working tree, tracked or not, minus NOT_BUILT:
    regular files copied, symlinks copied as symlinks (never followed, so a loop is just a
    link), anything else (a FIFO, a socket, a device in a data folder) left out. git's own
    listing is not used: git is not in the environment (the rootfs path has none)."""
    by_name = shutil.ignore_patterns(*NOT_BUILT)

    def ignore(folder, names):
        skip = set(by_name(folder, names))
        for name in names:
            try:
                mode = os.lstat(os.path.join(folder, name)).st_mode
            except FileNotFoundError:  # removed meanwhile (others edit the checkout)
                skip.add(name)
                continue
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                skip.add(name)
        return skip

    shutil.copytree(repo, dest, symlinks=True, ignore=ignore)


@contextlib.contextmanager
def fifo_in_the_checkout():
    """A FIFO in a new folder of its own at the top of the checkout, removed however the test
    ends. No other test reads that folder, and git lists neither it nor a folder holding only
    it (so `git status` of whoever works in the checkout meanwhile stays the same)."""
    folder = REPO / f".host-paths-fifo-{uuid.uuid4().hex[:12]}"
    folder.mkdir()
    try:
        os.mkfifo(folder / "pipe")
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


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
    """The local runner hands create_pipeline() the installed package's schema. Guards the
    packaging (schema shipped in a regular, non-editable wheel and found there) and the build
    from a copy of the checkout, which a FIFO in it (a data folder, outputs) must not break."""
    src = tmp_path / "src"
    with fifo_in_the_checkout() as fifo:
        copy_checkout(REPO, src)
    assert (src / fifo.name).is_dir() and not (src / fifo.name / "pipe").exists()  # walked, FIFO left out
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


def test_the_checkout_copy_skips_special_files_and_follows_no_link(tmp_path):
    """Guards copy_checkout against what once failed the wheel test: a FIFO, a socket or a
    symlink loop anywhere in the checkout, in a git-ignored folder or in an untracked one."""
    repo, dest = tmp_path / "repo", tmp_path / "copy"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "mod.py").write_text("x = 1\n")
    for folder in ("data", "outputs"):  # untracked, git-ignored
        (repo / folder).mkdir()
        os.mkfifo(repo / folder / "pipe")
        os.mknod(repo / folder / "socket", stat.S_IFSOCK | 0o600)
    (repo / "data" / "image.jpg").write_bytes(b"jpeg")
    os.symlink("loop", repo / "data" / "loop")  # points at itself
    os.symlink("..", repo / "data" / "up")      # a cycle through a folder
    os.symlink("../pkg/mod.py", repo / "data" / "mod_link.py")
    copy_checkout(repo, dest)
    copied = sorted(os.path.relpath(os.path.join(folder, name), dest)
                    for folder, dirs, files in os.walk(dest) for name in dirs + files)  # links not followed
    assert copied == ["data", "data/image.jpg", "data/loop", "data/mod_link.py", "data/up", "pkg", "pkg/mod.py"]
    assert all(os.readlink(dest / "data" / n) == os.readlink(repo / "data" / n) for n in ("loop", "up", "mod_link.py"))
    assert (dest / "data" / "mod_link.py").read_text() == "x = 1\n"
