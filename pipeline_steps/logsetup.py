"""Logging set-up for every step: no torch or transformers import, so table and figure steps stay light."""
from __future__ import annotations

import logging
import os
import sys
import time


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(stream=sys.stderr, level=level, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # one log line per event, not a progress bar per weight-loading call; the environment variable
    # reaches transformers when (and only if) a step imports it later
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    transformers = sys.modules.get("transformers")
    if transformers is not None:  # already imported (e.g. by a test or a script): switch it off directly
        try:
            transformers.utils.logging.disable_progress_bar()
        except Exception:
            pass


PROGRESS_ENV = "PTW_PROGRESS_SECONDS"  # seconds between progress lines (default 30; tests set 0)


class Progress:
    """Progress lines of a long loop, at most one per ``every`` seconds (``PTW_PROGRESS_SECONDS``,
    default 30), so a job's log shows it is alive without a line per step; a short loop prints none.

    ``update(done, note)`` after each unit of work; ``seen()`` when the caller logged a line of its
    own (an evaluation), so the next progress line comes ``every`` seconds after that one."""

    def __init__(self, logger: logging.Logger, what: str, total: int | None = None, unit: str = "",
                 every: float | None = None):
        self.log, self.what, self.total, self.unit = logger, what, total, unit
        self.every = float(os.environ.get(PROGRESS_ENV, 30)) if every is None else float(every)
        self.t0 = self.last = time.perf_counter()
        self.start: int | None = None

    def seen(self) -> None:
        self.last = time.perf_counter()

    def update(self, done: int, note: str = "") -> None:
        if self.start is None:
            self.start = done - 1 if done > 0 else 0
        now = time.perf_counter()
        if now - self.last < self.every:
            return
        self.last = now
        elapsed = now - self.t0
        of = f"/{self.total}" if self.total else ""
        left = ""
        if self.total and done > self.start:
            rate = elapsed / (done - self.start)
            left = f", about {rate * (self.total - done):.0f} s left"
        self.log.info("%s: %d%s %s, %.0f s so far%s%s", self.what, done, of, self.unit, elapsed, left,
                      f" ({note})" if note else "")
