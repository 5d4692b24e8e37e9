"""pipeline_steps.stats against hand computations."""
import math

import numpy as np
import pandas as pd
import pytest

from pipeline_steps import stats


def test_mean_interval_by_hand():
    st = stats.mean_interval([0.7, 0.8, 0.9])
    # mean 0.8, std 0.1, t_{0.975, 2} = 4.302653 -> half width 4.302653 * 0.1 / sqrt(3)
    half = 4.302653 * 0.1 / math.sqrt(3)
    assert st["mean"] == pytest.approx(0.8) and st["std"] == pytest.approx(0.1) and st["n"] == 3
    assert (st["ci_low"], st["ci_high"]) == pytest.approx((0.8 - half, 0.8 + half), abs=1e-6)
    one = stats.mean_interval([0.5, math.nan])
    assert one["mean"] == 0.5 and one["n"] == 1 and math.isnan(one["std"]) and math.isnan(one["ci_low"])
    assert stats.mean_interval([])["n"] == 0


def test_t_interval_covers_the_mean_95_percent_of_the_time():
    rng = np.random.default_rng(13)
    hits = 0
    trials = 2000
    for _ in range(trials):
        st = stats.mean_interval(rng.normal(0.6, 0.05, size=3))  # 3 seeds of a known distribution
        hits += st["ci_low"] <= 0.6 <= st["ci_high"]
    assert 0.93 < hits / trials < 0.97


def test_add_seed_stats_repeats_group_statistics():
    df = pd.DataFrame({"task": ["a", "a", "a", "b"], "seed": [1, 2, 3, 1], "score": [0.7, 0.8, 0.9, 0.4]})
    out = stats.add_seed_stats(df, ["task"], ["score"])
    assert list(out.columns) == ["task", "seed", "score", "score_mean", "score_std", "score_ci_low", "score_ci_high",
                                 "n_seeds"]
    assert out["score_mean"].tolist() == pytest.approx([0.8, 0.8, 0.8, 0.4])
    assert out["n_seeds"].tolist() == [3, 3, 3, 1] and math.isnan(out.loc[3, "score_std"])
    assert out["score_ci_low"].iloc[0] == pytest.approx(0.8 - 4.302653 * 0.1 / math.sqrt(3), abs=1e-6)
    empty = stats.add_seed_stats(df.iloc[:0], ["task"], ["score"])
    assert "score_ci_high" in empty.columns and len(empty) == 0


def test_transfer_gain_on_a_hand_made_matrix():
    # rows: source prompts on one target; own 0.9, random floor mean(0.5, 0.7) = 0.6
    score = np.array([0.9, 0.75, 0.6, 0.45])
    gain = stats.transfer_gain(score, 0.6, 0.9)
    assert gain == pytest.approx([1.0, 0.5, 0.0, -0.5])
    assert math.isnan(stats.transfer_gain(0.8, 0.7, 0.7))  # own <= random: undefined
    assert math.isnan(stats.transfer_gain(0.8, 0.75, 0.7))
    assert stats.transfer_gain(0.8, 0.5, 1.0) == pytest.approx(0.6)


def test_eval_schedule():
    assert stats.eval_steps(120, 20, "fixed") == [20, 40, 60, 80, 100, 120]
    assert stats.eval_steps(120, 20, "log") == [1, 2, 4, 8, 16, 20, 40, 60, 80, 100, 120]
    assert stats.eval_steps(50, 16, "log") == [1, 2, 4, 8, 16, 32, 48, 50]
    assert stats.eval_steps(3, 20, "log") == [1, 2, 3]
    for total, every in [(120, 20), (50, 16), (7, 3), (150, 50)]:
        for sched in ("fixed", "log"):
            want = stats.eval_steps(total, every, sched)
            assert [s for s in range(1, total + 1) if stats.is_eval_step(s, total, every, sched)] == want
    with pytest.raises(ValueError, match="eval_schedule"):
        stats.eval_steps(10, 5, "linear")


