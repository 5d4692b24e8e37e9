"""FPT steps that rules call: ``fpt_scores`` (FFN neuron scores, a cached artifact) and ``fpt_stage``
(one stage of a schedule: trains the prompt on a partial model, starting from the previous stage's
prompt and AdamW moments). The ``pt`` baseline is a one-stage schedule on the full model with the same
total number of steps, run by the same code (same sampler, evaluation, FLOPs formula and timing)."""
from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd
import torch

from ..errors import UserError
from ..flops import Meter, ModelDims
from ..io import (
    load_tensors,
    read_json,
    save_tensors,
    stable_hash,
    write_json,
    write_parquet,
)
from ..prompt_tuning.config import PromptTuningConfig
from ..prompt_tuning.model import load_prompt
from ..prompt_tuning.steps import check_lengths, initial_prompt
from ..runtime import Bundle, autocast, load_bundle, seed_everything, set_threads
from ..training import Checkpoint, load_splits, pad_id, train_module
from .config import FPTStage
from .model import StagePromptModel, stage_backbone

log = logging.getLogger(__name__)


STAGE_SEED_STRIDE = 1000  # stage i draws its batches with seed + 1000·i


def sample_rows(n: int, samples: int, seed: int = 0) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return np.sort(torch.randperm(n, generator=g)[:samples].numpy())


def fpt_scores(*, model_spec: dict, task_spec: dict, tokenized: str, output: str, samples: int = 256,
               batch_size: int = 32, threads: int = 1) -> dict:
    """FFN neuron scores (mean absolute activation) over ``samples`` training inputs."""
    from ..models.partial import ffn_scores

    set_threads(threads)
    bundle = load_bundle(model_spec)
    train = load_splits(tokenized, pad_id(bundle.tokenizer), ("train",))["train"]
    rows = sample_rows(len(train), samples)
    batches = (train.batch(rows[i:i + batch_size], bundle.device) for i in range(0, len(rows), batch_size))
    with autocast(model_spec, bundle.device):
        scores = ffn_scores(bundle.backbone, batches)
    meta = {"step": "fpt_scores", "model": model_spec["name"], "task": task_spec["name"], "samples": int(len(rows)),
            "criterion": "mean |activation| of the FFN output projection's input over real tokens",
            "config_hash": stable_hash([model_spec, task_spec, samples])}
    save_tensors(scores, output, metadata=meta)
    log.info("FFN scores of %d layers from %d training inputs -> %s", len(scores), len(rows), output)
    return meta


def load_optimizer_state(path: str) -> dict:
    tensors, meta = load_tensors(path)
    steps = meta.get("steps", {})
    state = {}
    for name, step in steps.items():
        state[name] = {"step": float(step), "exp_avg": tensors[f"{name}.exp_avg"],
                       "exp_avg_sq": tensors[f"{name}.exp_avg_sq"]}
    return state


def save_optimizer_state(state: dict, path: str, metadata: dict) -> None:
    tensors = {}
    for name, st in state.items():
        tensors[f"{name}.exp_avg"] = st["exp_avg"]
        tensors[f"{name}.exp_avg_sq"] = st["exp_avg_sq"]
    save_tensors(tensors, path, metadata={**metadata, "steps": {n: st["step"] for n, st in state.items()}})


def stage_verbalizer(bundle: Bundle, backbone, task_spec: dict, class_vectors: str, full_verbalizer):
    """The full model's verbalizer, or (``class_vectors: partial``, embedding verbalizer) one
    whose class vectors are the partial model's encoding of the label words."""
    if class_vectors == "full" or full_verbalizer.kind != "embedding" or backbone is bundle.backbone:
        return full_verbalizer
    return Bundle(backbone, bundle.tokenizer, bundle.device, bundle.spec).verbalizer(task_spec)


