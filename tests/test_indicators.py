"""Transferability indicators: empty input, FFN hooks vs a manual forward, ON and embedding
similarities on hand-made numbers, the steps on tiny models, Spearman on synthetic tables, the DAG."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from pipeline_steps.transferability import indicators as ind
from pipeline_steps.transferability import report, steps
from pipeline_steps.config import load_config
from pipeline_steps.errors import UserError
from pipeline_steps.io import load_tensors, parquet_provenance, save_tensors
from pipeline_steps.runtime import load_bundle

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bundles(tiny_spec):
    return {kind: load_bundle(tiny_spec(kind)) for kind in ("bert", "roberta", "t5")}


def random_prompt(bundle, length=3, seed=0):
    return torch.randn(length, bundle.backbone.hidden_size, generator=torch.Generator().manual_seed(seed))


# --- the empty input and the hooks ----------------------------------------------------------------

@pytest.mark.parametrize("kind, tokens, mask_index", [
    ("bert", ["[CLS]", "[MASK]", "[SEP]"], 1),
    ("roberta", ["<s>", "<mask>", "</s>"], 1),
    ("t5", ["<extra_id_0>", "</s>"], 0),
])
def test_empty_input_is_special_tokens_around_the_mask(bundles, kind, tokens, mask_index):
    tok = bundles[kind].tokenizer
    ids, pos = ind.empty_input(tok)
    assert tok.convert_ids_to_tokens(ids) == tokens and pos == mask_index


def test_activation_shapes_and_hooks_are_removed(bundles):
    for kind, layers in (("bert", ["encoder.0", "encoder.1"]),
                         ("t5", ["encoder.0", "encoder.1", "decoder.0", "decoder.1"])):
        b = bundles[kind]
        names, acts = ind.ffn_activations(b.backbone, b.tokenizer, random_prompt(b))
        assert names == layers and acts.shape == (len(layers), 64) and acts.dtype == torch.float32
        mask = ind.active_neurons(acts)
        assert mask.dtype == torch.bool and 0 < mask.float().mean() < 1
        assert all(not m._forward_hooks for _, m in b.backbone.ffn_modules())


def manual_bert_intermediate(layer, h: torch.Tensor) -> torch.Tensor:
    """One BERT/RoBERTa layer's FFN intermediate (after the activation), written out by hand: ``h [T, d]``."""
    att = layer.attention.self
    t, heads, size = h.shape[0], att.num_attention_heads, att.attention_head_size
    q, k, v = (m(h).view(t, heads, size).transpose(0, 1) for m in (att.query, att.key, att.value))
    ctx = (torch.softmax(q @ k.transpose(1, 2) / math.sqrt(size), -1) @ v).transpose(0, 1).reshape(t, -1)
    out = layer.attention.output
    a = out.LayerNorm(out.dense(ctx) + h)
    return layer.intermediate.intermediate_act_fn(layer.intermediate.dense(a))


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_hooks_capture_the_encoder_ffn_at_the_mask_position(bundles, kind):
    b = bundles[kind]
    prompt = random_prompt(b, length=4, seed=1)
    names, acts = ind.ffn_activations(b.backbone, b.tokenizer, prompt)
    ids, pos = ind.empty_input(b.tokenizer)
    with torch.no_grad():
        x = torch.cat([prompt.unsqueeze(0), b.backbone.embed(torch.tensor([ids]))], 1)
        hidden = b.backbone.encoder_model(inputs_embeds=x, attention_mask=torch.ones(1, x.shape[1], dtype=torch.long),
                                          output_hidden_states=True).hidden_states
        manual = torch.stack([manual_bert_intermediate(layer, hidden[i][0])[4 + pos]
                              for i, layer in enumerate(b.backbone.encoder_model.encoder.layer)])
        other = manual_bert_intermediate(b.backbone.encoder_model.encoder.layer[0], hidden[0][0])[0]
    torch.testing.assert_close(acts, manual, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(acts[0], other, atol=1e-3)  # another position gives other values
    assert (acts >= -0.2).all() and (acts < 0).any()  # after GELU: negative values are small


def _t5_attention(att, x_q, x_kv, bias):
    heads, size = att.n_heads, att.key_value_proj_dim
    q = att.q(x_q).view(x_q.shape[0], heads, size).transpose(0, 1)
    k, v = (m(x_kv).view(x_kv.shape[0], heads, size).transpose(0, 1) for m in (att.k, att.v))
    w = torch.softmax(q @ k.transpose(1, 2) + bias, -1)  # T5: no 1/sqrt(d) scaling
    return att.o((w @ v).transpose(0, 1).reshape(x_q.shape[0], -1))


def test_hooks_capture_t5_wi_at_the_sentinel_and_first_decoder_step(bundles):
    b = bundles["t5"]
    hf = b.backbone.hf
    prompt = random_prompt(b, length=3, seed=2)
    names, acts = ind.ffn_activations(b.backbone, b.tokenizer, prompt)
    ids, pos = ind.empty_input(b.tokenizer)
    manual = []
    with torch.no_grad():
        h = torch.cat([prompt, b.backbone.embed(torch.tensor(ids))], 0)  # [T, d]
        bias = hf.encoder.block[0].layer[0].SelfAttention.compute_bias(h.shape[0], h.shape[0])[0]
        for block in hf.encoder.block:
            sa, ff = block.layer[0], block.layer[-1]
            h = h + _t5_attention(sa.SelfAttention, sa.layer_norm(h), sa.layer_norm(h), bias)
            wi = ff.DenseReluDense.wi(ff.layer_norm(h))
            manual.append(wi[3 + pos])
            h = h + ff.DenseReluDense.wo(torch.relu(wi))
        enc = hf.encoder.final_layer_norm(h)
        d = hf.decoder.embed_tokens(torch.tensor([hf.config.decoder_start_token_id]))  # [1, d]
        dbias = hf.decoder.block[0].layer[0].SelfAttention.compute_bias(1, 1)[0]
        for block in hf.decoder.block:
            sa, ca, ff = block.layer
            d = d + _t5_attention(sa.SelfAttention, sa.layer_norm(d), sa.layer_norm(d), dbias)
            d = d + _t5_attention(ca.EncDecAttention, ca.layer_norm(d), enc, 0.0)
            wi = ff.DenseReluDense.wi(ff.layer_norm(d))
            manual.append(wi[0])
            d = d + ff.DenseReluDense.wo(torch.relu(wi))
    torch.testing.assert_close(acts, torch.stack(manual), rtol=1e-5, atol=1e-5)
    assert (acts < -0.01).any()  # wi is read before the ReLU: "> 0" marks what ReLU keeps


def test_activations_are_deterministic_and_depend_on_the_prompt(bundles):
    b = bundles["roberta"]
    p = random_prompt(b, seed=3)
    _, a1 = ind.ffn_activations(b.backbone, b.tokenizer, p)
    _, a2 = ind.ffn_activations(b.backbone, b.tokenizer, p.clone())
    _, a3 = ind.ffn_activations(b.backbone, b.tokenizer, random_prompt(b, seed=4))
    assert torch.equal(a1, a2) and not torch.allclose(a1, a3, atol=1e-4)


def test_on_separates_prompts_on_the_embedded_minilm():
    b = load_bundle({"name": "minilm-l6", "source": "embedded:minilm-l6"})
    emb = b.backbone.word_embeddings.weight
    g = torch.Generator().manual_seed(0)
    p, q = (emb[torch.randint(1000, 20000, (6,), generator=g)] for _ in range(2))
    names, acts = ind.ffn_activations(b.backbone, b.tokenizer, p)
    mp, mq = ind.active_neurons(acts), ind.active_neurons(ind.ffn_activations(b.backbone, b.tokenizer, q)[1])
    assert len(names) == 6 and mp.shape == (6, 1536) and 0.02 < mp.float().mean() < 0.5
    assert ind.overlap_rate(mp, mp) == 1.0 and 0.3 < ind.overlap_rate(mp, mq) < 0.99
    for idx in ind.layer_groups(names, 3).values():
        assert ind.overlap_rate(mp[idx], mq[idx]) < 1.0


def test_wrong_prompt_width_is_refused(bundles):
    b = bundles["bert"]
    with pytest.raises(ValueError, match="hidden size 32"):
        ind.ffn_activations(b.backbone, b.tokenizer, torch.zeros(3, 16))


# --- hand-made numbers ------------------------------------------------------------------------------

def test_on_on_hand_made_masks():
    s = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    t = torch.tensor([[1, 0, 1, 0], [1, 1, 1, 0]], dtype=torch.bool)
    assert ind.overlap_rate(s[0], t[0]) == pytest.approx(0.5)  # 1 shared / (sqrt 2 * sqrt 2)
    assert ind.overlap_rate(s[1], t[1]) == pytest.approx(1.0)
    assert ind.overlap_rate(s, t) == pytest.approx(0.8)  # all layers: 4 / (sqrt 5 * sqrt 5)
    assert ind.overlap_rate(torch.tensor([1, 0, 0]), torch.tensor([0, 1, 1])) == 0.0
    assert math.isnan(ind.overlap_rate(torch.zeros(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool)))


def test_embedding_similarities_on_hand_made_prompts():
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    q = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    got = ind.embedding_similarities(p, q)
    assert got["cosine_flat"] == pytest.approx(2 / math.sqrt(6))
    assert got["cosine_tokens"] == pytest.approx((1 + 2 / math.sqrt(2)) / 4)  # pairs: 1, 1/sqrt2, 0, 1/sqrt2
    assert got["euclidean_flat"] == pytest.approx(0.5)  # distance 1
    assert got["euclidean_tokens"] == pytest.approx((1 + 0.5 + 0.5 + 1 / (1 + math.sqrt(2))) / 4)
    same = ind.embedding_similarities(p, p)
    assert same["cosine_flat"] == pytest.approx(1) and same["euclidean_flat"] == 1.0
    assert same["cosine_tokens"] == pytest.approx(0.5)  # token pairs (i, j), i != j included
    longer = ind.embedding_similarities(p, torch.ones(3, 2))  # prompts of different lengths
    assert math.isnan(longer["cosine_flat"]) and math.isnan(longer["euclidean_flat"])
    assert longer["cosine_tokens"] == pytest.approx(1 / math.sqrt(2))


def test_layer_groups():
    six = [f"encoder.{i}" for i in range(6)]
    assert ind.layer_groups(six, 3) == {"all": [0, 1, 2, 3, 4, 5], "encoder.0-2": [0, 1, 2], "encoder.3-5": [3, 4, 5]}
    assert list(ind.layer_groups(six, 4)) == ["all", "encoder.0-3", "encoder.4-5"]  # the tail window is cut
    assert list(ind.layer_groups(six, 3, 1)) == ["all", "encoder.0-2", "encoder.1-3", "encoder.2-4", "encoder.3-5"]
    assert list(ind.layer_groups(six, 1))[1:3] == ["encoder.0", "encoder.1"]
    t5 = ["encoder.0", "encoder.1", "encoder.2", "decoder.0", "decoder.1", "decoder.2"]
    g = ind.layer_groups(t5, 2)
    assert list(g) == ["all", "encoder", "decoder", "encoder.0-1", "encoder.2", "decoder.0-1", "decoder.2"]
    assert g["decoder.0-1"] == [3, 4] and g["decoder"] == [3, 4, 5]
    with pytest.raises(UserError, match="window"):
        ind.layer_groups(six, 0)


def test_indicator_frame_layout_and_values():
    g = torch.Generator().manual_seed(0)
    prompts = {("m", t, 1): torch.randn(2, 4, generator=g) for t in ("a", "b", "c")}
    masks = {("m", "a", 1): torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool),
             ("m", "b", 1): torch.tensor([[1, 0, 1, 0], [1, 1, 1, 0]], dtype=torch.bool),
             ("m", "c", 1): torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)}
    groups = {"m": ind.layer_groups(["encoder.0", "encoder.1"], 1)}
    df = ind.indicator_frame(prompts, masks, groups)
    assert list(df.columns) == ind.TABLE_COLUMNS
    assert len(df) == 9 * (4 + 3)  # ordered pairs incl. diagonal x (4 embedding + ON all, layer 0, layer 1)
    on = df[df["indicator"] == "on"].set_index(["source_task", "target_task", "layers"])["value"]
    assert on["a", "b", "encoder.0"] == pytest.approx(0.5) and on["a", "b", "all"] == pytest.approx(0.8)
    assert on["a", "c", "encoder.0"] == 0.0 and on["c", "a", "all"] == pytest.approx(1 / math.sqrt(20))
    diag = df[(df["source_task"] == df["target_task"]) & df["indicator"].isin(["cosine_flat", "on"])]
    np.testing.assert_allclose(diag["value"], 1.0)
    emb = df[df["layers"] == "input"].pivot_table(index=["source_task", "target_task"], columns="indicator", values="value")
    np.testing.assert_allclose(emb.loc[("a", "b")].to_numpy(), emb.loc[("b", "a")].to_numpy())  # symmetric
    assert emb.loc[("a", "b"), "euclidean_flat"] == pytest.approx(
        1 / (1 + (prompts["m", "a", 1] - prompts["m", "b", 1]).norm().item()))


