"""Fitting the cross-model prompt projector (Su et al., NAACL 2022): the ``distance`` objective (MSE
onto the target model's own prompts) and the ``task`` objective (target task loss through the frozen
target PLM, tasks alternating per step). Saving and loading a projector artifact."""
from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from ..io import load_tensors, save_tensors
from ..training import EpochSampler, TokenizedSplit, lr_at, optimizer_step, predict, score, trainable, training_step
from .config import ProjectorConfig
from .model import ProjectedPromptModel, PromptProjector

log = logging.getLogger(__name__)


def fit_distance(projector: PromptProjector, sources: torch.Tensor, targets: torch.Tensor,
                 cfg: ProjectorConfig) -> list[dict]:
    """Distance minimizing: MSE between ``projector(sources)`` and ``targets`` (``[N, L, d]``).

    All N prompt pairs form every step's batch (N is the number of training tasks). Returns
    the curve (``step, loss``; step 0 is the untrained projector); the projector keeps its final weights.
    """
    params = trainable(projector)
    optimizer = torch.optim.AdamW(list(params.values()), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def loss_now() -> float:
        with torch.no_grad():
            return F.mse_loss(projector(sources), targets).item()

    curve = [{"step": 0, "loss": loss_now()}]
    projector.train()
    for step in range(cfg.steps):
        optimizer_step(lambda: F.mse_loss(projector(sources), targets), optimizer, params, lr_at(step, cfg),
                       cfg.grad_clip, "projector (distance): loss is {loss} at step %d; lower its learning rate "
                                      "(now %g)" % (step + 1, cfg.lr))
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            curve.append({"step": step + 1, "loss": loss_now()})
    projector.eval()
    return curve


def _dev_eval(models: dict, dev: dict, metrics: dict, cfg: ProjectorConfig, device, amp) -> dict:
    out = {}
    for task, model in models.items():
        logits = torch.from_numpy(predict(model, dev[task], cfg.eval_batch_size, device, amp=amp))
        labels = torch.from_numpy(dev[task].labels.astype(np.int64))
        out[task] = (F.cross_entropy(logits, labels).item(),
                     score(logits.argmax(1).numpy(), dev[task].labels, metrics[task], model.verbalizer.num_classes))
    return out


def fit_task(models: dict[str, ProjectedPromptModel], train: dict[str, TokenizedSplit],
             dev: dict[str, TokenizedSplit], metrics: dict[str, str], cfg: ProjectorConfig, *, seed: int,
             device, amp=None, describe: str = "") -> tuple[dict, list[dict]]:
    """Task tuning: train the projector shared by ``models`` (one per task) on the tasks' losses.

    Tasks alternate step by step (step s trains task s mod n on its own next batch, drawn
    like ``train_module`` draws them, with a per-task seed), so every task weighs the same
    whatever its size and each batch keeps its own verbalizer. Every ``eval_every`` steps
    (and at step 0) the projector is scored on every task's dev split; the best mean dev
    score (earliest on ties) selects the weights returned. Returns (best weights, curve).
    """
    tasks = list(models)
    projector = models[tasks[0]].projector
    if any(m.projector is not projector for m in models.values()):
        raise ValueError("fit_task needs models that share one projector")
    params = trainable(projector)
    for m in models.values():
        extra = set(trainable(m)) - {f"projector.{n}" for n in params}
        if extra:
            raise ValueError(f"only the projector may train; also trainable: {sorted(extra)}")
    optimizer = torch.optim.AdamW(list(params.values()), lr=cfg.lr, weight_decay=cfg.weight_decay)
    curve, losses = [], []
    best, best_score = None, -math.inf

    def evaluate(step: int) -> None:
        nonlocal best, best_score
        res = _dev_eval(models, dev, metrics, cfg, device, amp)
        row = {"step": step, "train_loss": float(np.mean(losses)) if losses else math.nan,
               "dev_loss": float(np.mean([r[0] for r in res.values()])),
               "dev_score": float(np.mean([r[1] for r in res.values()]))}
        row.update({f"dev_score_{t}": r[1] for t, r in res.items()})
        curve.append(row)
        losses.clear()
        if row["dev_score"] > best_score:
            best_score = row["dev_score"]
            best = {n: p.detach().cpu().clone() for n, p in params.items()}
        log.info("%s: step %d/%d train loss %.4f dev loss %.4f dev score %.4f (%s)", describe, step, cfg.steps,
                 row["train_loss"], row["dev_loss"], row["dev_score"],
                 ", ".join(f"{t} {r[1]:.3f}" for t, r in res.items()))

    samplers = [EpochSampler(len(train[task]), cfg.batch_size, seed * 7919 + t) for t, task in enumerate(tasks)]
    evaluate(0)
    for step in range(cfg.steps):
        t = step % len(tasks)
        task = tasks[t]
        rows = samplers[t].rows(step // len(tasks))
        losses.append(training_step(
            models[task], train[task].batch(rows, device), optimizer, params, lr_at(step, cfg), cfg.grad_clip,
            amp=amp, on_nan=f"{describe}: loss is {{loss}} at step {step + 1} (task {task}); "
                            f"lower the projector's learning rate (now {cfg.lr})"))
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            evaluate(step + 1)
    return best, curve


def _stack_prompts(paths: list[str], what: str) -> torch.Tensor:
    from ..prompt_tuning.model import load_prompt

    tensors = [load_prompt(p)[0].float() for p in paths]
    for p, t in zip(paths, tensors):
        if t.dim() != 2 or t.shape != tensors[0].shape:
            raise UserError(f"{p}: {what} prompt has shape {tuple(t.shape)}, but {paths[0]} has "
                            f"{tuple(tensors[0].shape)}; the projector needs prompts of one shape [L, d]")
    return torch.stack(tensors)


def save_projector(projector: PromptProjector, path: str, metadata: dict) -> None:
    tensors = {k: v for k, v in projector.state_dict().items()}
    save_tensors(tensors, path, metadata={**metadata, "projector": projector.shape_dict()})


def load_projector(path: str) -> tuple[PromptProjector, dict]:
    tensors, meta = load_tensors(path)
    if "projector" not in meta:
        raise UserError(f"{path}: not a projector artifact (no 'projector' metadata)")
    projector = PromptProjector(**meta["projector"])
    projector.load_state_dict(tensors)
    projector.eval()
    return projector, meta
