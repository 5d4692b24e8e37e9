"""FPT's summary tables (per run and per stage) and its score-vs-FLOPs figure (no torch here)."""
from __future__ import annotations

import logging

import pandas as pd

from ..errors import UserError
from ..figures import pyplot, save_figure
from ..io import parquet_provenance, read_json, read_parquet, stable_hash, write_parquet
from .config import METHODS

log = logging.getLogger(__name__)

# per (model, task, method): mean, std and 95% t interval over seeds of these columns
SEED_STAT_COLUMNS = ["score", "score_diff_vs_pt", "flops_ratio_vs_pt", "wall_ratio_vs_pt"]


def summarise_fpt(*, metas: list[str], scores: list[str], stage_metas: list[str], curves: list[str], table: str,
                  stages_table: str, figure: str) -> pd.DataFrame:
    """``table``: one row per (model, task, seed, method) with test score, total FLOPs and
    training wall time and their ratios to the ``pt`` run of the same model, task and seed;
    ``stages_table``: one row per stage; ``figure``: dev score vs cumulative FLOPs."""
    rows = []
    for meta_path, score_path in zip(metas, scores):
        m, s = read_json(meta_path), read_json(score_path)
        rows.append({"model": m["model"], "task": m["task"], "seed": m["seed"], "method": m["method"],
                     "metric": s["metric"], "score": s["score"], "steps": m["cumulative_steps"],
                     "flops": float(m["cumulative_flops"]), "wall_seconds": float(m["cumulative_wall_seconds"]),
                     "cpu_seconds": float(m["cumulative_cpu_seconds"])})
    df = pd.DataFrame(rows)
    base = df[df["method"] == "pt"].set_index(["model", "task", "seed"])
    if df.empty or base.empty:
        raise UserError("FPT summary: no 'pt' baseline run among the inputs")
    key = list(zip(df["model"], df["task"], df["seed"]))
    df["flops_ratio_vs_pt"] = df["flops"].to_numpy() / base.loc[key, "flops"].to_numpy()
    df["wall_ratio_vs_pt"] = df["wall_seconds"].to_numpy() / base.loc[key, "wall_seconds"].to_numpy()
    df["cpu_ratio_vs_pt"] = df["cpu_seconds"].to_numpy() / base.loc[key, "cpu_seconds"].to_numpy()
    df["score_diff_vs_pt"] = df["score"].to_numpy() - base.loc[key, "score"].to_numpy()
    order = {m: i for i, m in enumerate(("pt", *METHODS))}  # the baseline, then fpt.config.METHODS
    df = df.sort_values(["model", "task", "seed", "method"], key=lambda c: c.map(order) if c.name == "method" else c)
    df = df.reset_index(drop=True)[["model", "task", "seed", "method", "metric", "score", "score_diff_vs_pt", "steps",
                                    "flops", "flops_ratio_vs_pt", "wall_seconds", "wall_ratio_vs_pt", "cpu_seconds",
                                    "cpu_ratio_vs_pt"]]
    from ..stats import add_seed_stats

    df = add_seed_stats(df, ["model", "task", "method"], SEED_STAT_COLUMNS)
    write_parquet(df, table, metadata={"step": "summarise_fpt", "interval": "95% Student t over seeds",
                                       "inputs_hash": stable_hash(rows)})

    srows = []
    for path in stage_metas:
        m = read_json(path)
        srows.append({"model": m["model"], "task": m["task"], "seed": m["seed"], "method": m["method"],
                      "stage": m["stage"], "layers": m["num_layers"], "ffn": m["dims"]["encoder_ffn"][0],
                      "kept_layers": str(m["kept"]["layers"]), "steps": m["steps"], "flops": float(m["flops"]),
                      "flops_per_step": float(m["flops_per_step"]), "wall_seconds": m["wall_seconds"],
                      "cpu_seconds": m["cpu_seconds"],
                      "eval_seconds": m["eval_seconds"], "best_dev_score": m["best_dev_score"],
                      "cumulative_flops": float(m["cumulative_flops"]),
                      "cumulative_wall_seconds": m["cumulative_wall_seconds"]})
    stages = pd.DataFrame(srows).sort_values(["model", "task", "seed", "method", "stage"]).reset_index(drop=True)
    write_parquet(stages, stages_table, metadata={"step": "summarise_fpt", "inputs_hash": stable_hash(srows)})
    _fpt_figure(df, curves, figure)
    log.info("FPT summary of %d runs (%d stages) written to %s", len(df), len(stages), table)
    return df


def _fpt_figure(df: pd.DataFrame, curves: list[str], figure: str) -> None:
    plt = pyplot()

    groups = sorted({(m, t) for m, t in zip(df["model"], df["task"])})
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 3.8), squeeze=False)
    curve_frames = {}
    for path in curves:
        p = parquet_provenance(path)
        c = read_parquet(path)
        if len(c):
            curve_frames.setdefault((p["model"], p["task"], p["seed"], p["method"]), []).append(c)
    for ax, (model, task) in zip(axes[0], groups):
        for (m, t, seed, method), parts in sorted(curve_frames.items()):
            if (m, t) != (model, task):
                continue
            c = pd.concat(parts).sort_values("global_step")
            line, = ax.plot(c["cumulative_flops"], c["dev_score"], marker="o", ms=3, label=f"{method} (dev) s{seed}")
            row = df[(df["model"] == m) & (df["task"] == t) & (df["seed"] == seed) & (df["method"] == method)]
            if len(row):
                ax.scatter(row["flops"], row["score"], marker="*", s=90, color=line.get_color(), zorder=3)
        part = df[(df["model"] == model) & (df["task"] == task)]
        if part["n_seeds"].max() > 1:  # the mean test score over seeds with its 95% t interval
            for i, (method, g) in enumerate(part.groupby("method", sort=False)):
                r = g.iloc[0]
                ax.errorbar(g["flops"].mean(), r["score_mean"], yerr=[[r["score_mean"] - r["score_ci_low"]],
                            [r["score_ci_high"] - r["score_mean"]]], fmt="D", color=f"C{i}", mec="black", ms=5, capsize=3,
                            label=f"{method} test mean ± 95% t ({int(r['n_seeds'])} seeds)")
        ax.set_xlabel("cumulative training FLOPs")
        ax.set_ylabel("score (lines: dev during training; stars: test)")
        ax.set_title(f"FPT vs PT: {model} / {task}")
        ax.legend(fontsize=7)
    save_figure(fig, figure)
