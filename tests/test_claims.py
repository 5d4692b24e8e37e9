"""The claims stage: verdict rules, intervals, measures on hand-built tables, the claims file, the step."""
from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline_steps.claims import measures as M
from pipeline_steps.claims.spec import DEFAULT_CLAIMS, load_claims
from pipeline_steps.claims.steps import COLUMNS, evaluate, judge
from pipeline_steps.claims.verdict import (INCONCLUSIVE, NOT_REPRODUCED, NOT_RUN, REPRODUCED, Measurement,
                                           binomial_se, effect_interval, verdict)
from pipeline_steps.errors import UserError
from pipeline_steps.io import write_parquet
from pipeline_steps.stats import mean_interval

GREATER0 = {"side": "greater", "null": 0}


# --- verdict rules ------------------------------------------------------------------------------------

@pytest.mark.parametrize("lo, hi, test, expected", [
    (0.5, 2.0, GREATER0, REPRODUCED),                      # wholly on the claimed side
    (-2.0, -0.1, GREATER0, NOT_REPRODUCED),                # wholly on the other side
    (-1.0, 3.0, GREATER0, INCONCLUSIVE),                   # spans the null
    (0.0, 3.0, GREATER0, INCONCLUSIVE),                    # touching the null is not beyond it
    (0.60, 0.70, {"side": "less", "null": 0.85}, REPRODUCED),
    (0.90, 1.10, {"side": "less", "null": 0.85}, NOT_REPRODUCED),
    (0.80, 0.90, {"side": "less", "null": 0.85}, INCONCLUSIVE),
    (-0.8, 0.6, {"side": "within", "low": -1, "high": 1}, REPRODUCED),
    (-4.0, -1.5, {"side": "within", "low": -1, "high": 1}, NOT_REPRODUCED),
    (1.2, 3.0, {"side": "within", "low": -1, "high": 1}, NOT_REPRODUCED),
    (-2.0, 0.5, {"side": "within", "low": -1, "high": 1}, INCONCLUSIVE),
    (math.nan, math.nan, GREATER0, INCONCLUSIVE),          # no interval known
])
def test_verdict_rules(lo, hi, test, expected):
    assert verdict(lo, hi, test) == expected


def test_interval_over_seeds_is_the_t_interval():
    m = Measurement(setting={}, per_seed={1: 2.0, 2: 3.0, 3: 4.5})
    iv = effect_interval(m)
    ref = mean_interval([2.0, 3.0, 4.5])
    assert iv["n_seeds"] == 3 and iv["effect"] == pytest.approx(3.1666667)
    assert (iv["ci_low"], iv["ci_high"]) == pytest.approx((ref["ci_low"], ref["ci_high"]))
    assert "Student t over 3 seeds" in iv["interval"]


def test_one_seed_uses_the_sampling_error_and_a_small_test_set_is_inconclusive():
    # a 1-point gap on 120 questions (0.61 vs 0.60): the binomial error is about 6.3 points
    se = 100 * binomial_se(0.61, 0.60, 120)
    assert se == pytest.approx(100 * math.sqrt((0.61 * 0.39 + 0.6 * 0.4) / 120))
    iv = effect_interval(Measurement(setting={}, per_seed={1: 1.0}, se=se, se_basis="test-set binomial, n=120"))
    assert iv["ci_low"] == pytest.approx(1.0 - 1.959964 * se, rel=1e-5) and iv["ci_high"] > 10
    assert verdict(iv["ci_low"], iv["ci_high"], GREATER0) == INCONCLUSIVE
    # the same gap of 30 points on 5000 questions is reproduced
    se = 100 * binomial_se(0.90, 0.60, 5000)
    iv = effect_interval(Measurement(setting={}, per_seed={1: 30.0}, se=se))
    assert verdict(iv["ci_low"], iv["ci_high"], GREATER0) == REPRODUCED


