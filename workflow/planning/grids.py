"""Grids shared by the FPT and LPT plans: a section's (models, tasks, seeds) and its prompt-tuning settings."""
from __future__ import annotations

from pipeline_steps.specs import pt_settings


def section_grid(cfg: dict, section: str) -> dict:
    sec = cfg[section]
    exp = cfg["experiment"]
    return {"models": list(sec["models"]), "tasks": list(sec["tasks"]),
            "seeds": list(sec["seeds"] if sec.get("seeds") is not None else exp["seeds"])}


def section_settings(cfg: dict, section: str, task: str) -> dict:
    merged = pt_settings(cfg, task)
    merged.update(cfg[section].get("prompt_tuning") or {})
    return merged
