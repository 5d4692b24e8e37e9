"""DAG planning of the DynSAN stage: the run grid and every artifact's path (no Snakemake import)."""
from __future__ import annotations

DATA = "results/dynsan/data/{dtask}"
DATA_FILES = {"tokens": "tokens.parquet", "vocab": "vocab.safetensors", "report": "report.json"}
RUN = "results/dynsan/runs/{dtask}/{variant}/seed{seed}"
RUN_FILES = {"weights": "weights.safetensors", "curve": "curve.parquet", "meta": "meta.json"}
EVAL_FILES = {"predictions": "eval/predictions.parquet", "scores": "eval/scores.json", "gates": "eval/gates.parquet"}
CHECKPOINT = "results/checkpoints/dynsan/{dtask}/{variant}/seed{seed}.safetensors"
TABLES = {"table": "results/tables/dynsan.parquet", "efficiency": "results/tables/dynsan_efficiency.parquet"}
FIGURES = {"scores_figure": "results/figures/dynsan_scores.png", "curves_figure": "results/figures/dynsan_curves.png",
           "efficiency_figure": "results/figures/dynsan_efficiency.png", "gates_figure": "results/figures/dynsan_gates.png"}


def seeds(config: dict) -> list[int]:
    return config["dynsan"]["run"]["seeds"] or config["experiment"]["seeds"]


def grid(config: dict) -> list[dict]:
    """One entry per run: task x variant x seed (empty when dynsan.run.tasks is empty)."""
    run = config["dynsan"]["run"]
    return [{"dtask": t, "variant": v, "seed": s} for t in run["tasks"] for v in run["variants"] for s in seeds(config)]


def files(pattern_dir: str, names: dict, wildcards: dict) -> dict:
    return {k: f"{pattern_dir}/{f}".format(**wildcards) for k, f in names.items()}


def gate_run(config: dict, task: str) -> dict | None:
    """The run whose gates are drawn for ``task``: the first listed variant that selects tokens by
    the gate with cross-passage attention, first seed; None if no such variant runs."""
    sec = config["dynsan"]
    for v in sec["run"]["variants"]:
        merged = dict(sec["model"], **sec["variants"][v])
        if merged.get("selection", "gated") == "gated" and merged.get("self_attention", True) \
                and merged.get("cross_passage", True):
            return {"dtask": task, "variant": v, "seed": seeds(config)[0]}
    return None


def run_args(config: dict, w: dict) -> dict:
    """Settings of the training step of one run (wildcards dtask, variant, seed); its paths are the rule's
    input and output (and ``CHECKPOINT``)."""
    from pipeline_steps.dynsan.config import dynsan_settings

    sec = config["dynsan"]
    model, train, passages = dynsan_settings(config, w["dtask"], w["variant"])
    return dict(task=w["dtask"], variant=w["variant"], kind=sec["tasks"][w["dtask"]]["kind"], model_settings=model,
                train_settings=train, passages=passages, seed=int(w["seed"]), device=sec["device"], dtype=sec["dtype"])


def summary_inputs(config: dict) -> dict:
    """Inputs of the summary job: the runs' artifacts, the prepared tasks (baselines), the gates."""
    runs = []
    for r in grid(config):
        runs.append(dict(r, task=r["dtask"], **files(RUN, RUN_FILES, r), **files(RUN, EVAL_FILES, r)))
    tasks = config["dynsan"]["run"]["tasks"]
    tokens = {t: files(DATA, DATA_FILES, {"dtask": t})["tokens"] for t in tasks}
    gates = {}
    for t in tasks:
        g = gate_run(config, t)
        if g:
            gates[t] = files(RUN, EVAL_FILES, g)["gates"]
    return {"runs": [{k: r[k] for k in ("task", "variant", "seed", "meta", "scores", "curve")} for r in runs],
            "tokens": tokens, "gates": gates, "efficiency": TABLES["efficiency"]}
