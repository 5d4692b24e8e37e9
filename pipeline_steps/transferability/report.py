"""Transferability tables and figures: the zero-shot matrix and heatmaps, transfer as initialization,
the projector table, and the indicators' correlation with transfer (no torch here)."""
from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

from ..errors import UserError
from ..figures import pyplot, save_figure
from ..io import parquet_provenance, read_json, read_parquet, stable_hash, write_parquet
from .config import (
    ALL_LAYERS,
    BOOTSTRAP_RESAMPLES,
    CORRELATION_COLUMNS,
    EMBEDDING_INDICATORS,
    INPUT_LAYERS,
    PERFORMANCE,
    TABLE_COLUMNS,
    TRANSFER_COLUMNS,
)

log = logging.getLogger(__name__)


def steps_to_reach(curve: pd.DataFrame, threshold: float) -> float:
    """First evaluated step whose dev score reaches ``threshold`` (NaN if never)."""
    hit = curve.loc[curve["dev_score"] >= threshold, "step"]
    return float(hit.iloc[0]) if len(hit) else math.nan


def init_speedup(curve_init: pd.DataFrame, curve_random: pd.DataFrame, fraction: float = 0.9) -> dict:
    """Compare a run started from a transferred prompt with a random-init run of the same budget.

    The threshold is ``fraction`` x the random-init run's best dev score; speedup =
    steps the random-init run needs / steps the transferred run needs (NaN if either never reaches it).
    """
    threshold = fraction * float(curve_random["dev_score"].max())
    s_init, s_rand = steps_to_reach(curve_init, threshold), steps_to_reach(curve_random, threshold)
    speedup = s_rand / s_init if s_init and not math.isnan(s_init) and not math.isnan(s_rand) else math.nan
    return {"threshold": threshold, "steps_to_reach": s_init, "random_steps_to_reach": s_rand, "speedup": speedup}


def curve_comparison(curve_init: pd.DataFrame, curve_random: pd.DataFrame, prefix: str = "",
                     random_prefix: str = "random_") -> dict:
    """Area under the dev curve and dev score at 10/25/50 % of the budget of a transferred-init run
    and its random-init run, with their ratio (AUC) and differences (transferred - random).

    The budget is the last evaluated step of either run; the AUC spans the steps both runs cover
    (from the later of their first evaluations), so runs on different schedules stay comparable."""
    from ..stats import BUDGET_FRACTIONS, curve_summary

    budget = float(max(curve_init["step"].max(), curve_random["step"].max()))
    start = float(max(curve_init["step"].min(), curve_random["step"].min()))
    a, b = curve_summary(curve_init, budget, start), curve_summary(curve_random, budget, start)
    out = {f"{prefix}auc": a["auc"], f"{random_prefix}auc": b["auc"],
           "auc_ratio": a["auc"] / b["auc"] if b["auc"] > 0 else math.nan, "auc_diff": a["auc"] - b["auc"]}
    for f in BUDGET_FRACTIONS:
        k = f"dev_at_{round(100 * f)}"
        out.update({f"{prefix}{k}": a[k], f"{random_prefix}{k}": b[k], f"{k}_diff": a[k] - b[k]})
    out["auc_start_step"] = start
    return out


def _mean_band(curves: list[pd.DataFrame]):
    """Steps, mean dev score and 95% t interval over runs evaluated at the same steps (NaN band
    with one run)."""
    from ..stats import mean_interval

    wide = pd.concat([c.set_index("step")["dev_score"] for c in curves], axis=1).sort_index()
    st = [mean_interval(row) for row in wide.to_numpy()]
    return (wide.index.to_numpy(), np.array([x["mean"] for x in st]), np.array([x["ci_low"] for x in st]),
            np.array([x["ci_high"] for x in st]))


