"""Statistics shared by the summary tables (no torch here).

* Spread over seeds: mean, sample standard deviation and a two-sided 95% **Student t** interval
  ``mean ± t_{0.975, n-1} · std / sqrt(n)``. A t interval, not a bootstrap, because the grids have
  few seeds (1-5): a bootstrap over 3 values has only 10 distinct resamples and its percentile
  interval is far too narrow, while the t interval is exact for normal scores and widens honestly
  as n shrinks. One seed gives ``std = ci_low = ci_high = NaN`` (no spread is known).
* Rank correlation with uncertainty: Spearman's rho with a percentile **bootstrap** interval over
  seeds and pairs (seeds drawn with replacement, then pairs within each drawn seed), so the
  interval carries both the pair-to-pair and the seed-to-seed variation.
* Training curves: the area under the dev curve over the budget (a mean dev score) and the dev
  score at fixed fractions of the budget; the log-spaced evaluation schedule.
* Floor-normalised transfer: ``transfer_gain = (score - random) / (own - random)``.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

CONFIDENCE = 0.95
BUDGET_FRACTIONS = (0.1, 0.25, 0.5)
STAT_SUFFIXES = ("mean", "std", "ci_low", "ci_high")


# --- spread over seeds ------------------------------------------------------------------------------

def mean_interval(values, confidence: float = CONFIDENCE) -> dict:
    """``{mean, std, ci_low, ci_high, n}`` of the finite ``values``: sample std (ddof 1) and a
    Student t interval for the mean. NaN std/interval with fewer than 2 values."""
    from scipy.stats import t as student_t

    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = int(len(x))
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
    mean = float(x.mean())
    if n < 2:
        return {"mean": mean, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": n}
    std = float(x.std(ddof=1))
    half = float(student_t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half, "n": n}


def add_seed_stats(df: pd.DataFrame, by: list[str], columns: list[str], n_column: str = "n_seeds") -> pd.DataFrame:
    """Add ``{col}_mean``, ``{col}_std``, ``{col}_ci_low``, ``{col}_ci_high`` for every ``col`` of
    ``columns``: the statistics over the rows (seeds) of the row's ``by`` group, repeated on each
    row of the group; and ``n_column``, the number of rows in the group. Order and rows are kept."""
    out = df.copy()
    if out.empty:
        for col in columns:
            for s in STAT_SUFFIXES:
                out[f"{col}_{s}"] = pd.Series(dtype=float)
        out[n_column] = pd.Series(dtype="int64")
        return out
    keys = [tuple(k) for k in out[by].itertuples(index=False, name=None)]
    groups: dict[tuple, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    n = np.zeros(len(out), dtype=np.int64)
    for idx in groups.values():
        n[idx] = len(idx)
    for col in columns:
        vals = out[col].to_numpy(dtype=float)
        arrays = {s: np.full(len(out), math.nan) for s in STAT_SUFFIXES}
        for idx in groups.values():
            st = mean_interval(vals[idx])
            for s in STAT_SUFFIXES:
                arrays[s][idx] = st[s]
        for s in STAT_SUFFIXES:
            out[f"{col}_{s}"] = arrays[s]
    out[n_column] = n
    return out


# --- rank correlation with a bootstrap interval -------------------------------------------------------

def _rank_corr(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import rankdata

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    rx, ry = rankdata(x), rankdata(y)
    return float(np.corrcoef(rx, ry)[0, 1])


def _bootstrap_indices(groups, n: int, n_boot: int, seed: int):
    """``n_boot`` resamples of row indices: groups drawn with replacement, then rows with replacement
    within each drawn group (every row its own group's member; ``groups`` None = one group)."""
    g = np.zeros(n, dtype=np.int64) if groups is None else pd.factorize(np.asarray(groups))[0]
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(g == k) for k in np.unique(g)]
    for _ in range(n_boot):
        chosen = rng.integers(0, len(members), len(members))
        yield np.concatenate([rng.choice(members[c], len(members[c]), replace=True) for c in chosen])


def _percentile_interval(values: list, n_boot: int, confidence: float) -> tuple[float, float]:
    if len(values) < n_boot / 2:
        return math.nan, math.nan
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi)


