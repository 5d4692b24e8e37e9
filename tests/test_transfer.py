import math

import pandas as pd
import pytest

from pipeline_steps.transferability.report import init_speedup, steps_to_reach


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


def test_predict_many_equals_one_prompt_at_a_time(tiny_spec):
    import numpy as np
    import torch

    from pipeline_steps.runtime import load_bundle
    from pipeline_steps.training import predict
    from pipeline_steps.transferability.steps import predict_many
    from pipeline_steps.prompt_tuning.model import PromptModel
    from test_prompt_tuning import TASK, toy_split

    bundle = load_bundle(tiny_spec("bert"))
    data = toy_split(bundle.tokenizer, 10, split="test")
    prompts = torch.randn(3, 4, 32, generator=torch.Generator().manual_seed(0))
    model = PromptModel(bundle.backbone, bundle.verbalizer(TASK), prompts[0])
    many = predict_many(model, data, prompts, batch_size=8, device="cpu")
    assert many.shape == (3, 10, 2)
    for i in range(3):
        np.testing.assert_allclose(many[i], predict(model, data, 4, "cpu", prompt=prompts[i]), rtol=1e-5, atol=1e-5)


def test_zero_shot_step_and_table(tiny_spec, tmp_path):
    import numpy as np
    import torch

    from pipeline_steps.data.tokenize import tokenize_frame
    from pipeline_steps.io import read_parquet, save_tensors, write_parquet
    from pipeline_steps.runtime import load_bundle
    from pipeline_steps.transferability.report import zero_shot_table
    from pipeline_steps.transferability.steps import zero_shot
    from test_prompt_tuning import TASK

    spec = tiny_spec("bert")
    bundle = load_bundle(spec)
    labels = np.arange(12) % 2
    df = pd.DataFrame({"idx": range(12), "text_a": [["awful", "great"][y] for y in labels], "text_b": "",
                       "label": labels, "split": "test"})
    write_parquet(tokenize_frame(df, bundle.tokenizer, "{text_a} It was {mask}.", 16), tmp_path / "tok.parquet")
    prompts = []
    for task in ("a", "b"):
        path = tmp_path / f"{task}.safetensors"
        save_tensors({"prompt": torch.randn(4, 32)}, path)
        prompts.append({"task": task, "seed": 1, "path": str(path)})
    outputs = []
    for target in ("a", "b"):
        out = tmp_path / f"zs-{target}.parquet"
        res = zero_shot(model_spec=spec, target_spec={**TASK, "name": target}, tokenized=str(tmp_path / "tok.parquet"),
                        prompts=prompts, random_seeds=[0, 1], output=str(out))
        assert list(res["source_task"]) == ["a", "b", "random", "random"] and res["score"].between(0, 1).all()
        outputs.append(str(out))
    table = zero_shot_table(inputs=outputs, table=str(tmp_path / "t.parquet"), heatmap=str(tmp_path / "h.png"))
    own = table[table.source_task == table.target_task]
    assert np.allclose(own["relative_score"], 1.0)
    row = table[(table.source_task == "a") & (table.target_task == "b")].iloc[0]
    b_own = own[own.target_task == "b"]["score"].item()
    assert row["relative_score"] == pytest.approx(row["score"] / b_own)
    assert (tmp_path / "h.png").stat().st_size > 1000 and len(read_parquet(tmp_path / "t.parquet")) == 8
    # prompts of different lengths cannot share one matrix
    save_tensors({"prompt": torch.randn(5, 32)}, tmp_path / "c.safetensors")
    from pipeline_steps.errors import UserError
    with pytest.raises(UserError, match="differ in shape"):
        zero_shot(model_spec=spec, target_spec={**TASK, "name": "a"}, tokenized=str(tmp_path / "tok.parquet"),
                  prompts=prompts + [{"task": "c", "seed": 1, "path": str(tmp_path / "c.safetensors")}],
                  random_seeds=[], output=str(tmp_path / "x.parquet"))


