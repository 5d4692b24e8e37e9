"""KPT: knowledge-base parsing and expansion, each refinement against a hand computation, the verbalizer
paths (MLM with multi-token words, embedding) and zero-/few-shot runs on the tiny models."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline_steps.data.demo import generate
from pipeline_steps.data.tokenize import tokenize_frame
from pipeline_steps.errors import UserError
from pipeline_steps.io import read_json, write_parquet
from pipeline_steps.kpt.config import VARIANTS, switches, variants_for
from pipeline_steps.kpt.knowledge import (check_file_usable, expand, read_kb_file, vader_words, wordnet_reader,
                                          wordnet_words)
from pipeline_steps.kpt.model import KnowledgeableVerbalizer, class_scores, frequency_drop, relevance
from pipeline_steps.prompt_tuning.config import PromptTuningConfig
from pipeline_steps.runtime import load_bundle
from pipeline_steps.training import TokenizedSplit, train_module
from pipeline_steps.verbalizers import EmbeddingVerbalizer, MLMVerbalizer

NAMES = ["sports", "science", "business", "politics"]
TOPICS = {"name": "topics", "label_names": NAMES, "label_words": {n: [n] for n in NAMES}, "metric": "accuracy",
          "template": "{mask} news: {text_a}"}


# --- knowledge-base files -----------------------------------------------------------------------

def test_kb_text_file_one_line_per_class(tmp_path):
    f = tmp_path / "knowledgeable_verbalizer.txt"
    f.write_text("sports, football ,tennis\nscience,physics\nbusiness,money,\npolitics,government\n\n\n")
    words = read_kb_file(f, NAMES)
    assert words == {"sports": ["sports", "football", "tennis"], "science": ["science", "physics"],
                     "business": ["business", "money"], "politics": ["politics", "government"]}


def test_kb_json_file(tmp_path):
    f = tmp_path / "kb.json"
    f.write_text(json.dumps({"politics": ["politics", "vote"], "sports": ["sports"], "science": "science,lab",
                             "business": ["business"]}))
    assert read_kb_file(f, NAMES)["science"] == ["science", "lab"]


@pytest.mark.parametrize("content, suffix, message", [
    ("sports\n\nbusiness\npolitics\n", ".txt", r"line 2: empty line"),
    ("sports\nscience\nbusiness\n", ".txt", r"3 lines of words but the task has 4 classes"),
    ('{"sports": ["a"], "science": ["b"], "business": ["c"]}', ".json", r"class 'politics' is missing"),
    ('{"sports": ["a"], "science": ["b"], "business": ["c"], "politics": ["d"], "art": ["e"]}', ".json",
     r"\['art'\] are not among"),
    ('{"sports": ["a"],\n "science": [b]}', ".json", r"line 2: not valid JSON"),
])
def test_bad_kb_files_are_named(tmp_path, content, suffix, message):
    f = tmp_path / f"kb{suffix}"
    f.write_text(content)
    with pytest.raises(UserError, match=message) as e:
        read_kb_file(f, NAMES)
    assert str(f) in str(e.value)


def test_missing_kb_file(tmp_path):
    with pytest.raises(UserError, match=r"nope.txt: knowledge-base file not found"):
        read_kb_file(tmp_path / "nope.txt", NAMES)


# --- expansion ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bert(tiny_spec):
    return load_bundle(tiny_spec("bert"))


def test_expansion_dedupes_filters_and_caps(bert):
    kb = {"sports": ["game", "money", "game", "\u2603\u2603", "team", "win"], "science": ["lab"],
          "business": ["money", "sports"], "politics": ["vote"]}
    cands = expand(TOPICS, kb, bert.tokenizer, max_words=3)
    by = {(NAMES[c.cls], c.word): c.status for c in cands}
    assert [c.word for c in cands if c.cls == 0][0] == "sports" and cands[0].source == "anchor"
    assert by[("sports", "money")] == "duplicate" and by[("business", "money")] == "duplicate"
    assert by[("business", "sports")] == "duplicate" and by[("sports", "sports")] == "kept"  # the anchor stays
    assert by[("sports", "\u2603\u2603")] == "tokenizer"
    assert [c.word for c in cands if c.cls == 0 and c.status == "kept"] == ["sports", "game", "team"]
    assert by[("sports", "win")] == "cap"
    assert sum(1 for c in cands if c.word == "game" and c.cls == 0) == 1  # in-class repeat dropped silently


def test_file_with_no_usable_word_names_line(tmp_path, bert):
    f = tmp_path / "kb.txt"
    f.write_text("sports\nscience\n\u2603\u2603,\u2603\n politics\n")
    words = read_kb_file(f, NAMES)
    with pytest.raises(UserError, match=r"kb.txt: line 3: no word of class 'business'"):
        check_file_usable(str(f), TOPICS, words, bert.tokenizer)


@pytest.mark.skipif(not Path("/usr/share/wordnet/data.noun").exists(),
                    reason="WordNet 3.0 is not installed at /usr/share/wordnet (scripts/setup.sh: apt-get install wordnet-base)")
def test_wordnet_relations(tmp_path):
    reader = wordnet_reader(cache=tmp_path)
    syn = wordnet_words(reader, ["science"], ["synonyms"], depth=1)
    hypo = wordnet_words(reader, ["science"], ["hyponyms"], depth=1)
    assert "science" in syn and "scientific" not in syn
    assert "linguistics" in hypo and "physics" not in hypo
    deep = wordnet_words(reader, ["science"], ["hyponyms"], depth=2)  # science > natural science > physics
    assert "physics" in deep and set(hypo) <= set(deep)
    deriv = wordnet_words(reader, ["science"], ["derivationally_related_forms"])
    assert "scientific" in deriv or "scientist" in deriv
    assert wordnet_words(reader, ["good"], ["similar_tos"], pos=["a", "s"])


_EXPANSION_SCRIPT = """
import json, sys
from pipeline_steps.kpt.knowledge import kb_words, wordnet_reader, wordnet_words
reader = wordnet_reader(cache=sys.argv[1])
rel = ["synonyms", "hyponyms", "hypernyms", "similar_tos", "also_sees", "derivationally_related_forms"]
names = ["sports", "science", "business", "politics", "good"]
task = {"name": "t", "label_names": names, "label_words": {n: [n] for n in names}}
kb = {"name": "wn", "source": "wordnet", "relations": rel, "depth": 2, "pos": ["n", "a", "s"], "max_senses": 3}
print(json.dumps({"issue": wordnet_words(reader, ["business"], rel[:1] + rel[1:2] + rel[3:], 1, ["n"], 3),
                  "kb": kb_words(kb, task)}))
