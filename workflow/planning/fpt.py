"""Planning of the FPT stage chain: the grid, each method's schedule, the files of each stage and what a
stage job reads (used by ``workflow/rules/fpt.smk``)."""
from __future__ import annotations

from .grids import section_grid, section_settings


def fpt_grid(cfg: dict) -> dict:
    return {**section_grid(cfg, "fpt"), "methods": ["pt", *cfg["fpt"]["methods"]]}


def fpt_schedule(cfg: dict, method: str) -> list[dict]:
    """Stages of ``method``; ``pt``: one full-model stage with the schedules' total steps."""
    schedules = cfg["fpt"]["schedules"]
    if method == "pt":
        steps = cfg["fpt"].get("pt_steps")
        if steps is None:
            steps = max((sum(s["steps"] for s in schedules[m]) for m in cfg["fpt"]["methods"]), default=1)
        return [{"steps": steps, "layers": None, "ffn": None}]
    return [{"steps": s["steps"], "layers": s.get("layers"), "ffn": s.get("ffn")} for s in schedules[method]]


def fpt_settings(cfg: dict, task: str) -> dict:
    """Prompt-tuning settings of the FPT runs of ``task`` (steps come from each stage)."""
    s = section_settings(cfg, "fpt", task)
    s.pop("steps")
    return s


# paths of the FPT chain (the rules in workflow/rules/fpt.smk build them from wildcards)
FPT_RUN = "results/fpt/{model}/{task}/seed{seed}/{method}"


FPT_SCORES = "results/fpt/{model}/{task}/ffn_scores.safetensors"


FPT_FILES = {"prompt": "prompt.safetensors", "optimizer": "optimizer.safetensors", "curve": "curve.parquet",
             "meta": "meta.json"}


def fpt_last_stage(cfg: dict, method: str) -> int:
    return len(fpt_schedule(cfg, method)) - 1


def fpt_stage_files(wc: dict, stage: int) -> dict:
    """``{prompt, optimizer, curve, meta}`` paths of stage ``stage`` of the run named by ``wc``."""
    run = FPT_RUN.format(**wc)
    return {k: f"{run}/stage{stage}/{f}" for k, f in FPT_FILES.items()}


def fpt_stage_inputs(cfg: dict, wc: dict) -> dict:
    """Inputs of a stage beyond the tokens and model: neuron scores (width stages) and the
    previous stage's artifacts (``previous_prompt`` ...)."""
    stage = int(wc["stage"])
    ins = {}
    if fpt_schedule(cfg, wc["method"])[stage].get("ffn") is not None:
        ins["scores"] = FPT_SCORES.format(**wc)
    if stage > 0:
        ins.update({f"previous_{k}": v for k, v in fpt_stage_files(wc, stage - 1).items()})
    return ins


def fpt_stage_args(cfg: dict, wc: dict) -> dict:
    """What ``fpt_stage`` gets from the config for the stage named by ``wc`` (paths aside: ``fpt_stage_paths``)."""
    stage = int(wc["stage"])
    spec = fpt_schedule(cfg, wc["method"])[stage]
    return {"settings": fpt_settings(cfg, wc["task"]), "seed": int(wc["seed"]), "method": wc["method"],
            "stage_index": stage, "stage": spec, "last": stage == fpt_last_stage(cfg, wc["method"]),
            "selection": cfg["fpt"]["layer_selection"], "class_vectors": cfg["fpt"]["class_vectors"]}


def fpt_stage_paths(paths: dict) -> dict:
    """The path arguments of ``fpt_stage`` from the rule's named inputs (``fpt_stage_inputs``) and outputs,
    one flat mapping: the stage's own files, ``tokens`` as ``tokenized``, the neuron scores (width stages;
    None otherwise) and the ``previous_*`` files grouped as ``previous`` (None at stage 0)."""
    out = {k: v for k, v in paths.items() if k not in ("tokens", "scores") and not k.startswith("previous_")}
    previous = {k[len("previous_"):]: v for k, v in paths.items() if k.startswith("previous_")}
    return {**out, "tokenized": paths["tokens"], "scores": paths.get("scores"), "previous": previous or None}


def fpt_final_prompt(cfg: dict, wc: dict) -> str:
    return fpt_stage_files(wc, fpt_last_stage(cfg, wc["method"]))["prompt"]


def fpt_summary_inputs(cfg: dict) -> dict:
    """Inputs of the FPT summary: last-stage metas and test scores per run; every stage's meta
    and curve."""
    g = fpt_grid(cfg)
    out = {"metas": [], "scores": [], "stage_metas": [], "curves": []}
    for model in g["models"]:
        for task in g["tasks"]:
            for seed in g["seeds"]:
                for method in g["methods"]:
                    wc = {"model": model, "task": task, "seed": seed, "method": method}
                    last = fpt_last_stage(cfg, method)
                    out["metas"].append(fpt_stage_files(wc, last)["meta"])
                    out["scores"].append(f"{FPT_RUN.format(**wc)}/eval/scores.json")
                    for i in range(last + 1):
                        files = fpt_stage_files(wc, i)
                        out["stage_metas"].append(files["meta"])
                        out["curves"].append(files["curve"])
    return out
