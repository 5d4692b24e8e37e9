"""DynSAN tables and figures (no torch at import): results per variant with trivial baselines,
training curves, time/memory against sequence length, and the gate's token selections."""
from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pandas as pd

from ..figures import pyplot, save_figure
from ..io import parquet_provenance, read_json, read_parquet, write_parquet
from ..stats import add_seed_stats, loglog_slope, mean_interval
from .metrics import em_f1

log = logging.getLogger(__name__)

# the data job's counts per task (steps.NOTE_TEXT): questions dropped, cut, ids in two splits, Latin-1 lines
NOTE_COLUMNS = ["dropped", "truncated", "duplicates", "latin1_lines"]
# what the first cross-passage block's heads attended among, on the test split (steps.selection_shares)
SELECTION_COLUMNS = ["selected_fraction", "answer_share_selected", "answer_share_all", "answer_enrichment",
                     "question_share_selected", "question_share_all", "question_enrichment",
                     # candidate tasks: candidate-mention tokens, and the answer's share among them
                     "mention_share_selected", "mention_share_all", "mention_enrichment",
                     "answer_share_of_mentions_selected", "answer_share_of_mentions_all",
                     "answer_vs_mentions_enrichment"]
RESULT_COLUMNS = ["task", "kind", "variant", "seed", "em", "f1", "accuracy", "n_test", "params", "train_seconds",
                  "step_seconds", "train_cpu_seconds", "step_cpu_seconds", "peak_memory_mb", "best_step",
                  "config_hash", *SELECTION_COLUMNS, *NOTE_COLUMNS]  # + score and its seed statistics


def word_overlap_choice(row) -> int:
    """A surface rule for candidate tasks: the candidate mentioned in the passage that shares the most
    distinct tokens with the question (first listed on ties; -1 without mentions)."""
    question = set(int(t) for t in row["q_ids"])
    best, choice = -1, -1
    for c, p in zip(row["mention_c"], row["mention_p"]):
        score = len(question & set(int(t) for t in row["p_ids"][p]))
        if score > best or (score == best and c < choice):
            best, choice = score, int(c)
    return choice


def baselines(task: str, tokens: str) -> list[dict]:
    """Trivial baselines on the test split: the most frequent training answer (span tasks), the
    first candidate and the word-overlap rule (candidate tasks)."""
    df = read_parquet(tokens)
    test, train = df[df["split"] == "test"], df[df["split"] == "train"]
    golds = [list(a) for a in test["answers"]]
    if (df["answer_index"] >= 0).any():
        preds = [list(c)[0] if len(c) else "" for c in test["candidates"]]
        acc = 100.0 * float(np.mean([p == list(c)[i] for p, c, i in zip(preds, test["candidates"], test["answer_index"])]))
        overlap = 100.0 * float(np.mean([word_overlap_choice(r) == r["answer_index"] for _, r in test.iterrows()]))
        return [{"task": task, "kind": "candidates", "variant": "baseline_first_candidate", "accuracy": acc,
                 "n_test": len(test)},
                {"task": task, "kind": "candidates", "variant": "baseline_word_overlap", "accuracy": overlap,
                 "n_test": len(test)}]
    counts = Counter(a for answers in train["answers"] for a in list(answers)[:1])
    top = counts.most_common(1)[0][0] if counts else ""
    s = em_f1([top] * len(test), golds)
    return [{"task": task, "kind": "span", "variant": "baseline_most_frequent", "em": s["em"], "f1": s["f1"],
             "n_test": len(test)}]