def zero_shot_table(*, inputs: list[str], table: str, heatmap: str) -> "pd.DataFrame":
    """Concatenate the per-target results; relative_score = score / the target's own prompt's score
    (same model and seed); transfer_gain = (score - random) / (own - random) with the random-prompt
    floor = mean over the random seeds (same model and target), NaN where own <= random; the mean,
    std and 95% t interval over seeds per (model, source, target); heatmaps of relative scores and
    gains (mean over seeds) per model."""
    from ..io import read_parquet, stable_hash, write_parquet
    from ..stats import add_seed_stats, transfer_gain

    df = pd.concat([read_parquet(p) for p in inputs], ignore_index=True)
    own = df[df["source_task"] == df["target_task"]].set_index(["model", "target_task", "seed"])["score"]
    key = pd.MultiIndex.from_frame(df[["model", "target_task", "seed"]])
    df["relative_score"] = df["score"].to_numpy() / own.reindex(key).to_numpy()
    floor = df[df["source_task"] == "random"].groupby(["model", "target_task"])["score"].mean()
    df["own_score"] = own.reindex(key).to_numpy()
    df["random_score"] = floor.reindex(pd.MultiIndex.from_frame(df[["model", "target_task"]])).to_numpy()
    df["transfer_gain"] = transfer_gain(df["score"], df["random_score"], df["own_score"])
    df = df.sort_values(["model", "target_task", "source_task", "seed"]).reset_index(drop=True)
    df = add_seed_stats(df, ["model", "source_task", "target_task"], ["score", "transfer_gain"])
    write_parquet(df, table, metadata={"step": "zero_shot_table", "inputs_hash": stable_hash(df.to_dict("list")),
                                       "interval": "95% Student t over seeds",
                                       "transfer_gain": "(score - random) / (own - random); random = mean over "
                                                        "random seeds; NaN where own <= random"})
    plot_heatmaps(df, heatmap)
    return df


def plot_heatmaps(df: "pd.DataFrame", path: str) -> None:
    """Per model: relative score (top) and transfer gain (bottom), mean over seeds; with several
    seeds each gain cell also shows the half-width of its 95% interval."""
    plt = pyplot()

    models = sorted(df["model"].unique())
    rows = [("relative_score", "zero-shot relative score")]
    if "transfer_gain" in df.columns:
        rows.append(("transfer_gain", "transfer gain (0 = random, 1 = own)"))
    fig, axes = plt.subplots(len(rows), len(models), figsize=(4.8 * len(models), 4.2 * len(rows)), squeeze=False)
    for r, (value, title) in enumerate(rows):
        for ax, model in zip(axes[r], models):
            part = df[df["model"] == model]
            m = part.pivot_table(index="source_task", columns="target_task", values=value, aggfunc="mean",
                                 dropna=False)
            order = [t for t in m.columns if t in m.index] + [t for t in m.index if t not in m.columns]
            m = m.reindex(order)
            half = None
            if value == "transfer_gain" and part.groupby(["source_task", "target_task"]).size().max() > 1:
                hw = part.assign(hw=(part["transfer_gain_ci_high"] - part["transfer_gain_ci_low"]) / 2)
                half = hw.pivot_table(index="source_task", columns="target_task", values="hw", aggfunc="first",
                                      dropna=False).reindex(index=m.index, columns=m.columns)
            if value == "transfer_gain":
                im = ax.imshow(m.to_numpy(dtype=float), cmap="RdYlGn", vmin=-1, vmax=1)
            else:
                im = ax.imshow(m.to_numpy(dtype=float), cmap="viridis", vmin=0, vmax=max(1.0, float(m.max().max())))
            ax.set_xticks(range(len(m.columns)), m.columns, rotation=35, ha="right")
            ax.set_yticks(range(len(m.index)), m.index)
            for i in range(m.shape[0]):
                for j in range(m.shape[1]):
                    v = m.iat[i, j]
                    if not np.isfinite(v):
                        continue
                    text = f"{v:.2f}"
                    if half is not None and np.isfinite(half.iat[i, j]):
                        text += f"\n±{half.iat[i, j]:.2f}"
                    dark = v < 0.6 if value == "relative_score" else abs(v) > 0.7
                    ax.text(j, i, text, ha="center", va="center", fontsize=7 if half is not None else 8,
                            color="white" if dark else "black")
            ax.set_xlabel("target task")
            ax.set_ylabel("source prompt")
            ax.set_title(f"{model}: {title}", fontsize=9 if value == "transfer_gain" else None)
            fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    save_figure(fig, path)


