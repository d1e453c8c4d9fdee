"""Progress of a long loop as log records on one logger (``LOGGER``), which the CLI's console
(``pipeline.console``) draws as a bar: the Trainer's steps, a gallery's or a test set's images.

Records rather than a terminal bar because the console owns the terminal: everything else a
command prints goes to its log file, and a library cannot know whether a terminal exists.
Outside the CLI the records are ordinary INFO lines, about ``updates`` of them per loop.
"""
from __future__ import annotations

import logging
import time
from typing import Optional

LOGGER = "dolg_tfx.progress"  # the logger the CLI's console listens to


class ProgressReporter:
    """Reports ``done`` of ``total`` units, at most about ``updates`` times plus the last one.

    Args:
      total: units in the whole loop (steps, images).
      unit: what is counted, as printed ("steps", "images").
      desc: what the loop does ("embedding the gallery"); may be "".
      updates: how many records over the whole loop, at most (besides the final one).
    """

    def __init__(self, total: int, unit: str, desc: str = "", updates: int = 50):
        if total < 0 or updates < 1:
            raise ValueError(f"total must be >= 0 and updates >= 1, got {total} and {updates}")
        self.total, self.unit, self.desc = int(total), unit, desc
        self.every = max(1, self.total // updates)
        self._start: Optional[tuple[float, int]] = None
        self._reported = None

    def update(self, done: int, **numbers) -> None:
        """``done`` units are finished (a count from the loop's start, not an increment);
        ``numbers`` (e.g. ``loss``) travel with the record."""
        now = time.monotonic()
        if self._start is None:  # rate from the first unit seen here (a resumed loop starts late)
            self._start = (now, done - 1)
        final = done >= self.total
        if not final and self._reported is not None and done - self._reported < self.every:
            return
        self._reported = done
        seconds = now - self._start[0]
        rate = (done - self._start[1]) / seconds if seconds > 0 else None
        logging.getLogger(LOGGER).info(
            "%s %d/%d %s", self.desc or "progress", done, self.total, self.unit, extra={"progress": dict(
                numbers, step=done, total=self.total, unit=self.unit, desc=self.desc, rate=rate)})