def test_one_seed_without_sampling_error_has_no_interval_and_counted_values_need_none():
    iv = effect_interval(Measurement(setting={}, per_seed={1: 0.7}))
    assert math.isnan(iv["ci_low"]) and "no sampling error" in iv["interval"]
    iv = effect_interval(Measurement(setting={}, per_seed={1: 0.65}, exact=True))
    assert iv["ci_low"] == iv["ci_high"] == 0.65
    assert verdict(iv["ci_low"], iv["ci_high"], {"side": "less", "null": 0.7}) == REPRODUCED


def test_welch_degrees_of_freedom_widen_the_one_seed_interval():
    normal = effect_interval(Measurement(setting={}, per_seed={1: 1.0}, se=0.5))
    t3 = effect_interval(Measurement(setting={}, per_seed={1: 1.0}, se=0.5, se_df=3))
    assert t3["ci_high"] - t3["ci_low"] == pytest.approx(2 * 3.182446 * 0.5, rel=1e-5)
    assert t3["ci_high"] - t3["ci_low"] > normal["ci_high"] - normal["ci_low"]


# --- measures on hand-built tables ----------------------------------------------------------------------

def ctx(**tables) -> M.Context:
    c = M.Context(tables={}, task_kinds={"movies": "sentiment", "products": "sentiment", "nli": "nli",
                                         "topics": "topic"},
                  split_sizes={"movies": {"test": 150, "dev": 67}, "products": {"test": 150, "dev": 67}})
    c._cache.update(tables)
    return c


def zero_shot(gains_same, gains_other, seed=1):
    rows = []
    pairs_same = [("movies", "products"), ("products", "movies")]
    pairs_other = [("movies", "nli"), ("nli", "movies"), ("topics", "products"), ("products", "topics")]
    for (s, t), g in zip(pairs_same, gains_same):
        rows.append({"model": "m", "seed": seed, "source_task": s, "target_task": t, "transfer_gain": g, "score": .8})
    for (s, t), g in zip(pairs_other, gains_other):
        rows.append({"model": "m", "seed": seed, "source_task": s, "target_task": t, "transfer_gain": g, "score": .5})
    for t in ("movies", "products", "nli", "topics"):
        rows.append({"model": "m", "seed": seed, "source_task": "random", "target_task": t, "transfer_gain": 0.0,
                     "score": 0.5})
    return rows


def test_kind_gap_one_seed_welch_and_three_seeds_t():
    one = pd.DataFrame(zero_shot([1.0, 0.9], [-0.2, 0.1, 0.0, -0.1]))
    [m] = M.kind_gap(ctx(transfer_zero_shot=one))
    assert m.per_seed == {1: pytest.approx(0.95 - (-0.05))}
    a, b = np.array([1.0, 0.9]), np.array([-0.2, 0.1, 0.0, -0.1])
    assert m.se == pytest.approx(math.sqrt(a.var(ddof=1) / 2 + b.var(ddof=1) / 4))
    assert m.setting["tasks"] == ["movies", "nli", "products", "topics"] and m.setting["models"] == ["m"]
    iv = effect_interval(m)
    assert verdict(iv["ci_low"], iv["ci_high"], GREATER0) == REPRODUCED
    three = pd.DataFrame(zero_shot([1.0, 0.9], [-0.2, 0.1, 0.0, -0.1], 1) + zero_shot([0.1, 0.0], [0.2, 0.1, 0.0, 0.3], 2)
                         + zero_shot([0.5, 0.4], [0.0, 0.1, 0.0, 0.1], 3))
    [m] = M.kind_gap(ctx(transfer_zero_shot=three))
    assert sorted(m.per_seed) == [1, 2, 3] and m.per_seed[2] == pytest.approx(0.05 - 0.15)
    iv = effect_interval(m)
    assert "3 seeds" in iv["interval"] and verdict(iv["ci_low"], iv["ci_high"], GREATER0) == INCONCLUSIVE


def test_kind_gap_needs_kinds_on_both_sides():
    df = pd.DataFrame(zero_shot([1.0, 0.9], [-0.2, 0.1, 0.0, -0.1]))
    c = ctx(transfer_zero_shot=df)
    c.task_kinds = {}
    assert M.kind_gap(c) == []