def init_table(*, runs: list[dict], fraction: float, table: str, figure: str) -> "pd.DataFrame":
    """``runs``: ``[{model, source_task, target_task, seed, curve, scores, random_curve}]`` where
    ``curve``/``scores`` belong to the run started from the source prompt and ``random_curve``
    to the target's own random-init run with the same budget."""
    plt = pyplot()

    from ..io import read_json, read_parquet, stable_hash, write_parquet

    if not runs:
        from ..errors import UserError

        raise UserError("transfer as initialization: transfer.init gives no (source, target) pair of different "
                        "tasks within the experiment grid")
    rows, curves = [], []
    for r in runs:
        curve, random_curve = read_parquet(r["curve"]), read_parquet(r["random_curve"])
        cmp = init_speedup(curve, random_curve, fraction)
        rows.append({"model": r["model"], "source_task": r["source_task"], "target_task": r["target_task"],
                     "seed": r["seed"], "final_score": read_json(r["scores"])["score"],
                     "random_final_score": read_json(r["random_scores"])["score"],
                     "steps_to_reach": cmp["steps_to_reach"], "random_steps_to_reach": cmp["random_steps_to_reach"],
                     "threshold": cmp["threshold"], "speedup": cmp["speedup"],
                     **curve_comparison(curve, random_curve), "n_evals": int(len(curve))})
        curves.append((r, curve, random_curve))
    df = pd.DataFrame(rows).sort_values(["model", "target_task", "source_task", "seed"]).reset_index(drop=True)
    from ..stats import add_seed_stats

    df = add_seed_stats(df, ["model", "source_task", "target_task"], ["final_score", "auc_ratio", "auc_diff"])
    write_parquet(df, table, metadata={"step": "transfer_init_table", "fraction": fraction,
                                       "interval": "95% Student t over seeds", "inputs_hash": stable_hash(rows)})
    targets = sorted({(r["model"], r["target_task"]) for r, _, _ in curves})
    fig, axes = plt.subplots(1, len(targets), figsize=(4.5 * len(targets), 3.5), squeeze=False)
    for ax, (model, target) in zip(axes[0], targets):
        mine = [(r, c, rc) for r, c, rc in curves if (r["model"], r["target_task"]) == (model, target)]
        randoms = {r["seed"]: rc for r, _, rc in mine}  # one random-init run per seed
        groups = [("random init", "k", list(randoms.values()))]
        for i, source in enumerate(dict.fromkeys(r["source_task"] for r, _, _ in mine)):
            groups.append((f"from {source}", f"C{i}", [c for r, c, _ in mine if r["source_task"] == source]))
        for label, color, runs in groups:
            steps, mean, lo, hi = _mean_band(runs)
            n = len(runs)
            ax.plot(steps, mean, "--" if label == "random init" else "-", color=color, marker="o", ms=3,
                    label=f"{label} ({'seed ' + str(mine[0][0]['seed']) if n == 1 else f'mean of {n} seeds'})")
            if n > 1:
                ax.fill_between(steps, lo, hi, color=color, alpha=0.15, lw=0)
        if min(min(c["step"].min(), rc["step"].min()) for _, c, rc in mine) < 2:
            ax.set_xscale("log")  # log-spaced evaluations: show the early steps
        ax.set_title(f"{model}: {target}")
        ax.set_xlabel("step")
        ax.set_ylabel("dev score (band: 95% t interval)" if any(len(g[2]) > 1 for g in groups) else "dev score")
        ax.legend(fontsize=7)
    save_figure(fig, figure)
    return df


