"""Steps and tables of the efficient prompt-tuning methods: FPT (progressive stages) and LPT
(late prompts), with compute and memory accounting.

FPT: ``fpt_scores`` (FFN neuron scores, a cached artifact), ``fpt_stage`` (one stage of a
schedule: trains the prompt on a partial model, starting from the previous stage's prompt
and AdamW moments), ``summarise_fpt``. The ``pt`` baseline is a one-stage schedule on the
full model with the same total number of steps, run by the same code (same sampler,
evaluation, FLOPs formula and timing), so that ratios compare like with like.

LPT: ``lpt_run`` (profile, train, test one method; ``pt`` is input prompt tuning on the
same model, task, batch and length), ``summarise_lpt``.

Config queries used by the Snakemake rules (``fpt_*``/``lpt_*``) live here too.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd
import torch

from .errors import UserError
from .flops import Meter, MeteredForward, ModelDims, peak_memory
from .io import load_tensors, read_json, read_parquet, save_tensors, stable_hash, write_json, write_parquet
from .runtime import Bundle, autocast, load_bundle, seed_everything, set_threads
from .prompt_tuning.model import load_prompt
from .prompt_tuning.steps import check_lengths, initial_prompt
from .training import Checkpoint, TokenizedSplit, predict, score, train_module, trainable
from .tuners.fpt import METHODS as FPT_METHODS
from .tuners.fpt import FPTConfig, FPTStage, StagePromptModel, stage_backbone
from .tuners.lpt import GENERATORS, LatePromptConfig, LatePromptModel, build_generator
from .prompt_tuning.config import PromptTuningConfig
from .prompt_tuning.model import PromptModel, init_prompt

log = logging.getLogger(__name__)
LPT_METHODS = tuple(f"lpt_{g}" for g in GENERATORS)
STAGE_SEED_STRIDE = 1000  # stage i draws its batches with seed + 1000·i


# --- config queries (Snakefile) ------------------------------------------------------------

def _grid(cfg: dict, section: str) -> dict:
    sec = cfg[section]
    exp = cfg["experiment"]
    return {"models": list(sec["models"]), "tasks": list(sec["tasks"]),
            "seeds": list(sec["seeds"] if sec.get("seeds") is not None else exp["seeds"])}


def fpt_grid(cfg: dict) -> dict:
    return {**_grid(cfg, "fpt"), "methods": ["pt", *cfg["fpt"]["methods"]]}


def lpt_grid(cfg: dict) -> dict:
    return {**_grid(cfg, "lpt"), "methods": ["pt", *cfg["lpt"]["methods"]]}


def fpt_schedule(cfg: dict, method: str) -> list[dict]:
    """Stages of ``method``; ``pt``: one full-model stage with the schedules' total steps."""
    schedules = cfg["fpt"]["schedules"]
    if method == "pt":
        steps = cfg["fpt"].get("pt_steps")
        if steps is None:
            steps = max((sum(s["steps"] for s in schedules[m]) for m in cfg["fpt"]["methods"]), default=1)
        return [{"steps": steps, "layers": None, "ffn": None}]
    return [{"steps": s["steps"], "layers": s.get("layers"), "ffn": s.get("ffn")} for s in schedules[method]]


def _settings(cfg: dict, section: str, task: str) -> dict:
    from .config import pt_settings

    merged = pt_settings(cfg, task)
    merged.update(cfg[section].get("prompt_tuning") or {})
    return merged


def fpt_settings(cfg: dict, task: str) -> dict:
    """Prompt-tuning settings of the FPT runs of ``task`` (steps come from each stage)."""
    s = _settings(cfg, "fpt", task)
    s.pop("steps")
    return s


def lpt_settings(cfg: dict, task: str, method: str) -> dict:
    """Settings of an LPT run; ``lpt.lr`` (when set) is the generators' learning rate."""
    s = _settings(cfg, "lpt", task)
    if method != "pt" and cfg["lpt"].get("lr") is not None:
        s["lr"] = cfg["lpt"]["lr"]
    return s


def lpt_late(cfg: dict, task: str, method: str) -> dict | None:
    """The late-prompt settings of an LPT method (``None`` for the ``pt`` baseline)."""
    if method == "pt":
        return None
    sec = cfg["lpt"]
    length = sec.get("prompt_length") or _settings(cfg, "lpt", task)["prompt_length"]
    return {"generator": method.split("_", 1)[1], "insert_layer": sec.get("insert_layer"),
            "prompt_length": length, "bottleneck": sec["bottleneck"]}