def method_table(scores: dict, seeds=(1, 2, 3), task="movies", column="method", **extra) -> pd.DataFrame:
    rows = [{"model": "m", "task": task, "seed": s, column: meth, "score": v[i], **extra}
            for meth, v in scores.items() for i, s in enumerate(seeds)]
    return pd.DataFrame(rows)


def test_paired_difference_in_points_per_seed():
    df = method_table({"pt": [0.80, 0.82, 0.81], "fpt_compound": [0.795, 0.825, 0.80]})
    [m] = M.paired_difference(ctx(fpt=df), "fpt", ["model", "task"], "method", ["fpt_compound"], "pt")
    assert m.per_seed == {1: pytest.approx(-0.5), 2: pytest.approx(0.5), 3: pytest.approx(-1.0)}
    assert m.n_test == 150 and m.setting["detail"] == {"method": "fpt_compound vs pt"}
    iv = effect_interval(m)
    assert verdict(iv["ci_low"], iv["ci_high"], {"side": "within", "low": -1, "high": 1}) == INCONCLUSIVE


def test_paired_difference_filters_and_table_test_size():
    rows = []
    for shots in (0, 8):
        for variant, score in (("manual", 0.60), ("kpt", 0.70), ("kpt-no-learnable", 0.65)):
            rows.append({"model": "m", "task": "topics", "knowledge_base": "wordnet", "shots": shots, "mode": "prompt",
                         "seed": 1, "variant": variant, "score": score, "n_test": 2000})
    kpt = pd.DataFrame(rows)
    by = ["model", "task", "knowledge_base", "shots", "mode"]
    [zero] = M.paired_difference(ctx(kpt=kpt), "kpt", by, "variant", "kpt", "manual", where={"shots": 0})
    assert zero.setting["shots"] == 0 and zero.per_seed == {1: pytest.approx(10.0)} and zero.n_test == 2000
    assert zero.se == pytest.approx(100 * binomial_se(0.7, 0.6, 2000))
    [few] = M.paired_difference(ctx(kpt=kpt), "kpt", by, "variant", "kpt", "kpt-no-learnable", exclude={"shots": 0})
    assert few.setting["shots"] == 8 and few.per_seed == {1: pytest.approx(5.0)}


def test_largest_drop_picks_the_closest_rival():
    df = method_table({"kpt": [.8], "kpt-no-calibration": [.5], "kpt-no-frequency": [.75], "kpt-no-relevance": [.6]},
                      seeds=(1,), column="variant")
    [m] = M.largest_drop(ctx(kpt=df), "kpt", ["model", "task"], "variant", "kpt-no-calibration",
                         ["kpt-no-frequency", "kpt-no-relevance"])
    assert m.per_seed == {1: pytest.approx(10.0)}  # no-relevance (0.6) is the closest to no-calibration (0.5)
    assert "closest rival kpt-no-relevance" in m.setting["detail"]["variant"]
    # without the target ablation in the table: no measurement (not run)
    assert M.largest_drop(ctx(kpt=df[df.variant != "kpt-no-calibration"]), "kpt", ["model", "task"], "variant",
                          "kpt-no-calibration", ["kpt-no-frequency"]) == []


def test_dynsan_scores_in_points_take_accuracy_or_f1():
    df = pd.DataFrame([
        {"task": "q", "variant": "dynsan", "seed": 1, "accuracy": np.nan, "f1": 62.0, "n_test": 500},
        {"task": "q", "variant": "full_attention", "seed": 1, "accuracy": np.nan, "f1": 58.0, "n_test": 500},
        {"task": "q", "variant": "baseline_most_frequent", "seed": pd.NA, "accuracy": np.nan, "f1": 20.0, "n_test": 500}])
    [m] = M.paired_difference(ctx(dynsan=df), "dynsan", ["task"], "variant", "dynsan", "full_attention",
                              score=["accuracy", "f1"], percent=True)
    assert m.per_seed == {1: pytest.approx(4.0)}
    assert m.se == pytest.approx(100 * binomial_se(0.62, 0.58, 500))


