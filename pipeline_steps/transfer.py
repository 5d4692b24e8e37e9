"""Cross-task prompt transfer (Su et al.): zero-shot transfer and transfer as initialization (TPT)."""
from __future__ import annotations

import math

import pandas as pd


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