"""


@pytest.mark.skipif(not Path("/usr/share/wordnet/data.noun").exists(),
                    reason="WordNet 3.0 is not installed at /usr/share/wordnet (scripts/setup.sh: apt-get install wordnet-base)")
def test_wordnet_expansion_is_the_same_in_every_process(tmp_path):
    """nltk returns related synsets from a set (order by PYTHONHASHSEED): the expansion sorts them, so two
    processes with different hash seeds give the same words in the same order (issue #23)."""
    import os
    import subprocess
    import sys

    runs = []
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        res = subprocess.run([sys.executable, "-c", _EXPANSION_SCRIPT, str(tmp_path)], env=env, capture_output=True,
                             text=True, timeout=300, cwd=Path(__file__).resolve().parent.parent)
        assert res.returncode == 0, res.stderr[-2000:]
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    assert runs[0] == runs[1] == runs[2]
    assert len(runs[0]["issue"]) > 40 and all(len(v) > 5 for v in runs[0]["kb"].values())


def test_vader_polarity_order():
    lex = {"great": 3.1, "good": 1.9, "ok": 0.9, "bad": -2.5, "awful": -2.0, ":)": 2.0, "meh": -0.2}
    assert vader_words(lex, 1, 1.0, 0.3) == ["great", "good"]
    assert vader_words(lex, -1, 1.0, 0.3) == ["bad", "awful"]
    assert vader_words(lex, 0, 1.0, 0.3) == ["meh"]
    from pipeline_steps.kpt.knowledge import vader_lexicon

    real = vader_lexicon()
    assert len(real) > 7000 and real["good"] > 0 > real["bad"]


# --- refinements by hand ----------------------------------------------------------------------------

def test_class_scores_mean_log_prob_and_calibration():
    z = torch.tensor([[1.0, 2.0, 0.0, 3.0]])
    owner = torch.tensor([0, 0, 1, 1])
    logp = z - torch.logsumexp(z, -1, keepdim=True)
    out = class_scores(z, owner, 2)
    assert torch.allclose(out, torch.tensor([[logp[0, :2].mean(), logp[0, 2:].mean()]]))
    prior = torch.tensor([0.5, 0.0, -1.0, 3.0])
    p = torch.softmax(z, -1) / torch.softmax(prior, -1)  # p(v|x) / p(v), renormalised
    p = p / p.sum()
    cal = class_scores(z, owner, 2, prior=prior)
    assert torch.allclose(cal, torch.tensor([[p[0, :2].log().mean(), p[0, 2:].log().mean()]]), atol=1e-6)
    w = torch.tensor([0.0, math.log(3.0), 1.0, 1.0])  # alpha = (1/4, 3/4) and (1/2, 1/2)
    got = class_scores(z, owner, 2, weights=w)
    want = [0.25 * logp[0, 0] + 0.75 * logp[0, 1], 0.5 * (logp[0, 2] + logp[0, 3])]
    assert torch.allclose(got, torch.tensor([want]), atol=1e-6)


def test_frequency_cut_vocabulary_and_among_words():
    vocab = torch.arange(10.0)  # lowest half: values 0..4, cut at the value 5
    prior = torch.tensor([4.0, 5.0, 9.0, 1.0])
    drop, thr = frequency_drop(prior, 0.5, vocab)
    assert thr == 5.0 and drop.tolist() == [True, False, False, True]
    drop, _ = frequency_drop(prior, 0.5, vocab, protect=torch.tensor([False, False, False, True]))
    assert drop.tolist() == [True, False, False, False]
    drop, thr = frequency_drop(prior, 0.5)  # among the words: sorted 1, 4, 5, 9 -> cut at 5
    assert thr == 5.0 and drop.tolist() == [True, False, False, True]
    assert not frequency_drop(prior, 0.0, vocab)[0].any()


def test_relevance_tf_idf_and_cut_rate_by_hand():
    torch.manual_seed(0)
    N, C = 6, 3
    base = torch.randn(C, N)
    # class c's words: its anchor, then mixtures; word 4 opposes its anchor (tf < 0)
    words = [base[0], 0.9 * base[0] + 0.3 * base[1], base[1], 0.5 * base[1] + 0.5 * base[2], -base[1], base[2],
             0.8 * base[2] + 0.6 * base[0]]
    owner = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    anchors = torch.tensor([0, 2, 5])
    Z = torch.stack(words, 1)  # [N, W]
    out = relevance(Z, owner, anchors, torch.ones(7, dtype=torch.bool), C)
    q = Z.T - Z.T.mean(1, keepdim=True)
    cos = lambda a, b: float(a @ b / (a.norm() * b.norm()))  # noqa: E731
    p = 10 / (C - 2 + 0.01) + 1
    for v in range(7):
        c = int(owner[v])
        tf = cos(q[v], q[anchors[c]])
        others = [abs(cos(q[v], q[anchors[o]])) for o in range(C) if o != c]
        idf = 1 / (sum(x ** p for x in others) / len(others)) ** (1 / p)
        assert out["tf"][v] == pytest.approx(tf, rel=1e-4) and out["idf"][v] == pytest.approx(idf, rel=1e-3)
    assert out["tf"][4] < 0 and not out["keep"][4]
    assert out["keep"][anchors].all()
    # the rate: over r in {0, 1/2} (longest kept list: 2 words), boundary scores nearest 1
    score = out["score"]
    ranked = [sorted([v for v in range(7) if owner[v] == c and out["tf"][v] >= 0], key=lambda v: -float(score[v]))
              for c in range(C)]
    losses = {r: sum((float(score[lst[min(int(r * len(lst)), len(lst) - 1)]]) - 1) ** 2 for lst in ranked)
              for r in (0.0, 0.5)}
    assert out["rate"] == min(losses, key=lambda r: (losses[r], r))


def test_relevance_two_classes_has_finite_idf():
    Z = torch.tensor([[1.0, 0.9, -1.0], [2.0, 2.2, -2.0], [0.0, 0.1, 0.5]])
    out = relevance(Z, torch.tensor([0, 0, 1]), torch.tensor([0, 2]), torch.ones(3, dtype=torch.bool), 2)
    assert torch.isfinite(out["idf"]).all()


# --- verbalizer paths --------------------------------------------------------------------------------

def test_mlm_word_logits_multi_token_mean_and_first(bert):
    tok = bert.tokenizer
    words = ["sports", "unbelievableness"]
    ids = [tok(" " + w, add_special_tokens=False)["input_ids"] for w in words]
    assert len(ids[1]) > 1
    flat = ids[0] + ids[1]
    tw = torch.zeros(2, len(flat))
    tw[0, 0] = 1.0
    tw[1, len(ids[0]):] = 1.0 / len(ids[1])
    weights = torch.eye(2)
    mean = MLMVerbalizer([i[0] for i in ids], weights, flat, tw)
    first = MLMVerbalizer([i[0] for i in ids], weights)
    vocab = torch.randn(3, len(tok))
    assert torch.allclose(mean.words_from_vocab(vocab)[:, 1], vocab[:, ids[1]].mean(1))
    assert torch.allclose(first.words_from_vocab(vocab)[:, 1], vocab[:, ids[1][0]])
    assert torch.allclose(first.from_vocab_logits(vocab), first.words_from_vocab(vocab) @ weights.T)


def test_embedding_word_logits_are_scaled_cosines(bert):
    bb, tok = bert.backbone, bert.tokenizer
    vecs = EmbeddingVerbalizer.encode_words(bb, tok, ["good", "bad", "great"])
    verb = EmbeddingVerbalizer([0, 1, 2], torch.eye(3), vecs, pooling="mean", scale=20.0, word_vectors=vecs)
    enc = tok(["a fine day", "a bad day"], padding=True, return_tensors="pt")
    with torch.no_grad():
        z = verb.word_logits(bb, bb.embed(enc["input_ids"]), enc["attention_mask"], torch.zeros(2, dtype=torch.long))
        hidden = bb.encode(bb.embed(enc["input_ids"]), enc["attention_mask"])
    m = enc["attention_mask"].unsqueeze(-1).float()
    rep = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)
    assert torch.allclose(z, 20 * rep @ vecs.T, atol=1e-5)
    assert torch.allclose(vecs.norm(dim=1), torch.ones(3), atol=1e-5)