def test_auc_and_score_at_on_a_hand_made_curve():
    steps, scores = [1, 2, 4, 8], [0.5, 0.6, 0.8, 0.8]
    # trapezoids over [1, 8]: 1*0.55 + 2*0.7 + 4*0.8 = 5.15, span 7; to budget 10: + 2*0.8
    assert stats.curve_auc(steps, scores, 8) == pytest.approx(5.15 / 7)
    assert stats.curve_auc(steps, scores, 10) == pytest.approx((5.15 + 1.6) / 9)
    assert stats.curve_auc(steps, scores, 10, start=0) == pytest.approx((0.5 + 5.15 + 1.6) / 10)  # held before 1
    assert stats.curve_auc([5], [0.7], 10) == pytest.approx(0.7)
    assert math.isnan(stats.curve_auc([], [], 10))
    assert stats.score_at(steps, scores, 3) == 0.6 and stats.score_at(steps, scores, 4) == 0.8
    assert math.isnan(stats.score_at(steps, scores, 0.5))
    summ = stats.curve_summary(pd.DataFrame({"step": steps, "dev_score": scores}), budget=16)
    assert summ["dev_at_10"] == 0.5 and summ["dev_at_25"] == 0.8 and summ["dev_at_50"] == 0.8


def test_bootstrap_spearman_interval():
    rng = np.random.default_rng(0)
    x = rng.normal(size=60)
    y = x + rng.normal(scale=1.0, size=60)
    lo, hi = stats.bootstrap_spearman(x, y, groups=np.repeat([1, 2, 3], 20), n_boot=400, seed=1)
    from scipy.stats import spearmanr

    rho = spearmanr(x, y).statistic
    assert lo < rho < hi and 0 < lo and hi < 1
    assert stats.bootstrap_spearman(x, y, n_boot=200, seed=1) == stats.bootstrap_spearman(x, y, n_boot=200, seed=1)
    perfect = stats.bootstrap_spearman([1, 2, 3, 4, 5], [2, 4, 6, 8, 10], n_boot=200)
    assert perfect == pytest.approx((1.0, 1.0))
    assert all(math.isnan(v) for v in stats.bootstrap_spearman([1, 2], [1, 2]))


# --- summary tables that aggregate runs carry the spread over seeds --------------------------------

def test_fpt_and_lpt_summaries_report_seed_intervals(tmp_path):
    from pipeline_steps.fpt.report import summarise_fpt
    from pipeline_steps.io import write_json
    from pipeline_steps.lpt.report import summarise_lpt

    metas, scores, lmetas = [], [], []
    stage = {"model": "m", "task": "t", "seed": 1, "method": "pt", "stage": 0, "num_layers": 2,
             "dims": {"encoder_ffn": [64]}, "kept": {"layers": [0, 1]}, "steps": 10, "flops": 1.0,
             "flops_per_step": 0.1, "wall_seconds": 1.0, "cpu_seconds": 1.0, "eval_seconds": 0.1,
             "best_dev_score": 0.5, "cumulative_flops": 1.0, "cumulative_wall_seconds": 1.0}
    write_json(stage, tmp_path / "stage.json")
    for seed, (pt, fpt) in zip((1, 2, 3), [(0.80, 0.78), (0.70, 0.70), (0.75, 0.70)]):
        for method, score, flops in (("pt", pt, 10.0), ("fpt_depth", fpt, 6.0)):
            write_json({"model": "m", "task": "t", "seed": seed, "method": method, "cumulative_steps": 10,
                        "cumulative_flops": flops, "cumulative_wall_seconds": 1.0, "cumulative_cpu_seconds": 1.0},
                       tmp_path / f"{method}{seed}.json")
            write_json({"metric": "accuracy", "score": score}, tmp_path / f"{method}{seed}.s.json")
            metas.append(str(tmp_path / f"{method}{seed}.json"))
            scores.append(str(tmp_path / f"{method}{seed}.s.json"))
            write_json({"model": "m", "task": "t", "seed": seed, "method": "lpt_naive" if method != "pt" else "pt",
                        "insert_layer": 1, "metric": "accuracy", "score": score, "step_seconds": 0.01,
                        "trainable_params": 10, "flops_per_step": flops, "train_seconds": 1.0},
                       tmp_path / f"l{method}{seed}.json")
            lmetas.append(str(tmp_path / f"l{method}{seed}.json"))
    df = summarise_fpt(metas=metas, scores=scores, stage_metas=[str(tmp_path / "stage.json")], curves=[],
                       table=str(tmp_path / "fpt.parquet"), stages_table=str(tmp_path / "st.parquet"),
                       figure=str(tmp_path / "fpt.png"))
    d = df[df["method"] == "fpt_depth"].iloc[0]
    # score_diff_vs_pt per seed: -0.02, 0, -0.05 -> mean -0.07/3, t interval with t_{0.975,2} = 4.302653
    diffs = np.array([-0.02, 0.0, -0.05])
    half = 4.302653 * diffs.std(ddof=1) / math.sqrt(3)
    assert d["score_diff_vs_pt_mean"] == pytest.approx(diffs.mean())
    assert (d["score_diff_vs_pt_ci_low"], d["score_diff_vs_pt_ci_high"]) == pytest.approx(
        (diffs.mean() - half, diffs.mean() + half), abs=1e-6)
    assert d["flops_ratio_vs_pt_mean"] == pytest.approx(0.6) and d["n_seeds"] == 3
    assert {"score", "score_diff_vs_pt", "flops_ratio_vs_pt"} <= set(df.columns)
    lpt = summarise_lpt(metas=lmetas, table=str(tmp_path / "lpt.parquet"), figure=str(tmp_path / "lpt.png"))
    r = lpt[lpt["method"] == "lpt_naive"].iloc[0]
    assert r["score_diff_vs_pt_mean"] == pytest.approx(diffs.mean()) and r["n_seeds"] == 3
    assert r["score_diff_vs_pt_ci_high"] == pytest.approx(diffs.mean() + half, abs=1e-6)
    assert (tmp_path / "fpt.png").stat().st_size > 1000 and (tmp_path / "lpt.png").stat().st_size > 1000


