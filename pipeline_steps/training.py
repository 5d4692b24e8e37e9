"""Batching, evaluation and the resumable prompt-training loop."""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .errors import UserError
from .io import atomic_path, load_tensors, read_parquet, save_tensors
from .logsetup import Progress
from .prompt_tuning.config import PromptTuningConfig
from .stats import is_eval_step

log = logging.getLogger(__name__)


# --- data ---------------------------------------------------------------------------------------

@dataclass
class TokenizedSplit:
    input_ids: list[np.ndarray]
    mask_pos: np.ndarray
    labels: np.ndarray
    pad_id: int

    @classmethod
    def from_frame(cls, df: pd.DataFrame, split: str, pad_id: int) -> "TokenizedSplit":
        part = df[df["split"] == split]
        return cls(list(part["input_ids"]), part["mask_pos"].to_numpy(), part["label"].to_numpy(), pad_id)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, rows: np.ndarray, device) -> dict:
        seqs = [self.input_ids[i] for i in rows]
        width = max(len(s) for s in seqs)
        ids = np.full((len(seqs), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(seqs), width), dtype=np.int64)
        for r, s in enumerate(seqs):
            ids[r, : len(s)] = s
            mask[r, : len(s)] = 1
        return {
            "input_ids": torch.from_numpy(ids).to(device),
            "attention_mask": torch.from_numpy(mask).to(device),
            "mask_pos": torch.from_numpy(self.mask_pos[rows].copy()).to(device),
            "labels": torch.from_numpy(self.labels[rows].astype(np.int64)).to(device),
        }

    def lengths(self) -> np.ndarray:
        return np.fromiter((len(s) for s in self.input_ids), dtype=np.int64, count=len(self.input_ids))

    def batches(self, batch_size: int, device, order: np.ndarray | None = None):
        order = np.arange(len(self)) if order is None else order
        for start in range(0, len(order), batch_size):
            yield self.batch(order[start:start + batch_size], device)