def test_knowledgeable_verbalizer_columns_prior_and_weights():
    base = MLMVerbalizer([5, 6, 7, 8], torch.ones(2, 4) / 4)
    kv = KnowledgeableVerbalizer(base, [0, 2, 3], [0, 1, 1], 2, prior=torch.tensor([0.0, 1.0, -1.0]), learnable=True)
    z_all = torch.tensor([[1.0, 9.0, 2.0, 3.0]])
    assert torch.allclose(kv.scores(z_all), class_scores(z_all[:, [0, 2, 3]], torch.tensor([0, 1, 1]), 2,
                                                         prior=torch.tensor([0.0, 1.0, -1.0])))
    assert kv.word_weights.requires_grad and torch.allclose(kv.alpha(), torch.tensor([1.0, 0.5, 0.5]))


def test_lr_scales_make_their_own_parameter_group():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Parameter(torch.zeros(2))
            self.b = torch.nn.Parameter(torch.zeros(2))
            self.verbalizer = type("V", (), {"num_classes": 2})()

        def forward(self, ids, mask, pos, prompt=None):
            return torch.stack([self.a.sum() + 0 * ids[:, 0], self.b.sum() + 0 * ids[:, 0]], 1)

    data = TokenizedSplit([np.array([1, 2])] * 4, np.zeros(4, dtype=np.int64), np.array([0, 0, 0, 1]), 0)
    cfg = PromptTuningConfig(lr=0.1, steps=1, batch_size=4, eval_every=1)
    m = M()
    train_module(m, data, data, cfg, seed=0, metric="accuracy", device="cpu", lr_scales={"b": 10.0})
    # Adam's first step moves each parameter by about its lr
    assert float(m.a.detach().abs().max()) == pytest.approx(0.1, rel=1e-3)
    assert float(m.b.detach().abs().max()) == pytest.approx(1.0, rel=1e-3)


