"""Speed levers: light report jobs, length-bucketed batches, sorted evaluation, bf16 autocast fallback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def report_steps() -> list[str]:
    from pipeline_steps.cli import STEPS

    return sorted(name for name, target in STEPS.items() if target.split(":")[0].endswith(".report"))


@pytest.mark.parametrize("step", report_steps())
def test_report_steps_run_without_torch_or_transformers(step):
    """The whole CLI path of a table/figure step (logging set-up, step resolution, the call) leaves
    torch and transformers unimported: each such job saves their ~2.5 s import."""
    code = (
        "import sys\n"
        "from pipeline_steps import cli\n"
        "resolve = cli.resolve_step\n"
        "def stub(name):\n"
        "    resolve(name)  # the real import of the step's module\n"
        "    return lambda **kwargs: None\n"
        "cli.resolve_step = stub\n"
        f"assert cli.main([{step!r}, '--args', '{{}}']) == 0\n"
        "print(','.join(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "", f"{step} imports {res.stdout.strip()}"


def test_there_are_report_steps():
    assert {"summarise-prompts", "zero-shot-table", "summarise-fpt"} <= set(report_steps())


def test_evaluate_exports_the_same_peft_adapter_as_export_peft(tiny_spec, tmp_path):
    """evaluate-prompt with peft_dir (the workflow's one job) writes the adapter export-peft writes."""
    import numpy as np
    import pandas as pd
    import torch

    from pipeline_steps.data.tokenize import tokenize_frame
    from pipeline_steps.io import load_tensors, read_json, save_tensors, write_parquet
    from pipeline_steps.prompt_tuning.steps import evaluate
    from pipeline_steps.runtime import load_bundle
    from pipeline_steps.transferability.steps import export_peft
    from test_prompt_tuning import TASK

    spec = tiny_spec("bert")
    tok = load_bundle(spec).tokenizer
    labels = np.random.default_rng(0).integers(0, 2, 12)
    df = pd.DataFrame({"idx": range(12), "text_a": [["awful film", "great film"][y] for y in labels],
                       "text_b": "", "label": labels, "split": "test"})
    write_parquet(tokenize_frame(df, tok, "{text_a} It was {mask}.", 32), tmp_path / "tok.parquet")
    save_tensors({"prompt": torch.randn(4, 32, generator=torch.Generator().manual_seed(1))},
                 tmp_path / "p.safetensors", metadata={"model": "tiny-bert", "task": "toy", "seed": 0})
    result = evaluate(model_spec=spec, task_spec=TASK, prompt=str(tmp_path / "p.safetensors"),
                      tokenized=str(tmp_path / "tok.parquet"), predictions=str(tmp_path / "pred.parquet"),
                      scores=str(tmp_path / "scores.json"), peft_dir=str(tmp_path / "peft-a"))
    export_peft(model_spec=spec, prompt=str(tmp_path / "p.safetensors"), out_dir=str(tmp_path / "peft-b"))
    assert result["n"] == 12 and read_json(tmp_path / "scores.json")["score"] == result["score"]
    a, _ = load_tensors(tmp_path / "peft-a" / "adapter_model.safetensors")
    b, _ = load_tensors(tmp_path / "peft-b" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_json(tmp_path / "peft-a" / "adapter_config.json") == read_json(tmp_path / "peft-b" / "adapter_config.json")
    assert read_json(tmp_path / "peft-a" / "provenance.json") == read_json(tmp_path / "peft-b" / "provenance.json")


# --- length-bucketed batches ---------------------------------------------------------------------

def test_bucketed_batches_are_deterministic_and_cover_each_example_once_per_epoch():
    import numpy as np

    from pipeline_steps.training import epoch_batches

    lengths = np.random.default_rng(0).integers(5, 120, 203)
    for epoch in range(3):
        a = epoch_batches(lengths, 16, seed=4, epoch=epoch, window=4)
        b = epoch_batches(lengths, 16, seed=4, epoch=epoch, window=4)
        assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
        rows = np.concatenate(a)
        assert sorted(rows.tolist()) == list(range(203))  # every example exactly once
        assert len(a) == 13 and sum(len(x) < 16 for x in a) <= 1
    assert not all(np.array_equal(x, y) for x, y in zip(epoch_batches(lengths, 16, 4, 0, 4),
                                                          epoch_batches(lengths, 16, 4, 1, 4)))
    assert not all(np.array_equal(x, y) for x, y in zip(epoch_batches(lengths, 16, 4, 0, 4),
                                                          epoch_batches(lengths, 16, 5, 0, 4)))
    # less padding than random batches: sum over batches of (max length - length)
    def padding(batches):
        return sum(int((lengths[r].max() - lengths[r]).sum()) for r in batches)
    assert padding(epoch_batches(lengths, 16, 4, 0, 4)) < 0.5 * padding(epoch_batches(lengths, 16, 4, 0, 0))


def test_unbucketed_batches_are_the_old_sampler():
    """window 0 keeps the sampler every earlier run used (same prompts, same demo tables)."""
    import numpy as np
    import torch

    from pipeline_steps.training import epoch_batches

    lengths = np.arange(50)
    for epoch in range(2):
        order = torch.randperm(50, generator=torch.Generator().manual_seed(3 * 1_000_003 + epoch)).numpy()
        got = epoch_batches(lengths, 8, 3, epoch, 0)
        assert len(got) == 6 and all(np.array_equal(g, order[i * 8:(i + 1) * 8]) for i, g in enumerate(got))


def _tiny_bert(tiny_spec):
    from pipeline_steps.runtime import load_bundle

    return load_bundle(tiny_spec("bert"))


def _varied_split(tok, n=40, seed=0):
    import numpy as np
    import pandas as pd

    from pipeline_steps.data.tokenize import tokenize_frame
    from pipeline_steps.training import TokenizedSplit

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    texts = [" ".join([["awful", "great"][y]] + ["film"] * int(rng.integers(0, 20))) for y in labels]
    df = pd.DataFrame({"idx": range(n), "text_a": texts, "text_b": "", "label": labels, "split": "train"})
    return TokenizedSplit.from_frame(tokenize_frame(df, tok, "{text_a} It was {mask}.", 32), "train", tok.pad_token_id)


def test_bucketed_training_resumes_to_the_same_prompt(tiny_spec, tmp_path):
    import pytest
    import torch

    from pipeline_steps.prompt_tuning.config import PromptTuningConfig
    from pipeline_steps.training import Checkpoint, train_prompt
    from test_prompt_tuning import make_model

    bert = _tiny_bert(tiny_spec)
    data = _varied_split(bert.tokenizer)
    cfg = PromptTuningConfig(prompt_length=4, steps=14, batch_size=8, eval_every=4, checkpoint_every=4, lr=0.1,
                             bucket_batches=2)

    def run(checkpoint=None, stop_at=None):
        model = make_model(bert, seed=5)

        def hook(state):
            if stop_at and state.step == stop_at:
                raise KeyboardInterrupt
        return train_prompt(model, data, data, cfg, seed=5, metric="accuracy", device="cpu",
                            checkpoint=checkpoint, tag="t", on_eval=hook), model

    (best_a, state_a), model_a = run()
    (best_b, _), model_b = run()
    assert torch.equal(model_a.prompt, model_b.prompt) and torch.equal(best_a, best_b)
    ck = Checkpoint(tmp_path / "ck.safetensors")
    with pytest.raises(KeyboardInterrupt):
        run(ck, stop_at=8)  # mid-epoch (5 batches per epoch): the resumed run must rebuild the same batches
    (best_c, state_c), model_c = run(ck)
    assert torch.equal(model_c.prompt, model_a.prompt) and torch.equal(best_c, best_a)
    assert [r["loss"] for r in state_c.curve] == [r["loss"] for r in state_a.curve]


def test_sorted_prediction_returns_logits_in_row_order(tiny_spec):
    import numpy as np
    import torch

    from pipeline_steps.training import predict
    from test_prompt_tuning import make_model

    bert = _tiny_bert(tiny_spec)
    data = _varied_split(bert.tokenizer, n=23, seed=1)
    model = make_model(bert).eval()
    got = predict(model, data, 4, "cpu")
    with torch.no_grad():  # one example at a time: no padding at all
        want = np.concatenate([model(**{k: v for k, v in data.batch(np.array([i]), "cpu").items()
                                        if k != "labels"}).numpy() for i in range(len(data))])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# --- bf16 autocast on CPU --------------------------------------------------------------------------

def test_cpu_bf16_autocast_where_supported_and_float32_fallback(monkeypatch, caplog):
    import torch

    from pipeline_steps import runtime

    spec = {"name": "m", "dtype": "bfloat16"}
    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_bf16_supported", lambda: True)
    ctx = runtime.autocast(spec, cpu)
    with ctx:
        assert torch.is_autocast_cpu_enabled() if hasattr(torch, "is_autocast_cpu_enabled") \
            else torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    monkeypatch.setattr(runtime, "cpu_bf16_supported", lambda: False)
    with caplog.at_level("WARNING"):
        ctx = runtime.autocast(spec, cpu)
    assert "no native bf16" in caplog.text
    with ctx:
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with runtime.autocast({"name": "m"}, cpu):  # float32 models: no autocast at all
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_length_bucketed_batches_are_the_default():
    """Issue 22: the fast path is on unless a config turns it off; the demo config does not set it."""
    from pipeline_steps.config import load_config
    from pipeline_steps.prompt_tuning.config import PromptTuningConfig

    assert PromptTuningConfig().bucket_batches == 16
    cfg = load_config(REPO / "config.yaml")
    assert cfg["prompt_tuning"]["bucket_batches"] == 16
    assert load_config({**cfg, "prompt_tuning": {**cfg["prompt_tuning"], "bucket_batches": 0}})[
        "prompt_tuning"]["bucket_batches"] == 0
