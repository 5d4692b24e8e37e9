"""KPT's summary table and figures (no torch import)."""
from __future__ import annotations

import logging
import textwrap

import numpy as np
import pandas as pd

from ..figures import pyplot, save_figure
from ..io import read_json, read_parquet, stable_hash, write_parquet
from ..stats import add_seed_stats

log = logging.getLogger(__name__)

COLUMNS = ["model", "task", "shots", "seed", "mode", "variant", "knowledge_base", "words_per_class",
           "words_by_class", "kb_words_kept", "kb_words_blocked", "metric", "score", "n_test", "best_dev_score",
           "train_seconds", "k_shot_shortfall", "config_hash"]
ORDER = ["manual", "manual+calibration", "kpt", "kpt-no-frequency", "kpt-no-relevance", "kpt-no-calibration",
         "kpt-no-learnable"]


def summarise_kpt(*, scores: list[str], words: list[str], metas: list[str], table: str, shots_figure: str,
                  ablation_figure: str, words_figure: str) -> pd.DataFrame:
    """``results/tables/kpt.parquet`` (one row per run and variant) and three figures."""
    frames = []
    for s, m in zip(scores, metas):
        meta = read_json(m)
        f = read_parquet(s)
        for key in ("model", "task", "shots", "seed", "mode", "config_hash"):
            f[key] = meta[key]
        f["knowledge_base"] = meta["knowledge_base"]
        frames.append(f)
    df = pd.concat(frames, ignore_index=True)
    if "k_shot_shortfall" not in df:  # runs written before the column existed
        df["k_shot_shortfall"] = pd.NA
    df["k_shot_shortfall"] = df["k_shot_shortfall"].astype("Int64")
    short = df[df["k_shot_shortfall"].fillna(0) > 0].drop_duplicates(["model", "task", "knowledge_base", "shots", "mode",
                                                                     "seed"])
    for _, r in short.iterrows():
        log.warning("KPT %s/%s %d-shot seed %d: %d examples short of k per class (train + dev); fewer were used",
                    r["model"], r["task"], r["shots"], r["seed"], r["k_shot_shortfall"])
    df["words_by_class"] = df["words_by_class"].map(lambda x: [int(v) for v in x])
    df["variant_rank"] = df["variant"].map({v: i for i, v in enumerate(ORDER)})
    df = df.sort_values(["model", "task", "knowledge_base", "shots", "mode", "seed", "variant_rank"])
    df = df[COLUMNS].reset_index(drop=True)
    # the seed statistics every summary table carries (docs/statistics.md): over the seeds of one setting
    df = add_seed_stats(df, ["model", "task", "knowledge_base", "shots", "mode", "variant"], ["score"])
    write_parquet(df, table, metadata={"step": "summarise_kpt", "interval": "95% Student t over seeds",
                                       "inputs_hash": stable_hash(df.drop(columns=["train_seconds"]).to_dict("records"))})
    plt = pyplot()
    _shots_figure(plt, df, shots_figure)
    _ablation_figure(plt, df, ablation_figure)
    _words_figure(plt, words, metas, words_figure)
    log.info("KPT summary: %d rows written to %s", len(df), table)
    return df


def _variants(df):
    return [v for v in ORDER if v in set(df["variant"])]


def _shots_figure(plt, df, path):
    groups = list(df.groupby(["model", "task", "knowledge_base"]))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups), 3.6), squeeze=False)
    for ax, ((model, task, kb), part) in zip(axes[0], groups):
        for v in _variants(part):
            for mode, sub in part[part.variant == v].groupby("mode"):
                mean = sub.groupby("shots")["score"].mean()
                if len(mean) == 0:
                    continue
                label = v if mode == "none" else f"{v} ({mode})"
                ax.plot(mean.index, mean.values, marker="o", ms=4, label=label,
                        ls="-" if v.startswith("kpt") else "--")
        ax.set_title(f"{task} / {kb} ({model})", fontsize=9)
        ax.set_xlabel("training examples per class (0 = zero-shot)")
        ax.set_ylabel(f"test {part['metric'].iloc[0]}")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=6)
    fig.suptitle("KPT: score vs shots per verbalizer variant")
    save_figure(fig, path)


def _ablation_figure(plt, df, path):
    df = df.assign(setting=np.where(df["shots"] == 0, "zero-shot", df["shots"].astype(str) + "-shot " + df["mode"]))
    table = df.groupby(["task", "setting", "variant"])["score"].mean().unstack("variant")
    table = table[[v for v in ORDER if v in table.columns]]
    fig, ax = plt.subplots(figsize=(2.0 + 1.6 * len(table), 3.8))
    table.plot.bar(ax=ax, rot=15, width=0.85)
    ax.set_ylabel("test score (mean over seeds and models)")
    ax.set_ylim(0, 1)
    ax.set_xlabel("")
    ax.set_title("KPT ablations: each refinement switched off")
    ax.legend(fontsize=7, ncol=2)
    save_figure(fig, path)


def _words_figure(plt, words, metas, path, classes_per_task=4, words_shown=12):
    blocks = []
    for w, m in zip(words, metas):
        meta = read_json(m)
        if meta["shots"] != 0 or meta["seed"] != min(read_json(x)["seed"] for x in metas):
            continue
        f = read_parquet(w)
        f = f[(f.variant == "kpt") & f.kept]
        for cls, part in list(f.groupby("class_id"))[:classes_per_task]:
            part = part.assign(order=part["source"].map({"anchor": 0, "manual": 1, "kb": 2}),
                               rel=part["tf"].fillna(0) * part["idf"].fillna(0))
            part = part.sort_values(["order", "rel"], ascending=[True, False])
            shown = [f"[{x}]" if s == "anchor" else (x if s == "kb" else f"{x}*") for x, s in
                     zip(part["word"], part["source"])][:words_shown]
            more = len(part) - len(shown)
            cut = (meta.get("kb_words_blocked") or {}).get(part["class"].iloc[0], 0)
            blocks.append(f"{meta['task']} / {meta['knowledge_base']} ({meta['model']}) - {part['class'].iloc[0]}: "
                          + ", ".join(shown) + (f" (+{more})" if more > 0 else "")
                          + (f" [{cut} blocked]" if cut else ""))
    if not blocks:
        blocks = ["no zero-shot KPT run in the grid"]
    lines = [line for b in blocks for line in textwrap.wrap(b, 110, subsequent_indent="    ")]
    fig, ax = plt.subplots(figsize=(10, 0.6 + 0.24 * len(lines)))
    ax.axis("off")
    ax.text(0, 1, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=8, transform=ax.transAxes)
    ax.set_title("KPT zero-shot: kept label words ([anchor], task word*, knowledge-base words by relevance; "
                 "[N blocked]: removed by the blocklist)", fontsize=9, loc="left")
    save_figure(fig, path)