def test_variants_and_switches():
    assert switches("kpt", 0)["learnable"] is False and switches("kpt", 4)["relevance"] is False
    assert switches("kpt", 4, relevance_few_shot=True)["relevance"] is True
    assert "kpt-no-learnable" not in variants_for(list(VARIANTS), 0)
    assert "kpt-no-relevance" not in variants_for(list(VARIANTS), 4)
    assert "kpt-no-relevance" in variants_for(list(VARIANTS), 4, relevance_few_shot=True)


# --- runs on the tiny models ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def topics_tokens(tmp_path_factory, bert):
    df = generate("topics", 160, seed=3)
    df = df.rename(columns={"text": "text_a"}).assign(text_b="")
    df["label"] = df["label"].map({n: i for i, n in enumerate(NAMES)})
    df["idx"] = range(len(df))
    df["split"] = ["train"] * 100 + ["dev"] * 20 + ["test"] * 40
    path = tmp_path_factory.mktemp("kpt-data") / "tokens.parquet"
    write_parquet(tokenize_frame(df, bert.tokenizer, TOPICS["template"], 40), path)
    return path


def run_kpt(tiny_spec, tokens, out: Path, *, kb: dict, shots=0, mode="prompt", kind="bert", settings=None,
            variants=None, ckpt=True, **spec):
    from pipeline_steps.kpt.steps import run

    return run(model_spec=tiny_spec(kind, **spec), task_spec=TOPICS, kb=kb,
               settings={"support_size": 24, "candidate_frac": 0.5, "max_words": 8, **(settings or {})},
               prompt_tuning={"prompt_length": 2, "steps": 4, "eval_every": 2, "batch_size": 4, "max_length": 40},
               seed=1, shots=shots, mode=mode, variants=variants or list(VARIANTS), tokenized=str(tokens),
               words=str(out / "words.parquet"), scores=str(out / "scores.parquet"), meta=str(out / "meta.json"),
               checkpoint_dir=str(out / "ckpt") if ckpt else None)


