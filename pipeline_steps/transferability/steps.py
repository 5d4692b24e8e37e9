"""The transferability steps that rules call (``python -m pipeline_steps STEP``).

* ``zero_shot``: every source prompt (and random prompts) on one target task, one model load;
* ``train_projector`` / ``project`` / ``evaluate_projection``: the cross-model projector;
* ``compute_activations`` / ``indicator_table``: ON and the embedding similarities;
* ``export_peft``: a prompt as a PEFT prompt-tuning adapter.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..errors import UserError
from ..io import save_tensors, stable_hash, write_json, write_parquet
from ..models.registry import load_hf_model
from ..prompt_tuning.model import load_prompt
from ..runtime import autocast, load_bundle, seed_everything, set_threads
from ..training import load_splits, pad_id, score
from .config import OBJECTIVES, ProjectorConfig
from .indicators import (
    active_neurons,
    empty_input,
    ffn_activations,
    indicator_frame,
    layer_groups,
    load_activations,
    run_key,
)
from .model import ProjectedPromptModel, PromptProjector
from .peft_export import write_adapter
from .projection import (
    _stack_prompts,
    fit_distance,
    fit_task,
    load_projector,
    save_projector,
)

log = logging.getLogger(__name__)


def predict_many(model, data, prompts: "torch.Tensor", batch_size: int, device, amp=None) -> "np.ndarray":
    """Class logits ``[P, N, C]`` of P prompts on one split: each data batch is scored for all
    prompts in one forward pass (rows repeated per prompt), the model loaded once."""
    import torch

    model.eval()
    per_batch = max(1, batch_size // len(prompts))
    out = []
    with torch.no_grad():
        for b in data.batches(per_batch, device):
            n = b["input_ids"].shape[0]
            rep = lambda t: t.repeat(len(prompts), *([1] * (t.dim() - 1)))  # noqa: E731
            p = prompts.to(device).repeat_interleave(n, dim=0)
            with amp or torch.autocast("cpu", enabled=False):
                logits = model(rep(b["input_ids"]), rep(b["attention_mask"]), rep(b["mask_pos"]), prompt=p)
            out.append(logits.float().cpu().reshape(len(prompts), n, -1))
    return torch.cat(out, dim=1).numpy()


def zero_shot(*, model_spec: dict, target_spec: dict, tokenized: str, prompts: list[dict], random_seeds: list[int],
              output: str, batch_size: int = 64, threads: int = 1, split: str = "test") -> "pd.DataFrame":
    """Score every source prompt (and random prompts) on one target task with one model load.

    ``prompts``: ``[{"task": source task, "seed": s, "path": prompt artifact}]``. Writes rows
    ``model, source_task, target_task, seed, score, n`` (source_task ``random`` for the baseline).
    """
    import torch

    from ..errors import UserError
    from ..io import stable_hash, write_parquet
    from ..prompt_tuning.model import PromptModel, init_prompt, load_prompt
    from ..runtime import autocast, load_bundle, set_threads

    set_threads(threads)
    bundle = load_bundle(model_spec)
    data = load_splits(tokenized, pad_id(bundle.tokenizer), (split,))[split]
    rows, tensors = [], []
    for p in prompts:
        t, _ = load_prompt(p["path"])
        rows.append({"source_task": p["task"], "seed": int(p["seed"])})
        tensors.append(t.float())
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise UserError(f"zero-shot transfer on '{target_spec['name']}' with model '{model_spec['name']}': "
                        f"source prompts differ in shape {sorted(shapes)}; use one prompt_length for all tasks")
    length = tensors[0].shape[0]
    for s in random_seeds:  # the baseline: random prompts of the same length and scale
        tensors.append(init_prompt(bundle.backbone, length, "random", torch.Generator().manual_seed(10_000 + s)))
        rows.append({"source_task": "random", "seed": int(s)})
    model = PromptModel(bundle.backbone, bundle.verbalizer(target_spec), tensors[0])
    logits = predict_many(model, data, torch.stack(tensors), batch_size, bundle.device, autocast(model_spec, bundle.device))
    n_classes = len(target_spec["label_names"])
    for row, lg in zip(rows, logits):
        row.update(model=model_spec["name"], target_task=target_spec["name"], split=split, n=int(len(data)),
                   score=score(lg.argmax(1), data.labels, target_spec["metric"], n_classes))
    df = pd.DataFrame(rows)[["model", "source_task", "target_task", "seed", "split", "score", "n"]]
    write_parquet(df, output, metadata={"step": "zero_shot", "model": model_spec["name"], "target": target_spec["name"],
                                        "prompts": [p["path"] for p in prompts],
                                        "spec_hash": stable_hash([model_spec, target_spec, random_seeds])})
    return df


def compute_activations(*, model_spec: dict, prompts: list[dict], output: str, threads: int = 1) -> dict:
    """Binary FFN activation masks of every prompt of one model on the empty input.

    ``prompts``: ``[{"task", "seed", "path"}]``. Writes ``output`` (safetensors) with one bool tensor
    ``[n_layers, d_ff]`` per prompt, keyed ``"{task}/seed{seed}"``; the metadata holds the layer names,
    the empty input and each entry's prompt path and config hash.
    """
    from ..prompt_tuning.model import load_prompt
    from ..runtime import autocast, load_bundle, set_threads

    set_threads(threads)
    if not prompts:
        raise UserError(f"{output}: no prompts given")
    bundle = load_bundle(model_spec)
    name = model_spec["name"]
    masks, entries, layer_names = {}, {}, None
    for item in prompts:
        tensor, meta = load_prompt(item["path"])
        for key in ("model", "task", "seed"):
            want = name if key == "model" else item[key]
            if key in meta and meta[key] != want:
                raise UserError(f"{item['path']}: prompt artifact says {key} '{meta[key]}', expected '{want}'")
        if tensor.dim() != 2 or tensor.shape[1] != bundle.backbone.hidden_size:
            raise UserError(f"{item['path']}: prompt has shape {tuple(tensor.shape)}, expected [L, "
                            f"{bundle.backbone.hidden_size}] for model '{name}'")
        layer_names, acts = ffn_activations(bundle.backbone, bundle.tokenizer, tensor.float(),
                                            amp=autocast(model_spec, bundle.device))
        key = run_key(item["task"], item["seed"])
        masks[key] = active_neurons(acts)
        entries[key] = {"task": item["task"], "seed": int(item["seed"]), "prompt": item["path"],
                        "prompt_length": int(tensor.shape[0]), "prompt_config_hash": meta.get("config_hash"),
                        "active_fraction": round(float(masks[key].float().mean()), 6)}
        log.info("%s %s: %.1f%% of %d FFN neurons active", name, key, 100 * entries[key]["active_fraction"],
                 masks[key].numel())
    ids, mask_pos = empty_input(bundle.tokenizer)
    meta = {"step": "indicator_activations", "model": name, "model_source": model_spec["source"],
            "layers": layer_names, "ffn_size": int(next(iter(masks.values())).shape[1]),
            "empty_input_ids": ids, "mask_index": mask_pos, "threshold": "> 0", "entries": entries}
    meta["inputs_hash"] = stable_hash([model_spec, entries])
    save_tensors(masks, output, metadata=meta)
    return meta


def indicator_table(*, runs: list[dict], activations: dict[str, str], window: int, stride: int | None,
                table: str) -> pd.DataFrame:
    """Pairwise indicators of every (model, seed): ``indicators.parquet`` in the long layout
    ``model, seed, source_task, target_task, indicator, layers, value``.

    ``runs``: ``[{"model", "task", "seed", "prompt"}]``; ``activations``: ``{model: path}``.
    """
    from ..prompt_tuning.model import load_prompt

    prompts, masks, groups, sources = {}, {}, {}, {}
    for model, path in activations.items():
        tensors, meta = load_activations(path)
        groups[model] = layer_groups(meta["layers"], window, stride)
        sources[model] = (tensors, path, meta.get("inputs_hash"))
    for run in runs:
        model, task, seed = run["model"], run["task"], int(run["seed"])
        if model not in sources:
            raise UserError(f"indicators: no activations file given for model '{model}'")
        tensors, path, _ = sources[model]
        key = run_key(task, seed)
        if key not in tensors:
            raise UserError(f"{path}: no activation mask for '{key}' (re-run indicator_activations)")
        prompts[model, task, seed], _ = load_prompt(run["prompt"])
        masks[model, task, seed] = tensors[key]
    df = indicator_frame(prompts, masks, groups)
    write_parquet(df, table, metadata={
        "step": "indicator_table", "window": window, "stride": stride or window,
        "activations_hashes": {m: s[2] for m, s in sources.items()},
        "layer_groups": {m: list(g) for m, g in groups.items()}})
    log.info("%d indicator rows for %d prompts written to %s", len(df), len(prompts), table)
    return df


def train_projector(*, source_spec: dict, target_spec: dict, task_specs: list[dict], objective: str, settings: dict,
          seed: int, source_prompts: list[str], projector: str, curve: str, meta: str,
          target_prompts: list[str] | None = None, tokenized: list[str] | None = None, threads: int = 1) -> dict:
    """Train a projector from ``source_spec``'s prompts to ``target_spec`` with one objective.

    ``source_prompts[i]`` is the source model's prompt of ``task_specs[i]``; ``distance`` needs
    ``target_prompts`` (the target model's prompts of the same tasks), ``task`` needs
    ``tokenized`` (each task tokenised for the target model). Writes the projector
    (safetensors), its training curve (Parquet) and ``meta`` (JSON).
    """
    if objective not in OBJECTIVES:
        raise UserError(f"unknown projector objective '{objective}' ({' | '.join(OBJECTIVES)})")
    set_threads(threads)
    gen = seed_everything(seed)
    cfg = ProjectorConfig.from_dict(settings)
    started = time.perf_counter()
    names = [t["name"] for t in task_specs]
    if len(source_prompts) != len(names):
        raise UserError(f"projector training: {len(source_prompts)} source prompts for {len(names)} tasks {names}")
    sources = _stack_prompts(source_prompts, f"source ({source_spec['name']})")
    length, d_src = sources.shape[1:]
    describe = f"projector {source_spec['name']}->{target_spec['name']} ({objective}) on {'+'.join(names)} seed{seed}"
    provenance = {"source_model": source_spec["name"], "target_model": target_spec["name"], "objective": objective,
                  "train_tasks": names, "seed": seed, "settings": cfg.to_dict(), "prompt_length": int(length),
                  "source_prompts": source_prompts,
                  "config_hash": stable_hash([source_spec, target_spec, task_specs, objective, cfg.to_dict(), seed])}
    if objective == "distance":
        if not target_prompts or len(target_prompts) != len(names):
            raise UserError(f"{describe}: the distance objective needs the target model's prompt of every train task")
        targets = _stack_prompts(target_prompts, f"target ({target_spec['name']})")
        if targets.shape[1] != length:
            raise UserError(f"{target_prompts[0]}: target prompts have length {targets.shape[1]}, source prompts "
                            f"({source_prompts[0]}) {length}; source and target prompts must share L")
        d_tgt = targets.shape[2]
        # LayerNorm gain starts at the target prompts' typical per-token spread
        model = PromptProjector(length, d_src, d_tgt, cfg.hidden, out_scale=float(targets.std(-1).mean()),
                                generator=gen)
        rows = fit_distance(model, sources, targets, cfg)
        provenance.update(target_prompts=target_prompts, loss_start=rows[0]["loss"], loss_end=rows[-1]["loss"],
                          loss_metric="mse")
        log.info("%s: MSE %.5f -> %.5f in %d steps", describe, rows[0]["loss"], rows[-1]["loss"], cfg.steps)
    else:
        if not tokenized or len(tokenized) != len(names):
            raise UserError(f"{describe}: the task objective needs every train task tokenised for the target model")
        from ..training import load_splits, pad_id

        bundle = load_bundle(target_spec)
        d_tgt = bundle.backbone.hidden_size
        limit = bundle.backbone.max_positions
        # LayerNorm gain starts at the spread of the target's word embeddings (like init 'random')
        emb_std = float(bundle.backbone.word_embeddings.weight.detach().float().std())
        model = PromptProjector(length, d_src, d_tgt, cfg.hidden, out_scale=emb_std, generator=gen)
        models, train_data, dev_data, metrics = {}, {}, {}, {}
        for spec, src, tok in zip(task_specs, sources, tokenized):
            data = load_splits(tok, pad_id(bundle.tokenizer), ("train", "dev"))
            width = max(len(s) for s in data["train"].input_ids)
            if limit is not None and width + length > limit:
                raise UserError(f"{tok}: sequences of {width} tokens plus the prompt's {length} exceed "
                                f"'{target_spec['name']}''s {limit} positions")
            models[spec["name"]] = ProjectedPromptModel(bundle.backbone, bundle.verbalizer(spec), model, src)
            train_data[spec["name"]], dev_data[spec["name"]] = data["train"], data["dev"]
            metrics[spec["name"]] = spec["metric"]
        best, rows = fit_task(models, train_data, dev_data, metrics, cfg, seed=seed, device=bundle.device,
                              amp=autocast(target_spec, bundle.device), describe=describe)
        model.load_state_dict(best)
        model.cpu()
        top = max(rows, key=lambda r: (r["dev_score"], -r["step"]))
        provenance.update(tokenized=tokenized, loss_start=rows[0]["dev_loss"], loss_end=top["dev_loss"],
                          loss_metric="dev cross-entropy (mean over train tasks)", dev_score_start=rows[0]["dev_score"],
                          best_dev_score=top["dev_score"], best_step=top["step"])
    provenance.update(d_src=int(d_src), d_tgt=int(d_tgt), train_seconds=round(time.perf_counter() - started, 3))
    write_parquet(pd.DataFrame(rows), curve, metadata=provenance)
    save_projector(model, projector, provenance)
    write_json(provenance, meta)
    return provenance


def project(*, projector: str, source_prompt: str, output: str) -> dict:
    """Apply a trained projector to a source prompt; write the projected prompt artifact."""
    from ..prompt_tuning.model import load_prompt

    model, pmeta = load_projector(projector)
    src, smeta = load_prompt(source_prompt)
    if tuple(src.shape) != (model.length, model.d_src):
        raise UserError(f"{source_prompt}: prompt of shape {tuple(src.shape)} does not fit the projector "
                        f"{projector} (expects [{model.length}, {model.d_src}])")
    with torch.no_grad():
        out = model(src.float())
    meta = {"model": pmeta["target_model"], "task": smeta.get("task"), "seed": smeta.get("seed"),
            "prompt_length": model.length, "hidden_size": model.d_tgt, "projected_from": source_prompt,
            "source_model": pmeta["source_model"], "projector": projector, "objective": pmeta["objective"],
            "train_tasks": pmeta["train_tasks"],
            "config_hash": stable_hash([pmeta["config_hash"], smeta.get("config_hash"), source_prompt])}
    save_tensors({"prompt": out}, output, metadata=meta)
    return meta


def evaluate_projection(*, target_spec: dict, task_spec: dict, projector: str, source_prompt: str, tokenized: str,
             prompt: str, predictions: str, scores: str, target_prompt: str | None = None,
             batch_size: int = 64, threads: int = 1, split: str = "test") -> dict:
    """Zero-shot cross-model transfer: project the task's source prompt, score it with the target model.

    Writes the projected ``prompt`` (a prompt artifact of the target model, also the TPT
    initialization), test ``predictions`` and ``scores`` (JSON). With ``target_prompt`` (the
    target model's own prompt of the task) the scores also hold the MSE and mean per-token
    cosine between the projected and the target's own prompt.
    """
    from ..prompt_tuning.model import load_prompt
    from ..prompt_tuning.steps import evaluate as evaluate_prompt

    pmeta = project(projector=projector, source_prompt=source_prompt, output=prompt)
    result = evaluate_prompt(model_spec=target_spec, task_spec=task_spec, prompt=prompt, tokenized=tokenized,
                             predictions=predictions, scores=scores, batch_size=batch_size, threads=threads,
                             split=split)
    result.update(source_model=pmeta["source_model"], objective=pmeta["objective"],
                  train_tasks=pmeta["train_tasks"], projector=projector, source_prompt=source_prompt)
    if target_prompt:
        own, _ = load_prompt(target_prompt)
        projected, _ = load_prompt(prompt)
        if own.shape == projected.shape:
            result["mse_to_target_prompt"] = F.mse_loss(projected.float(), own.float()).item()
            result["cosine_to_target_prompt"] = F.cosine_similarity(projected.float(), own.float(), dim=-1).mean().item()
    write_json(result, scores)
    log.info("zero-shot %s -> %s (%s) on %s: %s %.4f", pmeta["source_model"], target_spec["name"],
             pmeta["objective"], task_spec["name"], result["metric"], result["score"])
    return result


def export_peft(*, model_spec: dict, prompt: str, out_dir: str) -> dict:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` (+ our provenance) into ``out_dir``.

    The workflow exports while evaluating (``evaluate-prompt`` with ``peft_dir``: one model load); this
    step is the stand-alone way."""
    tensor, meta = load_prompt(prompt)
    return write_adapter(load_hf_model(model_spec), tensor, meta, model_spec, prompt, out_dir)