def test_ratio_exact_and_measured():
    df = method_table({"fpt_depth": [0.66, 0.66, 0.66]}).assign(flops_ratio_vs_pt=0.66, wall_ratio_vs_pt=[.7, .8, .6])
    [flops] = M.ratio(ctx(fpt=df), "fpt", ["model", "task"], "method", ["fpt_depth"], "flops_ratio_vs_pt", exact=True)
    iv = effect_interval(flops)
    assert iv["ci_low"] == iv["ci_high"] == pytest.approx(0.66) and flops.setting["detail"] == {"method": "fpt_depth"}
    [wall] = M.ratio(ctx(fpt=df), "fpt", ["model", "task"], "method", ["fpt_depth"], "wall_ratio_vs_pt")
    assert effect_interval(wall)["ci_high"] > 0.7


def test_growth_exponent_gap_linear_vs_quadratic():
    lengths = [256, 512, 1024, 2048, 4096]
    rows = [{"variant": "gated", "sequence_length": n, "peak_memory_mb": 0.01 * n * (1 + 0.01 * (i % 2))}
            for i, n in enumerate(lengths)]
    rows += [{"variant": "all", "sequence_length": n, "peak_memory_mb": 1e-5 * n * n * (1 + 0.01 * (i % 2))}
             for i, n in enumerate(lengths)]
    [m] = M.growth_exponent_gap(ctx(dynsan_efficiency=pd.DataFrame(rows)))
    assert m.point == pytest.approx(1.0, abs=0.02)
    assert m.interval[0] > 0.5 and "exponent all 2.00, gated 1.00" in m.note
    assert verdict(*m.interval, {"side": "greater", "null": 0.5}) == REPRODUCED


def test_tpt_auc_keeps_the_asked_kind_relation():
    ti = pd.DataFrame([
        {"model": "m", "source_task": "movies", "target_task": "products", "seed": 1, "auc_ratio": 1.10, "auc": 0.88,
         "random_auc": 0.80},
        {"model": "m", "source_task": "topics", "target_task": "products", "seed": 1, "auc_ratio": 1.0, "auc": 0.8,
         "random_auc": 0.80}])
    [same] = M.tpt_auc(ctx(transfer_init=ti), "same")
    assert same.setting["tasks"] == ["movies", "products"] and same.per_seed == {1: pytest.approx(1.10)}
    assert same.se == pytest.approx(binomial_se(0.88, 0.80, 67) / 0.80)
    [other] = M.tpt_auc(ctx(transfer_init=ti), "other")
    assert other.setting["tasks"] == ["topics", "products"]


def test_projected_vs_random_needs_the_target_in_the_zero_shot_grid():
    cm = pd.DataFrame([{"pair": "a-to-b", "objective": "distance", "target_task": "products", "seed": 1,
                        "source_model": "a", "target_model": "b", "zero_shot_score": 0.75, "n_test": 150}])
    zs = pd.DataFrame([{"model": "b", "source_task": "random", "target_task": "products", "seed": s, "score": v}
                       for s, v in ((0, 0.55), (1, 0.65))])
    [m] = M.projected_vs_random(ctx(cross_model=cm, transfer_zero_shot=zs))
    assert m.per_seed == {1: pytest.approx(15.0)} and m.setting["models"] == ["a", "b"]
    assert M.projected_vs_random(ctx(cross_model=cm, transfer_zero_shot=zs.assign(model="c"))) == []


def test_indicator_margin_paired_bootstrap():
    rng = np.random.default_rng(0)
    tasks = ["movies", "products", "nli", "topics"]
    ind, zs = [], []
    for seed in (1, 2):
        for s in tasks:
            for t in tasks:
                if s == t:
                    continue
                perf = rng.uniform()
                zs.append({"model": "m", "seed": seed, "source_task": s, "target_task": t, "relative_score": perf,
                           "score": perf, "transfer_gain": perf})
                ind.append({"model": "m", "seed": seed, "source_task": s, "target_task": t, "indicator": "on",
                            "layers": "all", "value": perf + 0.01 * rng.normal()})
                ind.append({"model": "m", "seed": seed, "source_task": s, "target_task": t, "indicator": "cosine_flat",
                            "layers": "input", "value": rng.uniform()})
    [m] = M.indicator_margin(ctx(indicators=pd.DataFrame(ind), transfer_zero_shot=pd.DataFrame(zs)), rivals=["cosine_flat"])
    assert m.point > 0.5 and m.interval[0] > 0 and m.n_seeds == 2
    assert m.setting["detail"]["best_rival"] == "cosine_flat"


