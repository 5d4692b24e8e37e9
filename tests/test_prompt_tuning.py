import numpy as np
import pandas as pd
import pytest
import torch

from pipeline_steps.data.tokenize import tokenize_frame
from pipeline_steps.errors import UserError
from pipeline_steps.runtime import load_bundle
from pipeline_steps.training import (Checkpoint, TokenizedSplit, TrainState, score, train_module,
                                     train_prompt)
from pipeline_steps.prompt_tuning.config import PromptTuningConfig
from pipeline_steps.prompt_tuning.model import PromptModel, init_prompt
from pipeline_steps.verbalizers import EmbeddingVerbalizer, MLMVerbalizer, label_word_ids

WORDS = {"negative": ["bad", "terrible"], "positive": ["good", "great"]}
NAMES = ["negative", "positive"]
TASK = {"name": "toy", "label_words": WORDS, "label_names": NAMES, "metric": "accuracy"}


def toy_split(tok, n=32, template="{text_a} It was {mask}.", split="train"):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, n)
    texts = [("the movie was great fun" if y else "the plot was awful and dull") + f" {i}" for i, y in enumerate(labels)]
    df = pd.DataFrame({"idx": range(n), "text_a": texts, "text_b": "", "label": labels, "split": split})
    return TokenizedSplit.from_frame(tokenize_frame(df, tok, template, 32), split, tok.pad_token_id)


@pytest.fixture(scope="module")
def bert(tiny_spec):
    return load_bundle(tiny_spec("bert"))


def make_model(bundle, length=4, seed=0):
    verb = bundle.verbalizer(TASK)
    p = init_prompt(bundle.backbone, length, "vocab", torch.Generator().manual_seed(seed), bundle.tokenizer.all_special_ids)
    return PromptModel(bundle.backbone, verb, p)


def test_label_word_matrix(bert):
    ids, w = label_word_ids(bert.tokenizer, WORDS, NAMES)
    assert len(ids) == 4 and w.shape == (2, 4)
    assert torch.allclose(w.sum(1), torch.ones(2)) and w[0, 2] == 0


def test_label_word_that_tokenises_to_nothing(bert):
    with pytest.raises(UserError, match="tokenises to nothing"):
        label_word_ids(bert.tokenizer, {"negative": ["\u2603\u2603"], "positive": ["good"]}, NAMES)


def test_mlm_verbalizer_equals_full_mlm_logits_at_mask(bert):
    model = make_model(bert)
    assert isinstance(model.verbalizer, MLMVerbalizer)
    b = toy_split(bert.tokenizer, 6).batch(np.arange(6), "cpu")
    with torch.no_grad():
        ours = model(b["input_ids"], b["attention_mask"], b["mask_pos"])
        emb = torch.cat([model.prompt.unsqueeze(0).expand(6, -1, -1), bert.backbone.embed(b["input_ids"])], 1)
        mask = torch.cat([torch.ones(6, 4, dtype=torch.long), b["attention_mask"]], 1)
        full = bert.backbone.hf(inputs_embeds=emb, attention_mask=mask).logits  # logits everywhere
        at = full[torch.arange(6), b["mask_pos"] + 4][:, model.verbalizer.word_ids]
        manual = torch.stack([at[:, :2].mean(1), at[:, 2:].mean(1)], 1)
    assert ours.shape == (6, 2)
    torch.testing.assert_close(ours, manual, rtol=1e-5, atol=1e-5)


def test_embedding_verbalizer_scores_are_scaled_cosines():
    bundle = load_bundle({"name": "l6", "source": "embedded:minilm-l6", "verbalizer": "auto", "pooling": "mask",
                          "embedding_scale": 20.0})
    verb = bundle.verbalizer(TASK)
    assert isinstance(verb, EmbeddingVerbalizer) and bundle.verbalizer_kind == "embedding"
    model = PromptModel(bundle.backbone, verb, torch.zeros(3, 384))
    b = toy_split(bundle.tokenizer, 4).batch(np.arange(4), "cpu")
    with torch.no_grad():
        scores = model(b["input_ids"], b["attention_mask"], b["mask_pos"])
    assert scores.shape == (4, 2) and scores.abs().max() <= 20.0 + 1e-4
    assert torch.allclose(verb.class_vectors.norm(dim=-1), torch.ones(2))