def test_prompt_tuning_summary_reports_seed_intervals(tmp_path):
    from pipeline_steps.errors import UserError
    from pipeline_steps.io import write_json, write_parquet
    from pipeline_steps.prompt_tuning.report import summarise_prompt_tuning

    metas, scores, curves = [], [], []
    for seed, score in ((1, 0.7), (2, 0.8), (3, 0.9)):
        d = tmp_path / "m" / "t" / f"seed{seed}"
        write_json({"model": "m", "task": "t", "seed": seed, "verbalizer": "mlm", "prompt_length": 4, "steps": 10,
                    "best_dev_score": score, "best_step": 10, "train_seconds": 1.0, "config_hash": "x",
                    "settings": {"lr": 0.05, "batch_size": 8, "max_length": 32, "init": "vocab", "bucket_batches": 4,
                                 "weight_decay": 0.0, "warmup_steps": 0, "steps": 10}}, d / "meta.json")
        write_json({"metric": "accuracy", "score": score, "n": 10}, d / "scores.json")
        write_parquet(pd.DataFrame({"step": [1, 10], "dev_score": [0.5, score]}), d / "curve.parquet",
                      metadata={"model": "m", "task": "t", "seed": seed})  # as train-prompt writes it
        metas.append(str(d / "meta.json"))
        scores.append(str(d / "scores.json"))
        curves.append(str(d / "curve.parquet"))
    df = summarise_prompt_tuning(metas=metas, scores=scores, curves=curves, table=str(tmp_path / "pt.parquet"),
                                 scores_figure=str(tmp_path / "s.png"), curves_figure=str(tmp_path / "c.png"))
    # a curve without provenance (model, task, seed) is refused, naming the file, before a figure is drawn
    write_parquet(pd.DataFrame({"step": [1], "dev_score": [0.5]}), tmp_path / "bare.parquet")
    with pytest.raises(UserError, match="bare.parquet: the curve names no model, task and seed"):
        summarise_prompt_tuning(metas=metas, scores=scores, curves=curves + [str(tmp_path / "bare.parquet")],
                                table=str(tmp_path / "pt2.parquet"), scores_figure=str(tmp_path / "s2.png"),
                                curves_figure=str(tmp_path / "c2.png"))
    assert not (tmp_path / "pt2.parquet").exists()  # refused before anything is written
    assert df["test_score_mean"].tolist() == pytest.approx([0.8] * 3) and (df["n_seeds"] == 3).all()
    assert df["test_score_ci_low"].iloc[0] == pytest.approx(0.8 - 4.302653 * 0.1 / math.sqrt(3), abs=1e-6)
    assert df["dev_score_std"].iloc[0] == pytest.approx(0.1)
    # without the data tables the shortfall is unknown; every other column is as before
    assert df["k_shot_shortfall"].isna().all() and str(df["k_shot_shortfall"].dtype) == "Int64"
    # the settings that shaped each prompt are columns beside its config hash (issue 20)
    assert df["lr"].tolist() == [0.05] * 3 and df["batch_size"].tolist() == [8] * 3
    assert df["bucket_batches"].tolist() == [4] * 3 and df["init"].tolist() == ["vocab"] * 3
    assert list(df.columns) == [  # the columns the table had before the count, then the count
        "model", "task", "seed", "verbalizer", "prompt_length", "steps", "lr", "batch_size", "max_length", "init",
        "bucket_batches", "weight_decay", "warmup_steps", "metric", "dev_score", "best_step",
        "test_score", "n_test", "train_seconds", "config_hash", "test_score_mean", "test_score_std",
        "test_score_ci_low", "test_score_ci_high", "dev_score_mean", "dev_score_std", "dev_score_ci_low",
        "dev_score_ci_high", "n_seeds", "k_shot_shortfall"]
    before = list(df.columns)

    # the data tables' metadata gives the task's k-shot shortfall: a column, the same on every run of the task
    write_parquet(pd.DataFrame({"x": [1]}), tmp_path / "data_t.parquet",
                  metadata={"step": "prepare_data", "task": "t", "k_shot_shortfall": 7})
    write_parquet(pd.DataFrame({"x": [1]}), tmp_path / "data_u.parquet",
                  metadata={"step": "prepare_data", "task": "u", "k_shot_shortfall": 0})
    short = summarise_prompt_tuning(metas=metas, scores=scores, curves=curves, table=str(tmp_path / "pt2.parquet"),
                                    scores_figure=str(tmp_path / "s.png"), curves_figure=str(tmp_path / "c.png"),
                                    data=[str(tmp_path / "data_t.parquet"), str(tmp_path / "data_u.parquet")])
    assert list(short.columns) == before and short["k_shot_shortfall"].tolist() == [7, 7, 7]
    assert short.drop(columns=["k_shot_shortfall", "train_seconds"]).equals(
        df.drop(columns=["k_shot_shortfall", "train_seconds"]))
    assert pd.read_parquet(tmp_path / "pt2.parquet")["k_shot_shortfall"].tolist() == [7, 7, 7]
    # a data table written before the count existed: unknown (NA), not 0
    write_parquet(pd.DataFrame({"x": [1]}), tmp_path / "data_t.parquet", metadata={"step": "prepare_data", "task": "t"})
    old = summarise_prompt_tuning(metas=metas, scores=scores, curves=curves, table=str(tmp_path / "pt3.parquet"),
                                  scores_figure=str(tmp_path / "s.png"), curves_figure=str(tmp_path / "c.png"),
                                  data=[str(tmp_path / "data_t.parquet")])
    assert old["k_shot_shortfall"].isna().all()


def test_the_documented_three_seed_config_validates():
    import copy
    from pathlib import Path

    import yaml

    from pipeline_steps.config import load_config

    root = Path(__file__).resolve().parent.parent
    base = yaml.safe_load((root / "config.yaml").read_text())
    extra = yaml.safe_load((root / "resources/configs/demo_3seeds.yaml").read_text())
    merged = copy.deepcopy(base)
    for key, value in extra.items():  # what snakemake --configfile does: a nested update
        merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    cfg = load_config(merged)
    assert cfg["experiment"]["seeds"] == [1, 2, 3] and cfg["transfer"]["random_seeds"] == [0, 1, 2]
    assert cfg["prompt_tuning"]["eval_schedule"] == "log" and cfg["transfer"]["init"]["targets"] == ["products"]
