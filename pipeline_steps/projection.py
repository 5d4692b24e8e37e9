"""Cross-model prompt transfer through a trained projector (Su et al., NAACL 2022).

Steps (each a ``python -m pipeline_steps`` entry, one Snakemake rule each):

* ``train``: fit a ``PromptProjector`` from a source PLM's prompts to a target PLM with one
  objective: ``distance`` (MSE onto the target model's own prompts of the same tasks) or
  ``task`` (the target task loss through the frozen target PLM, tasks alternating per step);
* ``evaluate``: project the source prompt of a held-out task and score it zero-shot with the
  target model (the projected prompt is also the initialization of a TPT run, rule
  ``tpt_projected``, which is the ordinary ``train-prompt`` step with ``init_from``);
* ``table``: ``results/tables/cross_model.parquet`` with zero-shot scores and init speedups.

Helpers ``pairs`` and ``projector_settings`` read the config's ``projector:`` section (its checks
are in ``config.check_projector``).
"""
from __future__ import annotations

import copy
import logging
import math
import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .config import pair_name, pt_settings
from .errors import UserError
from .io import load_tensors, read_json, read_parquet, save_tensors, stable_hash, write_json, write_parquet
from .runtime import autocast, load_bundle, seed_everything, set_threads
from .training import TokenizedSplit, lr_at, predict, score, trainable, training_step
from .transfer import init_speedup
from .tuners.projector import OBJECTIVES, ProjectedPromptModel, ProjectorConfig, PromptProjector

log = logging.getLogger(__name__)

SPEEDUP_FRACTION = 0.9  # init speedup threshold: this fraction of the random-init run's best dev score


# --- config ---------------------------------------------------------------------------------------

def pairs(cfg: dict) -> dict[str, dict]:
    """The configured projector pairs by name (default name ``{source}-to-{target}``)."""
    out = {}
    for pair in cfg.get("projector", {}).get("pairs", []):
        p = copy.deepcopy(pair)
        p["name"] = pair_name(pair)
        out[p["name"]] = p
    return out


def projector_settings(cfg: dict, objective: str) -> dict:
    """``ProjectorConfig`` fields for one objective: the shared ``hidden`` plus the objective's section."""
    section = cfg["projector"]
    return ProjectorConfig.from_dict({"hidden": section["hidden"], **section[objective]}).to_dict()


# --- paths for the rules (workflow/rules/projection.smk) --------------------------------------------

def model_path(pattern: str, pair: dict, role: str, task: str, seed) -> str:
    """``pattern`` (with ``{model}``, ``{task}``, ``{seed}``) for the pair's ``role`` model (source|target)."""
    return pattern.format(model=pair[role], task=task, seed=seed)


def projector_inputs(pair: dict, objective: str, seed, prompt: str, tokens: str) -> dict[str, list[str]]:
    """Input files of ``train_projector`` (named like ``train``'s arguments): source prompts of the
    train tasks, plus the target's own prompts of the same tasks (distance) or the tasks tokenised
    for the target (task)."""
    files = {"source_prompts": [model_path(prompt, pair, "source", t, seed) for t in pair["train_tasks"]]}
    if objective == "distance":
        files["target_prompts"] = [model_path(prompt, pair, "target", t, seed) for t in pair["train_tasks"]]
    else:
        files["tokenized"] = [model_path(tokens, pair, "target", t, seed) for t in pair["train_tasks"]]
    return files


def summary_runs(pairs_by_name: dict, objectives: list[str], seeds: list, run_dir: str, task_dir: str,
                 prompt_dir: str, eval_dir: str) -> list[dict]:
    """The files ``table`` reads, one dict per (pair, objective, seed, eval task)."""
    runs = []
    for name, pair in pairs_by_name.items():
        for objective in objectives:
            for seed in seeds:
                for task in pair["eval_tasks"]:
                    w = dict(pair=name, objective=objective, seed=seed, task=task)
                    own = dict(model=pair["target"], task=task, seed=seed)
                    runs.append({"pair": name,
                                 "projector_meta": f"{run_dir.format(**w)}/meta.json",
                                 "zero_shot": f"{task_dir.format(**w)}/scores.json",
                                 "tpt_curve": f"{task_dir.format(**w)}/tpt/curve.parquet",
                                 "random_curve": f"{prompt_dir.format(**own)}/curve.parquet",
                                 "target_scores": f"{eval_dir.format(**own)}/scores.json"})
    return runs


# --- training -------------------------------------------------------------------------------------

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
        for g in optimizer.param_groups:
            g["lr"] = lr_at(step, cfg)
        loss = F.mse_loss(projector(sources), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.grad_clip)
        optimizer.step()
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            curve.append({"step": step + 1, "loss": loss_now()})
    projector.eval()
    return curve


