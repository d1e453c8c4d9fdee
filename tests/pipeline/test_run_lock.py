"""One run per output folder: a live holder refuses the next run, naming itself; a SIGKILLed
holder's lock is taken over at once.

Lightweight holders (a Python process holding ``run_lock.hold``, which is what
``local_runner.run`` wraps the pipeline in) stand in for pipelines where a full run adds
nothing; the refusal itself is checked on the real ``dolg-tfx run`` command.
"""
import os
import signal
import subprocess
import sys

from pipeline import run_lock

# Holds the lock, says so, then sleeps until killed; a refusal prints the error and exits 3.
HOLDER = """
import sys, time
from pipeline import run_lock
try:
    with run_lock.hold(sys.argv[1]) as killed:
        print("HELD", killed, flush=True)
        time.sleep(600)
except run_lock.RunLocked as err:
    print("REFUSED", err, flush=True)
    sys.exit(3)
"""


def _holder(output, marker):
    # `marker` is an extra argument so the holder's command line can be recognised.
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(output), marker],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _first_line(proc):
    return proc.stdout.readline()  # the holder answers once it has tried the lock


def _kill(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_two_runs_started_together_one_holds_the_other_names_it(tmp_path):
    out = tmp_path / "out"
    a, b = _holder(out, "marker-a"), _holder(out, "marker-b")
    try:
        lines = {"a": _first_line(a), "b": _first_line(b)}
        held = [k for k, line in lines.items() if line.startswith("HELD")]
        refused = [k for k, line in lines.items() if line.startswith("REFUSED")]
        assert len(held) == 1 and len(refused) == 1, lines
        winner = {"a": a, "b": b}[held[0]]
        loser = {"a": a, "b": b}[refused[0]]
        assert loser.wait(timeout=30) == 3
        message = lines[refused[0]]
        assert f"pid {winner.pid}," in message, message
        assert f"marker-{held[0]}" in message and f"marker-{refused[0]}" not in message, message
        assert "started 20" in message, message  # an ISO date
        assert winner.poll() is None  # the refusal did not disturb the holder
    finally:
        _kill(a)
        _kill(b)


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path):
    out = tmp_path / "out"
    first = _holder(out, "first")
    try:
        assert _first_line(first).startswith("HELD None")
        second = _holder(out, "second")
        assert _first_line(second).startswith("REFUSED")
        assert second.wait(timeout=30) == 3
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        # No stale-lock wait: the kernel dropped the flock with the process.
        with run_lock.hold(str(out)) as killed:
            assert killed is not None and killed["pid"] == first.pid and "first" in killed["command"]
            assert run_lock.read_record(str(out))["pid"] == os.getpid()
        # A clean release leaves nothing to report to the next holder.
        with run_lock.hold(str(out)) as killed:
            assert killed is None
    finally:
        _kill(first)


def test_dolg_tfx_run_refuses_a_held_output_at_once_naming_the_holder(tmp_path):
    out, data = tmp_path / "out", tmp_path / "data"
    data.mkdir()
    holder = _holder(out, "the-other-run")
    try:
        assert _first_line(holder).startswith("HELD")
        run = subprocess.run([sys.executable, "-c", "from dolg_tfx.cli import main; main()", "run",
                              "--data", str(data), "--output", str(out), "--preset", "tiny"],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode != 0
        assert f"pid {holder.pid}," in run.stderr and "the-other-run" in run.stderr, run.stderr
        assert "in use by another run" in run.stderr
        assert not (out / "metadata.sqlite").exists()  # refused before touching the output
        assert holder.poll() is None
    finally:
        _kill(holder)
