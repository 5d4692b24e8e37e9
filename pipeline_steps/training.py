"""Batching, evaluation and the resumable prompt-training loop."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .errors import UserError
from .io import load_tensors, read_parquet, save_tensors
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

class EpochSampler:
    """The rows of each training step's batch: ``epoch_batches`` of (seed, epoch), one epoch cached.
    ``lengths`` (or a count, for unbucketed batches of same-cost examples) of the training split."""

    def __init__(self, lengths: np.ndarray | int, batch_size: int, seed: int, window: int = 0):
        self.lengths = np.zeros(lengths, dtype=np.int64) if isinstance(lengths, (int, np.integer)) else lengths
        self.batch_size, self.seed, self.window = batch_size, seed, window
        self.per_epoch = len(epoch_batches(self.lengths, batch_size, seed, 0, window))  # the same for every epoch
        self._epoch, self._batches = -1, []

    def rows(self, step: int) -> np.ndarray:
        epoch, pos = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, epoch_batches(self.lengths, self.batch_size, self.seed, epoch, self.window)
        return self._batches[pos]


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
    train_seconds: float = 0.0      # wall time inside training steps (batching, forward, backward, update)
    train_cpu_seconds: float = 0.0  # process CPU time of the same


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


class EMA:
    """An exponential moving average of parameters (decay warmed up as ``(1 + t) / (10 + t)``): ``fit``
    updates it after every step, evaluates and keeps the averaged weights (DynSAN, after QANet)."""

    def __init__(self, params: dict, decay: float):
        self.decay = decay
        self.shadow = {n: p.detach().clone() for n, p in params.items()}

    @torch.no_grad()
    def update(self, params: dict, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for n, p in params.items():
            self.shadow[n].lerp_(p.detach(), 1 - d)

    @torch.no_grad()
    def swap(self, params: dict) -> None:
        """Exchange the live and the averaged weights (twice restores them)."""
        for n, p in params.items():
            tmp = p.detach().clone()
            p.copy_(self.shadow[n])
            self.shadow[n] = tmp


class Checkpoint:
    """Everything needed to resume bit-for-bit, in one safetensors file written atomically (a kill leaves
    the previous checkpoint or the new one, never a mix): trainable parameters, the best ones so far,
    AdamW/Adam moments, optional extra tensor groups (e.g. an EMA's ``ema``), and the counters and curve
    (``TrainState``) in its metadata. The batch sampler needs no state (a function of seed and step)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def exists(self) -> bool:
        return self.path.exists()

    def save(self, params: dict, best: dict, optimizer, state: TrainState, tag: str,
             extra: dict[str, dict[str, torch.Tensor]] | None = None) -> None:
        tensors, steps = {}, {}
        for name, p in params.items():
            tensors[f"param.{name}"] = p.data
            tensors[f"best.{name}"] = best[name]
        for name, st in adam_state(optimizer, params).items():
            tensors[f"opt.{name}.exp_avg"] = st["exp_avg"]
            tensors[f"opt.{name}.exp_avg_sq"] = st["exp_avg_sq"]
            steps[name] = st["step"]
        for group, values in (extra or {}).items():
            tensors.update({f"{group}.{name}": t for name, t in values.items()})
        save_tensors(tensors, self.path, metadata={"tag": tag, "state": asdict(state), "opt_steps": steps,
                                                   "groups": sorted(extra or {})})

    def load(self, params: dict, optimizer, tag: str, groups: tuple[str, ...] = ()) -> tuple[TrainState, dict, dict]:
        """Restore ``params`` and ``optimizer``; returns (state, best parameters, extra groups). Everything is
        checked before anything is changed: a checkpoint of other settings raises and leaves both alone."""
        tensors, meta = load_tensors(self.path)
        if meta.get("tag") != tag:
            raise RuntimeError("checkpoint belongs to other settings")
        if not isinstance(meta.get("state"), dict) or not isinstance(meta.get("opt_steps"), dict):
            raise RuntimeError("checkpoint of an older format (no state in its metadata)")
        if {k.split(".", 1)[1] for k in tensors if k.startswith("param.")} != set(params):
            raise RuntimeError("checkpoint holds other parameters")
        missing = set(groups) - set(meta.get("groups", []))
        if missing:
            raise RuntimeError(f"checkpoint lacks the tensor groups {sorted(missing)}")
        for name, p in params.items():
            if tensors[f"param.{name}"].shape != p.shape:
                raise RuntimeError(f"checkpoint's '{name}' has shape {tuple(tensors[f'param.{name}'].shape)}")
        for name, p in params.items():
            p.data.copy_(tensors[f"param.{name}"])
        load_adam_state(optimizer, params, {
            name: {"step": step, "exp_avg": tensors[f"opt.{name}.exp_avg"],
                   "exp_avg_sq": tensors[f"opt.{name}.exp_avg_sq"]} for name, step in meta["opt_steps"].items()})
        extra = {g: {name: tensors[f"{g}.{name}"].to(params[name].device) for name in params} for g in groups}
        return TrainState(**meta["state"]), {name: tensors[f"best.{name}"] for name in params}, extra

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def optimizer_step(loss_of: Callable[[], torch.Tensor], optimizer, params: dict, lr: float, grad_clip: float,
                   on_nan: str = "loss is {loss}") -> float:
    """The project's one optimizer step: set the learning rate (times each group's ``lr_scale``, 1 by
    default), compute ``loss_of()``, refuse a non-finite loss (``UserError(on_nan.format(loss=...))``,
    before any parameter changes), backward, clip the gradient norm to ``grad_clip``, step. Returns the loss."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
    loss = loss_of()
    if not torch.isfinite(loss):
        raise UserError(on_nan.format(loss=loss.item()))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(params.values()), grad_clip)
    optimizer.step()
    return loss.item()


def classifier_loss(model, batch: dict, amp=None, loss_fn: Callable | None = None) -> torch.Tensor:
    """A classifier's training loss on one batch: ``model(input_ids, attention_mask, mask_pos)`` returns class
    logits (forward in train mode, under ``amp``); ``loss_fn(logits, batch)`` defaults to cross-entropy on
    ``batch["labels"]`` (it may add terms, e.g. a regulariser)."""
    model.train()
    with amp or torch.autocast("cpu", enabled=False):
        logits = model(batch["input_ids"], batch["attention_mask"], batch["mask_pos"])
    return loss_fn(logits, batch) if loss_fn else F.cross_entropy(logits.float(), batch["labels"])


def training_step(model, batch: dict, optimizer, params: dict, lr: float, grad_clip: float, *, amp=None,
                  loss_fn: Callable | None = None, on_nan: str = "loss is {loss}") -> float:
    """``optimizer_step`` on ``classifier_loss`` of one batch."""
    return optimizer_step(lambda: classifier_loss(model, batch, amp, loss_fn), optimizer, params, lr, grad_clip, on_nan)


def _snapshot(tensors: dict) -> dict:
    return {n: t.detach().cpu().clone() for n, t in tensors.items()}


def fit(params: dict, optimizer, *, steps: int, lr: Callable[[int], float], grad_clip: float,
        loss_at: Callable[[int], torch.Tensor], dev_score: Callable[[int], float], eval_every: int,
        eval_schedule: str = "fixed", checkpoint: Checkpoint | None = None, checkpoint_every: int = 0, tag: str = "",
        describe: str = "training", metric: str = "score", nan_hint: str = "lower the learning rate or check the data",
        ema: EMA | None = None, reseed: int | None = None, curve_loss: str = "last",
        on_eval: Callable | None = None, stop_after: int | None = None) -> tuple[dict, TrainState]:
    """The project's one training loop, resumable from ``checkpoint``.

    Step ``s`` (0-based) trains on ``loss_at(s)`` (the caller draws the batch, e.g. with ``EpochSampler``,
    and runs the model) at learning rate ``lr(s)``. ``dev_score(step)`` is computed every ``eval_every``
    steps and at the end (``eval_schedule == "log"``: also at steps 1, 2, 4, ... below ``eval_every``,
    curve points only); the best weights (earliest on ties) are kept. With ``ema`` the moving average is
    updated after every step and is what is evaluated, kept and returned. ``reseed``: the global torch
    seed is set to a function of (reseed, step) before each step, so dropout and random choices of a
    resumed run are those of an uninterrupted one. ``curve_loss``: the curve's loss is the ``last`` step's
    or the ``mean`` since the previous evaluation. ``stop_after``: return once a checkpoint at or after that
    step is written (tests of resuming; ``state.step < steps`` then).

    Returns (best weights by name, on CPU; ``TrainState`` with the curve and step timings).
    """
    state = TrainState()
    best = _snapshot(ema.shadow if ema else params)
    if checkpoint is not None and checkpoint.exists():
        try:
            state, best, extra = checkpoint.load(params, optimizer, tag, ("ema",) if ema else ())
            if ema:
                ema.shadow = extra["ema"]
            log.info("%s: resumed from checkpoint at step %d", describe, state.step)
        except (RuntimeError, KeyError, ValueError, TypeError, UserError) as e:  # UserError: a damaged file
            log.warning("%s: ignoring unusable checkpoint (%s)", describe, e)
            state = TrainState()
    t0 = time.perf_counter() - state.elapsed
    losses: list[float] = []
    progress = Progress(log, describe, total=steps, unit="steps")
    while state.step < steps:
        step = state.step
        if reseed is not None:
            torch.manual_seed(reseed * 7_919 + step)
        ts, cs = time.perf_counter(), time.process_time()
        loss = optimizer_step(lambda: loss_at(step), optimizer, params, lr(step), grad_clip,
                              f"{describe}: loss is {{loss}} at step {step + 1}; {nan_hint}")
        if ema:
            ema.update(params, step)
        state.train_seconds += time.perf_counter() - ts
        state.train_cpu_seconds += time.process_time() - cs
        losses.append(loss)
        state.step = step = step + 1
        progress.update(step, f"loss {loss:.4f}")
        if is_eval_step(step, steps, eval_every, eval_schedule):
            if ema:
                ema.swap(params)
            score_now = dev_score(step)
            if ema:
                ema.swap(params)
            state.elapsed = time.perf_counter() - t0
            shown = float(np.mean(losses)) if curve_loss == "mean" else losses[-1]
            losses = []
            state.curve.append({"step": step, "loss": shown, "dev_score": score_now,
                                "elapsed_seconds": round(state.elapsed, 3)})
            selectable = step % eval_every == 0 or step == steps  # not the log points
            if selectable and score_now > state.best_score:
                state.best_score, state.best_step = score_now, step
                best = _snapshot(ema.shadow if ema else params)
            log.info("%s: step %d/%d loss %.4f dev %s %.4f (best %.4f @ %d) %.1fs", describe, step, steps, shown,
                     metric, score_now, state.best_score, state.best_step, state.elapsed)
            progress.seen()
            if on_eval:
                on_eval(state)
        if checkpoint is not None and checkpoint_every and step % checkpoint_every == 0 and step < steps:
            state.elapsed = time.perf_counter() - t0
            checkpoint.save(params, best, optimizer, state, tag, {"ema": ema.shadow} if ema else None)
            if stop_after is not None and step >= stop_after:
                log.info("%s: stopping after step %d as asked (checkpoint kept)", describe, step)
                return best, state
    state.elapsed = time.perf_counter() - t0
    return best, state


def train_module(model, train: TokenizedSplit, dev: TokenizedSplit, cfg: PromptTuningConfig, *, seed: int,
                 metric: str, device, checkpoint: Checkpoint | None = None, tag: str = "", describe: str = "",
                 amp=None, on_eval: Callable | None = None, optimizer_state: dict | None = None,
                 lr_scales: dict[str, float] | None = None):
    """Train the parameters of ``model`` that require grad with ``fit``; everything else stays frozen.

    ``model(input_ids, attention_mask, mask_pos)`` returns class logits. Batches are drawn
    epoch-wise from seeded permutations (``EpochSampler``, length-bucketed with ``cfg.bucket_batches``);
    the dev score is ``metric`` on ``dev`` (see ``fit`` for the schedule and the kept weights).
    ``optimizer_state`` (from ``adam_state``) starts AdamW from carried-over moments (progressive training).
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
    num_classes = model.verbalizer.num_classes
    sampler = EpochSampler(train.lengths(), cfg.batch_size, seed, cfg.bucket_batches)

    def loss_at(step: int) -> torch.Tensor:
        return classifier_loss(model, train.batch(sampler.rows(step), device), amp)

    def dev_score(step: int) -> float:
        logits = predict(model, dev, cfg.eval_batch_size, device, amp=amp)
        return score(logits.argmax(1), dev.labels, metric, num_classes)

    best, state = fit(params, optimizer, steps=cfg.steps, lr=lambda s: lr_at(s, cfg), grad_clip=cfg.grad_clip,
                      loss_at=loss_at, dev_score=dev_score, eval_every=cfg.eval_every,
                      eval_schedule=getattr(cfg, "eval_schedule", "fixed"), checkpoint=checkpoint,
                      checkpoint_every=cfg.checkpoint_every, tag=tag, describe=describe or "training", metric=metric,
                      nan_hint=f"lower the learning rate (now {cfg.lr}) or check the data", on_eval=on_eval)
    return best, state, adam_state(optimizer, params)


def train_prompt(model, train: TokenizedSplit, dev: TokenizedSplit, cfg: PromptTuningConfig, **kwargs):
    """``train_module`` for a ``PromptModel``: returns (best prompt, TrainState)."""
    best, state, _ = train_module(model, train, dev, cfg, **kwargs)
    return best["prompt"], state
