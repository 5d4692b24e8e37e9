"""FPT: partial models (depth, width, compound), progressive stages, FLOPs accounting."""
from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertModel, T5Config, T5ForConditionalGeneration

from helpers import tokenized_reviews
from pipeline_steps.errors import UserError
from pipeline_steps.flops import Meter, ModelDims, layer_flops, sequence_flops, step_flops
from pipeline_steps.io import load_tensors, read_parquet
from pipeline_steps.models.backbone import Backbone
from pipeline_steps.models.partial import (PartialSpec, build_partial, ffn_scores, plan_partial, resolve_size,
                                           select_layers, top_neurons)
from pipeline_steps.runtime import load_bundle
from pipeline_steps.fpt import steps as fpt_steps
from pipeline_steps.fpt.config import FPTConfig, FPTStage
from pipeline_steps.fpt.model import StagePromptModel, expand, stage_backbone

TASK = {"name": "toy", "label_words": {"negative": ["bad"], "positive": ["good"]},
        "label_names": ["negative", "positive"], "metric": "accuracy"}


def random_bert(layers=5, ffn=64):
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=ffn, max_position_embeddings=64)
    return Backbone(BertForMaskedLM(cfg))


def random_t5(layers=3, gated=False):
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=100, d_model=32, d_ff=64, d_kv=16, num_layers=layers, num_decoder_layers=layers,
                   num_heads=2, decoder_start_token_id=0, feed_forward_proj="gated-gelu" if gated else "relu")
    return Backbone(T5ForConditionalGeneration(cfg))


def batch(seed=1, b=3, t=9):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 4:] = 0
    return ids, mask


# --- layer selection -------------------------------------------------------------------------

def test_select_layers_evenly_and_first():
    assert select_layers(24, 6) == [0, 4, 8, 13, 18, 23]  # the example
    assert select_layers(24, 12) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 23]
    assert select_layers(6, 2) == [0, 5]
    assert select_layers(6, 4) == [0, 1, 3, 5]
    assert select_layers(6, 6) == list(range(6))
    assert select_layers(6, 1) == [0]
    assert select_layers(24, 6, "first") == [0, 1, 2, 3, 4, 5]
    for n in range(1, 30):
        for k in range(1, n + 1):
            sel = select_layers(n, k)
            assert len(sel) == k and sel == sorted(set(sel)) and sel[0] == 0 and (k == 1 or sel[-1] == n - 1)
    with pytest.raises(ValueError):
        select_layers(6, 7)
    with pytest.raises(ValueError, match="selection"):
        select_layers(6, 3, "random")


def test_resolve_size_fraction_or_count():
    assert resolve_size(None, 24, "layers") == 24
    assert resolve_size(0.25, 24, "layers") == 6 and resolve_size(0.5, 6, "layers") == 3
    assert resolve_size(704, 2816, "ffn") == 704 and resolve_size(0.25, 2816, "ffn") == 704
    with pytest.raises(ValueError, match="fraction"):
        resolve_size(30, 24, "layers")
    with pytest.raises(ValueError, match="fraction"):
        resolve_size(2.5, 24, "layers")


def test_top_neurons():
    s = torch.tensor([0.1, 0.9, 0.5, 0.9, 0.0])
    assert top_neurons(s, 2).tolist() == [1, 3]
    assert top_neurons(s, 3).tolist() == [1, 2, 3]


# --- depth -------------------------------------------------------------------------------------

