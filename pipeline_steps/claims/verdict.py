"""Intervals and verdicts of measured effects (docs/reproduction.md, "Verdict rules").

An effect is measured once per seed (a paired difference within the seed, a ratio, a correlation).
Its 95% interval is, in this order of preference:

1. a ready interval the measure computed itself (the bootstrap of a rank correlation);
2. with two or more seeds, the Student t interval over the per-seed effects (``stats.mean_interval``);
3. with one seed, ``effect ± z · se`` where ``se`` is the effect's sampling error on the test set
   (two accuracies on n examples: ``sqrt((p1 (1 - p1) + p2 (1 - p2)) / n)``), so that a 1-point gap
   on 120 questions is inconclusive;
4. for a counted quantity (FLOPs), the value itself: nothing is sampled.

With none of these (one seed of a timing) there is no interval and the verdict is inconclusive.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..stats import CONFIDENCE, mean_interval

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_RUN = "reproduced", "not reproduced", "inconclusive", "not run"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_RUN)
SIDES = ("greater", "less", "within")


@dataclass
class Measurement:
    """One setting's effect: ``per_seed`` (seed -> effect), or a ``point`` with a ready ``interval``."""

    setting: dict
    per_seed: dict = field(default_factory=dict)
    se: float | None = None            # sampling error of the effect when only one seed ran
    se_df: float | None = None         # degrees of freedom of ``se`` (Welch); None: a normal quantile
    se_basis: str = ""                 # what ``se`` is, e.g. "test-set binomial, n=150"
    exact: bool = False                # counted (FLOPs): no sampling error
    point: float | None = None         # with ``interval``: an effect whose interval the measure computed
    interval: tuple | None = None
    interval_basis: str = ""
    n_seeds: int | None = None
    n_test: int | None = None
    note: str = ""


def quantile(confidence: float = CONFIDENCE, df: float | None = None) -> float:
    """Two-sided quantile: normal, or Student t with ``df`` degrees of freedom."""
    from scipy.stats import norm, t

    return float(norm.ppf(0.5 + confidence / 2) if df is None else t.ppf(0.5 + confidence / 2, df))


def binomial_se(p1: float, p2: float, n: int | None) -> float | None:
    """Sampling error of ``p1 - p2``, two scores in [0, 1] on the same ``n`` test examples, each
    taken as a binomial proportion (ignoring the pairing, so it errs on the wide side); None without n."""
    if not n or not all(np.isfinite([p1, p2])):
        return None
    p1, p2 = min(max(p1, 0.0), 1.0), min(max(p2, 0.0), 1.0)
    return math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / n)


def effect_interval(m: Measurement, confidence: float = CONFIDENCE) -> dict:
    """``{effect, ci_low, ci_high, n_seeds, interval}`` of a measurement (rules in the module doc)."""
    if m.interval is not None:
        lo, hi = m.interval
        n = m.n_seeds if m.n_seeds is not None else len(m.per_seed)
        return {"effect": float(m.point), "ci_low": float(lo), "ci_high": float(hi), "n_seeds": int(n),
                "interval": m.interval_basis}
    vals = np.array([v for v in m.per_seed.values() if v is not None and np.isfinite(v)], dtype=float)
    n = int(len(vals))
    if n == 0:
        return {"effect": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n_seeds": 0, "interval": "no value"}
    st = mean_interval(vals, confidence)
    if m.exact:
        return {"effect": st["mean"], "ci_low": st["mean"], "ci_high": st["mean"], "n_seeds": n,
                "interval": "none needed: counted, not sampled"}
    if n >= 2:
        return {"effect": st["mean"], "ci_low": st["ci_low"], "ci_high": st["ci_high"], "n_seeds": n,
                "interval": f"{round(100 * confidence)}% Student t over {n} seeds"}
    if m.se is not None and np.isfinite(m.se):
        half = quantile(confidence, m.se_df) * m.se
        shape = "normal" if m.se_df is None else f"t (df {m.se_df:.1f})"
        return {"effect": st["mean"], "ci_low": st["mean"] - half, "ci_high": st["mean"] + half, "n_seeds": 1,
                "interval": f"one seed: {round(100 * confidence)}% {shape}, {m.se_basis}"}
    return {"effect": st["mean"], "ci_low": math.nan, "ci_high": math.nan, "n_seeds": 1,
            "interval": "one seed: no sampling error known (run >= 2 seeds)"}


def verdict(ci_low: float, ci_high: float, test: dict) -> str:
    """``reproduced`` when the whole interval lies on the claimed side of the null (inside the band
    for ``within``), ``not reproduced`` when it lies wholly on the other side (outside the band),
    ``inconclusive`` when it spans the null (a band edge) or is unknown."""
    if not (np.isfinite(ci_low) and np.isfinite(ci_high)):
        return INCONCLUSIVE
    side = test["side"]
    if side == "greater":
        null = test["null"]
        return REPRODUCED if ci_low > null else NOT_REPRODUCED if ci_high < null else INCONCLUSIVE
    if side == "less":
        null = test["null"]
        return REPRODUCED if ci_high < null else NOT_REPRODUCED if ci_low > null else INCONCLUSIVE
    if side == "within":
        lo, hi = test["low"], test["high"]
        if lo <= ci_low and ci_high <= hi:
            return REPRODUCED
        return NOT_REPRODUCED if ci_high < lo or ci_low > hi else INCONCLUSIVE
    raise ValueError(f"unknown side '{side}' (one of {SIDES})")


def null_text(test: dict) -> str:
    """The claimed side in words, e.g. ``> 0``, ``< 0.85``, ``in [-1, 1]``."""
    if test["side"] == "within":
        return f"in [{test['low']:g}, {test['high']:g}]"
    return f"{'>' if test['side'] == 'greater' else '<'} {test['null']:g}"