# --- the claims file -------------------------------------------------------------------------------------

def test_every_paper_has_three_claims_with_a_citation():
    spec = load_claims(DEFAULT_CLAIMS)
    assert set(spec["papers"]) == {"transferability", "fpt", "lpt", "kpt", "dynsan"}
    for paper, info in spec["papers"].items():
        mine = [c for c in spec["claims"] if c["paper"] == paper]
        assert len(mine) >= 3, paper
        assert info["citation"] and info["url"].startswith("https://")
        assert all(c["where"].strip() and c["paper_result"]["text"].strip() for c in mine)
    # a number is only given where it was verified
    for c in spec["claims"]:
        r = c["paper_result"]
        if r.get("value") is not None or r.get("by"):
            assert r["verified"], c["id"]
        if not r["verified"]:
            assert "UNVERIFIED" in r["text"], c["id"]


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["claims"][0].update(measure="nope"), "unknown measure 'nope'"),
    (lambda d: d["claims"][0]["params"].update(colour="red"), "takes no parameter(s) ['colour']"),
    (lambda d: d["claims"].append(copy.deepcopy(d["claims"][0])), "duplicate claim id"),
    (lambda d: d["claims"][0].update(paper="gpt"), "unknown paper 'gpt'"),
    (lambda d: d["claims"][0].update(test={"side": "within", "low": 1, "high": -1}), "must be below high"),
    (lambda d: d["claims"][0].pop("where"), "'where' is a required property"),
])
def test_bad_claims_file_is_refused_by_name(tmp_path, edit, message):
    data = yaml.safe_load(DEFAULT_CLAIMS.read_text())
    edit(data)
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match=r"claims\.yaml") as e:
        load_claims(path)
    assert message in str(e.value)


# --- the step ------------------------------------------------------------------------------------------

def test_missing_tables_are_not_run_with_the_keys_that_add_them():
    df = judge(load_claims(DEFAULT_CLAIMS), M.Context(tables={}))
    assert (df["verdict"] == NOT_RUN).all() and len(df) == len(load_claims(DEFAULT_CLAIMS)["claims"])
    row = df.set_index("claim_id").loc["dynsan.gated_beats_random"]
    assert "dynsan.run.variants" in row["note"]
    fpt = df.set_index("claim_id").loc["fpt.compound_saves_30"]
    assert fpt["paper_value"] == 0.65 and fpt["paper_verified"]


def test_step_writes_table_and_figure(tmp_path):
    fpt = method_table({"pt": [0.80, 0.82, 0.81], "fpt_depth": [0.79, 0.83, 0.80], "fpt_compound": [0.70, 0.71, 0.72]})
    fpt = fpt.assign(score_diff_vs_pt=0.0, flops_ratio_vs_pt=fpt["method"].map({"pt": 1, "fpt_depth": .66,
                                                                                  "fpt_compound": .55}),
                     wall_ratio_vs_pt=fpt["method"].map({"pt": 1, "fpt_depth": .7, "fpt_compound": .6}))
    write_parquet(fpt, tmp_path / "fpt.parquet")
    data = pd.DataFrame({"split": ["test"] * 500 + ["dev"] * 100 + ["train"] * 1000})
    write_parquet(data, tmp_path / "movies.parquet")
    out = evaluate(claims=str(DEFAULT_CLAIMS), tables={"fpt": str(tmp_path / "fpt.parquet"),
                                                       "lpt": str(tmp_path / "absent.parquet")},
                   data={"movies": str(tmp_path / "movies.parquet")}, task_kinds={}, model_sources={"m": "t5-large"},
                   table=str(tmp_path / "claims.parquet"), figure=str(tmp_path / "claims.png"))
    back = pd.read_parquet(tmp_path / "claims.parquet")
    assert list(back.columns) == COLUMNS and len(back) == len(out)
    rows = back[back.claim_id == "fpt.comparable_score"].set_index("detail")
    compound = rows.loc["method=fpt_compound vs pt"]
    assert compound["verdict"] == NOT_REPRODUCED and compound["n_seeds"] == 3  # about -10 points, tight
    assert compound["paper_value"] == pytest.approx(-0.64) and not compound["setting_matches_paper"]
    flops = back[back.claim_id == "fpt.less_compute"].set_index("detail")
    assert (flops["verdict"] == REPRODUCED).all() and flops.loc["method=fpt_depth", "paper_value"] == 0.72
    assert (back[back.paper == "lpt"]["verdict"] == NOT_RUN).all()
    assert (tmp_path / "claims.png").stat().st_size > 10_000
    assert back["config_hash"].nunique() == 1