def test_depth_partial_equals_a_smaller_model_with_the_kept_layers():
    full = random_bert(layers=5)
    spec = plan_partial(full, 3, None)
    assert spec.layers == {"encoder": [0, 2, 4]} and spec.ffn is None
    part = build_partial(full, spec)
    assert part.num_layers == 3 and full.num_layers == 5 and part.hidden_size == 32
    # weights are shared, not copied
    assert part.hf.bert.encoder.layer[1].attention.self.query.weight is full.hf.bert.encoder.layer[2].attention.self.query.weight
    ref = BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=64), add_pooling_layer=False)
    state = {}
    for k, v in full.hf.bert.state_dict().items():
        if ".layer." in k:
            i = int(k.split(".layer.")[1].split(".")[0])
            if i in (0, 2, 4):
                state[k.replace(f".layer.{i}.", f".layer.{(0, 2, 4).index(i)}.")] = v
        else:
            state[k] = v
    ref.load_state_dict(state, strict=False)
    ref.eval()
    ids, mask = batch()
    with torch.no_grad():
        ours = part.encode(part.embed(ids), mask)
        theirs = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        # the MLM head is the full model's
        assert torch.equal(part.mlm_logits(ours[:, 0]), full.mlm_logits(ours[:, 0]))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_partial_leaves_the_full_model_untouched():
    full = random_bert(layers=5)
    ids, mask = batch()
    with torch.no_grad():
        before = full.encode(full.embed(ids), mask)
    part = build_partial(full, plan_partial(full, 2, 16), {f"encoder.{i}": torch.rand(64) for i in range(5)})
    assert part.num_layers == 2 and len(full.hf.bert.encoder.layer) == 5
    assert full.hf.bert.encoder.layer[0].intermediate.dense.out_features == 64
    assert part.hf.bert.encoder.layer[0].intermediate.dense.out_features == 16
    with torch.no_grad():
        assert torch.equal(full.encode(full.embed(ids), mask), before)
    assert not any(p.requires_grad for p in part.parameters())


def test_plan_full_size_is_the_full_model():
    full = random_bert(layers=4)
    spec = plan_partial(full, 4, 64)
    assert spec == PartialSpec(None, None) and build_partial(full, spec) is full


# --- width -------------------------------------------------------------------------------------

def _zero_other_neurons(module, keep):
    mask = torch.zeros(module.in_features)
    mask[keep] = 1.0
    return module.register_forward_pre_hook(lambda mod, args: (args[0] * mask,))


def test_width_pruning_keeps_the_chosen_neurons_exactly():
    full = random_bert(layers=3)
    g = torch.Generator().manual_seed(3)
    scores = {f"encoder.{i}": torch.rand(64, generator=g) for i in range(3)}
    part = build_partial(full, plan_partial(full, None, 24), scores)
    ids, mask = batch()
    # 1) one layer's FFN equals the manual computation on the kept rows/columns
    layer_f, layer_p = full.hf.bert.encoder.layer[1], part.hf.bert.encoder.layer[1]
    keep = top_neurons(scores["encoder.1"], 24)
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        w1, b1 = layer_f.intermediate.dense.weight, layer_f.intermediate.dense.bias
        w2, b2 = layer_f.output.dense.weight, layer_f.output.dense.bias
        manual = torch.nn.functional.gelu(x @ w1[keep].T + b1[keep]) @ w2[:, keep].T + b2
        ours = layer_p.output.dense(layer_p.intermediate(x))
    torch.testing.assert_close(ours, manual, rtol=1e-6, atol=1e-6)
    # 2) the whole partial model equals the full one with the other neurons switched off
    hooks = [_zero_other_neurons(full.hf.bert.encoder.layer[i].output.dense, top_neurons(scores[f"encoder.{i}"], 24))
             for i in range(3)]
    try:
        with torch.no_grad():
            masked = full.encode(full.embed(ids), mask)
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        pruned = part.encode(part.embed(ids), mask)
        unpruned = full.encode(full.embed(ids), mask)
    torch.testing.assert_close(pruned, masked, rtol=1e-5, atol=1e-5)
    assert (pruned - unpruned).abs().max() > 1e-3  # pruning did change the model


@pytest.mark.parametrize("gated", [False, True])
def test_t5_width_and_depth(gated):
    full = random_t5(layers=3, gated=gated)
    ids, mask = batch()
    scores = ffn_scores(full, [{"input_ids": ids, "attention_mask": mask}])
    assert sorted(scores) == ["decoder.0", "decoder.1", "decoder.2", "encoder.0", "encoder.1", "encoder.2"]
    assert all(s.shape == (64,) and (s >= 0).all() for s in scores.values())
    part = build_partial(full, plan_partial(full, None, 16), scores)
    hooks = [_zero_other_neurons(block.layer[-1].DenseReluDense.wo, top_neurons(scores[f"{name}.{i}"], 16))
             for name in ("encoder", "decoder") for i, block in enumerate(getattr(full.hf, name).block)]
    try:
        with torch.no_grad():
            masked = full.first_step_logits(full.embed(ids), mask)
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        torch.testing.assert_close(part.first_step_logits(part.embed(ids), mask), masked, rtol=1e-5, atol=1e-5)
    # depth: 2 of 3 encoder and decoder blocks (0 and 2), relative position bias from block 0
    deep = build_partial(full, plan_partial(full, 2, None))
    assert deep.num_layers == 4 and deep.partial_spec.layers == {"encoder": [0, 2], "decoder": [0, 2]}
    with torch.no_grad():
        out = deep.first_step_logits(deep.embed(ids), mask)
    assert out.shape == (3, 100) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="block 0"):
        build_partial(full, PartialSpec({"encoder": [1, 2], "decoder": [0, 2]}, None))


