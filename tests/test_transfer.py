import math

import pandas as pd
import pytest

from pipeline_steps.transfer import init_speedup, steps_to_reach


def curve(scores, every=10):
    return pd.DataFrame({"step": [every * (i + 1) for i in range(len(scores))], "dev_score": scores})


def test_steps_to_reach():
    c = curve([0.5, 0.7, 0.9, 0.8])
    assert steps_to_reach(c, 0.7) == 20 and steps_to_reach(c, 0.85) == 30 and math.isnan(steps_to_reach(c, 0.95))


def test_init_speedup_against_random_init():
    random = curve([0.5, 0.6, 0.8, 1.0])           # threshold 0.9 x 1.0 = 0.9 -> reached at step 40
    transferred = curve([0.92, 0.95, 0.96, 0.97])  # reached at step 10
    r = init_speedup(transferred, random, 0.9)
    assert r["threshold"] == pytest.approx(0.9) and r["steps_to_reach"] == 10 and r["random_steps_to_reach"] == 40
    assert r["speedup"] == pytest.approx(4.0)
    assert math.isnan(init_speedup(curve([0.1, 0.2]), curve([0.5, 1.0]))["speedup"])
