"""Steps (rules call these) that train a soft prompt on one (model, task, seed) and evaluate it."""
from __future__ import annotations

import logging

import pandas as pd
import torch

from ..errors import UserError
from ..io import save_tensors, stable_hash, write_json, write_parquet
from ..models.backbone import position_limit
from ..models.registry import load_model_config, load_tokenizer
from ..runtime import autocast, load_bundle, seed_everything, set_threads
from ..training import Checkpoint, load_splits, pad_id, predict, score, train_prompt
from ..verbalizers import label_word_ids
from .config import PromptTuningConfig
from .model import PromptModel, init_prompt, load_prompt

log = logging.getLogger(__name__)


def check_lengths(bundle, cfg: PromptTuningConfig, model_name: str, limit: int | None = None) -> None:
    """``limit``: the model's position limit when no ``bundle`` is loaded yet (see ``preflight``)."""
    limit = bundle.backbone.max_positions if bundle is not None else limit
    if limit is not None and cfg.prompt_length + cfg.max_length > limit:
        raise UserError(f"model '{model_name}': prompt_length {cfg.prompt_length} + max_length {cfg.max_length} "
                        f"exceeds the model's {limit} positions; lower one of them")


def check_label_words(tokenizer, task_spec: dict, model_name: str) -> None:
    try:
        label_word_ids(tokenizer, task_spec["label_words"], task_spec["label_names"])
    except UserError as e:
        raise UserError(f"tasks.{task_spec['name']}.label_words with model '{model_name}': {e}") from None


def preflight(model_spec: dict, task_spec: dict, cfg: PromptTuningConfig) -> None:
    """Cheap checks before the weights load and training starts (tokenizer and model config only)."""
    check_label_words(load_tokenizer(model_spec), task_spec, model_spec["name"])
    check_lengths(None, cfg, model_spec["name"], limit=position_limit(load_model_config(model_spec)))


def initial_prompt(bundle, cfg: PromptTuningConfig, seed: int, init_from: str | None,
                   task_name: str = "") -> tuple[torch.Tensor, str]:
    """The starting prompt: from an artifact (transfer as initialization) or drawn per ``cfg.init``."""
    if init_from:
        tensor, _ = load_prompt(init_from)
        want = (cfg.prompt_length, bundle.backbone.hidden_size)
        if tuple(tensor.shape) != want:
            raise UserError(f"{init_from}: initial prompt has shape {tuple(tensor.shape)}, expected {want} "
                            f"(prompt_length x hidden size of '{bundle.spec['name']}')")
        return tensor.float(), init_from
    # seeded by (task, seed): prompts of different tasks must not share a starting point, or their
    # similarity (a transferability indicator) would partly measure the shared initialization
    gen = torch.Generator().manual_seed(int(stable_hash([task_name, seed]), 16) % (2**31))
    return init_prompt(bundle.backbone, cfg.prompt_length, cfg.init, gen, bundle.tokenizer.all_special_ids), cfg.init


def train(*, model_spec: dict, task_spec: dict, settings: dict, seed: int, tokenized: str, prompt: str,
          curve: str, meta: str, checkpoint: str | None = None, init_from: str | None = None,
          threads: int = 1) -> dict:
    """Train a soft prompt; write ``prompt`` (safetensors), ``curve`` (Parquet), ``meta`` (JSON).

    ``init_from``: a prompt artifact to start from (transfer as initialization) instead of ``settings.init``.
    """
    set_threads(threads)
    seed_everything(seed)
    cfg = PromptTuningConfig.from_dict(settings)
    preflight(model_spec, task_spec, cfg)
    bundle = load_bundle(model_spec)
    data = load_splits(tokenized, pad_id(bundle.tokenizer), ("train", "dev"))
    verbalizer = bundle.verbalizer(task_spec)
    init, init_source = initial_prompt(bundle, cfg, seed, init_from, task_spec["name"])
    model = PromptModel(bundle.backbone, verbalizer, init)
    provenance = {"model": model_spec["name"], "model_source": model_spec["source"], "task": task_spec["name"],
                  "seed": seed, "prompt_length": cfg.prompt_length, "verbalizer": verbalizer.kind,
                  "hidden_size": bundle.backbone.hidden_size, "settings": cfg.to_dict(), "init": init_source}
    provenance["config_hash"] = stable_hash([model_spec, task_spec, cfg.to_dict(), seed, init_source])
    describe = f"prompt tuning {model_spec['name']}/{task_spec['name']}/seed{seed}"
    ckpt = Checkpoint(checkpoint) if checkpoint else None
    best, state = train_prompt(model, data["train"], data["dev"], cfg, seed=seed, metric=task_spec["metric"],
                               device=bundle.device, checkpoint=ckpt, tag=provenance["config_hash"],
                               describe=describe, amp=autocast(model_spec, bundle.device))
    provenance.update(best_dev_score=state.best_score, best_step=state.best_step, steps=state.step,
                      train_seconds=round(state.elapsed, 3), metric=task_spec["metric"])
    write_parquet(pd.DataFrame(state.curve), curve, metadata=provenance)
    save_tensors({"prompt": best}, prompt, metadata=provenance)
    write_json(provenance, meta)
    if ckpt:
        ckpt.remove()
    return provenance


def evaluate(*, model_spec: dict, task_spec: dict, prompt: str, tokenized: str, predictions: str,
             scores: str, batch_size: int = 64, threads: int = 1, split: str = "test",
             peft_dir: str | None = None) -> dict:
    """Score a prompt on a task's split; write per-example predictions (Parquet) and scores (JSON).

    ``peft_dir``: also export the prompt there as a PEFT adapter, with the model already loaded
    (one job and one model load instead of two)."""
    set_threads(threads)
    bundle = load_bundle(model_spec)
    tensor, meta = load_prompt(prompt)
    if tensor.shape[1] != bundle.backbone.hidden_size:
        raise UserError(f"{prompt}: prompt width {tensor.shape[1]} does not match model "
                        f"'{model_spec['name']}' (hidden {bundle.backbone.hidden_size})")
    data = load_splits(tokenized, pad_id(bundle.tokenizer), (split,))[split]
    model = PromptModel(bundle.backbone, bundle.verbalizer(task_spec), tensor)
    logits = predict(model, data, batch_size, bundle.device, amp=autocast(model_spec, bundle.device))
    preds = logits.argmax(1)
    value = score(preds, data.labels, task_spec["metric"], len(task_spec["label_names"]))
    result = {"model": model_spec["name"], "task": task_spec["name"], "seed": meta.get("seed"),
              "split": split, "metric": task_spec["metric"], "score": value, "n": int(len(preds)),
              "prompt_config_hash": meta.get("config_hash")}
    frame = pd.DataFrame({"label": data.labels, "pred": preds})
    frame[[f"logit_{i}" for i in range(logits.shape[1])]] = logits
    write_parquet(frame, predictions, metadata=result)
    write_json(result, scores)
    log.info("%s/%s: %s %s = %.4f (n=%d)", model_spec["name"], task_spec["name"], split, task_spec["metric"],
             value, len(preds))
    if peft_dir:
        from ..transferability.peft_export import write_adapter

        write_adapter(bundle.backbone.hf, tensor, meta, model_spec, prompt, peft_dir)
    return result
