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