# paths of the FPT chain (the rules in workflow/rules/fpt.smk build them from wildcards)
FPT_RUN = "results/fpt/{model}/{task}/seed{seed}/{method}"
FPT_SCORES = "results/fpt/{model}/{task}/ffn_scores.safetensors"
FPT_FILES = {"prompt": "prompt.safetensors", "optimizer": "optimizer.safetensors", "curve": "curve.parquet",
             "meta": "meta.json"}


def fpt_last_stage(cfg: dict, method: str) -> int:
    return len(fpt_schedule(cfg, method)) - 1


def fpt_stage_files(wc: dict, stage: int) -> dict:
    """``{prompt, optimizer, curve, meta}`` paths of stage ``stage`` of the run named by ``wc``."""
    run = FPT_RUN.format(**wc)
    return {k: f"{run}/stage{stage}/{f}" for k, f in FPT_FILES.items()}


def fpt_stage_inputs(cfg: dict, wc: dict) -> dict:
    """Inputs of a stage beyond the tokens and model: neuron scores (width stages) and the
    previous stage's artifacts (``previous_prompt`` ...)."""
    stage = int(wc["stage"])
    ins = {}
    if fpt_schedule(cfg, wc["method"])[stage].get("ffn") is not None:
        ins["scores"] = FPT_SCORES.format(**wc)
    if stage > 0:
        ins.update({f"previous_{k}": v for k, v in fpt_stage_files(wc, stage - 1).items()})
    return ins


def fpt_stage_args(cfg: dict, wc: dict) -> dict:
    """What ``fpt_stage`` gets from the config for the stage named by ``wc`` (paths aside)."""
    stage = int(wc["stage"])
    spec = fpt_schedule(cfg, wc["method"])[stage]
    return {"settings": fpt_settings(cfg, wc["task"]), "seed": int(wc["seed"]), "method": wc["method"],
            "stage_index": stage, "stage": spec, "last": stage == fpt_last_stage(cfg, wc["method"]),
            "selection": cfg["fpt"]["layer_selection"], "class_vectors": cfg["fpt"]["class_vectors"],
            "scores": FPT_SCORES.format(**wc) if spec.get("ffn") is not None else None,
            "previous": fpt_stage_files(wc, stage - 1) if stage > 0 else None,
            **fpt_stage_files(wc, stage)}


def fpt_final_prompt(cfg: dict, wc: dict) -> str:
    return fpt_stage_files(wc, fpt_last_stage(cfg, wc["method"]))["prompt"]


def fpt_summary_inputs(cfg: dict) -> dict:
    """Inputs of the FPT summary: last-stage metas and test scores per run; every stage's meta
    and curve."""
    g = fpt_grid(cfg)
    out = {"metas": [], "scores": [], "stage_metas": [], "curves": []}
    for model in g["models"]:
        for task in g["tasks"]:
            for seed in g["seeds"]:
                for method in g["methods"]:
                    wc = {"model": model, "task": task, "seed": seed, "method": method}
                    last = fpt_last_stage(cfg, method)
                    out["metas"].append(fpt_stage_files(wc, last)["meta"])
                    out["scores"].append(f"{FPT_RUN.format(**wc)}/eval/scores.json")
                    for i in range(last + 1):
                        files = fpt_stage_files(wc, i)
                        out["stage_metas"].append(files["meta"])
                        out["curves"].append(files["curve"])
    return out


# --- FPT -----------------------------------------------------------------------------------------

def sample_rows(n: int, samples: int, seed: int = 0) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return np.sort(torch.randperm(n, generator=g)[:samples].numpy())


def fpt_scores(*, model_spec: dict, task_spec: dict, tokenized: str, output: str, samples: int = 256,
               batch_size: int = 32, threads: int = 1) -> dict:
    """FFN neuron scores (mean absolute activation) over ``samples`` training inputs."""
    from .models.partial import ffn_scores

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
    st = FPTStage(**stage)
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


