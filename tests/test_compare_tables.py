"""scripts/compare_tables.py: two runs' tables equal once timing columns are set aside (issue 20)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import compare_tables  # noqa: E402


def _run(root: Path, score: float = 0.5, seconds: float = 1.0, extra: bool = False) -> Path:
    tables = root / "results" / "tables"
    tables.mkdir(parents=True)
    pd.DataFrame({"task": ["a", "b"], "score": [score, np.nan], "train_seconds": [seconds, 2.0],
                  "peak_memory_mb": [seconds * 100, 5.0], "words": [["x"], ["y", "z"]]}).to_parquet(tables / "t.parquet")
    if extra:
        pd.DataFrame({"x": [1]}).to_parquet(tables / "only.parquet")
    return root


def test_timing_columns_aside_identical_runs_pass(tmp_path, capsys):
    a, b = _run(tmp_path / "a"), _run(tmp_path / "b", seconds=7.5)
    assert compare_tables.main([str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "t.parquet: identical (2 rows; set aside: train_seconds, peak_memory_mb)" in out
    assert "1 of 1 tables identical" in out


def test_a_changed_score_or_a_missing_table_fails_and_is_named(tmp_path, capsys):
    a, b = _run(tmp_path / "a"), _run(tmp_path / "b", score=0.75, extra=True)
    assert compare_tables.main([str(a / "results" / "tables"), str(b)]) == 1
    out = capsys.readouterr().out
    assert "only.parquet: only in B" in out
    assert "t.parquet: DIFFERS" in out and "score: 1 rows, largest at row 0: 0.5 vs 0.75" in out
    assert compare_tables.main([str(a), str(b), "--tolerance", "0.3"]) == 1  # still the extra table
    assert "t.parquet: identical" in capsys.readouterr().out


def _claims(root: Path, wall_ratio: float, score_gain: float) -> Path:
    tables = root / "results" / "tables"
    tables.mkdir(parents=True)
    pd.DataFrame({"claim_id": ["fpt.less_time", "fpt.comparable_score"],
                  "effect_name": ["training wall time, FPT variant / PT", "test score, FPT variant minus PT (points)"],
                  "effect": [wall_ratio, score_gain], "ci_low": [np.nan, score_gain - 1], "ci_high": [np.nan, score_gain + 1],
                  "note": [f"ratio {wall_ratio}", ""], "verdict": ["inconclusive", "reproduced"]}).to_parquet(tables / "claims.parquet")
    return root


def test_claims_rows_measured_on_the_clock_are_set_aside_but_scores_are_not(tmp_path, capsys):
    a, b = _claims(tmp_path / "a", 0.64, 2.0), _claims(tmp_path / "b", 0.69, 2.0)
    assert compare_tables.main([str(a), str(b)]) == 0
    assert "claims.parquet: identical (2 rows; set aside: effect/ci_low/ci_high/note of 1 timing rows)" in capsys.readouterr().out
    c = _claims(tmp_path / "c", 0.64, 3.0)
    assert compare_tables.main([str(a), str(c)]) == 1
    out = capsys.readouterr().out
    assert "effect: 1 rows, largest at row 1: 2.0 vs 3.0" in out and "ci_low" in out
