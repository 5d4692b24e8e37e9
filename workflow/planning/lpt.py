"""Planning of the LPT runs: the grid, each run's prompt-tuning settings and late-prompt settings
(used by ``workflow/rules/lpt.smk``)."""
from __future__ import annotations

from .grids import section_grid, section_settings


def lpt_grid(cfg: dict) -> dict:
    return {**section_grid(cfg, "lpt"), "methods": ["pt", *cfg["lpt"]["methods"]]}


def lpt_settings(cfg: dict, task: str, method: str) -> dict:
    """Settings of an LPT run; ``lpt.lr`` (when set) is the generators' learning rate."""
    s = section_settings(cfg, "lpt", task)
    if method != "pt" and cfg["lpt"].get("lr") is not None:
        s["lr"] = cfg["lpt"]["lr"]
    return s


def lpt_late(cfg: dict, task: str, method: str) -> dict | None:
    """The late-prompt settings of an LPT method (``None`` for the ``pt`` baseline)."""
    if method == "pt":
        return None
    sec = cfg["lpt"]
    length = sec.get("prompt_length") or section_settings(cfg, "lpt", task)["prompt_length"]
    return {"generator": method.split("_", 1)[1], "insert_layer": sec.get("insert_layer"),
            "prompt_length": length, "bottleneck": sec["bottleneck"]}