def summarise_fpt(*, metas: list[str], scores: list[str], stage_metas: list[str], curves: list[str], table: str,
                  stages_table: str, figure: str) -> pd.DataFrame:
    """``table``: one row per (model, task, seed, method) with test score, total FLOPs and
    training wall time and their ratios to the ``pt`` run of the same model, task and seed;
    ``stages_table``: one row per stage; ``figure``: dev score vs cumulative FLOPs."""
    rows = []
    for meta_path, score_path in zip(metas, scores):
        m, s = read_json(meta_path), read_json(score_path)
        rows.append({"model": m["model"], "task": m["task"], "seed": m["seed"], "method": m["method"],
                     "metric": s["metric"], "score": s["score"], "steps": m["cumulative_steps"],
                     "flops": float(m["cumulative_flops"]), "wall_seconds": float(m["cumulative_wall_seconds"]),
                     "cpu_seconds": float(m["cumulative_cpu_seconds"])})
    df = pd.DataFrame(rows)
    base = df[df["method"] == "pt"].set_index(["model", "task", "seed"])
    if df.empty or base.empty:
        raise UserError("FPT summary: no 'pt' baseline run among the inputs")
    key = list(zip(df["model"], df["task"], df["seed"]))
    df["flops_ratio_vs_pt"] = df["flops"].to_numpy() / base.loc[key, "flops"].to_numpy()
    df["wall_ratio_vs_pt"] = df["wall_seconds"].to_numpy() / base.loc[key, "wall_seconds"].to_numpy()
    df["cpu_ratio_vs_pt"] = df["cpu_seconds"].to_numpy() / base.loc[key, "cpu_seconds"].to_numpy()
    df["score_diff_vs_pt"] = df["score"].to_numpy() - base.loc[key, "score"].to_numpy()
    order = {"pt": 0, "fpt_depth": 1, "fpt_width": 2, "fpt_compound": 3}
    df = df.sort_values(["model", "task", "seed", "method"], key=lambda c: c.map(order) if c.name == "method" else c)
    df = df.reset_index(drop=True)[["model", "task", "seed", "method", "metric", "score", "score_diff_vs_pt", "steps",
                                    "flops", "flops_ratio_vs_pt", "wall_seconds", "wall_ratio_vs_pt", "cpu_seconds",
                                    "cpu_ratio_vs_pt"]]
    write_parquet(df, table, metadata={"step": "summarise_fpt", "inputs_hash": stable_hash(rows)})

    srows = []
    for path in stage_metas:
        m = read_json(path)
        srows.append({"model": m["model"], "task": m["task"], "seed": m["seed"], "method": m["method"],
                      "stage": m["stage"], "layers": m["num_layers"], "ffn": m["dims"]["encoder_ffn"][0],
                      "kept_layers": str(m["kept"]["layers"]), "steps": m["steps"], "flops": float(m["flops"]),
                      "flops_per_step": float(m["flops_per_step"]), "wall_seconds": m["wall_seconds"],
                      "cpu_seconds": m["cpu_seconds"],
                      "eval_seconds": m["eval_seconds"], "best_dev_score": m["best_dev_score"],
                      "cumulative_flops": float(m["cumulative_flops"]),
                      "cumulative_wall_seconds": m["cumulative_wall_seconds"]})
    stages = pd.DataFrame(srows).sort_values(["model", "task", "seed", "method", "stage"]).reset_index(drop=True)
    write_parquet(stages, stages_table, metadata={"step": "summarise_fpt", "inputs_hash": stable_hash(srows)})
    _fpt_figure(df, curves, figure)
    log.info("FPT summary of %d runs (%d stages) written to %s", len(df), len(stages), table)
    return df


def _fpt_figure(df: pd.DataFrame, curves: list[str], figure: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import parquet_provenance
    from .figures import save_figure

    groups = sorted({(m, t) for m, t in zip(df["model"], df["task"])})
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 3.8), squeeze=False)
    curve_frames = {}
    for path in curves:
        p = parquet_provenance(path)
        c = read_parquet(path)
        if len(c):
            curve_frames.setdefault((p["model"], p["task"], p["seed"], p["method"]), []).append(c)
    for ax, (model, task) in zip(axes[0], groups):
        for (m, t, seed, method), parts in sorted(curve_frames.items()):
            if (m, t) != (model, task):
                continue
            c = pd.concat(parts).sort_values("global_step")
            line, = ax.plot(c["cumulative_flops"], c["dev_score"], marker="o", ms=3, label=f"{method} (dev) s{seed}")
            row = df[(df["model"] == m) & (df["task"] == t) & (df["seed"] == seed) & (df["method"] == method)]
            if len(row):
                ax.scatter(row["flops"], row["score"], marker="*", s=90, color=line.get_color(), zorder=3)
        ax.set_xlabel("cumulative training FLOPs")
        ax.set_ylabel("score (lines: dev during training; stars: test)")
        ax.set_title(f"FPT vs PT: {model} / {task}")
        ax.legend(fontsize=7)
    save_figure(fig, figure)


