#!/usr/bin/env python
"""Prompt tuning end to end: this project's loop vs PEFT + the transformers Trainer (run by hand).

The same soft prompt (same initial values), model, tokenised data, batch size, learning rate,
number of steps and evaluation cadence, trained by

* ``ours-*``: ``pipeline_steps.training.train_prompt`` (our training step and loop) with its levers
  switched on one at a time (``ours-base`` is the loop as it was before them);
* ``trainer``: PEFT ``PromptTuningConfig`` + ``get_peft_model`` + ``transformers.Trainer`` with
  ``DataCollatorWithPadding`` (its usual collator), random batches;
* ``trainer-gbl``: the same with the Trainer's own answer to padding, ``group_by_length``
  (``train_sampling_strategy="group_by_length"`` in transformers 5).

Both sides keep the best prompt by dev score (the Trainer through a callback) and score it on test.
Dropout is off on both sides (our backbone is frozen in eval mode; the PEFT base model gets p=0), so
they compute the same function. Every (repeat, way) runs in its own process, interleaved
(a, b, c, a, b, c), so that peak memory is per way and load spikes hit every way alike; the table
gives medians over repeats of wall time and CPU time (the process's user+system).

    python scripts/benchmark_pt_vs_trainer.py [--repeats 2] [--threads 1] [--steps 60] [--data FILE]

``--data``: a CSV/Parquet/JSONL file with ``text`` and ``label`` (0/1) columns instead of the
generated review corpus; the length distribution is printed either way.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from pipeline_steps.prompt_tuning.config import PromptTuningConfig  # noqa: E402  (light: no torch)

MODEL = {"name": "minilm-l6", "source": "embedded:minilm-l6", "verbalizer": "embedding", "pooling": "mean",
         "embedding_scale": 20.0, "device": "cpu", "dtype": "float32"}
TASK = {"name": "reviews", "label_words": {"negative": ["bad"], "positive": ["good"]},
        "label_names": ["negative", "positive"], "metric": "accuracy"}
TEMPLATE = "{text_a} It was {mask}."

# way -> (bucket_batches, sorted eval, bf16 autocast, torch.compile)
OURS = {
    "ours-base": (0, False, False, False),
    "ours-sorted-eval": (0, True, False, False),
    "ours-bucket": (4, False, False, False),
    "ours-bf16": (0, False, True, False),
    "ours-fast": (4, True, False, False),
    "ours-fast-bf16": (4, True, True, False),
    "ours-compile": (0, True, False, True),
}
# what a config that sets none of these levers gets: the settings' defaults (sorted evaluation is
# always on in the loop; bf16 only where a model's dtype asks for it, float32 by default)
OURS["ours-default"] = (PromptTuningConfig().bucket_batches, True, False, False)
TRAINER = {"trainer": False, "trainer-gbl": True}
DEFAULT_WAYS = ["ours-default", "ours-base", "ours-sorted-eval", "ours-bucket", "ours-bf16", "ours-fast", "ours-fast-bf16",
                "trainer", "trainer-gbl"]


# --- data ------------------------------------------------------------------------------------------

POS = ["great", "wonderful", "excellent", "loved", "superb", "delightful", "brilliant", "enjoyable"]
NEG = ["awful", "terrible", "boring", "hated", "dreadful", "disappointing", "weak", "tedious"]
THINGS = ["the plot", "the acting", "the soundtrack", "the ending", "the camera work", "the dialogue",
          "the pacing", "the cast", "the script", "the first half"]
FILLER = ["I watched it on a rainy Sunday with two friends", "the cinema was almost empty that evening",
          "it runs for a little over two hours", "my sister had recommended it for weeks",
          "the trailer gave away less than I feared", "we bought popcorn and sat in the back row",
          "it is based on a novel I have not read", "the director's previous film was a comedy",
          "there is a short scene after the credits", "I saw the subtitled version"]


def review_corpus(n: int, seed: int):
    """Movie reviews of varied length (1 to ~20 sentences, long-tailed like real reviews); the label
    is the majority sentiment of the opinion sentences, with some opinions against it."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = int(rng.integers(0, 2))
        sentences = max(1, min(24, int(rng.lognormal(1.2, 0.75))))
        parts = []
        for _ in range(sentences):
            if rng.random() < 0.45:
                parts.append(str(rng.choice(FILLER)))
            else:
                good = (label == 1) if rng.random() < 0.75 else (label == 0)
                word = rng.choice(POS if good else NEG)
                parts.append(f"{rng.choice(THINGS)} was {word}")
        if not any(w in p for p in parts for w in POS + NEG):
            parts.append(f"{rng.choice(THINGS)} was {rng.choice(POS if label else NEG)}")
        rows.append({"idx": i, "text_a": ". ".join(p[0].upper() + p[1:] for p in parts) + ".", "label": label})
    return pd.DataFrame(rows)


