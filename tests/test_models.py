import json

import numpy as np
import pytest
import torch

from pipeline_steps.errors import UserError
from pipeline_steps.models import build, registry
from pipeline_steps.models.backbone import Backbone


def test_embedded_minilm_l6_loads_offline():
    spec = {"name": "l6", "source": "embedded:minilm-l6"}
    model = registry.load_hf_model(spec)
    bb = Backbone(model)
    assert type(model).__name__ == "BertModel"
    assert bb.num_layers == 6 and bb.hidden_size == 384 and not bb.has_mlm_head
    assert all(not p.requires_grad for p in bb.parameters())
    tok = registry.load_tokenizer(spec)
    enc = tok(["a good movie"], return_tensors="pt")
    with torch.no_grad():
        h = bb.encode(bb.embed(enc["input_ids"]), enc["attention_mask"])
    assert h.shape == (1, enc["input_ids"].shape[1], 384)


def test_minilm_l3_conversion_matches_onnx(tmp_path):
    report = build.convert_minilm_l3(tmp_path / "l3")
    assert report["layers"] == 3 and report["max_abs_diff"] < 1e-4
    for f in registry.BUILT_FILES:
        assert (tmp_path / "l3" / f).exists()
    # independent check on new sentences, padded batch
    spec = {"name": "l3", "source": str(tmp_path / "l3")}
    tok = registry.load_tokenizer(spec)
    bb = Backbone(registry.load_hf_model(spec))
    enc = tok(["Completely different words here, with punctuation!", "short"], padding=True, return_tensors="np")
    ref = build.onnx_hidden_states(registry.minilm_l3_onnx(), enc["input_ids"], enc["attention_mask"])
    with torch.no_grad():
        ours = bb.encode(bb.embed(torch.from_numpy(enc["input_ids"]).long()),
                         torch.from_numpy(enc["attention_mask"]).long()).numpy()
    m = enc["attention_mask"].astype(bool)
    assert np.abs(ours - ref)[m].max() < 1e-4
    assert bb.num_layers == 3 and bb.hidden_size == 384


def test_onnx_state_maps_every_linear():
    state = build.onnx_to_bert_state(registry.minilm_l3_onnx())
    for i in range(3):
        for mod in ("attention.self.query", "attention.self.key", "attention.self.value",
                    "attention.output.dense", "intermediate.dense", "output.dense"):
            assert f"encoder.layer.{i}.{mod}.weight" in state
    assert state["encoder.layer.0.intermediate.dense.weight"].shape == (1536, 384)


@pytest.mark.parametrize("kind,cls,mlm", [("bert", "BertForMaskedLM", True), ("roberta", "RobertaForMaskedLM", True),
                                          ("t5", "T5ForConditionalGeneration", True)])
def test_tiny_models(tiny_spec, kind, cls, mlm):
    spec = tiny_spec(kind)
    model = registry.load_hf_model(spec)
    bb = Backbone(model)
    assert type(model).__name__ == cls and bb.has_mlm_head == mlm and bb.hidden_size == 32
    assert bb.num_layers == (4 if kind == "t5" else 2)  # T5: encoder + decoder blocks
    tok = registry.load_tokenizer(spec)
    assert len(tok("the movie was great")["input_ids"]) > 2


def test_tiny_build_is_deterministic(tmp_path, tiny_dir):
    build.build_tiny("bert", tmp_path / "again")
    a = (tmp_path / "again" / "model.safetensors").read_bytes()
    b = (tiny_dir / "bert" / "model.safetensors").read_bytes()
    assert a == b


def test_resolve_errors(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        registry.resolve({"name": "x", "source": str(tmp_path)})
    with pytest.raises(UserError, match="not built yet"):
        registry.resolve({"name": "x", "source": "tiny:bert"}, models_dir=tmp_path)
    assert registry.resolve({"name": "x", "source": "roberta-base"}) == "roberta-base"  # hub ids pass through
    assert registry.built_files("embedded:minilm-l6") == []


def test_tiny_bert_tokenizer_is_the_same_in_every_process():
    """The tiny BERT's vocabulary is built deterministically (the HF WordPiece trainer broke frequency ties
    differently per process, so two builds tokenized the same text differently)."""
    import subprocess
    import sys

    code = ("import json; from pipeline_steps.models.build import _train_tokenizer; "
            "t = _train_tokenizer('bert'); print(json.dumps(sorted(t.get_vocab().items())))")
    vocabs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
              for _ in range(2)]
    assert vocabs[0] == vocabs[1]
    vocab = dict(json.loads(vocabs[0]))
    assert vocab["[PAD]"] == 0 and vocab["[MASK]"] == 4
    assert {"great", "terrible", "good", "bad", "sports", "science", "business", "politics"} <= set(vocab)
