"""Planning of the cross-model projection stage: configured pairs, per-objective settings, and the
paths each projector job reads (used by ``workflow/rules/projection.smk``)."""
from __future__ import annotations

import copy

from pipeline_steps.transferability.config import pair_name
from pipeline_steps.transferability.config import ProjectorConfig


def pairs(cfg: dict) -> dict[str, dict]:
    """The configured projector pairs by name (default name ``{source}-to-{target}``)."""
    out = {}
    for pair in cfg.get("projector", {}).get("pairs", []):
        p = copy.deepcopy(pair)
        p["name"] = pair_name(pair)
        out[p["name"]] = p
    return out


def projector_settings(cfg: dict, objective: str) -> dict:
    """``ProjectorConfig`` fields for one objective: the shared ``hidden`` plus the objective's section."""
    section = cfg["projector"]
    return ProjectorConfig.from_dict({"hidden": section["hidden"], **section[objective]}).to_dict()


def model_path(pattern: str, pair: dict, role: str, task: str, seed) -> str:
    """``pattern`` (with ``{model}``, ``{task}``, ``{seed}``) for the pair's ``role`` model (source|target)."""
    return pattern.format(model=pair[role], task=task, seed=seed)


def projector_inputs(pair: dict, objective: str, seed, prompt: str, tokens: str) -> dict[str, list[str]]:
    """Input files of ``train_projector`` (named like ``train``'s arguments): source prompts of the
    train tasks, plus the target's own prompts of the same tasks (distance) or the tasks tokenised
    for the target (task)."""
    files = {"source_prompts": [model_path(prompt, pair, "source", t, seed) for t in pair["train_tasks"]]}
    if objective == "distance":
        files["target_prompts"] = [model_path(prompt, pair, "target", t, seed) for t in pair["train_tasks"]]
    else:
        files["tokenized"] = [model_path(tokens, pair, "target", t, seed) for t in pair["train_tasks"]]
    return files


def summary_runs(pairs_by_name: dict, objectives: list[str], seeds: list, run_dir: str, task_dir: str,
                 prompt_dir: str, eval_dir: str) -> list[dict]:
    """The files ``table`` reads, one dict per (pair, objective, seed, eval task)."""
    runs = []
    for name, pair in pairs_by_name.items():
        for objective in objectives:
            for seed in seeds:
                for task in pair["eval_tasks"]:
                    w = dict(pair=name, objective=objective, seed=seed, task=task)
                    own = dict(model=pair["target"], task=task, seed=seed)
                    runs.append({"pair": name,
                                 "projector_meta": f"{run_dir.format(**w)}/meta.json",
                                 "zero_shot": f"{task_dir.format(**w)}/scores.json",
                                 "tpt_curve": f"{task_dir.format(**w)}/tpt/curve.parquet",
                                 "random_curve": f"{prompt_dir.format(**own)}/curve.parquet",
                                 "target_scores": f"{eval_dir.format(**own)}/scores.json"})
    return runs
