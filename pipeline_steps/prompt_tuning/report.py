"""Prompt tuning's summary table and figures."""
from __future__ import annotations

import logging

import pandas as pd

from ..errors import UserError
from ..figures import pyplot, save_figure
from ..io import parquet_provenance, read_json, read_parquet, stable_hash, write_parquet

log = logging.getLogger(__name__)


def data_shortfall(data: list[str]) -> dict:
    """task -> the data job's ``k_shot_shortfall`` (examples short of k per class, train + dev) from
    each data table's metadata; a table written before the count existed gives NA."""
    out = {}
    for path in data:
        prov = parquet_provenance(path)
        n = prov.get("k_shot_shortfall")
        out[prov.get("task")] = pd.NA if n is None else int(n)
    return out


# prompt-tuning settings that change a run's result, as columns of the table (None: not recorded)
RESULT_SETTINGS = ("lr", "batch_size", "max_length", "init", "bucket_batches", "weight_decay", "warmup_steps")


def summarise_prompt_tuning(*, metas: list[str], scores: list[str], curves: list[str], table: str,
                            scores_figure: str, curves_figure: str, data: list[str] | None = None) -> pd.DataFrame:
    """One row per (model, task, seed) run: settings, best dev and test score, time; the mean, std
    and 95% t interval of the test and dev scores over the seeds of the row's (model, task); the
    task's ``k_shot_shortfall`` from its data table (``data``; NA where unknown)."""
    from ..stats import add_seed_stats, mean_interval

    curve_runs = {}  # what produced each curve (its provenance), checked before anything is written
    for path in curves:
        prov = parquet_provenance(path)
        if not {"model", "task", "seed"} <= set(prov):
            raise UserError(f"{path}: the curve names no model, task and seed in its provenance; "
                            f"rebuild it with the train-prompt step")
        curve_runs[path] = prov
    plt = pyplot()
    rows = []
    for meta_path, score_path in zip(metas, scores):
        meta, result = read_json(meta_path), read_json(score_path)
        settings = meta.get("settings", {})  # the settings that shaped the prompt, beside its config hash
        rows.append({"model": meta["model"], "task": meta["task"], "seed": meta["seed"],
                     "verbalizer": meta["verbalizer"], "prompt_length": meta["prompt_length"],
                     "steps": meta["steps"], **{k: settings.get(k) for k in RESULT_SETTINGS},
                     "metric": result["metric"], "dev_score": meta["best_dev_score"],
                     "best_step": meta["best_step"], "test_score": result["score"], "n_test": result["n"],
                     "train_seconds": meta["train_seconds"], "config_hash": meta["config_hash"]})
    df = pd.DataFrame(rows).sort_values(["model", "task", "seed"]).reset_index(drop=True)
    df = add_seed_stats(df, ["model", "task"], ["test_score", "dev_score"])
    short = data_shortfall(data or [])
    df["k_shot_shortfall"] = pd.array([short.get(t, pd.NA) for t in df["task"]], dtype="Int64")
    for task, n in sorted((t, n) for t, n in short.items() if t in set(df["task"]) and pd.notna(n) and n > 0):
        log.warning("task %s: %d examples short of k_shot per class (train + dev); fewer were kept", task, n)
    write_parquet(df, table, metadata={"step": "summarise_prompts", "interval": "95% Student t over seeds",
                                       "inputs_hash": stable_hash(rows)})

    mean = df.groupby(["task", "model"])["test_score"].mean().unstack("model")
    half = df.groupby(["task", "model"])["test_score"].apply(
        lambda v: (lambda st: (st["ci_high"] - st["ci_low"]) / 2)(mean_interval(v))).unstack("model")
    half = half.reindex(index=mean.index, columns=mean.columns)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(mean), 3.6))
    mean.plot.bar(ax=ax, rot=20, width=0.8, yerr=half if half.notna().any().any() else None, capsize=3)
    ax.set_ylabel("test score (mean over seeds, 95% t)")
    ax.set_ylim(0, 1)
    ax.set_title("Prompt tuning: test score per task and model")
    ax.legend(fontsize=8)
    save_figure(fig, scores_figure)

    fig, axes = plt.subplots(1, df["model"].nunique(), figsize=(5 * df["model"].nunique(), 3.6), squeeze=False)
    for ax, (model, _) in zip(axes[0], df.groupby("model")):
        for path in curves:
            prov = curve_runs[path]
            if prov["model"] != model:
                continue
            curve = read_parquet(path)
            ax.plot(curve["step"], curve["dev_score"], marker="o", ms=3, label=f"{prov['task']} seed{prov['seed']}")
        ax.set_title(f"{model}: dev score during training")
        ax.set_xlabel("step")
        ax.set_ylabel("dev score")
        ax.legend(fontsize=7)
    save_figure(fig, curves_figure)
    log.info("summary of %d runs written to %s", len(df), table)
    return df