def test_t5_first_step_verbalizer(tiny_spec):
    bundle = load_bundle(tiny_spec("t5"))
    model = make_model(bundle)
    data = toy_split(bundle.tokenizer, 4)
    b = data.batch(np.arange(4), "cpu")
    with torch.no_grad():
        out = model(b["input_ids"], b["attention_mask"], b["mask_pos"])
    assert out.shape == (4, 2) and torch.isfinite(out).all()


def test_only_the_prompt_trains(bert):
    model = make_model(bert)
    before = {k: v.clone() for k, v in bert.backbone.state_dict().items()}
    data = toy_split(bert.tokenizer, 32)
    cfg = PromptTuningConfig(prompt_length=4, steps=6, batch_size=8, eval_every=3, lr=0.1)
    p0 = model.prompt.detach().clone()
    best, state = train_prompt(model, data, data, cfg, seed=0, metric="accuracy", device="cpu")
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prompt"]
    assert all(torch.equal(before[k], v) for k, v in bert.backbone.state_dict().items())
    assert not torch.equal(model.prompt.detach(), p0)
    assert [r["step"] for r in state.curve] == [3, 6] and best.shape == (4, 32)


def test_training_learns_on_real_encoder():
    """Prompt tuning through the frozen MiniLM with the embedding verbalizer beats chance."""
    bundle = load_bundle({"name": "l6", "source": "embedded:minilm-l6", "verbalizer": "auto", "pooling": "mask",
                          "embedding_scale": 20.0})
    torch.set_num_threads(2)
    model = PromptModel(bundle.backbone, bundle.verbalizer(TASK),
                        init_prompt(bundle.backbone, 4, "vocab", torch.Generator().manual_seed(0)))
    data = toy_split(bundle.tokenizer, 48)
    cfg = PromptTuningConfig(prompt_length=4, steps=30, batch_size=16, eval_every=10, lr=0.05)
    _, state = train_prompt(model, data, data, cfg, seed=0, metric="accuracy", device="cpu")
    assert state.best_score >= 0.9
    assert state.curve[-1]["loss"] < state.curve[0]["loss"]


def test_determinism_and_resume(bert, tmp_path):
    cfg = PromptTuningConfig(prompt_length=4, steps=12, batch_size=8, eval_every=4, checkpoint_every=4, lr=0.1)
    data = toy_split(bert.tokenizer, 40)

    def run(checkpoint=None, stop_at=None):
        model = make_model(bert, seed=5)

        def hook(state):
            if stop_at and state.step == stop_at:
                raise KeyboardInterrupt  # stands in for a kill after the checkpoint of that step
        return train_prompt(model, data, data, cfg, seed=5, metric="accuracy", device="cpu",
                            checkpoint=checkpoint, tag="t", on_eval=hook), model

    (best_a, state_a), model_a = run()
    (best_b, _), model_b = run()
    assert torch.equal(best_a, best_b) and torch.equal(model_a.prompt, model_b.prompt)

    ck = Checkpoint(tmp_path / "ck.safetensors")
    with pytest.raises(KeyboardInterrupt):
        run(ck, stop_at=8)
    assert ck.exists()
    (best_c, state_c), model_c = run(ck)
    assert torch.equal(model_c.prompt, model_a.prompt) and torch.equal(best_c, best_a)
    assert [r["dev_score"] for r in state_c.curve] == [r["dev_score"] for r in state_a.curve]


def test_checkpoint_of_other_settings_is_ignored(bert, tmp_path):
    cfg = PromptTuningConfig(prompt_length=4, steps=4, batch_size=8, eval_every=2, checkpoint_every=2, lr=0.1)
    data = toy_split(bert.tokenizer, 16)
    ck = Checkpoint(tmp_path / "ck.safetensors")
    old = make_model(bert)
    ck.save({"prompt": old.prompt}, {"prompt": torch.zeros(4, 32)}, torch.optim.AdamW([old.prompt]),
            TrainState(step=3), tag="old")
    _, state = train_prompt(make_model(bert), data, data, cfg, seed=0, metric="accuracy", device="cpu",
                            checkpoint=ck, tag="new")
    assert state.step == 4 and len(state.curve) == 2