@pytest.fixture(scope="module")
def kb_file(tmp_path_factory):
    f = tmp_path_factory.mktemp("kb") / "knowledgeable_verbalizer.txt"
    f.write_text("sports,football,tennis,game,team,match,player\nscience,physics,biology,lab,research,theory\n"
                 "business,money,market,bank,trade,profit\npolitics,government,election,vote,law,minister\n")
    return f


def test_zero_shot_all_variants_mlm(tiny_spec, topics_tokens, kb_file, tmp_path):
    kb = {"name": "paper", "source": "file", "path": str(kb_file)}
    meta = run_kpt(tiny_spec, topics_tokens, tmp_path, kb=kb)
    scores = pd.read_parquet(tmp_path / "scores.parquet").set_index("variant")
    assert list(scores.index) == variants_for(list(VARIANTS), 0) and meta["verbalizer"] == "mlm"
    assert scores["score"].between(0, 1).all() and (scores["n_test"] == 40).all()
    assert list(scores.loc["manual", "words_by_class"]) == [1, 1, 1, 1]
    words = pd.read_parquet(tmp_path / "words.parquet")
    kpt = words[words.variant == "kpt"]
    nofreq = words[words.variant == "kpt-no-frequency"]
    norel = words[words.variant == "kpt-no-relevance"]
    # the switches really switch: frequency and relevance each drop words the other keeps
    assert (kpt["dropped_by"] == "frequency").any() and not (nofreq["dropped_by"] == "frequency").any()
    assert not (norel["dropped_by"] == "relevance").any()
    assert kpt["kept"].sum() < norel["kept"].sum()  # relevance refinement removed words
    assert kpt[kpt.source == "anchor"]["kept"].all()
    assert kpt["tf"].notna().any() and norel["tf"].isna().all()
    # calibration changes the scores it is given (same words, calibrated or not)
    nocal = scores.loc["kpt-no-calibration"]
    assert list(nocal["words_by_class"]) == list(scores.loc["kpt", "words_by_class"])
    assert set(words.columns) >= {"class", "word", "token_ids", "kept", "dropped_by", "prior", "tf", "idf", "weight"}


def test_zero_shot_calibration_matches_hand_computation(tiny_spec, topics_tokens, kb_file, tmp_path):
    """manual vs manual+calibration, recomputed from the tiny model's MLM logits by hand."""
    from pipeline_steps.kpt.steps import load_splits, pad_id, sample_support

    kb = {"name": "paper", "source": "file", "path": str(kb_file)}
    run_kpt(tiny_spec, topics_tokens, tmp_path, kb=kb, variants=["manual", "manual+calibration"])
    got = pd.read_parquet(tmp_path / "scores.parquet").set_index("variant")["score"]
    b = load_bundle(tiny_spec("bert"))
    data = load_splits(str(topics_tokens), pad_id(b.tokenizer))
    ids = [b.tokenizer(" " + n, add_special_tokens=False)["input_ids"][0] for n in NAMES]

    def logits(split):
        out = []
        for batch in split.batches(64, "cpu"):
            with torch.no_grad():
                h = b.backbone.encode(b.backbone.embed(batch["input_ids"]), batch["attention_mask"])
                out.append(b.backbone.mlm_logits(h[torch.arange(len(h)), batch["mask_pos"]])[:, ids])
        return torch.cat(out)

    zt, zs = logits(data["test"]), logits(sample_support(data["train"], 24, 1))
    acc = lambda z: float((z.argmax(1).numpy() == data["test"].labels).mean())  # noqa: E731
    assert got["manual"] == pytest.approx(acc(zt))
    assert got["manual+calibration"] == pytest.approx(acc(zt - zs.mean(0)))


