"""A prompt exported as a PEFT adapter reproduces our predictions through PeftModel.from_pretrained."""
import numpy as np
import pytest
import torch
from peft import PeftModel

from pipeline_steps.transferability import peft_export
from pipeline_steps.transferability.steps import export_peft
from pipeline_steps.io import save_tensors
from pipeline_steps.models.registry import load_hf_model
from pipeline_steps.runtime import load_bundle
from pipeline_steps.prompt_tuning.model import PromptModel, init_prompt
from test_prompt_tuning import TASK, toy_split

MINILM = {"name": "minilm-l6", "source": "embedded:minilm-l6", "verbalizer": "auto", "pooling": "mask",
          "embedding_scale": 20.0}


@pytest.mark.parametrize("which", ["bert", "t5", "minilm", "minilm-mean"])
def test_peft_adapter_reproduces_predictions(which, tiny_spec, tmp_path):
    if which.startswith("minilm"):
        spec = {**MINILM, "pooling": "mean" if which.endswith("mean") else "mask"}
    else:
        spec = tiny_spec(which)
    bundle = load_bundle(spec)
    prompt = init_prompt(bundle.backbone, 5, "random", torch.Generator().manual_seed(0)) * 3
    path = tmp_path / "prompt.safetensors"
    save_tensors({"prompt": prompt}, path, metadata={"model": spec["name"], "task": "toy", "seed": 0})
    export_peft(model_spec=spec, prompt=str(path), out_dir=str(tmp_path / "peft"))
    assert (tmp_path / "peft" / "adapter_model.safetensors").exists()

    verbalizer = bundle.verbalizer(TASK)
    ours = PromptModel(bundle.backbone, verbalizer, prompt).eval()
    batch = toy_split(bundle.tokenizer, 6).batch(np.arange(6), "cpu")
    batch["attention_mask"][0, -3:] = 0  # some padding, too
    with torch.no_grad():
        expected = ours(batch["input_ids"], batch["attention_mask"], batch["mask_pos"])
    peft_model = PeftModel.from_pretrained(load_hf_model(spec), str(tmp_path / "peft")).eval()
    got = peft_export.verbalize_peft_output(peft_model, verbalizer, batch, 5)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert (got.argmax(1) == expected.argmax(1)).all()