def test_nan_loss_names_the_run(bert):
    model = make_model(bert)
    with torch.no_grad():
        model.prompt.fill_(float("nan"))
    data = toy_split(bert.tokenizer, 16)
    cfg = PromptTuningConfig(prompt_length=4, steps=3, batch_size=8, eval_every=3)
    with pytest.raises(UserError, match=r"toy-run: loss is nan at step 1"):
        train_prompt(model, data, data, cfg, seed=0, metric="accuracy", device="cpu", describe="toy-run")


def test_metrics():
    preds, labels = np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2])
    assert score(preds, labels, "accuracy", 3) == 0.75
    assert score(preds, labels, "macro_f1", 3) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_train_step_writes_artifacts_and_supports_init_from(tiny_spec, tmp_path):
    from pipeline_steps.prompt_tuning import steps as source_prompts
    from pipeline_steps.io import load_tensors, read_json, read_parquet, write_parquet

    bundle = load_bundle(tiny_spec("bert"))
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 40)
    df = pd.DataFrame({"idx": range(40), "text_a": [["awful film", "great film"][y] for y in labels], "text_b": "",
                       "label": labels, "split": ["train"] * 24 + ["dev"] * 8 + ["test"] * 8})
    tok_path = tmp_path / "tok.parquet"
    write_parquet(tokenize_frame(df, bundle.tokenizer, "{text_a} It was {mask}.", 32), tok_path)
    settings = PromptTuningConfig(prompt_length=4, steps=4, batch_size=8, eval_every=2).to_dict()
    out = {k: str(tmp_path / "a" / f) for k, f in [("prompt", "p.safetensors"), ("curve", "c.parquet"), ("meta", "m.json")]}
    meta = source_prompts.train(model_spec=tiny_spec("bert"), task_spec=TASK, settings=settings, seed=3,
                                tokenized=str(tok_path), **out)
    tensors, tmeta = load_tensors(out["prompt"])
    assert tensors["prompt"].shape == (4, 32) and tmeta["seed"] == 3 and tmeta["verbalizer"] == "mlm"
    assert read_json(out["meta"])["config_hash"] == meta["config_hash"] and len(read_parquet(out["curve"])) == 2
    out2 = {k: v.replace("/a/", "/b/") for k, v in out.items()}
    meta2 = source_prompts.train(model_spec=tiny_spec("bert"), task_spec=TASK, settings={**settings, "steps": 2,
                                 "eval_every": 2}, seed=3, tokenized=str(tok_path), init_from=out["prompt"], **out2)
    assert meta2["init"] == out["prompt"] and meta2["config_hash"] != meta["config_hash"]
    with pytest.raises(UserError, match="expected"):
        source_prompts.train(model_spec=tiny_spec("bert"), task_spec=TASK, settings={**settings, "prompt_length": 5},
                             seed=3, tokenized=str(tok_path), init_from=out["prompt"], **out2)


def test_train_module_carries_optimizer_state(bert):
    """AdamW moments and step count carry over from one training call into the next."""
    data = toy_split(bert.tokenizer, 32)
    m_half = make_model(bert, seed=2)
    half = PromptTuningConfig(prompt_length=4, steps=4, batch_size=8, eval_every=4, lr=0.1)
    _, _, opt_half = train_module(m_half, data, data, half, seed=1, metric="accuracy", device="cpu")
    assert opt_half["prompt"]["step"] == 4.0
    m2 = make_model(bert, seed=2)
    m2.prompt.data.copy_(m_half.prompt.data)
    _, _, opt_after = train_module(m2, data, data, half, seed=1, metric="accuracy", device="cpu",
                                   optimizer_state=opt_half)
    assert opt_after["prompt"]["step"] == 8.0
    assert opt_after["prompt"]["exp_avg"].shape == (4, 32)
    assert not torch.equal(opt_after["prompt"]["exp_avg_sq"], opt_half["prompt"]["exp_avg_sq"])