def test_ffn_scores_are_mean_absolute_activations_over_real_tokens():
    full = random_bert(layers=2)
    ids, mask = batch()
    scores = ffn_scores(full, [{"input_ids": ids[:2], "attention_mask": mask[:2]},
                               {"input_ids": ids[2:], "attention_mask": mask[2:]}])
    layer = full.hf.bert.encoder.layer[0]
    acts = []
    with torch.no_grad():
        for r in range(3):  # each example alone, its real tokens only
            n = int(mask[r].sum())
            h = full.hf.bert.embeddings(input_ids=ids[r:r + 1, :n])
            att = layer.attention(h, None)[0]
            acts.append(layer.intermediate(att)[0].abs())
    manual = torch.cat(acts).mean(0)
    torch.testing.assert_close(scores["encoder.0"], manual, rtol=1e-4, atol=1e-6)


# --- FLOPs -------------------------------------------------------------------------------------

def test_flops_formula_on_a_hand_checked_case():
    # d = a = 4, f = 8, one layer, s = 3: linear 8·3·4·4 + 4·3·4·8 = 384 + 384, attention 4·9·4 = 144
    assert layer_flops(3, 4, 4, 8) == (768, 144)
    dims = ModelDims(hidden=4, attention=4, encoder_ffn=(8,))
    assert sequence_flops(dims, 3) == 2 * 768 + 3 * 144 == 1968
    # a prompt of 2 makes s = 5: linear 8·5·16 + 4·5·32 = 1280, attention 4·25·4 = 400
    assert sequence_flops(dims, 3, prompt_length=2) == 2 * 1280 + 3 * 400
    # MLM head at the mask position (d = 4, V = 10): forward 2·16 + 2·40 = 112, doubled
    mlm = ModelDims(hidden=4, attention=4, encoder_ffn=(8,), vocab=10, head="mlm")
    assert sequence_flops(mlm, 3) == 1968 + 224
    # a batch of 5 padded to 3 tokens
    assert step_flops(dims, 5, 3) == 5 * 1968
    # late prompt at layer 1 of 2, no gradient below: layer 0 forward only on 3 tokens, layer 1 on 5
    two = ModelDims(hidden=4, attention=4, encoder_ffn=(8, 8))
    assert sequence_flops(two, 3, prompt_length=2, insert_layer=1, grad_below=False) == (768 + 144) + (2 * 1280 + 3 * 400)
    # T5 head: one decoder layer (f = 8), V = 10, s = 3 encoder states
    t5 = ModelDims(hidden=4, attention=4, encoder_ffn=(8,), decoder_ffn=(8,), vocab=10, head="t5")
    dec = 8 * 16 + 4 * 16 + 4 * 3 * 16 + 4 * 3 * 4 + 4 * 4 * 8
    assert sequence_flops(t5, 3) == 1968 + 2 * (dec + 2 * 4 * 10)


def test_model_dims_of_partial_models():
    full = random_bert(layers=4)
    part = build_partial(full, plan_partial(full, 2, 16), {f"encoder.{i}": torch.rand(64) for i in range(4)})
    d_full, d_part = ModelDims.from_backbone(full, "mlm"), ModelDims.from_backbone(part, "mlm")
    assert d_full.encoder_ffn == (64,) * 4 and d_part.encoder_ffn == (16, 16)
    assert d_full.head == "mlm" and d_full.vocab == 100 and d_part.hidden == 32 and d_part.attention == 32
    t5 = ModelDims.from_backbone(random_t5(gated=True), "mlm")
    assert t5.head == "t5" and t5.ffn_matrices == 3 and t5.decoder_ffn == (64,) * 3 and t5.attention == 32
    # depth halving halves the layer FLOPs exactly; the head is unchanged
    body = lambda d: sequence_flops(d, 10) - sequence_flops(ModelDims(32, 32, (), vocab=100, head="mlm"), 10)
    dp = ModelDims.from_backbone(build_partial(full, plan_partial(full, 2, None)), "mlm")
    assert body(dp) * 2 == body(d_full)