def test_zero_shot_embedding_path_with_neighbour_kb(tiny_spec, topics_tokens, tmp_path):
    kb = {"name": "neighbours", "source": "embedding", "k": 4}
    meta = run_kpt(tiny_spec, topics_tokens, tmp_path, kb=kb, verbalizer="embedding", pooling="mean",
                   variants=["manual", "kpt", "kpt-no-frequency"])
    assert meta["verbalizer"] == "embedding"
    words = pd.read_parquet(tmp_path / "words.parquet")
    assert (words[words.variant == "kpt"].source == "kb").any()
    scores = pd.read_parquet(tmp_path / "scores.parquet").set_index("variant")
    assert scores.loc["kpt-no-frequency", "words_per_class"] >= scores.loc["kpt", "words_per_class"]


def test_few_shot_prompt_mode_learns_word_weights_and_resumes(tiny_spec, topics_tokens, kb_file, tmp_path):
    kb = {"name": "paper", "source": "file", "path": str(kb_file)}
    variants = ["manual", "kpt", "kpt-no-learnable"]
    run_kpt(tiny_spec, topics_tokens, tmp_path, kb=kb, shots=2, variants=variants)
    scores = pd.read_parquet(tmp_path / "scores.parquet").set_index("variant")
    assert list(scores.index) == variants and (scores["best_step"] > 0).all()
    words = pd.read_parquet(tmp_path / "words.parquet")
    kept = words[words.kept]
    learned = kept[kept.variant == "kpt"].groupby("class")["weight"]
    assert learned.sum().round(5).eq(1.0).all()  # alpha sums to 1 per class
    assert kept[kept.variant == "kpt"]["weight"].std() > 0  # trained away from the uniform start
    fixed = kept[kept.variant == "kpt-no-learnable"]
    assert np.allclose(fixed.groupby("class")["weight"].transform(lambda w: 1 / len(w)), fixed["weight"])
    assert not list((tmp_path / "ckpt").glob("*"))  # finished: no checkpoint left
    # a finished variant is taken from its record on resume (the record is the only source here)
    first = scores.loc["manual", "score"]

    meta = read_json(tmp_path / "meta.json")
    row = scores.reset_index().iloc[0].to_dict()
    row["score"] = 0.123
    row["words_by_class"] = list(row["words_by_class"])
    (tmp_path / "ckpt").mkdir(exist_ok=True)
    (tmp_path / "ckpt" / "manual.done.json").write_text(json.dumps(
        {"config_hash": meta["config_hash"], "score": row, "words": []}, default=float))
    run_kpt(tiny_spec, topics_tokens, tmp_path, kb=kb, shots=2, variants=variants)
    again = pd.read_parquet(tmp_path / "scores.parquet").set_index("variant")
    assert again.loc["manual", "score"] == 0.123 and first != 0.123
    assert again.loc["kpt", "score"] == scores.loc["kpt", "score"]  # deterministic


def test_few_shot_model_mode_tunes_the_plm_and_restores_it(tiny_spec, topics_tokens, kb_file, tmp_path):
    kb = {"name": "paper", "source": "file", "path": str(kb_file)}
    meta = run_kpt(tiny_spec, topics_tokens, tmp_path, kb=kb, shots=2, mode="model", kind="roberta",
                   variants=["manual", "kpt"], settings={"model_epochs": 2, "model_lr": 1e-3})
    scores = pd.read_parquet(tmp_path / "scores.parquet")
    assert meta["mode"] == "model" and list(scores["variant"]) == ["manual", "kpt"]
    assert scores["best_step"].isin([1, 2]).all()  # 8 examples / batch 8 = 1 step per epoch, 2 epochs


def test_bad_kb_fails_before_the_model_loads(tiny_spec, topics_tokens, tmp_path, monkeypatch):
    from pipeline_steps.kpt import steps

    monkeypatch.setattr(steps, "load_bundle", lambda spec: pytest.fail("the model was loaded"))
    with pytest.raises(UserError, match=r"nope.txt: knowledge-base file not found"):
        run_kpt(tiny_spec, topics_tokens, tmp_path, kb={"name": "x", "source": "file", "path": str(tmp_path / "nope.txt")})
    bad = tmp_path / "kb.txt"
    bad.write_text("sports\nscience\nbusiness\n")
    with pytest.raises(UserError, match=r"kb.txt: 3 lines of words"):
        run_kpt(tiny_spec, topics_tokens, tmp_path, kb={"name": "x", "source": "file", "path": str(bad)})
    assert not (tmp_path / "scores.parquet").exists()


