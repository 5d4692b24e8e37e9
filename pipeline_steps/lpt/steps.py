"""LPT step that rules call: ``lpt_run`` profiles (step time, peak memory), trains and tests one method;
``pt`` is input prompt tuning on the same model, task, batch and length."""
from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd
import torch

from ..errors import UserError
from ..flops import Meter, ModelDims, peak_memory
from ..io import save_tensors, stable_hash, write_json, write_parquet
from ..models.registry import load_model_config
from ..prompt_tuning.config import PromptTuningConfig
from ..prompt_tuning.model import init_prompt
from ..prompt_tuning.steps import check_lengths
from ..runtime import Bundle, autocast, load_bundle, seed_everything, set_threads
from ..training import (
    Checkpoint,
    TokenizedSplit,
    load_splits,
    pad_id,
    predict,
    score,
    train_module,
    trainable,
)
from .config import LatePromptConfig
from .model import (
    LatePromptModel,
    MeteredLatePromptModel,
    MeteredPromptModel,
    build_generator,
)

log = logging.getLogger(__name__)


def build_lpt_model(bundle: Bundle, verbalizer, late: dict | None, cfg: PromptTuningConfig, seed: int):
    """``late is None``: input prompt tuning (``PromptModel``); else a ``LatePromptModel``."""
    gen = torch.Generator().manual_seed(seed)
    if late is None:
        init = init_prompt(bundle.backbone, cfg.prompt_length, cfg.init, gen, bundle.tokenizer.all_special_ids)
        return MeteredPromptModel(bundle.backbone, verbalizer, init), 0
    lc = LatePromptConfig.from_dict(late)
    k = lc.layer(LatePromptModel.depth(bundle.backbone))
    torch.manual_seed(seed)
    init = None
    if lc.generator == "naive":
        init = init_prompt(bundle.backbone, lc.prompt_length, cfg.init, gen, bundle.tokenizer.all_special_ids)
    generator = build_generator(lc, bundle.backbone.hidden_size, init)
    return MeteredLatePromptModel(bundle.backbone, verbalizer, generator, k, lc.prompt_length), k