def load_user_file(path: str):
    import pandas as pd

    p = Path(path)
    df = (pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_json(p, lines=True) if p.suffix == ".jsonl"
          else pd.read_csv(p))
    if not {"text", "label"} <= set(df.columns):
        sys.exit(f"error: {path} needs columns 'text' and 'label' (0/1)")
    return pd.DataFrame({"idx": range(len(df)), "text_a": df["text"].astype(str), "label": df["label"].astype(int)})


def prepare(args, workdir: Path) -> Path:
    import numpy as np

    from pipeline_steps.data.tokenize import tokenize_frame
    from pipeline_steps.io import write_parquet
    from pipeline_steps.models.registry import load_tokenizer

    df = load_user_file(args.data) if args.data else review_corpus(args.n_train + args.n_dev + args.n_test, 0)
    df = df.sample(frac=1.0, random_state=0).reset_index(drop=True)
    n_dev, n_test = args.n_dev, args.n_test
    df["split"] = ["dev"] * n_dev + ["test"] * n_test + ["train"] * (len(df) - n_dev - n_test)
    df["text_b"] = ""
    tok = tokenize_frame(df, load_tokenizer(MODEL), TEMPLATE, args.max_length)
    path = workdir / "tokens.parquet"
    write_parquet(tok, path)
    for split in ("train", "dev", "test"):
        lengths = np.array([len(x) for x in tok.loc[tok["split"] == split, "input_ids"]])
        q = np.percentile(lengths, [0, 10, 25, 50, 75, 90, 100]).astype(int)
        print(f"  {split:5s} n={len(lengths):4d} tokens (template included, cut at {args.max_length}): "
              f"min {q[0]} p10 {q[1]} p25 {q[2]} median {q[3]} p75 {q[4]} p90 {q[5]} max {q[6]}; "
              f"mean {lengths.mean():.1f}; {np.mean(lengths >= args.max_length):.0%} truncated")
    return path


# --- one way, in its own process -------------------------------------------------------------------

def settings(args):
    from pipeline_steps.prompt_tuning.config import PromptTuningConfig

    return PromptTuningConfig(prompt_length=args.prompt_length, lr=args.lr, steps=args.steps,
                              batch_size=args.batch_size, eval_batch_size=args.eval_batch_size,
                              eval_every=args.eval_every, max_length=args.max_length, checkpoint_every=10**9)


def initial_prompt(bundle, length: int):
    import torch

    from pipeline_steps.prompt_tuning.model import init_prompt

    return init_prompt(bundle.backbone, length, "vocab", torch.Generator().manual_seed(0),
                       bundle.tokenizer.all_special_ids)


def run_ours(way: str, args, tokens: Path) -> dict:
    import functools

    import torch

    from pipeline_steps import training
    from pipeline_steps.prompt_tuning.model import PromptModel
    from pipeline_steps.runtime import autocast, load_bundle

    bucket, sorted_eval, bf16, compile_ = OURS[way]
    if not sorted_eval:  # the loop's dev evaluation and the test evaluation below
        training.predict = functools.partial(training.predict, sort_by_length=False)
    bundle = load_bundle({**MODEL, "dtype": "bfloat16" if bf16 else "float32"})
    data = training.load_splits(str(tokens), training.pad_id(bundle.tokenizer))
    model = PromptModel(bundle.backbone, bundle.verbalizer(TASK), initial_prompt(bundle, args.prompt_length))
    if compile_:
        model.forward = torch.compile(model.forward, dynamic=True)  # the whole forward: prompt, encoder, verbalizer
    cfg = settings(args)
    cfg.bucket_batches = bucket
    amp = autocast(bundle.spec, bundle.device)
    t0 = time.perf_counter()
    best, state = training.train_prompt(model, data["train"], data["dev"], cfg, seed=args.seed, metric="accuracy",
                                        device=bundle.device, amp=amp)
    t_train = time.perf_counter() - t0
    logits = training.predict(model, data["test"], cfg.eval_batch_size, bundle.device, prompt=best, amp=amp)
    test = training.score(logits.argmax(1), data["test"].labels, "accuracy", 2)
    return {"dev": state.best_score, "test": test, "train_s": t_train, "train_eval_s": time.perf_counter() - t0,
            "steps": state.step, "examples": state.step * cfg.batch_size}


