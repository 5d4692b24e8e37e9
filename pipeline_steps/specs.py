"""The specs the workflow hands to the steps, built from a validated config: what a job depends on
(a change in them reruns the job, nothing else does)."""
from __future__ import annotations

import copy


def task_spec(cfg: dict, task: str) -> dict:
    """Everything the data stage of ``task`` depends on (prompt settings and the task's kind excluded)."""
    spec = copy.deepcopy(cfg["tasks"][task])
    spec.pop("prompt_tuning", None)
    spec.pop("kind", None)  # read by the claims stage only
    spec["name"] = task
    return spec


def model_spec(cfg: dict, model: str) -> dict:
    spec = copy.deepcopy(cfg["models"][model])
    spec.pop("gpu_model", None)  # where a job is scheduled, not what it computes
    spec["name"] = model
    return spec


def pt_settings(cfg: dict, task: str) -> dict:
    """Global prompt-tuning defaults overridden by the task's own ``prompt_tuning``."""
    merged = copy.deepcopy(cfg["prompt_tuning"])
    merged.update(cfg["tasks"][task].get("prompt_tuning") or {})
    return merged