def summarise(*, runs: list[dict], tokens: dict, efficiency: str | None, table: str, scores_figure: str,
              curves_figure: str, efficiency_figure: str, gates_figure: str, gates: dict) -> None:
    """``runs``: one {task, variant, seed, meta, scores, curve} per trained run; ``tokens``: task ->
    prepared Parquet (for the baselines); ``gates``: task -> gates.parquet of the run drawn."""
    rows = []
    for r in runs:
        meta, sc = read_json(r["meta"]), read_json(r["scores"])
        kind = meta["settings"]["kind"]
        rows.append({"task": r["task"], "kind": kind, "variant": r["variant"], "seed": int(r["seed"]),
                     "em": sc.get("em"), "f1": sc.get("f1"), "accuracy": sc.get("accuracy"), "n_test": sc["n"],
                     "params": meta["params"], "train_seconds": meta["train_seconds"],
                     "step_seconds": meta["step_seconds"], "train_cpu_seconds": meta.get("train_cpu_seconds"),
                     "step_cpu_seconds": meta.get("step_cpu_seconds"), "peak_memory_mb": meta["peak_memory_mb"],
                     "best_step": meta["best_step"], "config_hash": meta["config_hash"],
                     **{c: sc.get("selection", {}).get(c) for c in SELECTION_COLUMNS}})
    for task, path in sorted(tokens.items()):
        rows.extend(baselines(task, path))
    df = pd.DataFrame(rows).reindex(columns=RESULT_COLUMNS)
    notes = {task: parquet_provenance(path).get("notes") or {} for task, path in tokens.items()}
    for col in NOTE_COLUMNS:
        df[col] = df["task"].map(lambda t: notes.get(t, {}).get(col)).astype("Int64")
    for task, counts in sorted(notes.items()):
        if any(counts.values()):
            log.warning("dynsan task %s: %s", task, ", ".join(f"{k} {v}" for k, v in counts.items() if v))
    for col in ("em", "f1", "accuracy", "train_seconds", "step_seconds", "train_cpu_seconds", "step_cpu_seconds",
                "peak_memory_mb", *SELECTION_COLUMNS):
        df[col] = df[col].astype("float64")
    df["score"] = df["accuracy"].fillna(df["f1"])  # the task's main score: accuracy (candidates) or F1 (spans)
    df = add_seed_stats(df, ["task", "variant"], ["score"])
    for col in ("seed", "n_test", "params", "best_step"):
        df[col] = df[col].astype("Int64")
    write_parquet(df, table, metadata={"step": "dynsan_summarise", "runs": len(runs),
                                       "interval": "95% Student t over seeds"})
    plot_scores(df, scores_figure)
    plot_curves(runs, curves_figure)
    eff = read_parquet(efficiency) if efficiency else pd.DataFrame()
    for variant, (slope, se, n) in growth_exponents(eff).items():
        log.info("efficiency: %s peak memory grows as L^%.2f (± %.2f, %d lengths), step time as L^%.2f",
                 variant, slope["peak_memory_mb"], se["peak_memory_mb"], n, slope["step_seconds"])
    plot_efficiency(eff, efficiency_figure)
    plot_gates({t: read_parquet(p) for t, p in gates.items()}, gates_figure)


def _score_of(row) -> float:
    return row["accuracy"] if pd.notna(row["accuracy"]) else row["f1"]


def plot_scores(df: pd.DataFrame, path: str) -> None:
    """Top: test score per variant (mean over seeds, 95% t interval; grey: trivial baseline). Bottom:
    how much more often the first cross-passage block's heads picked answer tokens and question-word
    tokens than their share of all tokens (1 = random picks)."""
    plt = pyplot()
    tasks = sorted(df["task"].unique())
    fig, axes = plt.subplots(2, max(1, len(tasks)), figsize=(4.8 * max(1, len(tasks)), 6.4), squeeze=False)
    for j, task in enumerate(tasks):
        ax = axes[0, j]
        part = df[df["task"] == task].copy()
        part["score"] = part.apply(_score_of, axis=1)
        agg = part.groupby("variant", sort=False)["score"].agg(["mean"])
        half = part.groupby("variant", sort=False)["score"].apply(
            lambda v: (lambda st: (st["ci_high"] - st["ci_low"]) / 2)(mean_interval(v))).fillna(0)
        colors = ["0.6" if v.startswith("baseline") else "C0" for v in agg.index]
        ax.bar(range(len(agg)), agg["mean"], yerr=half.reindex(agg.index), color=colors, capsize=3)
        ax.set_xticks(range(len(agg)), agg.index, rotation=30, ha="right")
        kind = part["kind"].iloc[0]
        ax.set_ylabel(("test accuracy" if kind == "candidates" else "test F1") + " (95% t over seeds)")
        ax.set_title(task)
        ax.set_ylim(0, 100)
        ax = axes[1, j]
        bars = {"answer_enrichment": "answer tokens", "question_enrichment": "question words"}
        if part["answer_vs_mentions_enrichment"].notna().any():  # candidate tasks
            bars["answer_vs_mentions_enrichment"] = "answer among candidate mentions"
        sel = part.dropna(subset=["answer_enrichment"]).groupby("variant", sort=False)[list(bars)].mean()
        if len(sel):
            sel.plot.bar(ax=ax, rot=30, width=0.8)
            ax.legend(ax.containers, list(bars.values()), fontsize=7)  # the bars, not the line
            ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_ylabel("share among picked / share of all")
        ax.set_xlabel("")
        ax.set_title(f"{task}: what the heads attend among (first cross-passage block)", fontsize=8)
    fig.suptitle("DynSAN variants (grey: trivial baseline)")
    fig.tight_layout()
    save_figure(fig, path)