def run_trainer(way: str, args, tokens: Path) -> dict:
    import datasets
    import torch
    import torch.nn.functional as F
    from peft import PromptTuningConfig, TaskType, get_peft_model
    from torch import nn
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

    from pipeline_steps.io import read_parquet
    from pipeline_steps.models.registry import load_hf_model
    from pipeline_steps.runtime import load_bundle

    group_by_length = TRAINER[way]
    bundle = load_bundle(MODEL)  # tokenizer, verbalizer and the same initial prompt as ours
    verbalizer = bundle.verbalizer(TASK).requires_grad_(False)
    prompt = initial_prompt(bundle, args.prompt_length)
    hf = load_hf_model(MODEL)
    for m in hf.modules():  # our backbone runs without dropout (frozen, eval mode): same function here
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    L = args.prompt_length
    peft_model = get_peft_model(hf, PromptTuningConfig(
        task_type=TaskType.FEATURE_EXTRACTION, num_virtual_tokens=L, token_dim=hf.config.hidden_size,
        num_transformer_submodules=1, num_attention_heads=hf.config.num_attention_heads,
        num_layers=hf.config.num_hidden_layers))
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(prompt)

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.peft = peft_model
            self.verbalizer = verbalizer

        def forward(self, input_ids, attention_mask, mask_pos, labels=None):
            out = self.peft(input_ids=input_ids, attention_mask=attention_mask)
            full = torch.cat([attention_mask.new_ones(attention_mask.shape[0], L), attention_mask], 1)
            logits = self.verbalizer.from_hidden(out.last_hidden_state, full, mask_pos + L)
            loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
            return {"loss": loss, "logits": logits}

    model = Classifier()
    df = read_parquet(tokens)

    def dataset(split):
        part = df[df["split"] == split]
        ids = [list(map(int, x)) for x in part["input_ids"]]
        return datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids],
                                           "mask_pos": part["mask_pos"].astype(int).tolist(),
                                           "labels": part["label"].astype(int).tolist()})

    train, dev, test = dataset("train"), dataset("dev"), dataset("test")
    weight = peft_model.prompt_encoder["default"].embedding.weight
    best = {"dev": -1.0, "prompt": weight.detach().clone()}

    class KeepBest(TrainerCallback):  # what our loop does: keep the best prompt by dev score
        def on_evaluate(self, args_, state, control, metrics=None, **kwargs):
            if metrics and metrics["eval_accuracy"] > best["dev"]:
                best["dev"] = metrics["eval_accuracy"]
                best["prompt"] = weight.detach().clone()

    def accuracy(pred):
        return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}

    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            output_dir=out, per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=args.eval_batch_size, learning_rate=args.lr, weight_decay=0.0,
            max_steps=args.steps, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0,
            optim="adamw_torch", eval_strategy="steps", eval_steps=args.eval_every, save_strategy="no",
            logging_strategy="steps", logging_steps=args.eval_every, report_to="none", use_cpu=True,
            dataloader_num_workers=0, seed=args.seed, disable_tqdm=True,
            train_sampling_strategy="group_by_length" if group_by_length else "random")
        trainer = Trainer(model=model, args=targs, train_dataset=train, eval_dataset=dev,
                          data_collator=DataCollatorWithPadding(bundle.tokenizer), compute_metrics=accuracy,
                          callbacks=[KeepBest()])
        t0 = time.perf_counter()
        trainer.train()
        t_train = time.perf_counter() - t0
        with torch.no_grad():
            weight.copy_(best["prompt"])
        test_acc = trainer.predict(test).metrics["test_accuracy"]
    return {"dev": best["dev"], "test": test_acc, "train_s": t_train, "train_eval_s": time.perf_counter() - t0,
            "steps": trainer.state.global_step, "examples": trainer.state.global_step * args.batch_size}


