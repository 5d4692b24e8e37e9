"""Cross-model prompt projector: module, both objectives, steps, config checks, rules (tiny models)."""
from __future__ import annotations

import copy
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from planning import projection as projection_plan
from pipeline_steps.transferability import projection, report, steps
from pipeline_steps.transferability.config import check_config as check_projector
from pipeline_steps.prompt_tuning import steps as source_prompts
from pipeline_steps.data.tokenize import tokenize_frame
from pipeline_steps.errors import UserError
from pipeline_steps.io import load_tensors, read_json, read_parquet, save_tensors, write_parquet
from pipeline_steps.runtime import load_bundle
from pipeline_steps.training import TokenizedSplit, train_module, trainable
from pipeline_steps.transferability.config import ProjectorConfig
from pipeline_steps.transferability.model import ProjectedPromptModel, PromptProjector
from pipeline_steps.prompt_tuning.config import PromptTuningConfig

L = 4
SENTIMENT = {"name": "sentiment", "label_words": {"negative": ["bad"], "positive": ["good"]},
             "label_names": ["negative", "positive"], "metric": "accuracy", "template": "{text_a} It was {mask}."}
TOPIC = {"name": "topic", "label_words": {"sports": ["sports"], "science": ["science"], "business": ["business"]},
         "label_names": ["sports", "science", "business"], "metric": "accuracy", "template": "{mask} news: {text_a}"}
TEXTS = {"sentiment": ["an awful , dull film", "a great , fun film"],
         "topic": ["the team won the match", "the lab found a new cell", "the market and shares fell"]}