def test_meter_counts_training_batches_and_times_evaluation(tiny_spec):
    bundle = load_bundle(tiny_spec("bert"))
    model = StagePromptModel(bundle.backbone, bundle.verbalizer(TASK), torch.zeros(3, 32))
    model.meter = Meter()
    ids = torch.randint(5, 50, (4, 7))
    mask = torch.ones_like(ids)
    model.train()
    model(ids, mask, torch.ones(4, dtype=torch.long))
    model.eval()
    with torch.no_grad():
        model(ids, mask, torch.ones(4, dtype=torch.long))
    assert model.meter.shapes == [(4, 7)] and model.meter.eval_seconds > 0
    dims = ModelDims.from_backbone(bundle.backbone, "mlm")
    assert model.meter.mean_step_flops(dims, prompt_length=3) == step_flops(dims, 4, 7, prompt_length=3)


# --- stages ------------------------------------------------------------------------------------

def test_fpt_config_checks():
    cfg = FPTConfig.from_dict({"stages": [{"layers": 0.5, "steps": 2}, {"steps": 3}]})
    assert cfg.total_steps == 5 and cfg.stages[0] == FPTStage(2, 0.5, None)
    with pytest.raises(ValueError, match="full model"):
        FPTConfig.from_dict({"stages": [{"layers": 0.5, "steps": 2}]})
    with pytest.raises(ValueError, match="selection"):
        FPTConfig.from_dict({"stages": [{"steps": 2}], "selection": "best"})


def test_expand_keeps_the_prompt_values(tiny_spec):
    bundle = load_bundle(tiny_spec("bert"))
    small, _ = stage_backbone(bundle.backbone, FPTStage(2, layers=1))
    verb = bundle.verbalizer(TASK)
    m0 = StagePromptModel(small, verb, torch.randn(3, 32))
    m1 = expand(m0, bundle.backbone)
    assert torch.equal(m1.prompt.detach(), m0.prompt.detach()) and m1.prompt is not m0.prompt
    assert m1.backbone is bundle.backbone and m1.verbalizer is verb and m0.backbone.num_layers == 1


def _stage_paths(root, i):
    d = root / f"stage{i}"
    return {"prompt": str(d / "prompt.safetensors"), "optimizer": str(d / "optimizer.safetensors"),
            "curve": str(d / "curve.parquet"), "meta": str(d / "meta.json")}