PROJECTION_CURVE_COLUMNS = ("init_auc", "random_auc", "auc_ratio", "auc_diff", "init_dev_at_10", "random_dev_at_10",
                            "dev_at_10_diff", "init_dev_at_25", "random_dev_at_25", "dev_at_25_diff",
                            "init_dev_at_50", "random_dev_at_50", "dev_at_50_diff", "auc_start_step")


def projection_table(*, runs: list[dict], fraction: float, table: str, figure: str | None = None) -> pd.DataFrame:
    """``cross_model.parquet``: one row per (pair, objective, seed, target task).

    Each run names its files: ``projector_meta``, ``zero_shot`` (scores JSON of ``evaluate``),
    ``target_scores`` (the target model's own prompt's scores), ``tpt_curve`` (training from the
    projected prompt) and ``random_curve`` (the target's own random-init run, same settings).
    """
    rows = []
    for run in runs:
        pmeta, zs = read_json(run["projector_meta"]), read_json(run["zero_shot"])
        own = read_json(run["target_scores"]) if run.get("target_scores") else {}
        row = {"pair": run["pair"], "source_model": pmeta["source_model"], "target_model": pmeta["target_model"],
               "objective": pmeta["objective"], "train_tasks": ",".join(pmeta["train_tasks"]),
               "target_task": zs["task"], "held_out": zs["task"] not in pmeta["train_tasks"],
               "seed": pmeta["seed"], "metric": zs["metric"], "zero_shot_score": zs["score"],
               "target_prompt_score": own.get("score", math.nan), "init_speedup": math.nan,
               "init_steps_to_reach": math.nan, "random_steps_to_reach": math.nan,
               "init_first_dev": math.nan, "random_first_dev": math.nan,
               "init_best_dev": math.nan, "random_best_dev": math.nan,
               **{k: math.nan for k in PROJECTION_CURVE_COLUMNS},
               "mse_to_target_prompt": zs.get("mse_to_target_prompt", math.nan),
               "cosine_to_target_prompt": zs.get("cosine_to_target_prompt", math.nan),
               "projector_loss_start": pmeta["loss_start"], "projector_loss_end": pmeta["loss_end"],
               "n_test": zs["n"], "projector_config_hash": pmeta["config_hash"]}
        if run.get("tpt_curve") and run.get("random_curve"):
            c_init, c_rand = read_parquet(run["tpt_curve"]), read_parquet(run["random_curve"])
            sp = init_speedup(c_init, c_rand, fraction)
            row.update(init_speedup=sp["speedup"], init_steps_to_reach=sp["steps_to_reach"],
                       random_steps_to_reach=sp["random_steps_to_reach"],
                       init_first_dev=float(c_init["dev_score"].iloc[0]), random_first_dev=float(c_rand["dev_score"].iloc[0]),
                       init_best_dev=float(c_init["dev_score"].max()), random_best_dev=float(c_rand["dev_score"].max()))
            row.update(curve_comparison(c_init, c_rand, prefix="init_"))
        rows.append(row)
    keys = ["pair", "objective", "seed", "target_task"]
    df = pd.DataFrame(rows)
    if len(df):
        df = df.sort_values(keys).reset_index(drop=True)
    from ..stats import add_seed_stats

    df = add_seed_stats(df, ["pair", "objective", "target_task"], ["zero_shot_score", "auc_ratio"]) if len(df) else df
    write_parquet(df, table, metadata={"step": "summarise_projection", "speedup_fraction": fraction,
                                       "interval": "95% Student t over seeds", "inputs_hash": stable_hash(rows)})
    if figure:
        _projection_figure(df, figure)
    log.info("cross-model table: %d rows written to %s", len(df), table)
    return df


