"""Compare the summary tables of two runs, timing columns aside.

    python scripts/compare_tables.py RUN_A RUN_B [--tolerance 0] [--ignore REGEX]

RUN_A and RUN_B are workflow directories (or their ``results/tables`` folders). For every Parquet table
either run has, this prints whether the two are identical once timing and memory columns are set aside
(names matching ``--ignore``; by default seconds, times, elapsed, memory, speed-ups measured on the clock).
Where they differ it names the columns and the largest difference. The exit status is 1 when a table
differs or exists on one side only, so a refactor can be checked with one command (issue 20: "the
demo's tables are identical before and after").
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

# measured on the clock or by the allocator: they change from run to run at equal results
TIMING = r"(seconds|_time|time_|elapsed|memory|_mb$|peak_|speedup_wall|step_time|wall|cpu_s|cpu_ratio|step_ratio|per_second|_per_s$|throughput)"
# a table of claims holds one effect per row: rows whose effect is measured on the clock or by the
# allocator (effect_name "training wall time, ...", "peak memory ...") have these columns set aside
TIMING_EFFECT = r"(?:wall time|step time|memory|seconds)"
EFFECT_COLUMNS = ("effect", "ci_low", "ci_high", "note")


def tables_dir(path: Path) -> Path:
    return path / "results" / "tables" if (path / "results" / "tables").is_dir() else path


def _differs(a: pd.Series, b: pd.Series, tolerance: float) -> str | None:
    """None when equal (NaN equals NaN; numbers within ``tolerance``), else a short description."""
    if a.dtype.kind in "fiu" and b.dtype.kind in "fiu":
        x, y = a.to_numpy(dtype=float), b.to_numpy(dtype=float)
        same = (np.isnan(x) & np.isnan(y)) | (np.abs(x - y) <= tolerance)
        if same.all():
            return None
        i = int(np.nanargmax(np.where(same, -np.inf, np.abs(np.nan_to_num(x - y, nan=np.inf)))))
        return f"{int((~same).sum())} rows, largest at row {i}: {float(x[i])!r} vs {float(y[i])!r}"
    sa, sb = a.map(repr).to_numpy(), b.map(repr).to_numpy()
    bad = np.flatnonzero(sa != sb)
    if not len(bad):
        return None
    return f"{len(bad)} rows, first at row {bad[0]}: {sa[bad[0]][:60]} vs {sb[bad[0]][:60]}"


def timing_rows(a: pd.DataFrame, b: pd.DataFrame) -> np.ndarray:
    """Rows of a claims table (an ``effect_name`` column) whose effect is a timing or memory measure,
    on both sides; an empty mask for other tables."""
    if "effect_name" not in a.columns or "effect_name" not in b.columns or len(a) != len(b):
        return np.zeros(len(a), dtype=bool)
    hit = [x.astype(str).str.contains(TIMING_EFFECT, regex=True).to_numpy() for x in (a["effect_name"], b["effect_name"])]
    return hit[0] & hit[1]


def compare(a: pd.DataFrame, b: pd.DataFrame, ignore: str, tolerance: float = 0.0) -> list[str]:
    """Differences between two versions of one table (empty: identical), timing columns aside, and in
    a claims table the effect columns of its timing rows."""
    skip = re.compile(ignore)
    problems = []
    rows = timing_rows(a, b)
    if rows.any():
        a, b = a.reset_index(drop=True).copy(), b.reset_index(drop=True).copy()
        for col in (c for c in EFFECT_COLUMNS if c in a.columns and c in b.columns):
            a.loc[rows, col] = b.loc[rows, col] = None
    only_a = sorted(set(a.columns) - set(b.columns))
    only_b = sorted(set(b.columns) - set(a.columns))
    if only_a or only_b:
        problems.append(f"columns only in A: {only_a}, only in B: {only_b}")
    if len(a) != len(b):
        return problems + [f"rows: {len(a)} vs {len(b)}"]
    for col in [c for c in a.columns if c in b.columns and not skip.search(c)]:
        what = _differs(a[col].reset_index(drop=True), b[col].reset_index(drop=True), tolerance)
        if what:
            problems.append(f"{col}: {what}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_a", type=Path)
    ap.add_argument("run_b", type=Path)
    ap.add_argument("--tolerance", type=float, default=0.0, help="absolute tolerance on numbers (default 0: exact)")
    ap.add_argument("--ignore", default=TIMING, help="regex of column names to set aside (timing, memory)")
    args = ap.parse_args(argv)
    da, db = tables_dir(args.run_a), tables_dir(args.run_b)
    names = sorted({p.name for p in da.glob("*.parquet")} | {p.name for p in db.glob("*.parquet")})
    if not names:
        print(f"no Parquet tables under {da} or {db}", file=sys.stderr)
        return 2
    failed = 0
    for name in names:
        pa, pb = da / name, db / name
        if not (pa.exists() and pb.exists()):
            print(f"{name}: only in {'A' if pa.exists() else 'B'}")
            failed += 1
            continue
        a, b = pd.read_parquet(pa), pd.read_parquet(pb)
        problems = compare(a, b, args.ignore, args.tolerance)
        ignored = [c for c in a.columns if re.search(args.ignore, c)]
        n_timing = int(timing_rows(a, b).sum())
        if n_timing:
            ignored.append(f"{'/'.join(c for c in EFFECT_COLUMNS if c in a.columns)} of {n_timing} timing rows")
        print(f"{name}: {'identical' if not problems else 'DIFFERS'} ({len(a)} rows; set aside: {', '.join(ignored) or '-'})")
        for p in problems:
            print(f"    {p}")
        failed += bool(problems)
    print(f"{len(names) - failed} of {len(names)} tables identical")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
