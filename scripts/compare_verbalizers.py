#!/usr/bin/env python
"""Prompt-tuning accuracy of each verbalizer kind on the demo tasks (run by hand; prints a table).

Kinds: the frozen, shared embedding verbalizer (mask-position and mean pooling) and, as a
reference that is neither frozen nor shared, a trainable linear head on the mean-pooled output
trained together with the prompt. Same model, prompt length, steps and data for all.

    python scripts/compare_verbalizers.py [--model embedded:minilm-l6] [--steps 150] [--tasks movies nli]
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline_steps.config import load_config  # noqa: E402
from pipeline_steps.specs import pt_settings, task_spec
from pipeline_steps.data import prepare, tokenize  # noqa: E402
from pipeline_steps.runtime import load_bundle, set_threads, setup_logging  # noqa: E402
from pipeline_steps.training import load_splits, pad_id  # noqa: E402
from pipeline_steps.training import predict, score, train_module  # noqa: E402
from pipeline_steps.prompt_tuning.config import PromptTuningConfig
from pipeline_steps.prompt_tuning.model import PromptModel, init_prompt  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


class LinearHead(nn.Module):
    """Reference only: a trainable classifier on the mean-pooled output (not shareable across tasks)."""

    kind = "linear-head"

    def __init__(self, hidden: int, classes: int):
        super().__init__()
        self.head = nn.Linear(hidden, classes)
        self.num_classes = classes

    def forward(self, backbone, inputs_embeds, attention_mask, mask_pos):
        h = backbone.encode(inputs_embeds, attention_mask).float()
        m = attention_mask.unsqueeze(-1).float()
        return self.head((h * m).sum(1) / m.sum(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded:minilm-l6")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--tasks", nargs="+", default=["movies", "products", "nli", "topics"])
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    setup_logging(logging.WARNING)
    set_threads(a.threads)
    cfg = load_config(REPO / "config.yaml")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in a.tasks:
            ts = task_spec(cfg, task)
            settings = {**pt_settings(cfg, task), "steps": a.steps}
            pt = PromptTuningConfig.from_dict(settings)
            prepare.run(ts, f"{tmp}/{task}.parquet")
            for kind in ("embedding-mask", "embedding-mean", "linear-head"):
                pooling = "mean" if kind.endswith("mean") else "mask"
                spec = {"name": a.model, "source": a.model, "verbalizer": "embedding", "pooling": pooling,
                        "embedding_scale": 20.0}
                bundle = load_bundle(spec)
                tok = f"{tmp}/{task}-tok.parquet"
                tokenize.run(f"{tmp}/{task}.parquet", tok, spec, ts, pt.max_length)
                data = load_splits(tok, pad_id(bundle.tokenizer))
                verb = (LinearHead(bundle.backbone.hidden_size, len(ts["label_names"])) if kind == "linear-head"
                        else bundle.verbalizer(ts))
                torch.manual_seed(1)
                model = PromptModel(bundle.backbone, verb, init_prompt(bundle.backbone, pt.prompt_length, pt.init,
                                                                      torch.Generator().manual_seed(1)))
                best, state, _ = train_module(model, data["train"], data["dev"], pt, seed=1, metric="accuracy",
                                              device="cpu", describe=f"{kind}/{task}")
                with torch.no_grad():
                    for name, p in model.named_parameters():
                        if name in best:
                            p.copy_(best[name])
                logits = predict(model, data["test"], 64, "cpu")
                rows.append({"task": task, "verbalizer": kind, "dev": state.best_score,
                             "test": score(logits.argmax(1), data["test"].labels, "accuracy", len(ts["label_names"]))})
                print(rows[-1], flush=True)
    df = pd.DataFrame(rows).pivot(index="task", columns="verbalizer", values="test")
    df.loc["mean"] = df.mean()
    print(f"\ntest accuracy, {a.model}, {a.steps} steps, prompt length {pt.prompt_length}:")
    print(df.round(3).to_string())


if __name__ == "__main__":
    main()