# --- the steps on a tiny model ---------------------------------------------------------------------

def write_prompt(path: Path, tensor: torch.Tensor, model: str, task: str, seed: int) -> str:
    save_tensors({"prompt": tensor}, path, metadata={"model": model, "task": task, "seed": seed,
                                                      "config_hash": f"h-{task}-{seed}"})
    return str(path)


@pytest.fixture(scope="module")
def steps_run(tmp_path_factory, tiny_spec, bundles):
    """Activations and the indicator table for tiny-bert: 3 tasks x 2 seeds of random prompts."""
    root = tmp_path_factory.mktemp("indicators")
    spec = tiny_spec("bert")
    runs = []
    for i, (task, seed) in enumerate([(t, s) for s in (1, 2) for t in ("a", "b", "c")]):
        path = write_prompt(root / f"{task}-{seed}.safetensors", random_prompt(bundles["bert"], 4, seed=10 + i),
                            "tiny-bert", task, seed)
        runs.append({"model": "tiny-bert", "task": task, "seed": seed, "prompt": path})
    prompts = [{"task": r["task"], "seed": r["seed"], "path": r["prompt"]} for r in runs]
    meta = steps.compute_activations(model_spec=spec, prompts=prompts, output=str(root / "act.safetensors"))
    steps.compute_activations(model_spec=spec, prompts=prompts, output=str(root / "again.safetensors"))
    df = steps.indicator_table(runs=runs, activations={"tiny-bert": str(root / "act.safetensors")}, window=1, stride=None,
                         table=str(root / "indicators.parquet"))
    return root, runs, meta, df


