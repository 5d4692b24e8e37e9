"""The console summary of the data jobs' counts: what a stage dropped, cut or found duplicated, and
k-shot runs that had fewer examples than k. The counts are columns of the stages' tables; this
reads them back (Snakefile ``onsuccess``), so they reach the console and not only the job logs."""
from __future__ import annotations

import os
from pathlib import Path

# table -> (the columns naming a row's run, {count column: what it counts})
TABLES = {
    "results/tables/dynsan.parquet": (["task"], {
        "dropped": "training questions dropped (no answer span in the kept passages)",
        "truncated": "questions cut to dynsan.limits",
        "duplicates": "ids in more than one split",
        "latin1_lines": "word-vector lines read as Latin-1"}),
    "results/tables/prompt_tuning.parquet": (["task"], {
        "k_shot_shortfall": "examples short of k_shot per class in the task's data (train + dev; fewer were kept)"}),
    "results/tables/kpt.parquet": (["model", "task", "knowledge_base", "shots", "mode", "seed"], {
        "k_shot_shortfall": "examples short of k per class (train + dev; fewer were used)"}),
}


def table_notes(root: str | os.PathLike = ".") -> list[str]:
    """One line per run with a non-zero count, e.g. ``dynsan.parquet: task bridge: 12 training
    questions dropped (...)``. Tables that do not exist (yet) or predate a column are skipped."""
    import pandas as pd

    out = []
    for rel, (keys, counts) in TABLES.items():
        path = Path(root) / rel
        if not path.is_file():
            continue
        try:
            df = pd.read_parquet(path)
        except Exception:  # a summary line must never fail the run it summarises
            continue
        cols = [c for c in counts if c in df.columns]
        if not cols or not all(k in df.columns for k in keys):
            continue
        for key, part in df.drop_duplicates(keys).groupby(keys, sort=True):
            key = key if isinstance(key, tuple) else (key,)
            found = [(c, int(part[c].iloc[0])) for c in cols if pd.notna(part[c].iloc[0]) and part[c].iloc[0] > 0]
            if found:
                run = ", ".join(f"{k} {v}" for k, v in zip(keys, key))
                out.append(f"{path.name}: {run}: " + "; ".join(f"{n} {counts[c]}" for c, n in found))
    return out
