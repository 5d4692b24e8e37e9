"""Print a run's claims table (results/tables/claims.parquet) as the Markdown of docs/reproduction.md:
the verdict counts per paper, then one row per claim and setting. The numbers come from the table, so
a run's findings are pasted, never re-typed.

    python scripts/claims_markdown.py [results/tables/claims.parquet]
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline_steps.claims.verdict import VERDICTS  # noqa: E402


def _num(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else "nan"


def _setting(r) -> str:
    detail = [part.split("=", 1)[-1] for part in str(r["detail"]).split(", ") if part]
    tasks = r["tasks"] if str(r["tasks"]).count(",") < 2 else f"{str(r['tasks']).count(',') + 1} tasks"
    shots = "" if pd.isna(r["shots"]) else f"{int(r['shots'])}-shot"
    return " / ".join(p for p in (r["models"], tasks, shots, ", ".join(detail)) if p) or "(not run)"


def _n(r) -> str:
    seeds = "" if pd.isna(r["n_seeds"]) else f"{int(r['n_seeds'])} seed{'s' if int(r['n_seeds']) != 1 else ''}"
    test = "" if pd.isna(r["n_test"]) else f"{int(r['n_test'])} test"
    return ", ".join(p for p in (seeds, test) if p)


def _effect(r) -> str:
    if not math.isfinite(r["effect"]):
        return "-"
    if math.isfinite(r["ci_low"]) and math.isfinite(r["ci_high"]):
        return f"{_num(r['effect'])} [{_num(r['ci_low'])}, {_num(r['ci_high'])}]"
    return f"{_num(r['effect'])} (no interval)"


def _paper(r) -> str:
    if not r["paper_verified"]:
        return "unverified"
    return _num(r["paper_value"]) if math.isfinite(r["paper_value"]) else "verified (other unit)"


def markdown(df: pd.DataFrame) -> str:
    papers = list(dict.fromkeys(df["paper"]))
    counts = df.groupby(["paper", "verdict"]).size().unstack(fill_value=0)
    lines = [f"{len(df)} rows: " + ", ".join(f"**{int((df['verdict'] == v).sum())} {v}**" for v in VERDICTS), "",
             "| paper | " + " | ".join(VERDICTS) + " |", "| --- |" + " --- |" * len(VERDICTS)]
    for p in papers:
        lines.append(f"| {p} | " + " | ".join(str(int(counts.loc[p].get(v, 0))) for v in VERDICTS) + " |")
    lines += ["", "| claim | setting | effect [95% interval] | n | verdict | paper |", "| --- | --- | --- | --- | --- | --- |"]
    for _, r in df.iterrows():
        verdict = r["verdict"] if r["verdict"] in ("inconclusive", "not run") else f"**{r['verdict']}**"
        lines.append(f"| `{r['claim_id']}` ({r['claimed']}) | {_setting(r)} | {_effect(r)} | {_n(r)} | {verdict} | "
                     f"{_paper(r)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("table", nargs="?", default="results/tables/claims.parquet")
    args = ap.parse_args(argv)
    print(markdown(pd.read_parquet(args.table)))


if __name__ == "__main__":
    main()
