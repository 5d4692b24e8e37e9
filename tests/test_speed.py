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