def _rows(n: int, batch_size: int, seed: int, k: int) -> np.ndarray:
    """Rows of the ``k``-th batch of a split of ``n`` examples: epoch-wise seeded permutations."""
    per_epoch = max(1, n // batch_size)
    epoch, pos = divmod(k, per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)[pos * batch_size:(pos + 1) * batch_size].numpy()


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

    evaluate(0)
    for step in range(cfg.steps):
        t = step % len(tasks)
        task = tasks[t]
        rows = _rows(len(train[task]), cfg.batch_size, seed * 7919 + t, step // len(tasks))
        losses.append(training_step(
            models[task], train[task].batch(rows, device), optimizer, params, lr_at(step, cfg), cfg.grad_clip,
            amp=amp, on_nan=f"{describe}: loss is {{loss}} at step {step + 1} (task {task}); "
                            f"lower the projector's learning rate (now {cfg.lr})"))
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            evaluate(step + 1)
    return best, curve


def _stack_prompts(paths: list[str], what: str) -> torch.Tensor:
    from .prompt_tuning.model import load_prompt

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


def train(*, source_spec: dict, target_spec: dict, task_specs: list[dict], objective: str, settings: dict,
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
        from .training import load_splits, pad_id

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


# --- evaluation -----------------------------------------------------------------------------------

def project(*, projector: str, source_prompt: str, output: str) -> dict:
    """Apply a trained projector to a source prompt; write the projected prompt artifact."""
    from .prompt_tuning.model import load_prompt

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


def evaluate(*, target_spec: dict, task_spec: dict, projector: str, source_prompt: str, tokenized: str,
             prompt: str, predictions: str, scores: str, target_prompt: str | None = None,
             batch_size: int = 64, threads: int = 1, split: str = "test") -> dict:
    """Zero-shot cross-model transfer: project the task's source prompt, score it with the target model.

    Writes the projected ``prompt`` (a prompt artifact of the target model, also the TPT
    initialization), test ``predictions`` and ``scores`` (JSON). With ``target_prompt`` (the
    target model's own prompt of the task) the scores also hold the MSE and mean per-token
    cosine between the projected and the target's own prompt.
    """
    from .prompt_tuning.steps import evaluate as evaluate_prompt
    from .prompt_tuning.model import load_prompt

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


# --- summary --------------------------------------------------------------------------------------

def table(*, runs: list[dict], table: str, figure: str | None = None) -> pd.DataFrame:
    """``cross_model.parquet``: one row per (pair, objective, seed, target task).

    Each run names its files: ``projector_meta``, ``zero_shot`` (scores JSON of ``evaluate``),
    ``target_scores`` (the target model's own prompt's scores), ``tpt_curve`` (training from the
    projected prompt) and ``random_curve`` (the target's own random-init run, same settings).
    """
    rows = []
    for run in runs:
        pmeta, zs = read_json(run["projector_meta"]), read_json(run["zero_shot"])
        own = read_json(run["target_scores"]) if run.get("target_scores") else {}
        row = {"pair": run["pair"], "source_model": pmeta["source_model"], "target_model": pmeta["target_model"],
               "objective": pmeta["objective"], "train_tasks": ",".join(pmeta["train_tasks"]),
               "target_task": zs["task"], "held_out": zs["task"] not in pmeta["train_tasks"],
               "seed": pmeta["seed"], "metric": zs["metric"], "zero_shot_score": zs["score"],
               "target_prompt_score": own.get("score", math.nan), "init_speedup": math.nan,
               "init_steps_to_reach": math.nan, "random_steps_to_reach": math.nan,
               "init_first_dev": math.nan, "random_first_dev": math.nan,
               "init_best_dev": math.nan, "random_best_dev": math.nan,
               "mse_to_target_prompt": zs.get("mse_to_target_prompt", math.nan),
               "cosine_to_target_prompt": zs.get("cosine_to_target_prompt", math.nan),
               "projector_loss_start": pmeta["loss_start"], "projector_loss_end": pmeta["loss_end"],
               "n_test": zs["n"], "projector_config_hash": pmeta["config_hash"]}
        if run.get("tpt_curve") and run.get("random_curve"):
            c_init, c_rand = read_parquet(run["tpt_curve"]), read_parquet(run["random_curve"])
            sp = init_speedup(c_init, c_rand, SPEEDUP_FRACTION)
            row.update(init_speedup=sp["speedup"], init_steps_to_reach=sp["steps_to_reach"],
                       random_steps_to_reach=sp["random_steps_to_reach"],
                       init_first_dev=float(c_init["dev_score"].iloc[0]), random_first_dev=float(c_rand["dev_score"].iloc[0]),
                       init_best_dev=float(c_init["dev_score"].max()), random_best_dev=float(c_rand["dev_score"].max()))
        rows.append(row)
    keys = ["pair", "objective", "seed", "target_task"]
    df = pd.DataFrame(rows)
    if len(df):
        df = df.sort_values(keys).reset_index(drop=True)
    write_parquet(df, table, metadata={"step": "summarise_projection", "speedup_fraction": SPEEDUP_FRACTION,
                                       "inputs_hash": stable_hash(rows)})
    if figure:
        _figure(df, figure)
    log.info("cross-model table: %d rows written to %s", len(df), table)
    return df


def _figure(df: pd.DataFrame, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .figures import save_figure

    groups = list(df.groupby(["source_model", "target_model"])) if len(df) else []
    fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(1 + 4.5 * max(1, len(groups)), 3.6), squeeze=False)
    for ax, ((src, tgt), part) in zip(axes[0], groups):
        means = part.groupby(["target_task", "objective"])["zero_shot_score"].mean().unstack("objective")
        means["target's own prompt"] = part.groupby("target_task")["target_prompt_score"].mean()
        means.plot.bar(ax=ax, rot=20, width=0.8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("test score (mean over seeds)")
        ax.set_title(f"{src} -> {tgt}: zero-shot projected prompts", fontsize=9)
        ax.legend(fontsize=7)
    save_figure(fig, path)
