"""Logging set-up for every step: no torch or transformers import, so table and figure steps stay light."""
from __future__ import annotations

import logging
import os
import sys


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