def _projection_figure(df: pd.DataFrame, path: str) -> None:
    plt = pyplot()

    groups = list(df.groupby(["source_model", "target_model"])) if len(df) else []
    fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(1 + 4.5 * max(1, len(groups)), 3.6), squeeze=False)
    for ax, ((src, tgt), part) in zip(axes[0], groups):
        from ..stats import mean_interval

        means = part.groupby(["target_task", "objective"])["zero_shot_score"].mean().unstack("objective")
        means["target's own prompt"] = part.groupby("target_task")["target_prompt_score"].mean()
        half = part.groupby(["target_task", "objective"])["zero_shot_score"].apply(
            lambda v: (lambda st: (st["ci_high"] - st["ci_low"]) / 2)(mean_interval(v))).unstack("objective")
        half = half.reindex(index=means.index, columns=means.columns)
        means.plot.bar(ax=ax, rot=20, width=0.8, yerr=half if half.notna().any().any() else None, capsize=3)
        ax.set_ylim(0, 1)
        ax.set_ylabel("test score (mean over seeds, 95% t)")
        ax.set_title(f"{src} -> {tgt}: zero-shot projected prompts", fontsize=9)
        ax.legend(fontsize=7)
    save_figure(fig, path)


def check_columns(df: pd.DataFrame, needed, path: str) -> None:
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {missing}; expected at least {list(needed)}")