def test_zero_shot_table_transfer_gain_on_a_hand_made_matrix(tmp_path):
    from pipeline_steps.io import write_parquet
    from pipeline_steps.transferability.report import zero_shot_table

    # target t: own prompt 0.9 (seed 1) and 0.8 (seed 2); random prompts 0.5 and 0.7 -> floor 0.6
    rows = [("a", "t", 1, 0.9), ("a", "t", 2, 0.8), ("b", "t", 1, 0.75), ("b", "t", 2, 0.7),
            ("random", "t", 0, 0.5), ("random", "t", 1, 0.7)]
    df = pd.DataFrame(rows, columns=["source_task", "target_task", "seed", "score"]).assign(model="m", split="test", n=10)
    df.loc[df.source_task == "a", "source_task"] = "t"
    write_parquet(df, tmp_path / "t.parquet")
    table = zero_shot_table(inputs=[str(tmp_path / "t.parquet")], table=str(tmp_path / "zs.parquet"),
                            heatmap=str(tmp_path / "h.png"))
    b = table[table.source_task == "b"].set_index("seed")
    assert table["random_score"].tolist() == pytest.approx([0.6] * 6)
    assert b.loc[1, "transfer_gain"] == pytest.approx((0.75 - 0.6) / (0.9 - 0.6))  # 0.5
    assert b.loc[2, "transfer_gain"] == pytest.approx((0.7 - 0.6) / (0.8 - 0.6))    # 0.5
    assert b.loc[1, "own_score"] == 0.9 and b.loc[2, "relative_score"] == pytest.approx(0.7 / 0.8)
    assert b["transfer_gain_mean"].tolist() == pytest.approx([0.5, 0.5]) and b["transfer_gain_std"].iloc[0] == pytest.approx(0, abs=1e-12)
    assert b["n_seeds"].tolist() == [2, 2]
    # std of (0.75, 0.7) = 0.05 / sqrt(2); half width t_{0.975,1} * std / sqrt(2) = 12.7062 * 0.025
    assert b["score_ci_low"].iloc[0] == pytest.approx(0.725 - 12.7062 * 0.025, abs=1e-4)
    own = table[table.source_task == "t"]
    assert own["transfer_gain"].tolist() == pytest.approx([1.0, 1.0])
    assert (tmp_path / "h.png").stat().st_size > 1000
    # own <= random: the gain is undefined
    df.loc[(df.source_task == "t") & (df.seed == 2), "score"] = 0.55
    write_parquet(df, tmp_path / "t.parquet")
    table = zero_shot_table(inputs=[str(tmp_path / "t.parquet")], table=str(tmp_path / "zs.parquet"),
                            heatmap=str(tmp_path / "h.png"))
    assert math.isnan(table[(table.source_task == "b") & (table.seed == 2)]["transfer_gain"].item())


def test_curve_comparison_and_init_table_with_seeds(tmp_path):
    from pipeline_steps.io import write_json, write_parquet
    from pipeline_steps.transferability.report import curve_comparison, init_table

    steps = [1, 2, 4, 8, 10]
    random = pd.DataFrame({"step": steps, "dev_score": [0.5, 0.5, 0.6, 0.8, 0.8]})
    init = pd.DataFrame({"step": steps, "dev_score": [0.8, 0.8, 0.8, 0.8, 0.8]})
    cmp = curve_comparison(init, random)
    # random: trapezoids over [1, 10]: 0.5 + 2*0.55 + 4*0.7 + 2*0.8 = 6.0, span 9
    assert cmp["random_auc"] == pytest.approx(6.0 / 9) and cmp["auc"] == pytest.approx(0.8)
    assert cmp["auc_ratio"] == pytest.approx(0.8 / (6.0 / 9)) and cmp["auc_diff"] == pytest.approx(0.8 - 6.0 / 9)
    assert (cmp["dev_at_10"], cmp["random_dev_at_10"], cmp["dev_at_10_diff"]) == pytest.approx((0.8, 0.5, 0.3))
    assert cmp["random_dev_at_25"] == 0.5 and cmp["random_dev_at_50"] == 0.6 and cmp["auc_start_step"] == 1
    # a fixed-schedule random run: the AUC spans the steps both cover (from step 5)
    assert curve_comparison(init, random[random.step >= 8])["auc_start_step"] == 8

    runs = []
    for seed, shift in ((1, 0.0), (2, 0.1), (3, -0.1)):
        d = tmp_path / f"s{seed}"
        write_parquet(init.assign(dev_score=init.dev_score + shift / 4), d / "c.parquet")
        write_parquet(random, d / "r.parquet")
        write_json({"score": 0.8 + shift}, d / "s.json")
        write_json({"score": 0.7}, d / "rs.json")
        runs.append({"model": "m", "source_task": "a", "target_task": "b", "seed": seed, "curve": str(d / "c.parquet"),
                     "scores": str(d / "s.json"), "random_curve": str(d / "r.parquet"),
                     "random_scores": str(d / "rs.json")})
    df = init_table(runs=runs, fraction=0.9, table=str(tmp_path / "t.parquet"), figure=str(tmp_path / "f.png"))
    assert len(df) == 3 and (df["n_seeds"] == 3).all() and (df["n_evals"] == 5).all()
    assert df["final_score_mean"].iloc[0] == pytest.approx(0.8) and df["final_score_std"].iloc[0] == pytest.approx(0.1)
    assert df["final_score_ci_high"].iloc[0] == pytest.approx(0.8 + 4.302653 * 0.1 / 3 ** 0.5, abs=1e-5)
    assert df["auc_ratio_mean"].iloc[0] == pytest.approx(0.8 / (6.0 / 9))
    assert {"steps_to_reach", "speedup", "threshold"} <= set(df.columns)
    assert (tmp_path / "f.png").stat().st_size > 1000
