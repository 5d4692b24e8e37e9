#!/usr/bin/env python
"""Benchmarks of the transferability suite (run by hand; prints figures, asserts nothing).

1. Prompt-tuning training-step throughput, ours vs Hugging Face PEFT's PromptTuning, on the
   same model, batch, sequence length and verbalizer (steps/s and the ratio).
2. The zero-shot transfer matrix of one model: our way (per target task, one model load and
   all prompts batched together) vs one model load per (source, target) pair.

    python scripts/benchmark_transfer.py [--model embedded:minilm-l6] [--steps 30] [--threads 2]
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline_steps.config import load_config  # noqa: E402
from pipeline_steps.specs import task_spec
from pipeline_steps.data import prepare, tokenize  # noqa: E402
from pipeline_steps.io import save_tensors  # noqa: E402
from pipeline_steps.models.registry import load_hf_model  # noqa: E402
from pipeline_steps.runtime import load_bundle, set_threads, setup_logging  # noqa: E402
from pipeline_steps.training import load_splits, pad_id  # noqa: E402
from pipeline_steps.training import predict, score  # noqa: E402
from pipeline_steps.transferability.steps import predict_many  # noqa: E402
from pipeline_steps.prompt_tuning.model import PromptModel, init_prompt  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def fixed_batch(tokenizer, batch_size: int, seq_len: int) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, tokenizer.vocab_size - 1, (batch_size, seq_len), generator=g)
    ids[:, 0] = tokenizer.cls_token_id
    ids[:, -2] = tokenizer.mask_token_id
    ids[:, -1] = tokenizer.sep_token_id
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "mask_pos": torch.full((batch_size,), seq_len - 2), "labels": torch.randint(0, 2, (batch_size,), generator=g)}


def time_steps(step, n: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return n / (time.perf_counter() - t0)


def bench_throughput(spec: dict, task: dict, steps: int, batch_size: int, seq_len: int, length: int) -> None:
    from peft import PromptTuningConfig, TaskType, get_peft_model

    bundle = load_bundle(spec)
    verb = bundle.verbalizer(task)
    batch = fixed_batch(bundle.tokenizer, batch_size, seq_len)
    prompt = init_prompt(bundle.backbone, length, "vocab", torch.Generator().manual_seed(0))

    ours = PromptModel(bundle.backbone, verb, prompt)
    opt = torch.optim.AdamW([ours.prompt], lr=0.03)

    def our_step():
        loss = F.cross_entropy(ours(batch["input_ids"], batch["attention_mask"], batch["mask_pos"]), batch["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()

    hf = load_hf_model(spec)
    cfg = PromptTuningConfig(task_type=TaskType.FEATURE_EXTRACTION, num_virtual_tokens=length,
                             token_dim=bundle.backbone.hidden_size, num_transformer_submodules=1,
                             num_attention_heads=hf.config.num_attention_heads, num_layers=hf.config.num_hidden_layers)
    peft_model = get_peft_model(hf, cfg)
    peft_model.eval()  # no dropout, as in our frozen backbone
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(prompt)
    popt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=0.03)
    full_mask = torch.cat([torch.ones(batch_size, length, dtype=torch.long), batch["attention_mask"]], 1)

    def peft_step():
        out = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logits = verb.from_hidden(out.last_hidden_state, full_mask, batch["mask_pos"] + length)
        loss = F.cross_entropy(logits, batch["labels"])
        popt.zero_grad()
        loss.backward()
        popt.step()

    ours_sps, peft_sps = time_steps(our_step, steps), time_steps(peft_step, steps)
    print(f"[throughput] model={spec['name']} batch={batch_size} seq_len={seq_len} prompt_length={length} "
          f"threads={torch.get_num_threads()}")
    print(f"  ours      {ours_sps:7.2f} steps/s")
    print(f"  peft      {peft_sps:7.2f} steps/s")
    print(f"  ratio     {ours_sps / peft_sps:7.2f} (ours / peft)")


def bench_zero_shot(spec: dict, cfg: dict, tasks: list[str], length: int, workdir: Path) -> None:
    bundle = load_bundle(spec)
    tokens, prompts = {}, {}
    for t in tasks:
        ts = task_spec(cfg, t)
        prepare.run(ts, workdir / f"{t}.parquet")
        tokenize.run(str(workdir / f"{t}.parquet"), str(workdir / f"{t}-tok.parquet"), spec, ts, 64)
        tokens[t] = str(workdir / f"{t}-tok.parquet")
        prompts[t] = init_prompt(bundle.backbone, length, "vocab", torch.Generator().manual_seed(len(t)))
        save_tensors({"prompt": prompts[t]}, workdir / f"{t}-prompt.safetensors")
    del bundle

    t0 = time.perf_counter()  # ours: per target, one load, all prompts batched
    ours = {}
    for target in tasks:
        b = load_bundle(spec)
        data = load_splits(tokens[target], pad_id(b.tokenizer), ("test",))["test"]
        ts = task_spec(cfg, target)
        model = PromptModel(b.backbone, b.verbalizer(ts), prompts[tasks[0]])
        logits = predict_many(model, data, torch.stack([prompts[s] for s in tasks]), 64, "cpu")
        for s, lg in zip(tasks, logits):
            ours[s, target] = score(lg.argmax(1), data.labels, "accuracy", len(ts["label_names"]))
    t_ours = time.perf_counter() - t0

    t0 = time.perf_counter()  # naive: a model load per pair
    naive = {}
    for target in tasks:
        ts = task_spec(cfg, target)
        for s in tasks:
            b = load_bundle(spec)
            data = load_splits(tokens[target], pad_id(b.tokenizer), ("test",))["test"]
            model = PromptModel(b.backbone, b.verbalizer(ts), prompts[s])
            lg = predict(model, data, 64, "cpu")
            naive[s, target] = score(lg.argmax(1), data.labels, "accuracy", len(ts["label_names"]))
    t_naive = time.perf_counter() - t0
    same = all(abs(ours[k] - naive[k]) < 1e-9 for k in ours)
    print(f"[zero-shot matrix] model={spec['name']} {len(tasks)} sources x {len(tasks)} targets, "
          f"threads={torch.get_num_threads()}")
    print(f"  ours (one load per target, prompts batched)  {t_ours:7.2f} s")
    print(f"  one model load per pair                      {t_naive:7.2f} s")
    print(f"  ratio                                        {t_naive / t_ours:7.2f}x faster; identical scores: {same}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded:minilm-l6")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--prompt-length", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    setup_logging(logging.WARNING)
    set_threads(a.threads)
    cfg = load_config(REPO / "config.yaml")
    spec = {"name": a.model, "source": a.model, "verbalizer": "auto", "pooling": "mask", "embedding_scale": 20.0}
    bench_throughput(spec, task_spec(cfg, "movies"), a.steps, a.batch_size, a.seq_len, a.prompt_length)
    with tempfile.TemporaryDirectory() as tmp:
        bench_zero_shot(spec, cfg, ["movies", "products", "nli", "topics"], a.prompt_length, Path(tmp))


if __name__ == "__main__":
    main()