def toy_frame(task: dict, n: int = 36, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(task["label_names"]), n)
    texts = [f"{TEXTS[task['name'].rstrip('0123456789')][y]} {i % 5}" for i, y in enumerate(labels)]
    splits = (["train"] * (n // 2) + ["dev"] * (n // 4) + ["test"] * (n - n // 2 - n // 4))
    return pd.DataFrame({"idx": range(n), "text_a": texts, "text_b": "", "label": labels, "split": splits})


def tokenized(bundle, task: dict, path=None, n: int = 36):
    df = tokenize_frame(toy_frame(task, n), bundle.tokenizer, task["template"], 32)
    if path is not None:
        write_parquet(df, path)
    pad = bundle.tokenizer.pad_token_id
    return {s: TokenizedSplit.from_frame(df, s, pad) for s in ("train", "dev", "test")}


@pytest.fixture(scope="module")
def wide_spec(tiny_dir, tmp_path_factory, tiny_spec):
    """A tiny BERT of hidden 48 (the fixture's are 32) sharing the tiny BERT's tokenizer."""
    from transformers import BertConfig, BertForMaskedLM

    src = tiny_dir / "bert"
    out = tmp_path_factory.mktemp("wide") / "bert48"
    cfg = BertConfig.from_pretrained(src)
    cfg.hidden_size, cfg.intermediate_size = 48, 96
    torch.manual_seed(1)
    BertForMaskedLM(cfg).save_pretrained(out)
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab")):
            shutil.copy(f, out / f.name)
    return tiny_spec("bert", name="tiny-bert48", source=str(out))


@pytest.fixture(scope="module")
def source(tiny_spec):
    return load_bundle(tiny_spec("bert"))


@pytest.fixture(scope="module")
def target(wide_spec):
    return load_bundle(wide_spec)


@pytest.fixture(scope="module")
def minilm():
    """A real encoder (hidden 384) for the learning test: random tiny models barely react to prompts."""
    return load_bundle({"name": "minilm-l6", "source": "embedded:minilm-l6", "verbalizer": "auto",
                        "pooling": "mask", "embedding_scale": 20.0})


# --- module -----------------------------------------------------------------------------------------

def test_projector_shapes_and_per_token_layernorm():
    proj = PromptProjector(L, 32, 48, hidden=16, out_scale=0.5, generator=torch.Generator().manual_seed(0))
    assert proj(torch.randn(L, 32)).shape == (L, 48)
    out = proj(torch.randn(3, L, 32))
    assert out.shape == (3, L, 48)
    # LayerNorm per output token: each token has mean 0 (bias 0) and std out_scale
    torch.testing.assert_close(out.mean(-1), torch.zeros(3, L), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(-1, unbiased=False), torch.full((3, L), 0.5), atol=1e-3, rtol=0)
    assert proj.inner.in_features == L * 32 and proj.outer.out_features == L * 48
    assert isinstance(proj.act, torch.nn.Tanh)
    with pytest.raises(ValueError, match=r"\[L=4, d=32\]"):
        proj(torch.randn(5, 32))


def test_projector_init_is_seeded():
    a, b, c = (PromptProjector(L, 8, 8, 16, generator=torch.Generator().manual_seed(s)) for s in (3, 3, 4))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["inner.weight"], sc["inner.weight"])


# --- distance objective -----------------------------------------------------------------------------

def test_distance_objective_reduces_mse():
    g = torch.Generator().manual_seed(0)
    sources, targets = torch.randn(3, L, 32, generator=g), 0.3 * torch.randn(3, L, 48, generator=g)
    proj = PromptProjector(L, 32, 48, hidden=64, out_scale=float(targets.std(-1).mean()), generator=g)
    cfg = ProjectorConfig(hidden=64, steps=200, lr=3e-3, eval_every=50)
    curve = projection.fit_distance(proj, sources, targets, cfg)
    assert [r["step"] for r in curve] == [0, 50, 100, 150, 200]
    assert curve[-1]["loss"] < 0.05 * curve[0]["loss"]
    with torch.no_grad():
        assert torch.nn.functional.mse_loss(proj(sources), targets).item() == pytest.approx(curve[-1]["loss"])


# --- task objective ---------------------------------------------------------------------------------

def task_models(source, target, seed=0):
    g = torch.Generator().manual_seed(seed)
    proj = PromptProjector(L, source.backbone.hidden_size, target.backbone.hidden_size, hidden=32,
                           out_scale=float(target.backbone.word_embeddings.weight.std()), generator=g)
    prompts = {t["name"]: torch.randn(L, source.backbone.hidden_size, generator=g) for t in (SENTIMENT, TOPIC)}
    models = {t["name"]: ProjectedPromptModel(target.backbone, target.verbalizer(t), proj, prompts[t["name"]])
              for t in (SENTIMENT, TOPIC)}
    return proj, models


def test_task_objective_reduces_loss_and_keeps_target_frozen(source, minilm):
    """tiny BERT (hidden 32) -> MiniLM-L6 (hidden 384), two tasks with their own verbalizers."""
    data = {t["name"]: tokenized(minilm, t, n=48) for t in (SENTIMENT, TOPIC)}
    proj, models = task_models(source, minilm)
    frozen = {k: v.clone() for k, v in minilm.backbone.state_dict().items()}
    p0 = {k: v.clone() for k, v in proj.state_dict().items()}
    train = {k: d["train"] for k, d in data.items()}
    cfg = ProjectorConfig(hidden=32, steps=20, lr=1e-3, batch_size=8, eval_every=10)
    best, curve = projection.fit_task(models, train, train, {k: "accuracy" for k in data}, cfg, seed=0, device="cpu")
    assert [r["step"] for r in curve] == [0, 10, 20]
    assert curve[-1]["dev_loss"] < 0.5 * curve[0]["dev_loss"], curve
    assert curve[-1]["dev_score"] > curve[0]["dev_score"]
    assert set(curve[0]) >= {"dev_score_sentiment", "dev_score_topic", "train_loss", "dev_score"}
    # the best weights are those of the best mean dev score, and they are what the projector holds now
    assert all(torch.equal(best[k], v) for k, v in proj.state_dict().items())
    # the target PLM is frozen: no grad, no change, nothing trainable but the projector
    assert all(not p.requires_grad and p.grad is None for p in minilm.backbone.parameters())
    assert all(torch.equal(frozen[k], v) for k, v in minilm.backbone.state_dict().items())
    assert set(trainable(models["topic"])) == {f"projector.{n}" for n in p0}
    assert not torch.equal(proj.state_dict()["inner.weight"], p0["inner.weight"])
    assert set(best) == set(p0)


def test_task_objective_is_deterministic(source, target):
    data = {t["name"]: tokenized(target, t) for t in (SENTIMENT, TOPIC)}
    train = {k: d["train"] for k, d in data.items()}
    dev = {k: d["dev"] for k, d in data.items()}
    cfg = ProjectorConfig(hidden=32, steps=6, lr=1e-2, batch_size=8, eval_every=3)
    runs = []
    for _ in range(2):
        proj, models = task_models(source, target, seed=5)
        best, curve = projection.fit_task(models, train, dev, {k: "accuracy" for k in data}, cfg, seed=2, device="cpu")
        runs.append((best, curve, proj.state_dict()))
    assert runs[0][1] == runs[1][1]
    assert all(torch.equal(runs[0][0][k], runs[1][0][k]) for k in runs[0][0])
    assert all(torch.equal(runs[0][2][k], runs[1][2][k]) for k in runs[0][2])


def test_train_module_trains_the_projector_for_one_task(source, target):
    """The wrapper plugs into the generic loop: only projector weights move, the PLM stays frozen."""
    data = tokenized(target, SENTIMENT)
    proj, models = task_models(source, target)
    before = {k: v.clone() for k, v in proj.state_dict().items()}
    frozen = {k: v.clone() for k, v in target.backbone.state_dict().items()}
    cfg = PromptTuningConfig(prompt_length=L, steps=4, batch_size=8, eval_every=2, lr=1e-2)
    best, state, _ = train_module(models["sentiment"], data["train"], data["dev"], cfg, seed=0, metric="accuracy",
                                  device="cpu")
    assert set(best) == {f"projector.{k}" for k in before} and len(state.curve) == 2
    assert not torch.equal(proj.state_dict()["outer.weight"], before["outer.weight"])
    assert all(torch.equal(frozen[k], v) for k, v in target.backbone.state_dict().items())


def test_wrapper_rejects_a_projector_of_the_wrong_width(source):
    with pytest.raises(ValueError, match="hidden size 32"):
        ProjectedPromptModel(source.backbone, source.verbalizer(SENTIMENT), PromptProjector(L, 32, 48, 8),
                             torch.zeros(L, 32))


# --- steps end to end -------------------------------------------------------------------------------

def write_prompt(path, model, task, width, seed=0):
    g = torch.Generator().manual_seed(seed)
    save_tensors({"prompt": 0.3 * torch.randn(L, width, generator=g)}, path,
                 metadata={"model": model, "task": task, "seed": 1, "config_hash": f"h{seed}"})
    return str(path)


def test_steps_train_evaluate_tpt_table(tiny_spec, wide_spec, source, target, tmp_path):
    src_spec = tiny_spec("bert")
    specs = {"sentiment": SENTIMENT, "topic": TOPIC, "sentiment2": {**SENTIMENT, "name": "sentiment2"}}
    tok, prompts = {}, {}
    for i, (name, spec) in enumerate(specs.items()):
        tok[name] = str(tmp_path / f"tok-{name}.parquet")
        tokenized(target, spec, tok[name])
        prompts[("src", name)] = write_prompt(tmp_path / f"src-{name}.safetensors", "tiny-bert", name, 32, seed=i)
        prompts[("tgt", name)] = write_prompt(tmp_path / f"tgt-{name}.safetensors", "tiny-bert48", name, 48, seed=10 + i)
    train_tasks = [SENTIMENT, TOPIC]
    base = dict(source_spec=src_spec, target_spec=wide_spec, task_specs=train_tasks, seed=1,
                source_prompts=[prompts[("src", t["name"])] for t in train_tasks])
    settings = {"distance": ProjectorConfig(hidden=16, steps=40, lr=3e-3, eval_every=20).to_dict(),
                "task": ProjectorConfig(hidden=16, steps=4, lr=1e-2, batch_size=8, eval_every=2).to_dict()}
    metas = {}
    for obj in ("distance", "task"):
        out = {k: str(tmp_path / obj / f) for k, f in [("projector", "p.safetensors"), ("curve", "c.parquet"),
                                                        ("meta", "m.json")]}
        metas[obj] = steps.train_projector(**base, objective=obj, settings=settings[obj], **out,
                                      target_prompts=[prompts[("tgt", t["name"])] for t in train_tasks],
                                      tokenized=[tok[t["name"]] for t in train_tasks])
        assert read_json(out["meta"]) == json.loads(json.dumps(metas[obj]))
        assert metas[obj]["d_src"] == 32 and metas[obj]["d_tgt"] == 48 and metas[obj]["prompt_length"] == L
        model, pmeta = projection.load_projector(out["projector"])
        assert (model.length, model.d_src, model.d_tgt, model.hidden) == (L, 32, 48, 16)
        assert pmeta["objective"] == obj and pmeta["train_tasks"] == ["sentiment", "topic"]
    assert metas["distance"]["loss_end"] < 0.5 * metas["distance"]["loss_start"]
    assert len(read_parquet(tmp_path / "task" / "c.parquet")) == 3  # steps 0, 2, 4

    # determinism of the step: same inputs, byte-identical projector
    again = {k: str(tmp_path / "again" / f) for k, f in [("projector", "p.safetensors"), ("curve", "c.parquet"),
                                                          ("meta", "m.json")]}
    steps.train_projector(**base, objective="task", settings=settings["task"], **again,
                     tokenized=[tok[t["name"]] for t in train_tasks])
    a, b = load_tensors(tmp_path / "task" / "p.safetensors")[0], load_tensors(again["projector"])[0]
    assert all(torch.equal(a[k], b[k]) for k in a)

    # evaluate on a held-out task, then TPT from the projected prompt, then the table
    runs = []
    for obj in ("distance", "task"):
        d = tmp_path / obj / "sentiment2"
        res = steps.evaluate_projection(target_spec=wide_spec, task_spec=specs["sentiment2"],
                                  projector=str(tmp_path / obj / "p.safetensors"),
                                  source_prompt=prompts[("src", "sentiment2")], tokenized=tok["sentiment2"],
                                  prompt=str(d / "prompt.safetensors"), predictions=str(d / "pred.parquet"),
                                  scores=str(d / "scores.json"), target_prompt=prompts[("tgt", "sentiment2")])
        assert 0 <= res["score"] <= 1 and res["n"] == 9 and res["objective"] == obj
        assert read_json(d / "scores.json")["mse_to_target_prompt"] == pytest.approx(res["mse_to_target_prompt"])
        projected, pm = load_tensors(d / "prompt.safetensors")
        assert projected["prompt"].shape == (L, 48) and pm["model"] == "tiny-bert48" and pm["source_model"] == "tiny-bert"
        pt = PromptTuningConfig(prompt_length=L, steps=4, batch_size=8, eval_every=2).to_dict()
        curves = {}
        for kind, init in (("tpt", str(d / "prompt.safetensors")), ("random", None)):
            source_prompts.train(model_spec=wide_spec, task_spec=specs["sentiment2"], settings=pt, seed=1,
                                 tokenized=tok["sentiment2"], init_from=init, prompt=str(d / kind / "p.safetensors"),
                                 curve=str(d / kind / "c.parquet"), meta=str(d / kind / "m.json"))
            curves[kind] = str(d / kind / "c.parquet")
        runs.append({"pair": "p", "projector_meta": str(tmp_path / obj / "m.json"), "zero_shot": str(d / "scores.json"),
                     "tpt_curve": curves["tpt"], "random_curve": curves["random"]})
    df = report.projection_table(runs=runs, fraction=0.9, table=str(tmp_path / "cross_model.parquet"),
                                 figure=str(tmp_path / "f.png"))
    stored = pd.read_parquet(tmp_path / "cross_model.parquet")
    pd.testing.assert_frame_equal(df, stored)
    assert {"source_model", "target_model", "objective", "train_tasks", "target_task", "zero_shot_score",
            "init_speedup"} <= set(stored.columns)
    assert list(stored["objective"]) == ["distance", "task"] and (stored["train_tasks"] == "sentiment,topic").all()
    assert (stored["target_task"] == "sentiment2").all() and stored["held_out"].all()
    assert (stored["source_model"] == "tiny-bert").all() and (stored["target_model"] == "tiny-bert48").all()
    assert stored["zero_shot_score"].between(0, 1).all() and (tmp_path / "f.png").stat().st_size > 0
    # speedup agrees with the curves it came from
    from pipeline_steps.transferability.report import init_speedup

    sp = init_speedup(read_parquet(runs[1]["tpt_curve"]), read_parquet(runs[1]["random_curve"]), 0.9)["speedup"]
    got = stored.loc[1, "init_speedup"]
    assert (math.isnan(sp) and math.isnan(got)) or got == pytest.approx(sp)
    # the threshold is the configured transfer.init.fraction, the same as transfer_init's (no second copy)
    from pipeline_steps.io import parquet_provenance

    half = report.projection_table(runs=runs, fraction=0.5, table=str(tmp_path / "c5.parquet"))
    assert parquet_provenance(tmp_path / "c5.parquet")["speedup_fraction"] == 0.5
    sp5 = init_speedup(read_parquet(runs[1]["tpt_curve"]), read_parquet(runs[1]["random_curve"]), 0.5)
    got5 = half.loc[1, "init_speedup"]
    assert (math.isnan(sp5["speedup"]) and math.isnan(got5)) or got5 == pytest.approx(sp5["speedup"])
    assert half.loc[1, "init_steps_to_reach"] == pytest.approx(sp5["steps_to_reach"], nan_ok=True)


def test_train_step_rejects_prompts_of_other_lengths(tiny_spec, wide_spec, tmp_path):
    a = write_prompt(tmp_path / "a.safetensors", "tiny-bert", "sentiment", 32)
    save_tensors({"prompt": torch.zeros(L + 1, 32)}, tmp_path / "b.safetensors")
    t = [write_prompt(tmp_path / f"t{i}.safetensors", "w", "x", 48) for i in range(2)]
    out = {k: str(tmp_path / "o" / k) for k in ("projector", "curve", "meta")}
    with pytest.raises(UserError, match=r"b\.safetensors: source .* shape \(5, 32\)"):
        steps.train_projector(source_spec=tiny_spec("bert"), target_spec=wide_spec, task_specs=[SENTIMENT, TOPIC],
                         objective="distance", settings={}, seed=1, source_prompts=[a, str(tmp_path / "b.safetensors")],
                         target_prompts=t, **out)
    assert not (tmp_path / "o").exists()


# --- config -----------------------------------------------------------------------------------------

def with_pairs(cfg: dict, *pairs, **section) -> dict:
    from pipeline_steps.config import load_config

    raw = copy.deepcopy(cfg)
    raw["projector"] = {"pairs": list(pairs), **section}
    return load_config(raw)


@pytest.fixture
def two_models(minimal_config):
    minimal_config["models"]["n"] = {"source": "embedded:minilm-l3"}
    minimal_config["tasks"]["u"] = copy.deepcopy(minimal_config["tasks"]["t"])
    return minimal_config


def test_config_defaults_and_settings(two_models):
    cfg = with_pairs(two_models, {"source": "m", "target": "n", "train_tasks": ["t"], "eval_tasks": ["u"]})
    check_projector(cfg)
    assert list(projection_plan.pairs(cfg)) == ["m-to-n"]
    assert cfg["projector"]["objectives"] == ["distance", "task"]
    s = projection_plan.projector_settings(cfg, "task")
    assert s["hidden"] == 256 and s["steps"] == 100 and ProjectorConfig.from_dict(s).batch_size == 16
    assert projection_plan.pairs(with_pairs(two_models)) == {}


@pytest.mark.parametrize("pair, extra, message", [
    ({"source": "m", "target": "x"}, {}, r"projector\.pairs\.0\.target': unknown model 'x'"),
    ({"source": "m", "target": "m"}, {}, r"projector\.pairs\.0': source and target are the same model"),
    ({"source": "m", "target": "n", "eval_tasks": ["nope"]}, {}, r"projector\.pairs\.0\.eval_tasks': unknown task 'nope'"),
    ({"source": "m", "target": "n"}, {"u": {"prompt_length": 5}}, r"projector\.pairs\.0': .*prompt lengths"),
])
def test_config_errors_name_the_key(two_models, pair, extra, message):
    for task, pt in extra.items():
        two_models["tasks"][task]["prompt_tuning"] = pt
    p = {"train_tasks": ["t"], "eval_tasks": ["u"], **pair}
    with pytest.raises(UserError, match=message):
        check_projector(with_pairs(two_models, p))


def test_config_rejects_duplicate_pair_names_and_bad_objectives(two_models):
    p = {"source": "m", "target": "n", "train_tasks": ["t"], "eval_tasks": ["u"]}
    with pytest.raises(UserError, match=r"projector\.pairs\.1\.name': pair name 'm-to-n'"):
        check_projector(with_pairs(two_models, p, {**p, "train_tasks": ["u"]}))
    check_projector(with_pairs(two_models, p, {**p, "name": "other"}))
    with pytest.raises(UserError, match=r"projector\.objectives\.0"):
        with_pairs(two_models, p, objectives=["cosine"])


# --- rules ------------------------------------------------------------------------------------------

WF_CONFIG = {
    "threads": 1,
    "models": {"tiny-bert": {"source": "tiny:bert"}, "tiny-roberta": {"source": "tiny:roberta"}},
    "experiment": {"tasks": ["movies"], "models": ["tiny-bert"], "seeds": [1, 2]},
    "prompt_tuning": {"prompt_length": 4, "steps": 4, "batch_size": 8, "eval_every": 2, "max_length": 32},
    "projector": {"pairs": [{"source": "tiny-bert", "target": "tiny-roberta", "train_tasks": ["movies", "topics"],
                             "eval_tasks": ["products"]}]},
    "tasks": {name: {"source": {"demo": demo, "size": 80}, "text_fields": ["text"], "label_names": labels,
                     "template": template, "label_words": {k: [k if len(labels) > 2 else w] for k, w in
                                                           zip(labels, ["bad", "good"] * 2)}}
              for name, demo, labels, template in [
                  ("movies", "movie_reviews", ["negative", "positive"], "{text_a} It was {mask}."),
                  ("products", "product_reviews", ["negative", "positive"], "{text_a} It was {mask}."),
                  ("topics", "topics", ["sports", "science", "business", "politics"], "{mask} news: {text_a}")]},
}


def dry_run(tmp_path, cfg, *targets):

    import yaml

    from helpers import snakemake_cli

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = snakemake_cli(tmp_path, *targets, "-n", "--quiet", "rules")
    counts = {}
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts.setdefault(parts[0], int(parts[1]))
    return res, counts


@pytest.mark.workflow
def test_projection_target_plans_the_jobs(tmp_path):
    res, counts = dry_run(tmp_path, WF_CONFIG, "projection")
    assert res.returncode == 0, res.stdout + res.stderr
    # 2 objectives x 2 seeds; per seed 1 eval task
    assert counts["train_projector"] == 4 and counts["evaluate_projection"] == 4 and counts["tpt_projected"] == 4
    assert counts["summarise_projection"] == 1
    # prompts: source on movies, topics, products; target on movies, topics (distance) and products
    # (its random-init curve); models outside experiment.models are built on demand
    assert counts["train_prompt"] == 2 * 6 and counts["evaluate_prompt"] == 2 and counts["build_model"] == 2
    assert not (tmp_path / "results").exists()


@pytest.mark.workflow
def test_bad_pair_fails_fast_naming_the_key(tmp_path):
    cfg = copy.deepcopy(WF_CONFIG)
    cfg["projector"]["pairs"][0]["target"] = "roberta-huge"
    res, _ = dry_run(tmp_path, cfg)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "projector.pairs.0.target" in out and "roberta-huge" in out
    assert "Traceback" not in out