def test_activations_step_writes_one_mask_per_prompt(steps_run, bundles):
    root, runs, meta, _ = steps_run
    tensors, stored = load_tensors(root / "act.safetensors")
    assert sorted(tensors) == ["a/seed1", "a/seed2", "b/seed1", "b/seed2", "c/seed1", "c/seed2"]
    assert all(t.dtype == torch.bool and t.shape == (2, 64) for t in tensors.values())
    assert stored["layers"] == ["encoder.0", "encoder.1"] and stored["mask_index"] == 1
    assert stored["entries"]["b/seed2"]["prompt_config_hash"] == "h-b-2"
    b = bundles["bert"]
    prompt, _ = load_tensors(runs[4]["prompt"])  # b, seed 2
    _, acts = ind.ffn_activations(b.backbone, b.tokenizer, prompt["prompt"])
    assert torch.equal(tensors["b/seed2"], acts > 0)
    again, again_meta = load_tensors(root / "again.safetensors")  # deterministic (safetensors orders its
    assert again_meta == stored and all(torch.equal(again[k], tensors[k]) for k in tensors)  # header freely)


def test_indicator_table_step(steps_run):
    root, runs, _, df = steps_run
    stored = pd.read_parquet(root / "indicators.parquet")
    pd.testing.assert_frame_equal(stored, df)
    assert list(df.columns) == ind.TABLE_COLUMNS
    assert len(df) == 2 * 9 * (4 + 3)  # 2 seeds x 9 ordered pairs x (4 embedding + ON all/layer 0/layer 1)
    assert set(df["layers"]) == {"input", "all", "encoder.0", "encoder.1"}
    assert df["value"].between(-1, 1).all() and df["value"].notna().all()
    assert parquet_provenance(root / "indicators.parquet")["layer_groups"] == {"tiny-bert": ["all", "encoder.0", "encoder.1"]}
    masks, _ = load_tensors(root / "act.safetensors")
    row = df[(df["source_task"] == "a") & (df["target_task"] == "c") & (df["seed"] == 2) & (df["indicator"] == "on")
             & (df["layers"] == "all")]
    assert row["value"].item() == pytest.approx(ind.overlap_rate(masks["a/seed2"], masks["c/seed2"]))