def profile_steps(model, train: TokenizedSplit, cfg: PromptTuningConfig, device, steps: int, seed: int = 0,
                  amp=None, warmup: int = 1) -> dict:
    """Time ``steps`` training steps (after ``warmup``) and measure peak memory over all of them.

    ``step_seconds``/``step_cpu_seconds``: the median wall/CPU time of a step (forward,
    backward, AdamW update).
    Same batches for every method (a seeded draw of the training split); a fresh AdamW; the
    trainable parameters are restored afterwards. Peak memory: see ``flops.peak_memory``.
    """
    import torch.nn.functional as F

    params = trainable(model)
    saved = {n: p.detach().clone() for n, p in params.items()}
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train), generator=g).numpy()
    batches = [order[np.arange(i * cfg.batch_size, (i + 1) * cfg.batch_size) % len(order)]
               for i in range(warmup + steps)]
    opt = torch.optim.AdamW(list(params.values()), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    meter, model.meter = getattr(model, "meter", None), None
    sync = (lambda: torch.cuda.synchronize(device)) if torch.device(device).type == "cuda" else (lambda: None)
    times, cpu_times = [], []
    try:
        with peak_memory(device) as mem:
            for i, rows in enumerate(batches):
                b = train.batch(rows, device)
                sync()
                t0, c0 = time.perf_counter(), time.process_time()
                with amp or torch.autocast("cpu", enabled=False):
                    logits = model(b["input_ids"], b["attention_mask"], b["mask_pos"])
                loss = F.cross_entropy(logits.float(), b["labels"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sync()
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
                    cpu_times.append(time.process_time() - c0)
    finally:
        model.meter = meter
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(saved[n])
    return {"step_seconds": float(np.median(times)), "step_seconds_mean": float(np.mean(times)),
            "step_cpu_seconds": float(np.median(cpu_times)), "profile_steps": steps, "peak_memory_mb": round(mem.peak_mb, 2),
            "baseline_memory_mb": round(mem.baseline_mb, 2),
            "activation_memory_mb": round(mem.peak_mb - mem.baseline_mb, 2), "memory_method": mem.method,
            "device": str(device)}


def config_depth(model_config) -> int:
    """Number of layers of the stack the late prompt enters (T5: the encoder's), from the HF config."""
    return int(getattr(model_config, "num_hidden_layers", None) or model_config.num_layers)


def lpt_run(*, model_spec: dict, task_spec: dict, settings: dict, seed: int, method: str, tokenized: str,
            weights: str, curve: str, meta: str, predictions: str, scores: str, late: dict | None = None,
            profile: int = 10, checkpoint: str | None = None, threads: int = 1) -> dict:
    """One LPT (or input-PT, ``late=None``) run: profile step time and peak memory first (in a
    fresh process: nothing has trained yet), then train, then score the test split."""
    set_threads(threads)
    seed_everything(seed)
    cfg = PromptTuningConfig.from_dict(settings)
    if late is not None:  # the insert layer against the model's depth, before the weights load
        depth = config_depth(load_model_config(model_spec))
        try:
            LatePromptConfig.from_dict(late).layer(depth)
        except ValueError as e:
            raise UserError(f"LPT {method} on '{model_spec['name']}': {e}") from None
    bundle = load_bundle(model_spec)
    if late is None:
        check_lengths(bundle, cfg, model_spec["name"])
    data = load_splits(tokenized, pad_id(bundle.tokenizer))
    verbalizer = bundle.verbalizer(task_spec)
    amp = autocast(model_spec, bundle.device)
    try:
        model, k = build_lpt_model(bundle, verbalizer, late, cfg, seed)
    except ValueError as e:
        raise UserError(f"LPT {method} on '{model_spec['name']}': {e}") from None
    length = cfg.prompt_length if late is None else late["prompt_length"]
    n_trainable = sum(p.numel() for p in trainable(model).values())
    prof = profile_steps(model, data["train"], cfg, bundle.device, profile, seed=seed, amp=amp) if profile else {}
    model.meter = Meter()
    provenance = {"model": model_spec["name"], "task": task_spec["name"], "seed": seed, "method": method,
                  "insert_layer": k, "prompt_length": length, "late": late, "verbalizer": verbalizer.kind,
                  "settings": cfg.to_dict(), "trainable_params": n_trainable, "num_layers": model_depth(bundle)}
    provenance["config_hash"] = stable_hash([model_spec, task_spec, cfg.to_dict(), seed, method, late])
    describe = f"LPT {method} {model_spec['name']}/{task_spec['name']}/seed{seed}"
    ckpt = Checkpoint(checkpoint) if checkpoint else None
    cpu0 = time.process_time()
    best, state, _ = train_module(model, data["train"], data["dev"], cfg, seed=seed, metric=task_spec["metric"],
                                  device=bundle.device, checkpoint=ckpt, tag=provenance["config_hash"],
                                  describe=describe, amp=amp)
    train_cpu = max(0.0, time.process_time() - cpu0 - model.meter.eval_cpu_seconds)  # as FPT: dev evaluation excluded
    with torch.no_grad():
        for n, p in trainable(model).items():
            p.copy_(best[n])
    dims = ModelDims.from_backbone(bundle.backbone, verbalizer.kind)
    flops_kw = {"prompt_length": length, "insert_layer": k, "grad_below": late is None}
    per_step = model.meter.mean_step_flops(dims, **flops_kw)
    logits = predict(model, data["test"], cfg.eval_batch_size, bundle.device, amp=amp)
    preds = logits.argmax(1)
    test_score = score(preds, data["test"].labels, task_spec["metric"], verbalizer.num_classes)
    provenance.update(prof, steps=state.step, best_dev_score=state.best_score, best_step=state.best_step,
                      train_seconds=round(max(0.0, state.elapsed - model.meter.eval_seconds), 3),
                      train_cpu_seconds=round(train_cpu, 3),
                      flops_per_step=per_step, metric=task_spec["metric"], score=test_score,
                      n_test=int(len(preds)))
    frame = pd.DataFrame({"label": data["test"].labels, "pred": preds})
    frame[[f"logit_{i}" for i in range(logits.shape[1])]] = logits
    write_parquet(frame, predictions, metadata=provenance)
    write_parquet(pd.DataFrame(state.curve), curve, metadata=provenance)
    save_tensors(best, weights, metadata=provenance)
    write_json({"model": model_spec["name"], "task": task_spec["name"], "seed": seed, "method": method,
                "split": "test", "metric": task_spec["metric"], "score": test_score, "n": int(len(preds))}, scores)
    write_json(provenance, meta)
    if ckpt:
        ckpt.remove()
    log.info("%s: test %s %.4f; %.4f s/step, peak %.0f MB (+%.0f MB over the loaded model), %d trainable", describe,
             task_spec["metric"], test_score, prof.get("step_seconds", float("nan")),
             prof.get("peak_memory_mb", float("nan")), prof.get("activation_memory_mb", float("nan")), n_trainable)
    return provenance


def model_depth(bundle: Bundle) -> int:
    return LatePromptModel.depth(bundle.backbone)