def test_multi_token_words_mean_or_first_in_a_run(tiny_spec, topics_tokens, tmp_path):
    """A multi-token knowledge-base word is scored by its sub-tokens' mean (default) or its first sub-token."""
    f = tmp_path / "kb.txt"
    f.write_text("sports,unbelievableness\nscience,photosynthesis\nbusiness,entrepreneurship\npolitics,parliamentarian\n")
    kb = {"name": "long", "source": "file", "path": str(f)}
    priors = {}
    for how in ("mean", "first"):
        out = tmp_path / how
        run_kpt(tiny_spec, topics_tokens, out, kb=kb, variants=["kpt-no-frequency"],
                settings={"multi_token": how, "candidate_frac": 0.0})
        words = pd.read_parquet(out / "words.parquet").set_index("word")
        assert len(words.loc["unbelievableness", "token_ids"]) > 1
        priors[how] = words["prior"]
    multi = [w for w in priors["mean"].index if w not in NAMES]
    assert not np.allclose(priors["mean"][multi], priors["first"][multi])
    assert np.allclose(priors["mean"][NAMES], priors["first"][NAMES])  # single-token anchors: the same


def test_planning_grid_settings_and_per_task_params(repo_config):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "workflow"))
    from planning.kpt import kb_spec, kpt_grid, kpt_settings, parse_setting, run_paths, setting_name

    assert parse_setting("zero-shot") == (0, "none") and parse_setting("16shot-model") == (16, "model")
    assert setting_name(4, "prompt") == "4shot-prompt" and setting_name(0, "prompt") == "zero-shot"
    jobs = kpt_grid(repo_config)
    assert {(j["task"], j["kb"], j["setting"]) for j in jobs} == {
        ("topics", "wordnet", "zero-shot"), ("topics", "wordnet", "8shot-prompt"),
        ("movies", "vader", "zero-shot"), ("movies", "vader", "8shot-prompt")}
    assert run_paths(jobs[0])["scores"] == "results/kpt/minilm-l6/topics/wordnet/seed1/zero-shot/scores.parquet"
    assert kpt_settings(repo_config, "movies")["candidate_frac"] == 0.0
    assert kpt_settings(repo_config, "topics")["candidate_frac"] == 0.5
    assert kb_spec(repo_config, "vader")["name"] == "vader"


def test_kpt_prompt_tuning_takes_the_shared_keys(repo_config):
    """kpt.prompt_tuning accepts every prompt_tuning key (max_length was refused, issue #23): max_length gives
    KPT its own tokenization, batch_size replaces kpt.settings.batch_size in prompt mode."""
    import copy
    import sys

    from pipeline_steps.config import load_config, load_schema

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "workflow"))
    from planning.kpt import kpt_prompt_settings, kpt_tokens

    kpt_block = load_schema()["properties"]["kpt"]["properties"]["prompt_tuning"]
    assert kpt_block["$ref"] == "#/$defs/prompt_tuning" and "properties" not in kpt_block  # the one block, no key refused
    tokens = "results/data/{task}/tokens-{model}.parquet"
    assert kpt_tokens(repo_config, "movies", "m", tokens) == "results/data/movies/tokens-m.parquet"
    assert "batch_size" not in kpt_prompt_settings(repo_config, "movies")  # the step uses kpt.settings.batch_size
    cfg = copy.deepcopy(repo_config)
    cfg["kpt"]["prompt_tuning"].update(max_length=96, batch_size=4, eval_schedule="log")
    cfg = load_config(cfg)
    merged = kpt_prompt_settings(cfg, "movies")
    assert merged["max_length"] == 96 and merged["batch_size"] == 4 and merged["eval_schedule"] == "log"
    assert kpt_tokens(cfg, "movies", "m", tokens) == "results/kpt/tokens/movies/tokens-m-len96.parquet"


def test_prompt_mode_checks_lengths_before_the_weights_load(tiny_spec, topics_tokens, kb_file, tmp_path):
    from pipeline_steps.kpt.steps import run

    with pytest.raises(UserError, match=r"prompt_length 2 \+ max_length 5000 exceeds the model's"):
        run(model_spec=tiny_spec("bert"), task_spec=TOPICS, kb={"name": "paper", "source": "file", "path": str(kb_file)},
            settings={"support_size": 24}, prompt_tuning={"prompt_length": 2, "steps": 2, "max_length": 5000}, seed=1,
            shots=2, mode="prompt", variants=["kpt"], tokenized=str(topics_tokens), words=str(tmp_path / "w.parquet"),
            scores=str(tmp_path / "s.parquet"), meta=str(tmp_path / "m.json"))


# --- the blocklist --------------------------------------------------------------------------------