def test_train_module_trains_any_trainable_parameters(bert):
    """A generator-style model: trainable parameters other than a prompt are trained, the PLM is not."""
    class Shifted(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.inner.prompt.requires_grad_(False)
            self.verbalizer = inner.verbalizer
            self.shift = torch.nn.Parameter(torch.zeros(32))

        def forward(self, input_ids, attention_mask, mask_pos, prompt=None):
            return self.inner(input_ids, attention_mask, mask_pos, prompt=self.inner.prompt + self.shift)

    model = Shifted(make_model(bert))
    data = toy_split(bert.tokenizer, 16)
    cfg = PromptTuningConfig(prompt_length=4, steps=3, batch_size=8, eval_every=3, lr=0.1)
    best, state, opt = train_module(model, data, data, cfg, seed=0, metric="accuracy", device="cpu")
    assert set(best) == {"shift"} and set(opt) == {"shift"} and best["shift"].abs().sum() > 0


def test_safetensors_artifacts_are_byte_identical(tmp_path):
    from pipeline_steps.io import load_tensors, save_tensors

    meta = {"model": "m", "task": "t", "seed": 1, "settings": {"lr": 0.1, "steps": 3}, "score": 0.5}
    blobs = set()
    for i in range(3):
        save_tensors({"prompt": torch.ones(2, 3), "best": torch.zeros(2)}, tmp_path / f"{i}.safetensors", metadata=meta)
        blobs.add((tmp_path / f"{i}.safetensors").read_bytes())
    assert len(blobs) == 1
    tensors, back = load_tensors(tmp_path / "0.safetensors")
    assert back == meta and set(tensors) == {"prompt", "best"}


def test_initial_prompts_differ_between_tasks(bert):
    from pipeline_steps.prompt_tuning.steps import initial_prompt

    cfg = PromptTuningConfig(prompt_length=4)
    a, _ = initial_prompt(bert, cfg, 1, None, "movies")
    b, _ = initial_prompt(bert, cfg, 1, None, "nli")
    a2, _ = initial_prompt(bert, cfg, 1, None, "movies")
    assert torch.equal(a, a2) and not torch.equal(a, b)


def test_log_eval_schedule_adds_curve_points_keeps_the_prompt_and_resumes_exactly(bert, tmp_path):
    kw = dict(prompt_length=4, steps=12, batch_size=8, eval_every=6, checkpoint_every=3, lr=0.1)
    data = toy_split(bert.tokenizer, 40)

    def run(schedule, checkpoint=None, stop_at=None):
        def hook(state):
            if stop_at and state.step == stop_at:
                raise KeyboardInterrupt
        model = make_model(bert, seed=5)
        return train_prompt(model, data, data, PromptTuningConfig(eval_schedule=schedule, **kw), seed=5,
                            metric="accuracy", device="cpu", checkpoint=checkpoint, tag="t", on_eval=hook), model

    (best_f, state_f), model_f = run("fixed")
    (best_l, state_l), model_l = run("log")
    assert [r["step"] for r in state_f.curve] == [6, 12]
    assert [r["step"] for r in state_l.curve] == [1, 2, 4, 6, 12]
    assert torch.equal(best_f, best_l) and torch.equal(model_f.prompt, model_l.prompt)  # evaluations change nothing
    assert state_l.best_step == state_f.best_step and state_l.best_score == state_f.best_score
    ck = Checkpoint(tmp_path / "ck.safetensors")
    with pytest.raises(KeyboardInterrupt):
        run("log", ck, stop_at=4)  # killed after step 4's evaluation; the checkpoint is the one of step 3
    assert ck.exists()
    (best_r, state_r), model_r = run("log", ck)
    assert torch.equal(model_r.prompt, model_l.prompt) and torch.equal(best_r, best_l)
    assert [(r["step"], r["dev_score"]) for r in state_r.curve] == [(r["step"], r["dev_score"]) for r in state_l.curve]
    with pytest.raises(ValueError, match="eval_schedule"):
        PromptTuningConfig.from_dict({"eval_schedule": "linear"})


def test_checkpoint_of_the_older_two_file_format_is_ignored_and_changes_nothing(bert, tmp_path):
    """A checkpoint written before the one-file format (tensors with only tag and step in their metadata,
    the counters in a JSON beside them) is ignored, and the parameters keep their values."""
    from pipeline_steps.io import save_tensors

    model = make_model(bert)
    before = model.prompt.detach().clone()
    ck = Checkpoint(tmp_path / "ck.safetensors")
    save_tensors({"param.prompt": torch.zeros_like(before), "best.prompt": torch.zeros_like(before)}, ck.path,
                 metadata={"tag": "t", "step": 2})
    opt = torch.optim.AdamW([model.prompt])
    with pytest.raises(RuntimeError, match="older format"):
        ck.load({"prompt": model.prompt}, opt, "t")
    assert torch.equal(model.prompt, before)
