#!/usr/bin/env python
"""Print the headline findings of a finished run from its summary tables (Markdown).

    python scripts/findings.py                 # results/tables of this folder
    python scripts/findings.py ../other-clone/results/tables

Reads only the Parquet tables the workflow wrote (no torch): prompt-tuning scores, zero-shot
transfer (score, relative_score and transfer_gain, split into same-kind and other-kind pairs
by the task kinds given with --kinds), transfer as initialization (AUC ratio, dev score at 10% of
the budget), projected-prompt TPT, the ON indicator's correlation with both performance measures,
and FPT/LPT against PT. Each figure is the mean over seeds with its 95% Student t interval
(pipeline_steps.stats), so the output is what docs/statistics.md and docs/offline_base.md quote.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline_steps.stats import mean_interval  # noqa: E402

KINDS = {"movies": "sentiment", "products": "sentiment", "nli": "nli", "topics": "topic"}


def fmt(values) -> str:
    s = mean_interval(pd.Series(values, dtype=float).dropna().to_numpy())
    if s["n"] == 0:
        return "–"
    if s["n"] == 1:
        return f"{s['mean']:.3f} (n=1)"
    return f"{s['mean']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}] (n={s['n']})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tables", nargs="?", default="results/tables")
    ap.add_argument("--kinds", nargs="*", default=[], metavar="TASK=KIND",
                    help="task kinds for same/other-kind transfer (default: the demo tasks')")
    args = ap.parse_args()
    t = Path(args.tables)
    kinds = {**KINDS, **dict(k.split("=", 1) for k in args.kinds)}

    def table(name):
        p = t / f"{name}.parquet"
        return pd.read_parquet(p) if p.exists() else None

    if (pt := table("prompt_tuning")) is not None:
        print("## Prompt tuning: test score (mean [95% t interval] over seeds)\n")
        for (m, task), g in pt.groupby(["model", "task"]):
            print(f"- {m} / {task}: {fmt(g['test_score'])}")
    if (zs := table("transfer_zero_shot")) is not None:
        print("\n## Zero-shot transfer (test), other tasks' prompts\n")
        rnd = zs[zs.source_task == "random"]
        for m, g in zs[(zs.source_task != zs.target_task) & (zs.source_task != "random")].groupby("model"):
            same = g[[kinds.get(a) == kinds.get(b) for a, b in zip(g.source_task, g.target_task)]]
            other = g.drop(same.index)
            print(f"- {m}: transfer_gain same kind {fmt(same.transfer_gain)}, other kind {fmt(other.transfer_gain)}; "
                  f"relative_score same {fmt(same.relative_score)}, other {fmt(other.relative_score)}")
            for tgt, r in rnd[rnd.model == m].groupby("target_task"):
                own = zs[(zs.model == m) & (zs.source_task == tgt) & (zs.target_task == tgt)]
                print(f"  - target {tgt}: own prompt {fmt(own.score)}, random prompts {fmt(r.score)}")
            for (src, tgt), p in g.groupby(["source_task", "target_task"]):
                print(f"  - {src} -> {tgt}: gain {fmt(p.transfer_gain)}, relative {fmt(p.relative_score)}")
    if (ti := table("transfer_init")) is not None:
        print("\n## Transfer as initialization (TPT)\n")
        for (m, src, tgt), g in ti.groupby(["model", "source_task", "target_task"]):
            print(f"- {m} {src} -> {tgt}: AUC ratio {fmt(g.auc_ratio)}, dev at 10% {fmt(g.dev_at_10)} vs random "
                  f"{fmt(g.random_dev_at_10)}, speed-up {fmt(g.speedup)}, final {fmt(g.final_score)} vs random "
                  f"{fmt(g.random_final_score)}")
    if (cm := table("cross_model")) is not None:
        print("\n## Cross-model projector\n")
        for (pair, obj, tgt), g in cm.groupby(["pair", "objective", "target_task"]):
            print(f"- {pair} {obj} on {tgt}: zero-shot {fmt(g.zero_shot_score)} (target's own prompt "
                  f"{fmt(g.target_prompt_score)}), TPT AUC ratio {fmt(g.auc_ratio)}, dev at 10% "
                  f"{fmt(g.init_dev_at_10)} vs random {fmt(g.random_dev_at_10)}")
    if (ic := table("indicator_correlation")) is not None:
        print("\n## Indicator correlation (Spearman, 95% bootstrap interval over seeds and pairs)\n")
        for _, r in ic[ic.layers == "all"].iterrows():
            print(f"- {r.model} {r.indicator} ({r.layers}) vs {r.performance}: rho {r.spearman:.2f} "
                  f"[{r.ci_low:.2f}, {r.ci_high:.2f}], p {r.p_value:.3f}, {r.n_pairs} pairs, {r.n_seeds} seeds")
    for name in ("fpt", "lpt"):
        if (e := table(name)) is not None:
            print(f"\n## {name.upper()} vs PT (score difference in points of the metric x100)\n")
            for (m, task, method), g in e[e.method != "pt"].groupby(["model", "task", "method"]):
                extra = (f"FLOPs ratio {fmt(g.flops_ratio_vs_pt)}, wall ratio {fmt(g.wall_ratio_vs_pt)}" if name == "fpt"
                         else f"step-time ratio {fmt(g.step_ratio_vs_pt)}, memory ratio {fmt(g.memory_ratio_vs_pt)}")
                print(f"- {m} {task} {method}: score {fmt(g.score)}, diff {fmt(100 * g.score_diff_vs_pt)}; {extra}")
            ptr = e[e.method == "pt"]
            print(f"- PT: score {fmt(ptr.score)}")


if __name__ == "__main__":
    main()