def test_blocklist_file_entries_prefixes_phrases_and_bad_lines(tmp_path):
    from pipeline_steps.kpt.knowledge import BLOCKLIST, apply_blocklist, read_blocklist

    f = tmp_path / "block.txt"
    f.write_text("# mine\nMurder*   # prefix\nkill\n\n")
    b = read_blocklist(f)
    assert b.blocks("murderous") and b.blocks("Kill") and b.blocks("kill off") and b.blocks("self-kill")
    assert not b.blocks("skill") and not b.blocks("killjoy") and not b.blocks("market")
    words, dropped = apply_blocklist({"a": ["kill", "game", "murderer", "team"], "b": ["vote"]}, b)
    assert words == {"a": ["game", "team"], "b": ["vote"]} and dropped == {"a": 2, "b": 0}
    assert apply_blocklist({"a": ["kill"]}, None) == ({"a": ["kill"]}, {"a": 0})
    f.write_text("kill\nno/slash\n")
    with pytest.raises(UserError, match=r"block.txt: line 2: 'no/slash' is not a word"):
        read_blocklist(f)
    shipped = read_blocklist(BLOCKLIST)
    assert "Provenance: hand-written" in BLOCKLIST.read_text() and 30 <= len(shipped.words) + len(shipped.prefixes) <= 100
    from pipeline_steps.kpt.knowledge import vader_lexicon, vader_words

    strongest = vader_words(vader_lexicon(), -1, 1.5, 0.3)[:60]  # what the demo's movies KB draws from
    assert {"rapist", "murder", "faggot", "nigger", "motherfucker"} <= set(strongest)
    kept, _ = apply_blocklist({"negative": strongest}, shipped)
    assert not {"rapist", "murder", "faggot", "nigger", "motherfucker", "terrorize"} & set(kept["negative"])


def test_blocked_kb_words_are_dropped_by_default_and_kept_when_off(tiny_spec, topics_tokens, tmp_path):
    f = tmp_path / "kb.txt"
    f.write_text("sports,football,killer,game\nscience,physics,lab\nbusiness,money,whore,market\npolitics,vote,law\n")
    kb = {"name": "paper", "source": "file", "path": str(f)}
    meta = run_kpt(tiny_spec, topics_tokens, tmp_path / "on", kb=kb, variants=["kpt", "kpt-no-relevance"])
    words = pd.read_parquet(tmp_path / "on" / "words.parquet")
    assert not {"killer", "whore"} & set(words["word"]) and {"football", "money"} <= set(words["word"])
    assert meta["kb_words_blocked"] == {"sports": 1, "science": 0, "business": 1, "politics": 0}
    assert meta["blocklist"]["sha256"] and read_json(tmp_path / "on" / "meta.json")["kb_words_blocked"]["sports"] == 1
    assert (pd.read_parquet(tmp_path / "on" / "scores.parquet")["kb_words_blocked"] == 2).all()

    meta = run_kpt(tiny_spec, topics_tokens, tmp_path / "off", kb=dict(kb, blocklist=False), variants=["kpt"])
    words = pd.read_parquet(tmp_path / "off" / "words.parquet")
    assert {"killer", "whore"} <= set(words["word"]) and meta["blocklist"] is None
    assert sum(meta["kb_words_blocked"].values()) == 0


# --- progress lines ---------------------------------------------------------------------------------

def test_progress_lines_are_time_based(caplog):
    import logging

    from pipeline_steps.logsetup import Progress

    log = logging.getLogger("progress-test")
    with caplog.at_level(logging.INFO, logger="progress-test"):
        quiet = Progress(log, "long loop", total=10, unit="steps", every=30)
        for i in range(1, 11):
            quiet.update(i)
        assert not caplog.records  # a loop shorter than the interval says nothing
        chatty = Progress(log, "long loop", total=10, unit="steps", every=0)
        chatty.update(1)
        chatty.update(4, "loss 0.5")
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["long loop: 1/10 steps", "long loop: 4/10 steps"]
    assert "s left (loss 0.5)" in caplog.records[-1].getMessage()


def test_zero_shot_scoring_logs_progress(tiny_spec, topics_tokens, kb_file, tmp_path, monkeypatch, caplog):
    import logging

    monkeypatch.setenv("PTW_PROGRESS_SECONDS", "0")
    with caplog.at_level(logging.INFO):
        run_kpt(tiny_spec, topics_tokens, tmp_path, kb={"name": "paper", "source": "file", "path": str(kb_file)},
                variants=["kpt"])
    lines = [r.getMessage() for r in caplog.records]
    assert any("kpt tiny-bert/topics/paper/seed1: support set: " in m and "/24 examples" in m for m in lines), lines
    assert any("test split, every candidate word: " in m and "/40 examples" in m for m in lines), lines