@pytest.mark.parametrize("kind", ["bert", "roberta", "t5"])
def test_progressive_stages_carry_prompt_and_optimizer_state(kind, tiny_spec, tmp_path):
    from pipeline_steps.prompt_tuning.model import load_prompt
    from pipeline_steps.training import train_module

    spec = tiny_spec(kind)
    bundle = load_bundle(spec)
    tok = tokenized_reviews(bundle, tmp_path / "tok.parquet")
    scores = str(tmp_path / "scores.safetensors")
    fpt_steps.fpt_scores(model_spec=spec, task_spec=TASK, tokenized=tok, output=scores, samples=16)
    s_tensors, _ = load_tensors(scores)
    assert len(s_tensors) == bundle.backbone.num_layers and all(v.shape == (64,) for v in s_tensors.values())
    settings = {"prompt_length": 4, "batch_size": 8, "eval_every": 2, "lr": 0.1, "max_length": 32}
    common = dict(model_spec=spec, task_spec=TASK, settings=settings, seed=1, method="fpt_compound", tokenized=tok,
                  scores=scores)
    p0 = _stage_paths(tmp_path, 0)
    m0 = fpt_steps.fpt_stage(stage_index=0, stage={"steps": 3, "layers": 1, "ffn": 0.5}, last=False, **common, **p0)
    assert m0["num_layers"] == (2 if kind == "t5" else 1) and m0["dims"]["encoder_ffn"] == [32]
    assert m0["optimizer_step"] == 3.0 and m0["cumulative_steps"] == 3 and m0["flops"] > 0
    p1 = _stage_paths(tmp_path, 1)
    m1 = fpt_steps.fpt_stage(stage_index=1, stage={"steps": 2}, last=True, previous=p0, **common, **p1)
    # the prompt and AdamW moments of stage 0 are where stage 1 starts
    prompt0, _ = load_prompt(p0["prompt"])
    opt0 = fpt_steps.load_optimizer_state(p0["optimizer"])
    assert m1["init"] == p0["prompt"] and m1["optimizer_step"] == 5.0 and m1["cumulative_steps"] == 5
    assert m1["cumulative_flops"] == pytest.approx(m0["flops"] + m1["flops"])
    assert m1["flops_per_step"] > m0["flops_per_step"]
    # replay stage 1 by hand from the artifacts: same prompt as the stage step
    model = StagePromptModel(bundle.backbone, bundle.verbalizer(TASK), prompt0)
    assert torch.equal(model.prompt.detach(), prompt0)
    from pipeline_steps.training import load_splits, pad_id
    from pipeline_steps.prompt_tuning.config import PromptTuningConfig
    data = load_splits(tok, pad_id(bundle.tokenizer), ("train", "dev"))
    cfg = PromptTuningConfig.from_dict({**settings, "steps": 2})
    best, _, opt = train_module(model, data["train"], data["dev"], cfg, seed=1 + fpt_steps.STAGE_SEED_STRIDE,
                                metric="accuracy", device="cpu", optimizer_state=opt0)
    final1, _ = load_prompt(p1["prompt"])
    assert torch.equal(best["prompt"], final1)
    assert torch.equal(opt["prompt"]["exp_avg"], fpt_steps.load_optimizer_state(p1["optimizer"])["prompt"]["exp_avg"])
    # without the carried moments the result differs: the optimizer state matters
    model2 = StagePromptModel(bundle.backbone, bundle.verbalizer(TASK), prompt0)
    _, _, opt_fresh = train_module(model2, data["train"], data["dev"], cfg, seed=1 + fpt_steps.STAGE_SEED_STRIDE,
                                   metric="accuracy", device="cpu")
    assert opt_fresh["prompt"]["step"] == 2.0 and not torch.equal(opt_fresh["prompt"]["exp_avg"], opt["prompt"]["exp_avg"])
    curve = read_parquet(p1["curve"])
    assert list(curve["global_step"]) == [5] and list(curve["stage"]) == [1]


def test_class_vectors_full_or_partial():

    bundle = load_bundle({"name": "l6", "source": "embedded:minilm-l6", "verbalizer": "auto", "pooling": "mask",
                          "embedding_scale": 20.0})
    full_verb = bundle.verbalizer(TASK)
    small, _ = stage_backbone(bundle.backbone, FPTStage(1, layers=2))
    assert fpt_steps.stage_verbalizer(bundle, small, TASK, "full", full_verb) is full_verb
    part_verb = fpt_steps.stage_verbalizer(bundle, small, TASK, "partial", full_verb)
    assert part_verb is not full_verb and part_verb.class_vectors.shape == (2, 384)
    cos = (part_verb.class_vectors * full_verb.class_vectors).sum(-1)
    assert (cos < 0.999).all()  # the 2-layer model encodes the label words differently


def test_stage_needs_scores_for_width(tiny_spec, tmp_path):

    spec = tiny_spec("bert")
    tok = tokenized_reviews(load_bundle(spec), tmp_path / "tok.parquet", n=24)
    with pytest.raises(UserError, match="neuron scores"):
        fpt_steps.fpt_stage(model_spec=spec, task_spec=TASK, settings={"prompt_length": 2, "max_length": 32},
                            seed=1, method="fpt_width", tokenized=tok, stage_index=0, stage={"steps": 1, "ffn": 0.5},
                            last=False, **_stage_paths(tmp_path, 0))


def test_stage_refuses_a_previous_prompt_of_another_shape(tiny_spec, tmp_path):
    from pipeline_steps.io import save_tensors, write_json

    spec = tiny_spec("bert")
    tok = tokenized_reviews(load_bundle(spec), tmp_path / "tok.parquet", n=24)
    prev = _stage_paths(tmp_path, 0)
    save_tensors({"prompt": torch.zeros(3, 32)}, prev["prompt"])
    fpt_steps.save_optimizer_state({}, prev["optimizer"], {})
    write_json({}, prev["meta"])
    with pytest.raises(UserError, match=r"shape \(3, 32\), expected \(2, 32\)"):
        fpt_steps.fpt_stage(model_spec=spec, task_spec=TASK, settings={"prompt_length": 2, "max_length": 32},
                            seed=1, method="fpt_depth", tokenized=tok, stage_index=1, stage={"steps": 1},
                            last=True, previous=prev, **_stage_paths(tmp_path, 1))