# --- LPT ----------------------------------------------------------------------------------------

class MeteredLatePromptModel(MeteredForward, LatePromptModel):
    pass


class MeteredPromptModel(MeteredForward, PromptModel):
    pass


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


def lpt_run(*, model_spec: dict, task_spec: dict, settings: dict, seed: int, method: str, tokenized: str,
            weights: str, curve: str, meta: str, predictions: str, scores: str, late: dict | None = None,
            profile: int = 10, checkpoint: str | None = None, threads: int = 1) -> dict:
    """One LPT (or input-PT, ``late=None``) run: profile step time and peak memory first (in a
    fresh process: nothing has trained yet), then train, then score the test split."""
    set_threads(threads)
    seed_everything(seed)
    cfg = PromptTuningConfig.from_dict(settings)
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
    best, state, _ = train_module(model, data["train"], data["dev"], cfg, seed=seed, metric=task_spec["metric"],
                                  device=bundle.device, checkpoint=ckpt, tag=provenance["config_hash"],
                                  describe=describe, amp=amp)
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


def summarise_lpt(*, metas: list[str], table: str, figure: str) -> pd.DataFrame:
    """One row per (model, task, seed, method): test score, insertion layer, profiled step time
    and peak memory, trainable parameters, and ratios to the ``pt`` run."""
    rows = []
    for path in metas:
        m = read_json(path)
        rows.append({"model": m["model"], "task": m["task"], "seed": m["seed"], "method": m["method"],
                     "insert_layer": m["insert_layer"], "metric": m["metric"], "score": m["score"],
                     "step_seconds": m.get("step_seconds"), "step_cpu_seconds": m.get("step_cpu_seconds"),
                     "peak_memory_mb": m.get("peak_memory_mb"),
                     "activation_memory_mb": m.get("activation_memory_mb"),
                     "trainable_params": m["trainable_params"], "flops_per_step": float(m["flops_per_step"]),
                     "train_seconds": m["train_seconds"], "memory_method": m.get("memory_method")})
    df = pd.DataFrame(rows)
    base = df[df["method"] == "pt"].set_index(["model", "task", "seed"])
    if df.empty or base.empty:
        raise UserError("LPT summary: no 'pt' baseline run among the inputs")
    key = list(zip(df["model"], df["task"], df["seed"]))
    for col, out in [("score", "score_diff_vs_pt"), ("step_seconds", "step_ratio_vs_pt"),
                     ("step_cpu_seconds", "step_cpu_ratio_vs_pt"), ("flops_per_step", "flops_ratio_vs_pt"),
                     ("peak_memory_mb", "memory_ratio_vs_pt"), ("activation_memory_mb", "activation_memory_ratio_vs_pt")]:
        ref = base.loc[key, col].to_numpy(dtype=float)
        val = df[col].to_numpy(dtype=float)
        df[out] = val - ref if out == "score_diff_vs_pt" else val / ref
    order = {m: i for i, m in enumerate(("pt", *LPT_METHODS))}
    df = df.sort_values(["model", "task", "seed", "method"], key=lambda c: c.map(order) if c.name == "method" else c)
    df = df.reset_index(drop=True)
    write_parquet(df, table, metadata={"step": "summarise_lpt", "inputs_hash": stable_hash(rows)})
    _lpt_figure(df, figure)
    log.info("LPT summary of %d runs written to %s", len(df), table)
    return df


def _lpt_figure(df: pd.DataFrame, figure: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .figures import save_figure

    groups = sorted({(m, t) for m, t in zip(df["model"], df["task"])})
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 3.8), squeeze=False)
    for ax, (model, task) in zip(axes[0], groups):
        part = df[(df["model"] == model) & (df["task"] == task)]
        for method, rows in part.groupby("method", sort=False):
            ax.scatter(rows["step_seconds"] * 1000, rows["score"], s=50, label=method)
            for _, r in rows.iterrows():
                ax.annotate(f"{method} k={r['insert_layer']}", (r["step_seconds"] * 1000, r["score"]), fontsize=7,
                            xytext=(4, 3), textcoords="offset points")
        ax.set_xlabel("training step time (ms)")
        ax.set_ylabel("test score")
        ax.set_title(f"LPT vs PT: {model} / {task}")
        ax.legend(fontsize=7)
    save_figure(fig, figure)
