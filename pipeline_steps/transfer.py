"""Cross-task prompt transfer (Su et al.): zero-shot transfer and transfer as initialization (TPT)."""
from __future__ import annotations

import math

import pandas as pd


def steps_to_reach(curve: pd.DataFrame, threshold: float) -> float:
    """First evaluated step whose dev score reaches ``threshold`` (NaN if never)."""
    hit = curve.loc[curve["dev_score"] >= threshold, "step"]
    return float(hit.iloc[0]) if len(hit) else math.nan


def init_speedup(curve_init: pd.DataFrame, curve_random: pd.DataFrame, fraction: float = 0.9) -> dict:
    """Compare a run started from a transferred prompt with a random-init run of the same budget.

    The threshold is ``fraction`` x the random-init run's best dev score; speedup =
    steps the random-init run needs / steps the transferred run needs (NaN if either never reaches it).
    """
    threshold = fraction * float(curve_random["dev_score"].max())
    s_init, s_rand = steps_to_reach(curve_init, threshold), steps_to_reach(curve_random, threshold)
    speedup = s_rand / s_init if s_init and not math.isnan(s_init) and not math.isnan(s_rand) else math.nan
    return {"threshold": threshold, "steps_to_reach": s_init, "random_steps_to_reach": s_rand, "speedup": speedup}


# --- zero-shot transfer ------------------------------------------------------------------------

def predict_many(model, data, prompts: "torch.Tensor", batch_size: int, device, amp=None) -> "np.ndarray":
    """Class logits ``[P, N, C]`` of P prompts on one split: each data batch is scored for all
    prompts in one forward pass (rows repeated per prompt), the model loaded once."""
    import numpy as np
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

    from .errors import UserError
    from .io import stable_hash, write_parquet
    from .runtime import autocast, load_bundle, set_threads
    from .prompt_tuning.model import load_prompt
    from .training import load_splits, pad_id
    from .training import score
    from .prompt_tuning.model import PromptModel, init_prompt

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


def zero_shot_table(*, inputs: list[str], table: str, heatmap: str) -> "pd.DataFrame":
    """Concatenate the per-target results; relative_score = score / the target's own prompt's score
    (same model and seed); a heatmap of relative scores (mean over seeds) per model."""
    from .io import read_parquet, stable_hash, write_parquet

    df = pd.concat([read_parquet(p) for p in inputs], ignore_index=True)
    own = df[df["source_task"] == df["target_task"]].set_index(["model", "target_task", "seed"])["score"]
    key = pd.MultiIndex.from_frame(df[["model", "target_task", "seed"]])
    df["relative_score"] = df["score"].to_numpy() / own.reindex(key).to_numpy()
    df = df.sort_values(["model", "target_task", "source_task", "seed"]).reset_index(drop=True)
    write_parquet(df, table, metadata={"step": "zero_shot_table", "inputs_hash": stable_hash(df.to_dict("list"))})
    plot_heatmaps(df, heatmap)
    return df


def plot_heatmaps(df: "pd.DataFrame", path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .figures import save_figure

    models = sorted(df["model"].unique())
    fig, axes = plt.subplots(1, len(models), figsize=(4.8 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        m = df[df["model"] == model].pivot_table(index="source_task", columns="target_task",
                                                 values="relative_score", aggfunc="mean")
        order = [t for t in m.columns if t in m.index] + [t for t in m.index if t not in m.columns]
        m = m.reindex(order)
        im = ax.imshow(m.to_numpy(), cmap="viridis", vmin=0, vmax=max(1.0, float(m.max().max())))
        ax.set_xticks(range(len(m.columns)), m.columns, rotation=35, ha="right")
        ax.set_yticks(range(len(m.index)), m.index)
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, f"{m.iat[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if m.iat[i, j] < 0.6 else "black")
        ax.set_xlabel("target task")
        ax.set_ylabel("source prompt")
        ax.set_title(f"{model}: zero-shot relative score")
        fig.colorbar(im, ax=ax, fraction=0.046)
    save_figure(fig, path)


# --- transfer as initialization ----------------------------------------------------------------

def init_table(*, runs: list[dict], fraction: float, table: str, figure: str) -> "pd.DataFrame":
    """``runs``: ``[{model, source_task, target_task, seed, curve, scores, random_curve}]`` where
    ``curve``/``scores`` belong to the run started from the source prompt and ``random_curve``
    to the target's own random-init run with the same budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import read_json, read_parquet, stable_hash, write_parquet
    from .figures import save_figure

    if not runs:
        from .errors import UserError

        raise UserError("transfer as initialization: transfer.init gives no (source, target) pair of different "
                        "tasks within the experiment grid")
    rows, curves = [], []
    for r in runs:
        curve, random_curve = read_parquet(r["curve"]), read_parquet(r["random_curve"])
        cmp = init_speedup(curve, random_curve, fraction)
        rows.append({"model": r["model"], "source_task": r["source_task"], "target_task": r["target_task"],
                     "seed": r["seed"], "final_score": read_json(r["scores"])["score"],
                     "random_final_score": read_json(r["random_scores"])["score"],
                     "steps_to_reach": cmp["steps_to_reach"], "random_steps_to_reach": cmp["random_steps_to_reach"],
                     "threshold": cmp["threshold"], "speedup": cmp["speedup"]})
        curves.append((r, curve, random_curve))
    df = pd.DataFrame(rows).sort_values(["model", "target_task", "source_task", "seed"]).reset_index(drop=True)
    write_parquet(df, table, metadata={"step": "transfer_init_table", "fraction": fraction,
                                       "inputs_hash": stable_hash(rows)})
    targets = sorted({(r["model"], r["target_task"]) for r, _, _ in curves})
    fig, axes = plt.subplots(1, len(targets), figsize=(4.5 * len(targets), 3.5), squeeze=False)
    for ax, (model, target) in zip(axes[0], targets):
        shown_random = False
        for r, curve, random_curve in curves:
            if (r["model"], r["target_task"]) != (model, target):
                continue
            if not shown_random:
                ax.plot(random_curve["step"], random_curve["dev_score"], "k--", marker="o", ms=3, label="random init")
                shown_random = True
            ax.plot(curve["step"], curve["dev_score"], marker="o", ms=3, label=f"from {r['source_task']} (seed {r['seed']})")
        ax.set_title(f"{model}: {target}")
        ax.set_xlabel("step")
        ax.set_ylabel("dev score")
        ax.legend(fontsize=7)
    save_figure(fig, figure)
    return df
