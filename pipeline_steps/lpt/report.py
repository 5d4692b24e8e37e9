"""LPT's summary table and its score-vs-step-time figure (no torch here)."""
from __future__ import annotations

import logging

import pandas as pd

from ..errors import UserError
from ..figures import pyplot, save_figure
from ..io import read_json, stable_hash, write_parquet
from .config import LPT_METHODS

log = logging.getLogger(__name__)

# per (model, task, method): mean, std and 95% t interval over seeds of these columns
SEED_STAT_COLUMNS = ["score", "score_diff_vs_pt", "step_ratio_vs_pt"]


def summarise_lpt(*, metas: list[str], table: str, figure: str) -> pd.DataFrame:
    """One row per (model, task, seed, method): test score, insertion layer, profiled step time
    and peak memory, trainable parameters, and ratios to the ``pt`` run."""
    rows = []
    for path in metas:
        m = read_json(path)
        rows.append({"model": m["model"], "task": m["task"], "seed": m["seed"], "method": m["method"],
                     "insert_layer": m["insert_layer"], "metric": m["metric"], "score": m["score"],
                     "step_seconds": m.get("step_seconds"), "step_cpu_seconds": m.get("step_cpu_seconds"),
                     "peak_memory_mb": m.get("peak_memory_mb"),
                     "activation_memory_mb": m.get("activation_memory_mb"),
                     "trainable_params": m["trainable_params"], "flops_per_step": float(m["flops_per_step"]),
                     "train_seconds": m["train_seconds"], "train_cpu_seconds": m.get("train_cpu_seconds"),
                     "memory_method": m.get("memory_method")})
    df = pd.DataFrame(rows)
    base = df[df["method"] == "pt"].set_index(["model", "task", "seed"])
    if df.empty or base.empty:
        raise UserError("LPT summary: no 'pt' baseline run among the inputs")
    key = list(zip(df["model"], df["task"], df["seed"]))
    for col, out in [("score", "score_diff_vs_pt"), ("step_seconds", "step_ratio_vs_pt"),
                     ("step_cpu_seconds", "step_cpu_ratio_vs_pt"), ("flops_per_step", "flops_ratio_vs_pt"),
                     ("peak_memory_mb", "memory_ratio_vs_pt"), ("activation_memory_mb", "activation_memory_ratio_vs_pt")]:
        ref = base.loc[key, col].to_numpy(dtype=float)
        val = df[col].to_numpy(dtype=float)
        df[out] = val - ref if out == "score_diff_vs_pt" else val / ref
    order = {m: i for i, m in enumerate(("pt", *LPT_METHODS))}
    df = df.sort_values(["model", "task", "seed", "method"], key=lambda c: c.map(order) if c.name == "method" else c)
    df = df.reset_index(drop=True)
    from ..stats import add_seed_stats

    df = add_seed_stats(df, ["model", "task", "method"], SEED_STAT_COLUMNS)
    write_parquet(df, table, metadata={"step": "summarise_lpt", "interval": "95% Student t over seeds",
                                       "inputs_hash": stable_hash(rows)})
    _lpt_figure(df, figure)
    log.info("LPT summary of %d runs written to %s", len(df), table)
    return df


def _lpt_figure(df: pd.DataFrame, figure: str) -> None:
    plt = pyplot()

    groups = sorted({(m, t) for m, t in zip(df["model"], df["task"])})
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 3.8), squeeze=False)
    for ax, (model, task) in zip(axes[0], groups):
        part = df[(df["model"] == model) & (df["task"] == task)]
        for method, rows in part.groupby("method", sort=False):
            ax.scatter(rows["step_seconds"] * 1000, rows["score"], s=50, label=method)
            for _, r in rows.iterrows():
                ax.annotate(f"{method} k={r['insert_layer']}", (r["step_seconds"] * 1000, r["score"]), fontsize=7,
                            xytext=(4, 3), textcoords="offset points")
        if part["n_seeds"].max() > 1:  # mean test score over seeds with its 95% t interval
            for method, rows in part.groupby("method", sort=False):
                r = rows.iloc[0]
                ax.errorbar(rows["step_seconds"].mean() * 1000, r["score_mean"],
                            yerr=[[r["score_mean"] - r["score_ci_low"]], [r["score_ci_high"] - r["score_mean"]]],
                            fmt="D", color="black", ms=4, capsize=3)
        ax.set_xlabel("training step time (ms)")
        ax.set_ylabel("test score (diamonds: mean ± 95% t over seeds)" if part["n_seeds"].max() > 1 else "test score")
        ax.set_title(f"LPT vs PT: {model} / {task}")
        ax.legend(fontsize=7)
    save_figure(fig, figure)
