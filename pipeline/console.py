"""A quiet console for long commands, with the full log always kept in a file.

Everything the process (and its Beam workers, and TensorFlow's C++ runtime, which writes to
file descriptor 2 directly) prints goes through a pipe into the log file. By default the
terminal shows only what the command says on purpose (``Console.say``: one line per component
start and end, a progress bar while training); with ``verbose`` it shows the whole stream too.
When the command fails, the caller prints the error in full after the console has closed.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from typing import Callable, Optional

from components import progress


NON_TTY_PROGRESS_S = 15.0


def log_path(folder: str, command: str) -> str:
    """``<folder>/logs/<command>-<date>-<time>.log``: where a command's full log goes."""
    import datetime

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join(os.path.abspath(folder), "logs", f"{command}-{stamp}.log")


class Console:
    """Context manager: the terminal for ``say``, a log file for everything.

    Args:
      log_path: the log file (created, with its folder).
      verbose: also copy the whole stream to the terminal.
    """

    def __init__(self, log_path: str, verbose: bool = False):
        self.log_path = log_path
        self.verbose = verbose
        self._lock = threading.Lock()
        self._pump: Optional[threading.Thread] = None
        self._term = None
        self._saved = None
        self._progress_open = False
        self._last_progress = float("-inf")

    def __enter__(self) -> "Console":
        os.makedirs(os.path.dirname(os.path.abspath(self.log_path)), exist_ok=True)
        self._log = open(self.log_path, "ab", buffering=0)
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        self._term = os.fdopen(os.dup(self._saved[0]), "w", buffering=1, encoding="utf-8", errors="replace")
        self._is_tty = self._term.isatty()
        read_end, write_end = os.pipe()
        os.dup2(write_end, 1)
        os.dup2(write_end, 2)
        os.close(write_end)
        self._pump = threading.Thread(target=self._copy, args=(read_end,), daemon=True)
        self._pump.start()
        # Python's log records (TFX and absl at INFO) into the stream too, stamped. Installed
        # first, so a library's later logging.basicConfig() adds no second copy.
        root = logging.getLogger()
        # On fd 2 itself, not sys.stderr: a caller may have swapped that object (click's
        # CliRunner does), and the records must reach the log whatever it is.
        self._stream = open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
        self._handler = logging.StreamHandler(self._stream)
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._root_level = root.level
        root.setLevel(logging.INFO)
        root.addHandler(self._handler)
        return self

    def _copy(self, read_end: int) -> None:
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while True:
                chunk = pipe.read(65536)
                if not chunk:
                    return
                with self._lock:
                    self._log.write(chunk)
                    if self.verbose:
                        self._end_progress()
                        self._term.write(chunk.decode("utf-8", "replace"))
                        self._term.flush()

    def _end_progress(self) -> None:
        if self._progress_open:
            self._term.write("\n")
            self._progress_open = False

    def say(self, line: str) -> None:
        """A line for the person at the terminal (and the log)."""
        with self._lock:
            self._end_progress()
            self._term.write(line + "\n")
            self._term.flush()
            self._log.write(("[console] " + line + "\n").encode("utf-8", "replace"))

    def progress(self, line: str, final: bool = False) -> None:
        """A line that replaces the previous progress line on a terminal (a bar). Elsewhere (a
        file, CI) a line every ``NON_TTY_PROGRESS_S`` seconds at most, and the final one."""
        with self._lock:
            if self._is_tty:
                self._term.write("\r\x1b[2K" + line)
                self._progress_open = True
            elif final or time.monotonic() - self._last_progress >= NON_TTY_PROGRESS_S:
                self._term.write(line + "\n")
                self._last_progress = time.monotonic()
            self._term.flush()

    @contextlib.contextmanager
    def showing_progress(self):
        """Draws the ``components.progress`` records of the block as a bar (see ``ProgressLines``)."""
        logger = logging.getLogger(progress.LOGGER)
        handler = ProgressLines(self)
        logger.addHandler(handler)
        try:
            yield self
        finally:
            logger.removeHandler(handler)

    def __exit__(self, exc_type, exc, tb) -> None:
        root = logging.getLogger()
        root.removeHandler(self._handler)
        root.setLevel(self._root_level)
        self._stream.close()
        sys.stdout.flush()
        sys.stderr.flush()
        if exc is not None:  # the whole traceback into the log; the caller shows it too
            import traceback

            os.write(2, "".join(traceback.format_exception(exc_type, exc, tb)).encode("utf-8", "replace"))
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        # Beam workers that outlived the run would keep the pipe open: do not wait for them.
        self._pump.join(timeout=5)
        with self._lock:
            self._end_progress()
        self._term.close()
        self._log.close()


class ProgressLines(logging.Handler):
    """Draws ``components.progress`` records (``components.progress.ProgressReporter``) as a bar."""

    def __init__(self, console: Console):
        super().__init__(level=logging.INFO)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        numbers = getattr(record, "progress", None)
        if numbers is not None:
            self.console.progress(progress_bar(**numbers), final=numbers["step"] >= numbers["total"])


class ComponentLines(ProgressLines):
    """Turns TFX's "Component X is running/finished" log records into console lines with the
    elapsed time and what the component produced (``describe(name) -> str``); progress records
    become a bar."""

    def __init__(self, console: Console, describe: Callable[[str], str]):
        super().__init__(console)
        self.describe = describe
        self.started: dict = {}
        self.times: dict = {}

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "progress", None) is not None:
            super().emit(record)
            return
        if record.msg not in ("Component %s is running.", "Component %s is finished.") or not record.args:
            return
        name = str(record.args[0])
        if record.msg.endswith("running."):
            self.started[name] = time.monotonic()
            self.console.say(f"  {name} ...")
            return
        seconds = time.monotonic() - self.started.get(name, time.monotonic())
        self.times[name] = seconds
        try:
            what = self.describe(name)
        except Exception as err:  # a summary line must never fail the run
            what = f"(could not summarise: {type(err).__name__}: {err})"
        self.console.say(f"  {name} done in {seconds:.1f} s" + (f": {what}" if what else ""))


def progress_bar(step: int, total: int, unit: str = "steps", desc: str = "", rate: Optional[float] = None,
                 loss: Optional[float] = None, images: Optional[int] = None, width: int = 28, **_) -> str:
    """``  embedding [#####.....]  120/300 images  14.2 images/s  ETA 13 s`` (and the loss, or
    the images done when the bar counts something else, when given). Unknown numbers of a
    record are ignored, so a reporter may send more."""
    done = min(max(step / total, 0.0), 1.0) if total else 0.0
    filled = int(round(done * width))
    parts = [f"  {desc + ' ' if desc else ''}[{'#' * filled}{'.' * (width - filled)}] {step}/{total} {unit}"]
    if loss is not None:
        parts.append(f"loss {loss:.4f}")
    if images is not None:
        parts.append(f"{images:,} images")
    if rate:
        parts.append(f"{rate:.2f} {unit}/s")
        parts.append(f"ETA {max(total - step, 0) / rate:.0f} s")
    return "  ".join(parts)
