"""One run per output folder at a time: an flock on a file in the folder.

Two local runs on one output would share one ML Metadata SQLite file, one pipeline root and
one serving folder. The lock is ``flock(LOCK_EX | LOCK_NB)`` on ``<output>/.dolg-tfx-run.lock``:
the kernel drops it when the holding process dies, however it dies (SIGKILL included), so a
lock left by a killed run is simply taken by the next one; there is no pid-liveness or age
guessing. The file itself stays (removing it would let a process that opened the old file and
one that creates a new file both "hold" a lock); it records who holds it, so a refused run can
name the other process.

Standard library only and no TensorFlow: a second run is refused in well under a second.
flock needs a local file system (or one that forwards flock, as NFSv4 does).
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import shlex
import sys
import time
from typing import Iterator, Optional

LOCK_NAME = ".dolg-tfx-run.lock"
# How long a refused run waits for the holder to write its record (it does so right after
# taking the lock, so only a start a few microseconds earlier can be caught without one).
_RECORD_WAIT_S = 2.0


class RunLocked(RuntimeError):
    """Another live process holds the output folder."""

    def __init__(self, output: str, holder: Optional[dict]):

        self.output, self.holder = output, holder
        super().__init__(f"{output} is in use by another run: {describe(holder)}. Wait for it to "
                         "finish, stop it, or choose another --output.")


def describe(holder: Optional[dict]) -> str:
    if not holder:
        return "a process that has not recorded itself yet"
    command = str(holder.get("command")).replace("\n", "\\n")  # one line, even for `python -c` scripts
    return f"pid {holder.get('pid')}, started {holder.get('started')}, command: {command}"


def lock_path(output: str) -> str:
    return os.path.join(output, LOCK_NAME)


def _command_line() -> str:
    try:  # the real command line, also for `python -c ...` where sys.argv[0] is "-c"
        with open("/proc/self/cmdline", "rb") as f:
            args = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        args = [sys.executable] + sys.argv
    return shlex.join(args)


def read_record(output: str) -> Optional[dict]:
    """The record in the lock file (the current or the last holder), or None."""
    try:
        with open(lock_path(output), encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        record = json.loads(text)
    except ValueError:  # empty or half-written: being rewritten by a new holder
        return None
    return record if isinstance(record, dict) else None


def _write_record(fd: int, record: dict) -> None:
    data = json.dumps(record).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


@contextlib.contextmanager
def hold(output: str) -> Iterator[Optional[dict]]:
    """Holds ``output``'s run lock for the block; yields the record of a previous holder that
    died without releasing it (a killed run), else None.

    Raises:
      RunLocked: a live process holds the lock (its pid, start time and command in the message).
    """
    os.makedirs(output, exist_ok=True)
    fd = os.open(lock_path(output), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(output, _wait_for_holder(output)) from None
        previous = read_record(output)
        killed = previous if previous and not previous.get("released") else None
        record = {"pid": os.getpid(), "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                  "command": _command_line(), "released": False}
        _write_record(fd, record)
        try:
            yield killed
        finally:
            _write_record(fd, dict(record, released=True))
    finally:
        os.close(fd)  # closing the last descriptor releases the flock


def _wait_for_holder(output: str) -> Optional[dict]:
    deadline = time.monotonic() + _RECORD_WAIT_S
    while True:
        record = read_record(output)
        # A record of a dead pid is a killed run's, not yet overwritten by the live holder.
        if record and not record.get("released") and _alive(record.get("pid")):
            return record
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except PermissionError:  # exists, owned by another user
        return True
    except (OSError, TypeError, ValueError):
        return False
    return True