def test_step_refuses_an_unknown_table_name(tmp_path):
    with pytest.raises(UserError, match="unknown table name"):
        evaluate(claims=str(DEFAULT_CLAIMS), tables={"fptt": "x.parquet"}, data={}, task_kinds={}, model_sources={},
                 table=str(tmp_path / "c.parquet"), figure=str(tmp_path / "c.png"))
    assert not (tmp_path / "c.parquet").exists()


def test_the_papers_number_is_a_target_only_in_the_papers_setting():
    """A hub run of the paper's model on one of the paper's tasks matches its setting; a demo run does not."""
    rows = method_table({"pt": [0.86, 0.87], "fpt_compound": [0.855, 0.862]}, seeds=(1, 2), task="mnli")
    rows = rows.assign(flops_ratio_vs_pt=rows["method"].map({"pt": 1.0, "fpt_compound": 0.64}))
    c = ctx(fpt=rows)
    spec = load_claims(DEFAULT_CLAIMS)
    paper = judge(spec, c, model_sources={"m": "t5-large"}).set_index("claim_id").loc["fpt.compound_saves_30"]
    assert paper["setting_matches_paper"] and paper["paper_value"] == 0.65 and paper["verdict"] == REPRODUCED
    demo = judge(spec, c, model_sources={"m": "embedded:minilm-l6"}).set_index("claim_id").loc["fpt.compound_saves_30"]
    assert not demo["setting_matches_paper"] and demo["paper_value"] == 0.65


def test_markdown_script_prints_the_tables_numbers(tmp_path):
    """scripts/claims_markdown.py: verdict counts per paper and one row per claim and setting, from the table."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("claims_markdown",
                                                  Path(__file__).resolve().parents[1] / "scripts" / "claims_markdown.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    fpt = method_table({"pt": [0.80, 0.82, 0.81], "fpt_compound": [0.70, 0.71, 0.72]})
    fpt = fpt.assign(score_diff_vs_pt=0.0, flops_ratio_vs_pt=fpt["method"].map({"pt": 1, "fpt_compound": .55}),
                     wall_ratio_vs_pt=fpt["method"].map({"pt": 1, "fpt_compound": .6}))
    write_parquet(fpt, tmp_path / "fpt.parquet")
    df = evaluate(claims=str(DEFAULT_CLAIMS), tables={"fpt": str(tmp_path / "fpt.parquet")}, data={}, task_kinds={},
                  model_sources={}, table=str(tmp_path / "claims.parquet"), figure=str(tmp_path / "claims.png"))
    text = mod.markdown(pd.read_parquet(tmp_path / "claims.parquet"))
    lines = text.splitlines()
    assert lines[0].startswith(f"{len(df)} rows: **{int((df.verdict == REPRODUCED).sum())} reproduced**")
    fpt_counts = df[df.paper == "fpt"]["verdict"].value_counts()
    assert f"| fpt | {fpt_counts.get(REPRODUCED, 0)} | {fpt_counts.get(NOT_REPRODUCED, 0)} |" in text
    row = next(line for line in lines if line.startswith("| `fpt.less_compute`"))
    assert "fpt_compound" in row and "| 0.55 [0.55, 0.55] | 3 seeds |" in row and "**reproduced**" in row
    assert "| 0.65 |" in row                        # the paper's verified number
    assert sum(line.startswith("| `") for line in lines) == len(df)