def test_activations_step_refuses_mismatched_prompts(tmp_path, tiny_spec):
    spec = tiny_spec("bert")
    wide = write_prompt(tmp_path / "wide.safetensors", torch.zeros(4, 48), "tiny-bert", "a", 1)
    with pytest.raises(UserError, match=r"wide.safetensors: prompt has shape \(4, 48\)"):
        steps.compute_activations(model_spec=spec, prompts=[{"task": "a", "seed": 1, "path": wide}],
                                output=str(tmp_path / "x.safetensors"))
    other = write_prompt(tmp_path / "other.safetensors", torch.zeros(4, 32), "tiny-bert", "b", 1)
    with pytest.raises(UserError, match="says task 'b', expected 'a'"):
        steps.compute_activations(model_spec=spec, prompts=[{"task": "a", "seed": 1, "path": other}],
                                output=str(tmp_path / "x.safetensors"))
    assert not (tmp_path / "x.safetensors").exists()


# --- correlation with transfer ---------------------------------------------------------------------

def synthetic_tables(tasks=("a", "b", "c"), seeds=(1,)):
    """Indicator values with known ranks against a synthetic transfer table."""
    pairs = [(s, t, seed) for seed in seeds for s in tasks for t in tasks]
    perf = {p: float(i) for i, p in enumerate(pairs)}
    rows = []
    for (s, t, seed), y in perf.items():
        rows += [("m", seed, s, t, "cosine_flat", "input", y * 2 + 1),  # monotone in performance
                 ("m", seed, s, t, "on", "all", -y),  # reversed
                 ("m", seed, s, t, "on", "encoder.0", 0.3)]  # constant
    indicators = pd.DataFrame(rows, columns=ind.TABLE_COLUMNS)
    transfer = pd.DataFrame([{"model": "m", "source_task": s, "target_task": t, "seed": seed, "score": y / 10,
                              "relative_score": 1.0 if s == t else y / 5} for (s, t, seed), y in perf.items()])
    return indicators, transfer


