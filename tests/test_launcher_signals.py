"""A signal sent to the launcher's pid stops the run: nothing of it is left and its lock is free.

`tools/devenv.sh run` and the `dolg-tfx` launcher that `tools/devenv.sh install-launcher` writes
exec all the way into the CLI's Python process, so the pid the caller holds is the run's: SIGTERM
(kill, a supervisor, systemd), SIGHUP (a closed terminal) and SIGINT reach the run itself. A bash
left as the run's parent would end on them and leave the run going as an orphan that still holds
the output's run lock, refusing the user's next run.

Each test starts `dolg-tfx run` through one launcher, three times with the same command on one
output: run 1 gets SIGTERM as soon as it holds the run lock (the orphan's harm; a signal's default
action does not depend on what the run is doing); run 2 must get past the lock and gets SIGINT
once a component is running (KeyboardInterrupt has to unwind through TFX and Beam); run 3 must get
past the lock too and gets SIGHUP as soon as it holds it. After each signal, within 10 s no
process of the run is left (none in its session, none naming its output) and the lock is free.
Only run 2 waits for TensorFlow and TFX to load, so each test costs about one pipeline start.

The launchers are called without DOLG_TFX_ENV_PATH (with which `tools/devenv.sh run` just execs
the command, as it does for a launcher called from inside), so they enter the environment the
way a user's call does: a nested private namespace on the rootfs path, the .venv on the native
path (DOLG_TFX_ENV names the path these tests run in).
"""
import fcntl
import os
import re
import signal
import subprocess
import time

import pytest

from conftest import REPO
from pipeline import run_lock
from pipeline.demo_data import generate_landmarks

DEVENV = REPO / "tools" / "devenv.sh"
GONE_WITHIN_S = 10
# A safety bound for a loaded machine, not a timing claim: a run that never starts must fail.
START_TIMEOUT_S = 300
COMPONENT_STARTED = re.compile(r"^  \w+ \.\.\.$", re.M)  # the console's "  ImageExampleGen ..."


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("launcher_data")
    generate_landmarks(root, n_landmarks=3, views_per_landmark=3, size=64, seed=5)
    return root


def _env():
    env = dict(os.environ)
    inside = env.pop("DOLG_TFX_ENV_PATH", None)
    if inside:
        env["DOLG_TFX_ENV"] = inside
    return env


def _stat(pid):
    """(state, session id) of a live process, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[3])


def _run_processes(session, out):
    """{pid: command line} of the live processes in the run's session or naming its output."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                args = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        stat = _stat(name)
        if stat is None or stat[0] == "Z":  # gone, or a zombie its parent has yet to reap
            continue
        if stat[1] == session or any(a == out or a.startswith(out + "/") for a in args):
            found[int(name)] = " ".join(args)
    return found


class Runs:
    """The runs of one test: the same command each time, output to a log file each."""

    def __init__(self, launcher, data, root):
        self.out = str(root / "out")
        self.root = root
        self.argv = [*launcher, "run", "--data", str(data), "--output", self.out, "--preset", "tiny"]
        self.procs = []

    def start(self):
        log = self.root / f"run{len(self.procs) + 1}.log"
        # env resets the signals to their defaults (a test runner may start with SIGINT ignored,
        # which its children would inherit) and execs: the pid is still the launcher's.
        with open(log, "wb") as f:
            proc = subprocess.Popen(["env", "--default-signal=INT,TERM,HUP", *self.argv],
                                    stdout=f, stderr=subprocess.STDOUT, env=_env(),
                                    cwd=self.root, start_new_session=True)
        proc.log = log
        self.procs.append(proc)
        return proc

    def wait_underway(self, proc, component):
        """Waits until the run holds the lock (and, with `component`, runs a component)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, f"run ended (status {proc.returncode}) before it was underway " \
                f"(refused by the lock?):\n{proc.log.read_text(errors='replace')[-3000:]}"
            assert time.monotonic() < deadline, f"not underway after {START_TIMEOUT_S} s:\n" + \
                proc.log.read_text(errors="replace")[-3000:]
            record = run_lock.read_record(self.out)
            holder = record.get("pid") if record and not record.get("released") else None
            # A record of the previous (killed) run names a pid that is gone.
            holds = holder is not None and (_stat(holder) or (None, None))[1] == proc.pid
            if holds and (not component or COMPONENT_STARTED.search(proc.log.read_text(errors="replace"))):
                return holder
            time.sleep(0.1)

    def stop(self, proc, sig):
        """Sends `sig` to the launcher's pid; checks that the run is gone and its lock free."""
        os.kill(proc.pid, sig)
        deadline = time.monotonic() + GONE_WITHIN_S
        try:
            proc.wait(timeout=GONE_WITHIN_S)
        except subprocess.TimeoutExpired:
            pass
        while True:
            left = _run_processes(proc.pid, self.out)
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert proc.poll() is not None and not left, \
            f"{signal.Signals(sig).name} to the launcher (pid {proc.pid}, status {proc.poll()}) left, " \
            f"after {GONE_WITHIN_S} s: {left}"
        with open(run_lock.lock_path(self.out)) as f:  # nothing of the run is left: no race
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pytest.fail(f"the run lock is still held after {signal.Signals(sig).name}")
            fcntl.flock(f, fcntl.LOCK_UN)
        return proc.returncode

    def kill_leftovers(self):
        for proc in self.procs:
            for pid in _run_processes(proc.pid, self.out):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


def _check(runs):
    try:
        first = runs.start()
        holder = runs.wait_underway(first, component=False)
        assert runs.stop(first, signal.SIGTERM) == -signal.SIGTERM
        # Exec all the way: the pid the caller holds is the run's own (the lock holder's).
        assert holder == first.pid, f"the run is pid {holder}, a child of the launcher's {first.pid}"

        second = runs.start()  # the same command: not refused by the lock
        runs.wait_underway(second, component=True)
        assert runs.stop(second, signal.SIGINT) != 0  # KeyboardInterrupt: click's "Aborted!"

        third = runs.start()
        assert runs.wait_underway(third, component=False) == third.pid
        assert runs.stop(third, signal.SIGHUP) == -signal.SIGHUP
    finally:
        runs.kill_leftovers()


def test_devenv_run_passes_signals_to_the_run(data, tmp_path):
    _check(Runs([str(DEVENV), "run", "dolg-tfx"], data, tmp_path))


def test_the_installed_launcher_passes_signals_to_the_run(data, tmp_path):
    subprocess.run([str(DEVENV), "install-launcher", str(tmp_path / "bin")], check=True, env=_env())
    _check(Runs([str(tmp_path / "bin" / "dolg-tfx")], data, tmp_path))