def spearman(x, y) -> tuple[float, float, int]:
    """Spearman's rho, its two-sided p-value and the number of pairs (NaN values dropped).

    NaN rho/p with fewer than 3 pairs or a constant side."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    n = int(len(x))
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan, n
    res = spearmanr(x, y)
    return float(res.statistic), float(res.pvalue), n


def performance_columns(transfer: pd.DataFrame) -> list[str]:
    """The performance measures of ``PERFORMANCE`` that the transfer table holds."""
    return [p for p in PERFORMANCE if p in transfer.columns]


def merge_transfer(indicators: pd.DataFrame, transfer: pd.DataFrame) -> pd.DataFrame:
    """Indicator rows joined with the transfer performance of the same (model, seed, source, target),
    off-diagonal pairs only."""
    keys = ["model", "seed", "source_task", "target_task"]
    ind = indicators[indicators["source_task"] != indicators["target_task"]]
    perf = transfer[keys + performance_columns(transfer)].copy()
    perf["seed"] = perf["seed"].astype(int)
    ind = ind.assign(seed=ind["seed"].astype(int))
    if perf.duplicated(keys).any():
        dup = perf[perf.duplicated(keys, keep=False)].iloc[0]
        raise ValueError(f"transfer table has several rows for {dict(dup[keys])}")
    return ind.merge(perf, on=keys, how="inner")


def correlate(indicators: pd.DataFrame, transfer: pd.DataFrame, n_boot: int = BOOTSTRAP_RESAMPLES) -> pd.DataFrame:
    """Spearman correlation of every (model, indicator, layers) with each transfer performance
    (``relative_score``, ``score`` and, when the table has it, ``transfer_gain``) across the
    off-diagonal pairs (all seeds pooled), with a 95% percentile bootstrap interval over seeds and
    pairs (``stats.bootstrap_spearman``, fixed resampling seed) and the number of seeds."""
    from ..stats import bootstrap_spearman

    merged = merge_transfer(indicators, transfer)
    rows = []
    for (model, indicator, layers), g in merged.groupby(["model", "indicator", "layers"], sort=False):
        for perf in performance_columns(transfer):
            rho, p, n = spearman(g["value"], g[perf])
            lo, hi = bootstrap_spearman(g["value"], g[perf], groups=g["seed"], n_boot=n_boot) if n >= 3 \
                else (math.nan, math.nan)
            keep = g["value"].notna() & g[perf].notna()
            rows.append((model, indicator, layers, perf, rho, p, n, lo, hi, int(g.loc[keep, "seed"].nunique())))
    out = pd.DataFrame(rows, columns=CORRELATION_COLUMNS)
    return out.astype({"n_pairs": "int64", "n_seeds": "int64"})


def correlation_figure(merged: pd.DataFrame, corr: pd.DataFrame, path: str, performance: str = "relative_score"):
    """Scatter of each indicator (embedding similarities and ON over all layers) against transfer
    performance, one row per model, ON highlighted; last column: ON's Spearman rho per layer group."""
    plt = pyplot()

    models = list(dict.fromkeys(merged["model"]))
    panels = [(k, INPUT_LAYERS) for k in EMBEDDING_INDICATORS] + [("on", ALL_LAYERS)]
    ncols = len(panels) + 1
    fig, axes = plt.subplots(max(1, len(models)), ncols, figsize=(3.0 * ncols, 2.8 * max(1, len(models))),
                             squeeze=False)
    c = corr[corr["performance"] == performance].set_index(["model", "indicator", "layers"])
    for r, model in enumerate(models):
        m = merged[merged["model"] == model]
        for col, (indicator, layers) in enumerate(panels):
            ax = axes[r][col]
            g = m[(m["indicator"] == indicator) & (m["layers"] == layers)]
            on = indicator == "on"
            ax.scatter(g["value"], g[performance], s=18, color="C3" if on else "C0", alpha=0.8)
            rho = c["spearman"].get((model, indicator, layers), math.nan)
            lo = c["ci_low"].get((model, indicator, layers), math.nan) if "ci_low" in c else math.nan
            hi = c["ci_high"].get((model, indicator, layers), math.nan) if "ci_high" in c else math.nan
            ci = f" [{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) else ""
            ax.set_title(f"{indicator} ({layers})\nρ = {rho:.2f}{ci}", fontsize=9, fontweight="bold" if on else None)
            if on:
                for side in ax.spines.values():
                    side.set_edgecolor("C3")
                    side.set_linewidth(2)
            ax.set_xlabel("indicator value", fontsize=8)
            if col == 0:
                ax.set_ylabel(f"{model}\n{performance}", fontsize=8)
        ax = axes[r][-1]
        on = corr[(corr["model"] == model) & (corr["indicator"] == "on") & (corr["performance"] == performance)]
        rho = on["spearman"].to_numpy(dtype=float)
        err = None
        if "ci_low" in on:
            lo, hi = on["ci_low"].to_numpy(dtype=float), on["ci_high"].to_numpy(dtype=float)
            err = np.nan_to_num(np.vstack([rho - lo, hi - rho]).clip(min=0))
        ax.bar(range(len(on)), rho, color="C3", yerr=err, capsize=3, ecolor="black")
        ax.set_xticks(range(len(on)), list(on["layers"]), rotation=60, fontsize=7, ha="right")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_ylim(-1, 1)
        ax.set_ylabel("Spearman ρ", fontsize=8)
        ax.set_title("ON per layer group (95% bootstrap)", fontsize=9)
    fig.suptitle(f"Transferability indicators vs zero-shot transfer ({performance}, source ≠ target)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def correlation(*, indicators: str, transfer: str, table: str, figure: str) -> pd.DataFrame:
    """Step: ``indicator_correlation.parquet`` (model, indicator, layers, performance, spearman,
    p_value, n_pairs) and the scatter figure, from the indicator and zero-shot transfer tables."""
    ind = read_parquet(indicators)
    check_columns(ind, TABLE_COLUMNS, indicators)
    tr = read_parquet(transfer)
    check_columns(tr, TRANSFER_COLUMNS, transfer)
    try:
        merged = merge_transfer(ind, tr)
    except ValueError as e:
        raise UserError(f"{transfer}: {e}") from None
    if merged.empty:
        raise UserError(f"{transfer}: no (model, seed, source_task, target_task) with source != target in common "
                        f"with {indicators}; do both come from the same grid?")
    corr = correlate(ind, tr)
    write_parquet(corr, table, metadata={
        "step": "indicator_correlation", "method": "spearman", "pairs": "source_task != target_task, seeds pooled",
        "interval": f"95% percentile bootstrap, {BOOTSTRAP_RESAMPLES} resamples of seeds then pairs within seeds",
        "indicators_provenance": parquet_provenance(indicators), "transfer_provenance": parquet_provenance(transfer)})
    correlation_figure(merged, corr, figure,
                       performance="transfer_gain" if "transfer_gain" in merged.columns else "relative_score")
    log.info("%d correlations written to %s", len(corr), table)
    return corr
