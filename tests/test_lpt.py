"""LPT: layer-wise runner, generators, padding invariance, no graph below layer k, T5, the run step."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from helpers import tokenized_reviews
from pipeline_steps.data.tokenize import tokenize_frame
from pipeline_steps.io import read_json
from pipeline_steps.runtime import load_bundle
from pipeline_steps.lpt import steps as lpt_steps
from pipeline_steps.lpt.config import LatePromptConfig
from pipeline_steps.lpt.model import (LatePromptModel, LayerRunner, NaiveGenerator, NPGenerator,
                                       build_generator, first_real_index, pool_membership)
from pipeline_steps.prompt_tuning.model import PromptModel

TASK = {"name": "toy", "label_words": {"negative": ["bad"], "positive": ["good"]},
        "label_names": ["negative", "positive"], "metric": "accuracy"}


@pytest.fixture(scope="module", params=["bert", "roberta", "t5"])
def bundle(request, tiny_spec):
    return load_bundle(tiny_spec(request.param))


def toy_batch(tok, texts, pad_to=None):
    ids = [tok(t)["input_ids"] for t in texts]
    width = pad_to or max(map(len, ids))
    pad = tok.pad_token_id
    out = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    for r, s in enumerate(ids):
        out[r, :len(s)] = torch.tensor(s)
        mask[r, :len(s)] = 1
    return out, mask, torch.ones(len(ids), dtype=torch.long)


TEXTS = ["a great film", "the plot was awful and dull and long", "fine"]


def test_runner_split_at_any_layer_equals_the_encoder(bundle):
    bb = bundle.backbone
    runner = LayerRunner(bb)
    ids, mask, _ = toy_batch(bundle.tokenizer, TEXTS)
    with torch.no_grad():
        ref = bb.encode(bb.embed(ids), mask)
        for k in range(runner.num_layers + 1):
            h = runner.run(runner.embed(bb.embed(ids)), mask, 0, k)
            out = runner.finish(runner.run(h, mask, k, runner.num_layers))
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_pool_membership_is_adaptive_pooling_of_the_real_tokens():
    torch.manual_seed(0)
    for n_real, length in [(7, 3), (2, 5), (5, 5), (1, 4), (10, 4)]:
        x = torch.randn(n_real, 6)
        for left in (0, 3):  # right padding, then left padding
            width = n_real + 4
            mask = torch.zeros(1, width, dtype=torch.long)
            mask[0, left:left + n_real] = 1
            padded = torch.full((1, width, 6), 99.0)
            padded[0, left:left + n_real] = x
            member = pool_membership(mask, length).float()
            avg = (member @ padded) / member.sum(-1, keepdim=True)
            torch.testing.assert_close(avg[0], F.adaptive_avg_pool1d(x.T.unsqueeze(0), length)[0].T)
            mx = padded.unsqueeze(1).masked_fill(~member.bool().unsqueeze(-1), float("-inf")).amax(2)
            torch.testing.assert_close(mx[0], F.adaptive_max_pool1d(x.T.unsqueeze(0), length)[0].T)


def test_first_real_index():
    mask = torch.tensor([[1, 1, 0], [0, 0, 1], [0, 1, 1]])
    assert first_real_index(mask).tolist() == [0, 2, 1]


@pytest.mark.parametrize("kind", ["naive", "npg", "appg", "mppg"])
def test_generator_shapes_parameters_and_padding_invariance(kind):
    torch.manual_seed(0)
    d, r, L = 16, 4, 3
    gen = build_generator(LatePromptConfig(generator=kind, prompt_length=L, bottleneck=r), d, torch.randn(L, d))
    expected = {"naive": L * d, "npg": d * r + r + r * L * d + L * d, "appg": d * r + r + r * d + d,
                "mppg": d * r + r + r * d + d}[kind]
    assert sum(p.numel() for p in gen.parameters()) == expected
    lengths = [5, 2, 7]
    hs = [torch.randn(n, d) for n in lengths]

    def padded(side, width):
        h = torch.full((3, width, d), 123.0)
        m = torch.zeros(3, width, dtype=torch.long)
        for i, x in enumerate(hs):
            sl = slice(0, len(x)) if side == "right" else slice(width - len(x), width)
            h[i, sl], m[i, sl] = x, 1
        return h, m

    outs = [gen(*padded(side, width)) for side in ("right", "left") for width in (7, 12)]
    assert outs[0].shape == (3, L, d)
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0])
    alone = torch.cat([gen(x.unsqueeze(0), torch.ones(1, len(x), dtype=torch.long)) for x in hs])
    torch.testing.assert_close(alone, outs[0])
    if kind != "naive":  # instance-dependent
        assert (outs[0][0] - outs[0][1]).abs().max() > 1e-4


def test_npg_reads_the_first_real_token():
    torch.manual_seed(0)
    gen = NPGenerator(8, 4, 2)
    h = torch.randn(1, 5, 8)
    mask = torch.tensor([[0, 0, 1, 1, 1]])
    manual = gen.up(F.relu(gen.down(h[0, 2]))).view(1, 2, 8)
    torch.testing.assert_close(gen(h, mask), manual)


def late_model(bundle, kind="appg", k=None, L=3):
    bb = bundle.backbone
    runner = LayerRunner(bb)
    torch.manual_seed(0)
    cfg = LatePromptConfig(generator=kind, prompt_length=L, bottleneck=8, insert_layer=k)
    init = torch.randn(L, bb.hidden_size)
    return LatePromptModel(bb, bundle.verbalizer(TASK), build_generator(cfg, bb.hidden_size, init),
                           cfg.layer(runner.num_layers), L)


def test_insert_layer_defaults_to_half_depth(bundle):
    assert late_model(bundle).insert_layer == 1  # 2 layers
    assert LatePromptConfig().layer(24) == 12 and LatePromptConfig(insert_layer=3).layer(6) == 3
    with pytest.raises(ValueError):
        LatePromptConfig(insert_layer=6).layer(6)
    with pytest.raises(ValueError, match="generator"):
        LatePromptConfig.from_dict({"generator": "big"})


def test_logits_do_not_depend_on_the_amount_of_padding(bundle):
    model = late_model(bundle, "mppg")
    model.eval()
    ids, mask, pos = toy_batch(bundle.tokenizer, TEXTS)
    ids2, mask2, _ = toy_batch(bundle.tokenizer, TEXTS, pad_to=ids.shape[1] + 6)
    pos = torch.tensor([1, 2, 1])
    with torch.no_grad():
        a = model(ids, mask, pos)
        b = model(ids2, mask2, pos)
        single = torch.cat([model(ids[i:i + 1, :int(mask[i].sum())], mask[i:i + 1, :int(mask[i].sum())], pos[i:i + 1])
                            for i in range(3)])
    assert a.shape == (3, 2)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a, single, rtol=1e-5, atol=1e-5)


def test_verbalizer_reads_the_mask_position_shifted_by_the_prompt(tiny_spec):
    bundle = load_bundle(tiny_spec("bert"))
    model = late_model(bundle, "npg", L=3)
    model.eval()
    ids, mask, _ = toy_batch(bundle.tokenizer, TEXTS)
    pos = torch.tensor([2, 4, 1])
    with torch.no_grad():
        logits = model(ids, mask, pos)
        ext = torch.cat([torch.ones(3, 3, dtype=torch.long), mask], 1)
        hidden = model.encode(bundle.backbone.embed(ids), ext)
        at = bundle.backbone.mlm_logits(hidden[torch.arange(3), pos + 3])[:, model.verbalizer.word_ids]
    torch.testing.assert_close(logits, at @ model.verbalizer.weights.T)
    assert hidden.shape == (3, ids.shape[1] + 3, 32)


def test_no_autograd_graph_below_the_insertion_layer():
    """Layers below k run with grad disabled and produce no graph; layers from k do."""
    bundle = load_bundle({"name": "l6", "source": "embedded:minilm-l6", "verbalizer": "auto", "pooling": "mask",
                          "embedding_scale": 20.0})
    model = late_model(bundle, "npg", k=3, L=4)
    assert model.insert_layer == 3
    seen = {}
    layers = bundle.backbone.encoder_model.encoder.layer
    hooks = [layer.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(
        i, (torch.is_grad_enabled(), a[0].requires_grad, out.requires_grad, out.grad_fn is not None)))
        for i, layer in enumerate(layers)]
    emb_hook = bundle.backbone.encoder_model.embeddings.register_forward_hook(
        lambda m, a, out: seen.__setitem__("emb", (torch.is_grad_enabled(), out.requires_grad)))
    try:
        ids, mask, pos = toy_batch(bundle.tokenizer, TEXTS)
        model.train()
        logits = model(ids, mask, pos)
        logits.sum().backward()
    finally:
        for h in hooks + [emb_hook]:
            h.remove()
    assert seen["emb"] == (False, False)
    for i in range(3):
        assert seen[i] == (False, False, False, False), i
    for i in range(3, 6):
        assert seen[i] == (True, True, True, True), i
    assert all(p.grad is not None for p in model.generator.parameters())
    assert all(p.grad is None for p in bundle.backbone.parameters())
    # the graph from the logits reaches the generator but no tensor of the lower layers
    nodes, stack = set(), [logits.grad_fn]
    while stack:
        n = stack.pop()
        if n is None or n in nodes:
            continue
        nodes.add(n)
        stack.extend(f for f, _ in n.next_functions)
    leaves = {id(n.variable) for n in nodes if hasattr(n, "variable")}
    assert leaves == {id(p) for p in model.generator.parameters()}


def test_t5_late_prompt_at_layer_0_equals_input_prompt_tuning(tiny_spec):
    bundle = load_bundle(tiny_spec("t5"))
    bb = bundle.backbone
    prompt = torch.randn(3, bb.hidden_size)
    verb = bundle.verbalizer(TASK)
    late = LatePromptModel(bb, verb, NaiveGenerator(prompt), 0, 3)
    pt = PromptModel(bb, verb, prompt)
    ids, mask, pos = toy_batch(bundle.tokenizer, TEXTS)
    late.eval()
    pt.eval()
    with torch.no_grad():
        torch.testing.assert_close(late(ids, mask, pos), pt(ids, mask, pos), rtol=1e-5, atol=1e-5)
        late1 = LatePromptModel(bb, verb, NaiveGenerator(prompt), 1, 3)
        assert (late1(ids, mask, pos) - pt(ids, mask, pos)).abs().max() > 1e-5


@pytest.mark.parametrize("kind", ["bert", "t5"])
def test_lpt_run_trains_only_the_generator_and_reports(kind, tiny_spec, tmp_path):
    from pipeline_steps.io import load_tensors

    spec = tiny_spec(kind)
    bundle = load_bundle(spec)
    before = {k: v.clone() for k, v in bundle.backbone.state_dict().items()}
    tok = tokenized_reviews(bundle, tmp_path / "tok.parquet")
    settings = {"prompt_length": 4, "batch_size": 8, "eval_every": 2, "steps": 4, "lr": 0.01, "max_length": 32}
    out = {k: str(tmp_path / kind / f) for k, f in [("weights", "w.safetensors"), ("curve", "c.parquet"),
                                                    ("meta", "m.json"), ("predictions", "p.parquet"),
                                                    ("scores", "s.json")]}
    late = {"generator": "appg", "insert_layer": None, "prompt_length": 4, "bottleneck": 8}
    meta = lpt_steps.lpt_run(model_spec=spec, task_spec=TASK, settings=settings, seed=1, method="lpt_appg",
                             tokenized=tok, late=late, profile=2, **out)
    assert meta["insert_layer"] == 1 and meta["trainable_params"] == 32 * 8 + 8 + 8 * 32 + 32
    assert meta["step_seconds"] > 0 and meta["peak_memory_mb"] >= meta["baseline_memory_mb"] > 0
    assert 0 <= meta["score"] <= 1 and meta["n_test"] == 12 and meta["steps"] == 4
    tensors, _ = load_tensors(out["weights"])
    assert set(tensors) == {"generator.down.weight", "generator.down.bias", "generator.up.weight", "generator.up.bias"}
    assert all(torch.equal(before[k], v) for k, v in bundle.backbone.state_dict().items())
    assert read_json(out["scores"])["score"] == meta["score"]
    out_pt = {k: v.replace(f"/{kind}/", f"/{kind}-pt/") for k, v in out.items()}
    pt = lpt_steps.lpt_run(model_spec=spec, task_spec=TASK, settings=settings, seed=1, method="pt", tokenized=tok,
                           profile=2, **out_pt)
    assert pt["insert_layer"] == 0 and pt["trainable_params"] == 4 * 32
    assert pt["flops_per_step"] > meta["flops_per_step"] or kind == "t5"
    from pipeline_steps.lpt.report import summarise_lpt

    table = summarise_lpt(metas=[out["meta"], out_pt["meta"]], table=str(tmp_path / kind / "lpt.parquet"),
                          figure=str(tmp_path / kind / "lpt.png"))
    assert (table["train_cpu_seconds"] > 0).all() and (table["train_seconds"] > 0).all()  # CPU beside wall time


def test_late_prompt_learns_on_a_real_encoder():
    """The appg generator at half depth of the frozen MiniLM learns the toy task."""
    from pipeline_steps.training import TokenizedSplit, train_module
    from pipeline_steps.prompt_tuning.config import PromptTuningConfig

    bundle = load_bundle({"name": "l6", "source": "embedded:minilm-l6", "verbalizer": "auto", "pooling": "mask",
                          "embedding_scale": 20.0})
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 32)
    texts = [("the movie was great fun" if y else "the plot was awful and dull") + f" {i}" for i, y in enumerate(labels)]
    df = pd.DataFrame({"idx": range(32), "text_a": texts, "text_b": "", "label": labels, "split": "train"})
    data = TokenizedSplit.from_frame(tokenize_frame(df, bundle.tokenizer, "{text_a} It was {mask}.", 32), "train",
                                     bundle.tokenizer.pad_token_id)
    model = late_model(bundle, "appg", L=4)
    cfg = PromptTuningConfig(steps=8, batch_size=16, eval_every=4, lr=0.01)
    _, state, _ = train_module(model, data, data, cfg, seed=0, metric="accuracy", device="cpu")
    assert state.best_score >= 0.9
    assert state.curve[-1]["loss"] < state.curve[0]["loss"]


def test_lpt_run_refuses_an_insert_layer_beyond_the_depth_before_loading_weights(tiny_spec, tmp_path, monkeypatch):
    from pipeline_steps.errors import UserError

    def no_load(*a, **k):
        raise AssertionError("the weights must not load for a bad insert layer")

    monkeypatch.setattr(lpt_steps, "load_bundle", no_load)
    late = {"generator": "npg", "insert_layer": 100, "prompt_length": 4, "bottleneck": 8}
    out = {k: str(tmp_path / f) for k, f in [("weights", "w.safetensors"), ("curve", "c.parquet"), ("meta", "m.json"),
                                             ("predictions", "p.parquet"), ("scores", "s.json")]}
    with pytest.raises(UserError, match=r"LPT lpt_npg on 'tiny-bert': insert_layer 100 is outside 0 \.\. 1"):
        lpt_steps.lpt_run(model_spec=tiny_spec("bert"), task_spec=TASK, settings={"prompt_length": 4}, seed=1,
                          method="lpt_npg", tokenized=str(tmp_path / "tok.parquet"), late=late, **out)
    assert not list(tmp_path.iterdir())