def epoch_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, window: int = 0) -> list[np.ndarray]:
    """Rows of every batch of one training epoch: a pure function of (seed, epoch), so a resumed run
    draws exactly the batches an uninterrupted one would.

    ``window == 0``: consecutive slices of a seeded permutation (``len // batch_size`` full batches; the
    remainder waits for another epoch). ``window > 0``: length-bucketed; the permutation is cut into
    windows of ``window`` batches, each window sorted by length (stable) and cut into batches, and the
    order of all batches is shuffled (seeded); every example is in exactly one batch (one may be short).
    Batches then hold texts of similar length, so less padding is computed.
    """
    n = len(lengths)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g).numpy()
    if window <= 0:
        return [order[i * batch_size:(i + 1) * batch_size] for i in range(max(1, n // batch_size))]
    span = window * batch_size
    batches = []
    for start in range(0, n, span):
        part = order[start:start + span]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
    shuffle = torch.randperm(len(batches), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7919))
    return [batches[i] for i in shuffle.tolist()]

def load_splits(tokenized: str, pad_id: int, splits=("train", "dev", "test")) -> dict[str, TokenizedSplit]:
    df = read_parquet(tokenized)
    return {s: TokenizedSplit.from_frame(df, s, pad_id) for s in splits}


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def score(preds: np.ndarray, labels: np.ndarray, metric: str, num_classes: int) -> float:
    if metric == "accuracy":
        return float((preds == labels).mean())
    if metric == "macro_f1":
        f1s = []
        for c in range(num_classes):
            tp = np.sum((preds == c) & (labels == c))
            fp = np.sum((preds == c) & (labels != c))
            fn = np.sum((preds != c) & (labels == c))
            f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
        return float(np.mean(f1s))
    raise ValueError(f"unknown metric {metric}")


@torch.inference_mode()
def predict(model, data: TokenizedSplit, batch_size: int, device, prompt=None, amp=None,
            sort_by_length: bool = True, describe: str = "") -> np.ndarray:
    """Class logits ``[N, C]`` for a split, in its row order.

    Rows are batched in order of length (less padding to compute) and the logits put back in the
    split's order; padding is masked, so a row's logits do not depend on its batch (up to float
    rounding). A long pass logs progress every ~30 s (``logsetup.Progress``), named by ``describe``."""
    model.eval()
    order = np.argsort(data.lengths(), kind="stable") if sort_by_length else np.arange(len(data))
    out = []
    progress = Progress(log, describe or "scoring", total=len(data), unit="examples")
    done = 0
    for b in data.batches(batch_size, device, order):
        with amp or torch.autocast("cpu", enabled=False):
            logits = model(b["input_ids"], b["attention_mask"], b["mask_pos"], prompt=prompt)
        out.append(logits.float().cpu())
        done += len(logits)
        progress.update(done)
    logits = torch.cat(out).numpy()
    result = np.empty_like(logits)
    result[order] = logits
    return result


# --- training -----------------------------------------------------------------------------------

@dataclass
class TrainState:
    step: int = 0
    best_score: float = -math.inf
    best_step: int = 0
    elapsed: float = 0.0
    curve: list = field(default_factory=list)


def lr_at(step: int, cfg: PromptTuningConfig) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr


def trainable(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def adam_state(optimizer, params: dict) -> dict[str, dict]:
    """AdamW moments by parameter name (``step``, ``exp_avg``, ``exp_avg_sq``), detached on CPU."""
    out = {}
    for name, p in params.items():
        st = optimizer.state.get(p)
        if st:
            out[name] = {"step": float(st["step"]), "exp_avg": st["exp_avg"].detach().cpu().clone(),
                         "exp_avg_sq": st["exp_avg_sq"].detach().cpu().clone()}
    return out


def load_adam_state(optimizer, params: dict, state: dict[str, dict]) -> None:
    """Inverse of ``adam_state`` (shapes must match the parameters they belong to)."""
    for name, st in state.items():
        p = params[name]
        if st["exp_avg"].shape != p.shape:
            raise ValueError(f"optimizer state of '{name}' has shape {tuple(st['exp_avg'].shape)}, "
                             f"parameter has {tuple(p.shape)}")
        optimizer.state[p] = {"step": torch.tensor(float(st["step"])), "exp_avg": st["exp_avg"].to(p.device).clone(),
                              "exp_avg_sq": st["exp_avg_sq"].to(p.device).clone()}


class Checkpoint:
    """Everything needed to resume bit-for-bit: trainable parameters, the best ones so far and
    AdamW moments (safetensors), counters and curve (JSON). Written atomically, tensors first;
    the batch sampler needs no state (it is a function of seed and step)."""

    def __init__(self, path: str | Path):
        self.tensors = Path(path)
        self.state = self.tensors.with_suffix(".json")

    def exists(self) -> bool:
        return self.tensors.exists() and self.state.exists()

    def save(self, params: dict, best: dict, optimizer, state: TrainState, tag: str) -> None:
        tensors, steps = {}, {}
        for name, p in params.items():
            tensors[f"param.{name}"] = p.data
            tensors[f"best.{name}"] = best[name]
        for name, st in adam_state(optimizer, params).items():
            tensors[f"opt.{name}.exp_avg"] = st["exp_avg"]
            tensors[f"opt.{name}.exp_avg_sq"] = st["exp_avg_sq"]
            steps[name] = st["step"]
        save_tensors(tensors, self.tensors, metadata={"tag": tag, "step": state.step})
        payload = {"tag": tag, "step": state.step, "best_score": state.best_score, "best_step": state.best_step,
                   "elapsed": state.elapsed, "curve": state.curve, "opt_steps": steps}
        with atomic_path(self.state) as tmp:
            tmp.write_text(json.dumps(payload))

    def load(self, params: dict, optimizer, tag: str) -> tuple[TrainState, dict]:
        payload = json.loads(self.state.read_text())
        tensors, meta = load_tensors(self.tensors)
        if payload["tag"] != tag or meta.get("tag") != tag:
            raise RuntimeError("checkpoint belongs to other settings")
        if meta.get("step") != payload["step"]:  # killed between the two writes: the files disagree
            raise RuntimeError(f"checkpoint tensors (step {meta.get('step')}) and state (step {payload['step']}) differ")
        if {k.split(".", 1)[1] for k in tensors if k.startswith("param.")} != set(params):
            raise RuntimeError("checkpoint holds other parameters")
        for name, p in params.items():
            p.data.copy_(tensors[f"param.{name}"])
        load_adam_state(optimizer, params, {
            name: {"step": step, "exp_avg": tensors[f"opt.{name}.exp_avg"],
                   "exp_avg_sq": tensors[f"opt.{name}.exp_avg_sq"]} for name, step in payload["opt_steps"].items()})
        state = TrainState(payload["step"], payload["best_score"], payload["best_step"],
                           payload["elapsed"], payload["curve"])
        return state, {name: tensors[f"best.{name}"] for name in params}

    def remove(self) -> None:
        self.tensors.unlink(missing_ok=True)
        self.state.unlink(missing_ok=True)


def training_step(model, batch: dict, optimizer, params: dict, lr: float, grad_clip: float, *, amp=None,
                  loss_fn: Callable | None = None, on_nan: str = "loss is {loss}") -> float:
    """One optimizer step on one batch: forward (under ``amp``), loss, backward, clip, AdamW.

    ``model(input_ids, attention_mask, mask_pos)`` returns class logits; ``loss_fn(logits, batch)``
    defaults to cross-entropy on ``batch["labels"]`` (it may add terms, e.g. a regulariser).
    Every parameter group gets ``lr`` times its ``lr_scale`` (1 by default). A non-finite loss
    raises ``UserError(on_nan.format(loss=...))`` before any parameter changes. Returns the loss.
    """
    model.train()
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
    with amp or torch.autocast("cpu", enabled=False):
        logits = model(batch["input_ids"], batch["attention_mask"], batch["mask_pos"])
    loss = loss_fn(logits, batch) if loss_fn else F.cross_entropy(logits.float(), batch["labels"])
    if not torch.isfinite(loss):
        raise UserError(on_nan.format(loss=loss.item()))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(params.values()), grad_clip)
    optimizer.step()
    return loss.item()


def train_module(model, train: TokenizedSplit, dev: TokenizedSplit, cfg: PromptTuningConfig, *, seed: int,
                 metric: str, device, checkpoint: Checkpoint | None = None, tag: str = "", describe: str = "",
                 amp=None, on_eval: Callable | None = None, optimizer_state: dict | None = None,
                 lr_scales: dict[str, float] | None = None):
    """Train the parameters of ``model`` that require grad; everything else stays frozen.

    ``model(input_ids, attention_mask, mask_pos)`` returns class logits. Batches are drawn
    epoch-wise from seeded permutations; the dev score is computed every ``eval_every`` steps
    and at the end; the best parameters (earliest on ties) are kept. With ``cfg.eval_schedule ==
    "log"`` the dev score is also computed at steps 1, 2, 4, ... below ``eval_every``: those
    points go into the curve only, so the kept parameters are the same as with ``fixed``. ``optimizer_state``
    (from ``adam_state``) starts AdamW from carried-over moments (progressive training).
    ``lr_scales`` maps parameter names to a factor on ``cfg.lr`` (their own AdamW parameter
    group, e.g. KPT's label-word weights); every other parameter gets ``cfg.lr``.

    Returns (best parameters by name, TrainState with the curve, final AdamW state by name).
    """
    params = trainable(model)
    if not params:
        raise ValueError("the model has no trainable parameter")
    if lr_scales:
        unknown = set(lr_scales) - set(params)
        if unknown:
            raise ValueError(f"lr_scales names parameters that are not trainable: {sorted(unknown)}")
        rest = [p for n, p in params.items() if n not in lr_scales]
        groups = ([{"params": rest}] if rest else []) + [
            {"params": [params[n]], "lr": cfg.lr * s, "lr_scale": s} for n, s in lr_scales.items()]
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.AdamW(list(params.values()), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if optimizer_state:
        load_adam_state(optimizer, params, optimizer_state)
    state = TrainState()
    best = {n: p.detach().clone().cpu() for n, p in params.items()}
    if checkpoint is not None and checkpoint.exists():
        try:
            state, best = checkpoint.load(params, optimizer, tag)
            log.info("%s: resumed from checkpoint at step %d", describe, state.step)
        except (RuntimeError, KeyError, ValueError, UserError) as e:  # UserError: a torn tensors file
            log.warning("%s: ignoring unusable checkpoint (%s)", describe, e)
            state = TrainState()
    num_classes = model.verbalizer.num_classes
    # the sampler is a pure function of (seed, step): epoch e uses its own seeded batches
    # (epoch_batches), so a resumed run draws exactly the batches an uninterrupted one would
    lengths = train.lengths()
    per_epoch = len(epoch_batches(lengths, cfg.batch_size, seed, 0, cfg.bucket_batches))
    batches, order_epoch = None, -1
    t0 = time.perf_counter() - state.elapsed
    last_loss = float("nan")
    progress = Progress(log, describe or "training", total=cfg.steps, unit="steps")
    while state.step < cfg.steps:
        epoch, pos = divmod(state.step, per_epoch)
        if epoch != order_epoch:
            batches, order_epoch = epoch_batches(lengths, cfg.batch_size, seed, epoch, cfg.bucket_batches), epoch
        rows = batches[pos]
        last_loss = training_step(model, train.batch(rows, device), optimizer, params, lr_at(state.step, cfg),
                                  cfg.grad_clip, amp=amp,
                                  on_nan=f"{describe}: loss is {{loss}} at step {state.step + 1}; "
                                         f"lower the learning rate (now {cfg.lr}) or check the data")
        state.step += 1
        progress.update(state.step, f"loss {last_loss:.4f}")
        if is_eval_step(state.step, cfg.steps, cfg.eval_every, getattr(cfg, "eval_schedule", "fixed")):
            logits = predict(model, dev, cfg.eval_batch_size, device, amp=amp)
            dev_score = score(logits.argmax(1), dev.labels, metric, num_classes)
            state.elapsed = time.perf_counter() - t0
            state.curve.append({"step": state.step, "loss": last_loss, "dev_score": dev_score,
                                "elapsed_seconds": round(state.elapsed, 3)})
            selectable = state.step % cfg.eval_every == 0 or state.step == cfg.steps  # not the log points
            if selectable and dev_score > state.best_score:
                state.best_score, state.best_step = dev_score, state.step
                best = {n: p.detach().clone().cpu() for n, p in params.items()}
            log.info("%s: step %d/%d loss %.4f dev %s %.4f (best %.4f @ %d) %.1fs", describe, state.step,
                     cfg.steps, last_loss, metric, dev_score, state.best_score, state.best_step, state.elapsed)
            progress.seen()
            if on_eval:
                on_eval(state)
        if checkpoint is not None and state.step % cfg.checkpoint_every == 0 and state.step < cfg.steps:
            state.elapsed = time.perf_counter() - t0
            checkpoint.save(params, best, optimizer, state, tag)
    state.elapsed = time.perf_counter() - t0
    return best, state, adam_state(optimizer, params)


def train_prompt(model, train: TokenizedSplit, dev: TokenizedSplit, cfg: PromptTuningConfig, **kwargs):
    """``train_module`` for a ``PromptModel``: returns (best prompt, TrainState)."""
    best, state, _ = train_module(model, train, dev, cfg, **kwargs)
    return best["prompt"], state