def fpt_stage(*, model_spec: dict, task_spec: dict, settings: dict, seed: int, method: str, stage_index: int,
              stage: dict, last: bool, tokenized: str, prompt: str, optimizer: str, curve: str, meta: str,
              selection: str = "evenly", class_vectors: str = "full", scores: str | None = None,
              previous: dict | None = None, checkpoint: str | None = None, threads: int = 1) -> dict:
    """Train the prompt for one stage of an FPT schedule (or the one stage of the PT baseline).

    ``previous``: the previous stage's ``{prompt, optimizer, meta}`` paths; the prompt and the
    AdamW moments carry over, and the accounting accumulates. Writes ``prompt`` (the final
    prompt of an intermediate stage, the best one by dev score of the last stage),
    ``optimizer`` (AdamW moments), ``curve`` and ``meta`` (FLOPs, wall time, cumulative).
    """
    set_threads(threads)
    seed_everything(seed)
    st = FPTStage.from_dict(stage)
    cfg = PromptTuningConfig.from_dict({**settings, "steps": st.steps})
    bundle = load_bundle(model_spec)
    check_lengths(bundle, cfg, model_spec["name"])
    data = load_splits(tokenized, pad_id(bundle.tokenizer), ("train", "dev"))
    full_verbalizer = bundle.verbalizer(task_spec)
    neuron_scores = load_tensors(scores)[0] if (scores and st.ffn is not None) else None
    if st.ffn is not None and neuron_scores is None:
        raise UserError(f"FPT stage {stage_index} of {method} reduces the FFN width but no neuron scores were given")
    try:
        backbone, spec = stage_backbone(bundle.backbone, st, selection, neuron_scores)
    except ValueError as e:
        raise UserError(f"FPT {method} stage {stage_index} on '{model_spec['name']}': {e}") from None
    verbalizer = stage_verbalizer(bundle, backbone, task_spec, class_vectors, full_verbalizer)
    prev_meta = {}
    opt_state = None
    if previous:
        init, _ = load_prompt(previous["prompt"])
        want = (cfg.prompt_length, bundle.backbone.hidden_size)
        if tuple(init.shape) != want:
            raise UserError(f"{previous['prompt']}: the previous stage's prompt has shape {tuple(init.shape)}, "
                            f"expected {want}; rerun the earlier stages")
        opt_state = load_optimizer_state(previous["optimizer"])
        prev_meta = read_json(previous["meta"])
        init_source = previous["prompt"]
    else:
        init, init_source = initial_prompt(bundle, cfg, seed, None)
    model = StagePromptModel(backbone, verbalizer, init)
    model.meter = Meter()
    dims = ModelDims.from_backbone(backbone, verbalizer.kind)
    provenance = {"model": model_spec["name"], "task": task_spec["name"], "seed": seed, "method": method,
                  "stage": stage_index, "last": last, "stage_spec": st.to_dict(), "kept": spec.to_dict(),
                  "selection": selection, "class_vectors": class_vectors, "verbalizer": verbalizer.kind,
                  "prompt_length": cfg.prompt_length, "hidden_size": bundle.backbone.hidden_size,
                  "settings": cfg.to_dict(), "init": init_source, "dims": dims.to_dict(),
                  "num_layers": backbone.num_layers, "full_num_layers": bundle.backbone.num_layers}
    provenance["config_hash"] = stable_hash([model_spec, task_spec, cfg.to_dict(), seed, method, stage_index,
                                             st.to_dict(), selection, class_vectors, prev_meta.get("config_hash")])
    describe = f"FPT {method} stage {stage_index} {model_spec['name']}/{task_spec['name']}/seed{seed}"
    ckpt = Checkpoint(checkpoint) if checkpoint else None
    cpu0 = time.process_time()
    best, state, final_opt = train_module(
        model, data["train"], data["dev"], cfg, seed=seed + STAGE_SEED_STRIDE * stage_index,
        metric=task_spec["metric"], device=bundle.device, checkpoint=ckpt, tag=provenance["config_hash"],
        describe=describe, amp=autocast(model_spec, bundle.device), optimizer_state=opt_state)
    cpu = max(0.0, time.process_time() - cpu0 - model.meter.eval_cpu_seconds)
    carried = best["prompt"] if last else model.prompt.detach().cpu()
    per_step = model.meter.mean_step_flops(dims, prompt_length=cfg.prompt_length)
    flops = per_step * state.step
    wall = max(0.0, state.elapsed - model.meter.eval_seconds)
    before = {"steps": prev_meta.get("cumulative_steps", 0), "flops": prev_meta.get("cumulative_flops", 0.0),
              "wall": prev_meta.get("cumulative_wall_seconds", 0.0), "cpu": prev_meta.get("cumulative_cpu_seconds", 0.0)}
    provenance.update(steps=state.step, best_dev_score=state.best_score, best_step=state.best_step,
                      final_dev_score=state.curve[-1]["dev_score"] if state.curve else None,
                      flops_per_step=per_step, flops=flops, wall_seconds=round(wall, 3),
                      eval_seconds=round(model.meter.eval_seconds, 3), train_seconds=round(state.elapsed, 3),
                      cumulative_steps=before["steps"] + state.step, cumulative_flops=before["flops"] + flops,
                      cumulative_wall_seconds=round(before["wall"] + wall, 3), cpu_seconds=round(cpu, 3),
                      cumulative_cpu_seconds=round(before["cpu"] + cpu, 3), metric=task_spec["metric"],
                      optimizer_step=final_opt["prompt"]["step"] if "prompt" in final_opt else None)
    rows = pd.DataFrame(state.curve)
    if len(rows):
        rows.insert(0, "stage", stage_index)
        rows["global_step"] = before["steps"] + rows["step"]
        rows["cumulative_flops"] = before["flops"] + rows["step"] * per_step
    write_parquet(rows, curve, metadata=provenance)
    save_optimizer_state(final_opt, optimizer, {k: provenance[k] for k in ("model", "task", "seed", "method", "stage",
                                                                            "config_hash")})
    save_tensors({"prompt": carried}, prompt, metadata=provenance)
    write_json(provenance, meta)
    if ckpt:
        ckpt.remove()
    log.info("%s: %d steps, %.3g FLOPs (%.3g per step), %.1f s training (+%.1f s evaluation)", describe, state.step,
             flops, per_step, wall, model.meter.eval_seconds)
    return provenance