def plot_curves(runs: list[dict], path: str) -> None:
    plt = pyplot()
    tasks = sorted({r["task"] for r in runs}) or ["(none)"]
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.5 * len(tasks), 5.5), squeeze=False)
    for j, task in enumerate(tasks):
        for r in [r for r in runs if r["task"] == task]:
            c = read_parquet(r["curve"])
            label = f"{r['variant']} s{r['seed']}"
            axes[0, j].plot(c["step"], c["loss"], label=label)
            axes[1, j].plot(c["step"], c["dev_score"], label=label)
        axes[0, j].set_title(task)
        axes[0, j].set_ylabel("training loss")
        axes[1, j].set_ylabel("dev score (EMA weights)")
        axes[1, j].set_xlabel("step")
        axes[1, j].legend(fontsize=7)
    save_figure(fig, path)


def growth_exponents(df: pd.DataFrame) -> dict:
    """variant -> ({column: exponent}, {column: standard error}, lengths): the log-log slopes of step
    time and peak memory against sequence length (``stats.loglog_slope``)."""
    out = {}
    for variant, part in df.groupby("variant") if len(df) else []:
        fits = {c: loglog_slope(part["sequence_length"], part[c]) for c in ("step_seconds", "peak_memory_mb")}
        out[variant] = ({c: f[0] for c, f in fits.items()}, {c: f[1] for c, f in fits.items()},
                        int(part["sequence_length"].nunique()))
    return out


def plot_efficiency(df: pd.DataFrame, path: str) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    exponents = growth_exponents(df)
    for variant, part in df.groupby("variant") if len(df) else []:
        part = part.sort_values("sequence_length")
        label = f"{variant} (k={part['k'].iloc[0]})" if variant != "all" else "all (full self-attention)"
        slope = exponents[variant][0]
        axes[0].plot(part["sequence_length"], part["step_seconds"], "o-", label=f"{label}: L^{slope['step_seconds']:.2f}")
        axes[1].plot(part["sequence_length"], part["peak_memory_mb"], "o-",
                     label=f"{label}: L^{slope['peak_memory_mb']:.2f}")
    for ax, name in zip(axes, ("seconds per training step", "peak memory above baseline (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel(name)
        ax.legend(fontsize=8)
    fig.suptitle("DynSA blocks: gated top-k vs full self-attention (legend: fitted growth exponent)")
    save_figure(fig, path)


def plot_gates(gates: dict[str, pd.DataFrame], path: str, max_tokens: int = 120) -> None:
    """One strip per dev question: tokens coloured by the gate (mean over heads), boxed in red by the
    share of heads that selected them (thick: at least half), answer tokens underlined in red,
    question words in bold; the title compares mean gate values of answer/question/other tokens."""
    plt = pyplot()
    strips = [(t, qid, g[g["id"] == qid]) for t, g in sorted(gates.items()) for qid in g["id"].unique()]
    fig, axes = plt.subplots(max(1, len(strips)), 1, figsize=(14, 1.1 * max(1, len(strips)) + 0.6), squeeze=False)
    cmap = plt.get_cmap("viridis")
    heads = max([int(g["heads_selected"].max()) for g in gates.values() if len(g)] + [1])
    for ax, (task, qid, part) in zip(axes[:, 0], strips):
        part = part.sort_values("position").head(max_tokens)
        gmax = max(part["gate"].max(), 1e-9)
        x = 0.0
        for _, r in part.iterrows():
            w = 0.6 + 0.12 * len(r["token"])
            share = r["heads_selected"] / heads
            ax.add_patch(plt.Rectangle((x, 0), w, 1, color=cmap(r["gate"] / gmax),
                                       ec="red" if share > 0 else "none", lw=0.3 + 2.2 * share))
            ax.text(x + w / 2, 0.5, r["token"], ha="center", va="center", fontsize=5,
                    weight="bold" if r["in_question"] else "normal",
                    color="white" if r["gate"] / gmax < 0.5 else "black")
            if r["in_answer"]:
                ax.plot([x, x + w], [-0.15, -0.15], color="red", lw=2)
            x += w + 0.05
        ax.set_xlim(0, max(x, 1))
        ax.set_ylim(-0.3, 1.05)
        ax.axis("off")
        other = part[~part["in_answer"] & ~part["in_question"]]
        half = part[part["heads_selected"] >= heads / 2]

        def mean(df):
            return f"{df['gate'].mean():.2f}" if len(df) else "-"

        ax.set_title(f"{task} {qid}: mean gate answer {mean(part[part['in_answer']])}, question words "
                     f"{mean(part[part['in_question']])}, other {mean(other)}; picked by >= half the heads: "
                     f"{len(half)}/{len(part)} tokens, {int(half['in_answer'].sum())}/{int(part['in_answer'].sum())} "
                     f"answer tokens", fontsize=7, loc="left")
    if not strips:
        axes[0, 0].text(0.5, 0.5, "no gated run drawn", ha="center")
        axes[0, 0].axis("off")
    save_figure(fig, path)