def worker(args) -> None:
    t_start = time.perf_counter()
    import torch

    from pipeline_steps.logsetup import setup_logging
    from pipeline_steps.runtime import set_threads

    setup_logging(30)
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    run = run_ours if args.worker in OURS else run_trainer
    result = run(args.worker, args, Path(args.tokens))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result.update(way=args.worker, end_to_end_s=time.perf_counter() - t_start,
                  cpu_s=usage.ru_utime + usage.ru_stime, peak_rss_mb=usage.ru_maxrss / 1024)
    print("RESULT " + json.dumps(result), flush=True)


# --- driver ----------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ways", default=",".join(DEFAULT_WAYS), help=f"comma list of {list(OURS) + list(TRAINER)}")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--eval-batch-size", type=int, default=64)
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--lr", type=float, default=0.03)
    ap.add_argument("--prompt-length", type=int, default=10)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--n-dev", type=int, default=200)
    ap.add_argument("--n-test", type=int, default=400)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--data", default=None, help="CSV/Parquet/JSONL with text,label instead of generated reviews")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tokens", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    ways = args.ways.split(",")
    unknown = [w for w in ways if w not in OURS and w not in TRAINER]
    if unknown:
        sys.exit(f"error: unknown way(s) {unknown}")
    with tempfile.TemporaryDirectory() as tmp:
        print(f"data ({'file ' + args.data if args.data else 'generated reviews'}):")
        tokens = prepare(args, Path(tmp))
        print(f"model {MODEL['source']}, prompt {args.prompt_length} tokens, batch {args.batch_size}, lr {args.lr}, "
              f"{args.steps} steps, dev eval every {args.eval_every} steps, eval batch {args.eval_batch_size}, "
              f"threads {args.threads}, {args.repeats} repeat(s), ways interleaved, one process each")
        results = {w: [] for w in ways}
        for r in range(args.repeats):
            for way in ways:
                cmd = [sys.executable, __file__, "--worker", way, "--tokens", str(tokens),
                       "--threads", str(args.threads), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                       "--eval-batch-size", str(args.eval_batch_size), "--eval-every", str(args.eval_every),
                       "--lr", str(args.lr), "--prompt-length", str(args.prompt_length),
                       "--max-length", str(args.max_length), "--seed", str(args.seed)]
                env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false",
                       "HF_HUB_OFFLINE": "1"}
                res = subprocess.run(cmd, capture_output=True, text=True, env=env)
                line = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
                if res.returncode or not line:
                    print(f"{way} failed:\n{res.stderr[-3000:]}")
                    continue
                out = json.loads(line[-1][7:])
                results[way].append(out)
                print(f"  [{r + 1}/{args.repeats}] {way:17s} train {out['train_s']:6.1f} s, end to end "
                      f"{out['end_to_end_s']:6.1f} s, cpu {out['cpu_s']:6.1f} s, dev {out['dev']:.3f} "
                      f"test {out['test']:.3f}", flush=True)

    def med(way, key):
        return statistics.median(x[key] for x in results[way])

    ref = "trainer" if results.get("trainer") else None
    print(f"\nmedians over {args.repeats} repeat(s); 'x trainer' = trainer's end-to-end time / this way's")
    print("| way | end to end (s) | train+eval (s) | CPU (s) | steps/s | examples/s | peak RSS (MiB) "
          "| dev acc | test acc | x trainer |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for way in ways:
        if not results[way]:
            continue
        e2e, tr = med(way, "end_to_end_s"), med(way, "train_s")
        speed = f"{med(ref, 'end_to_end_s') / e2e:.2f}x" if ref else "-"
        print(f"| {way} | {e2e:.1f} | {med(way, 'train_eval_s'):.1f} | {med(way, 'cpu_s'):.1f} | "
              f"{results[way][0]['steps'] / tr:.2f} | {results[way][0]['examples'] / tr:.1f} | "
              f"{med(way, 'peak_rss_mb'):.0f} | {med(way, 'dev'):.3f} | {med(way, 'test'):.3f} | {speed} |")


if __name__ == "__main__":
    main()