def test_spearman_exact_values():
    assert report.spearman([1, 2, 3, 4], [1, 3, 2, 4])[:1] == pytest.approx((0.8,))  # 1 - 6*2/(4*15)
    rho, p, n = report.spearman([1, 2, np.nan, 4, 5], [5, 4, 3, 2, 1])
    assert rho == pytest.approx(-1) and n == 4 and p < 1e-6
    assert all(math.isnan(v) for v in report.spearman([1, 1, 1], [1, 2, 3])[:2])
    assert report.spearman([1, 2], [1, 2])[2] == 2 and math.isnan(report.spearman([1, 2], [1, 2])[0])


def test_correlate_on_synthetic_tables():
    indicators, transfer = synthetic_tables(seeds=(1, 2))
    corr = report.correlate(indicators, transfer)
    assert list(corr.columns) == report.CORRELATION_COLUMNS
    assert len(corr) == 3 * 2  # (indicator, layers) x performance
    c = corr.set_index(["indicator", "layers", "performance"])
    assert c.loc[("cosine_flat", "input", "relative_score"), "spearman"] == pytest.approx(1.0)
    assert c.loc[("on", "all", "score"), "spearman"] == pytest.approx(-1.0)
    assert (corr["n_pairs"] == 12).all()  # 2 seeds x 6 off-diagonal pairs; the diagonal is left out
    assert math.isnan(c.loc[("on", "encoder.0", "score"), "spearman"])
    partial = report.correlate(indicators, transfer[transfer["source_task"] != "c"])
    assert (partial["n_pairs"] == 8).all()  # only pairs present in both tables
    with pytest.raises(ValueError, match="several rows"):
        report.correlate(indicators, pd.concat([transfer, transfer.iloc[:1]]))