def bootstrap_spearman(x, y, groups=None, n_boot: int = 1000, seed: int = 0,
                       confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap interval of Spearman's rho (NaN pairs dropped).

    ``groups`` (e.g. the seed of each pair): each resample draws groups with replacement, then
    pairs with replacement within each drawn group; without groups, pairs are drawn directly.
    Resamples with an undefined rho (a constant side) are skipped; NaN with fewer than 3 pairs or
    when fewer than half of the resamples give a rho. Deterministic for a given ``seed``."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    groups = None if groups is None else np.asarray(groups)[keep]
    if len(x) < 3:
        return math.nan, math.nan
    rhos = [r for idx in _bootstrap_indices(groups, len(x), n_boot, seed)
            if not math.isnan(r := _rank_corr(x[idx], y[idx]))]
    return _percentile_interval(rhos, n_boot, confidence)


def bootstrap_spearman_difference(x1, x2, y, groups=None, n_boot: int = 1000, seed: int = 0,
                                  confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap interval of ``rho(x1, y) - rho(x2, y)``: both correlations on the same
    resample (paired), resampled as in :func:`bootstrap_spearman`; rows with a NaN dropped."""
    x1, x2, y = (np.asarray(a, dtype=float) for a in (x1, x2, y))
    keep = np.isfinite(x1) & np.isfinite(x2) & np.isfinite(y)
    x1, x2, y = x1[keep], x2[keep], y[keep]
    groups = None if groups is None else np.asarray(groups)[keep]
    if len(y) < 3:
        return math.nan, math.nan
    diffs = [d for idx in _bootstrap_indices(groups, len(y), n_boot, seed)
             if not math.isnan(d := _rank_corr(x1[idx], y[idx]) - _rank_corr(x2[idx], y[idx]))]
    return _percentile_interval(diffs, n_boot, confidence)


# --- training curves ---------------------------------------------------------------------------------

def eval_steps(total: int, every: int, schedule: str = "fixed") -> list[int]:
    """The steps at which a run of ``total`` steps evaluates on dev.

    ``fixed``: every ``every`` steps and at the end. ``log``: in addition 1, 2, 4, 8, ... below
    ``every`` (dense where curves move), e.g. total 120, every 20 -> 1 2 4 8 16 20 40 ... 120."""
    if schedule not in ("fixed", "log"):
        raise ValueError(f"unknown eval_schedule '{schedule}' (fixed | log)")
    steps = set(range(every, total + 1, every)) | {total}
    if schedule == "log":
        p = 1
        while p < min(every, total):
            steps.add(p)
            p *= 2
    return sorted(steps)


def is_eval_step(step: int, total: int, every: int, schedule: str = "fixed") -> bool:
    """``step in eval_steps(total, every, schedule)`` without building the list."""
    if step % every == 0 or step == total:
        return True
    return schedule == "log" and step < every and step & (step - 1) == 0


def curve_auc(steps, scores, budget: float, start: float | None = None) -> float:
    """Area under the dev curve from ``start`` (default: the first evaluated step) to ``budget``,
    divided by the span: the run's mean dev score over that span (score units, 0-1 for accuracy).

    Linear between evaluations; the last score holds until ``budget``; NaN on an empty curve."""
    s, v = np.asarray(steps, dtype=float), np.asarray(scores, dtype=float)
    order = np.argsort(s)
    s, v = s[order], v[order]
    if not len(s):
        return math.nan
    start = float(s[0]) if start is None else float(start)
    if budget <= start:
        return float(np.interp(start, s, v))
    grid = np.union1d(s[(s > start) & (s < budget)], [start, budget])
    vals = np.interp(grid, s, v)  # constant beyond both ends
    return float(np.sum((vals[1:] + vals[:-1]) / 2 * np.diff(grid)) / (budget - start))


def score_at(steps, scores, step: float) -> float:
    """Dev score of the latest evaluation at or before ``step`` (what the run had reached by then;
    no look-ahead); NaN if nothing was evaluated yet."""
    s, v = np.asarray(steps, dtype=float), np.asarray(scores, dtype=float)
    done = s <= step + 1e-9
    if not done.any():
        return math.nan
    return float(v[done][np.argmax(s[done])])


def curve_summary(curve: pd.DataFrame, budget: float, start: float | None = None,
                  fractions=BUDGET_FRACTIONS) -> dict:
    """``{"auc": ..., "dev_at_10": ..., "dev_at_25": ..., "dev_at_50": ...}`` of a curve with
    ``step`` and ``dev_score`` columns (fraction f -> key ``dev_at_{round(100 f)}``)."""
    out = {"auc": curve_auc(curve["step"], curve["dev_score"], budget, start)}
    for f in fractions:
        out[f"dev_at_{round(100 * f)}"] = score_at(curve["step"], curve["dev_score"], f * budget)
    return out


# --- growth exponents ------------------------------------------------------------------------------------

def loglog_slope(x, y) -> tuple[float, float, int]:
    """The growth exponent of ``y`` in ``x``: OLS slope of log y on log x, its standard error and the
    number of points used (positive, finite values only). NaN slope with fewer than 2 distinct x, NaN
    error with fewer than 3 points."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    lx, ly = np.log(x[keep]), np.log(y[keep])
    n = int(len(lx))
    if n < 2 or np.ptp(lx) == 0:
        return math.nan, math.nan, n
    slope, intercept = np.polyfit(lx, ly, 1)
    if n < 3:
        return float(slope), math.nan, n
    resid = ly - (slope * lx + intercept)
    se = math.sqrt(float(resid @ resid) / (n - 2) / float(((lx - lx.mean()) ** 2).sum()))
    return float(slope), se, n


# --- floor-normalised transfer -------------------------------------------------------------------------

def transfer_gain(score, random, own):
    """``(score - random) / (own - random)``: 0 = no better than a random prompt, 1 = as good as the
    target's own prompt; NaN where ``own <= random`` (the own prompt does not beat the floor)."""
    score, random, own = (np.asarray(a, dtype=float) for a in (score, random, own))
    denom = own - random
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = np.where(denom > 0, (score - random) / np.where(denom > 0, denom, 1.0), math.nan)
    return gain if gain.ndim else float(gain)