def test_steps_are_registered_in_the_cli():
    from pipeline_steps.cli import resolve_step

    assert resolve_step("indicator-activations") is steps.compute_activations
    assert resolve_step("indicator-table") is steps.indicator_table
    assert resolve_step("indicator-correlation") is report.correlation


def test_correlation_step_writes_table_and_figure(tmp_path):
    from pipeline_steps.io import write_parquet

    indicators, transfer = synthetic_tables(tasks=("a", "b", "c", "d"))
    write_parquet(indicators, tmp_path / "ind.parquet", metadata={"step": "indicator_table"})
    write_parquet(transfer, tmp_path / "tr.parquet")
    out = dict(table=str(tmp_path / "corr.parquet"), figure=str(tmp_path / "corr.png"))
    corr = report.correlation(indicators=str(tmp_path / "ind.parquet"), transfer=str(tmp_path / "tr.parquet"), **out)
    pd.testing.assert_frame_equal(pd.read_parquet(out["table"]), corr)
    assert (corr["n_pairs"] == 12).all()
    assert parquet_provenance(out["table"])["indicators_provenance"] == {"step": "indicator_table"}
    assert Path(out["figure"]).read_bytes()[:4] == b"\x89PNG"

    write_parquet(transfer.drop(columns=["relative_score"]), tmp_path / "bad.parquet")
    with pytest.raises(UserError, match=r"bad.parquet: missing column\(s\) \['relative_score'\]"):
        report.correlation(indicators=str(tmp_path / "ind.parquet"), transfer=str(tmp_path / "bad.parquet"), **out)
    write_parquet(transfer.assign(model="other"), tmp_path / "other.parquet")
    with pytest.raises(UserError, match="other.parquet: no .* in common"):
        report.correlation(indicators=str(tmp_path / "ind.parquet"), transfer=str(tmp_path / "other.parquet"), **out)


# --- config and DAG ------------------------------------------------------------------------------------

def test_config_defaults_and_errors(minimal_config):
    cfg = load_config(minimal_config)
    assert cfg["indicators"] == {"window": 3, "stride": None}
    minimal_config["indicators"] = {"window": 0}
    with pytest.raises(UserError, match="indicators.window"):
        load_config(minimal_config)


@pytest.mark.workflow
def test_dry_run_schedules_the_indicator_jobs(tmp_path):
    from helpers import TINY, snakemake_cli

    cfg = {**TINY, "indicators": {"window": 1}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    target = tmp_path / "results/tables/transfer_zero_shot.parquet"  # stands in for the transfer stage
    target.parent.mkdir(parents=True)
    synthetic_tables()[1].to_parquet(target)
    res = snakemake_cli(tmp_path, "indicators", "-n", timeout=120)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    counts = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts["indicator_activations"] == 1 and counts["indicator_table"] == 1
    assert counts["indicator_correlation"] == 1 and counts["train_prompt"] == 2 and counts["indicators"] == 1


def test_correlate_with_transfer_gain_and_bootstrap_interval():
    indicators, transfer = synthetic_tables(seeds=(1, 2))
    transfer["transfer_gain"] = transfer["relative_score"] * 2 - 1
    corr = report.correlate(indicators, transfer, n_boot=200)
    assert list(corr.columns) == report.CORRELATION_COLUMNS
    assert len(corr) == 3 * 3 and set(corr["performance"]) == {"relative_score", "score", "transfer_gain"}
    c = corr.set_index(["indicator", "layers", "performance"])
    assert c.loc[("cosine_flat", "input", "transfer_gain"), "spearman"] == pytest.approx(1.0)
    assert c.loc[("cosine_flat", "input", "transfer_gain"), ["ci_low", "ci_high"]].tolist() == pytest.approx([1, 1])
    assert c.loc[("on", "all", "score"), "ci_high"] == pytest.approx(-1.0)
    assert (corr["n_seeds"] == 2).all() and (corr["n_pairs"] == 12).all()
    assert math.isnan(c.loc[("on", "encoder.0", "score"), "ci_low"])
