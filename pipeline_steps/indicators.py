"""Transferability indicators (Su et al., NAACL 2022, section 5): how similar are two soft prompts
of the same model, and does that similarity predict zero-shot transfer?

Two families of indicators, for every ordered pair (source prompt, target prompt) of one model and
one seed:

* **Embedding similarity** of the prompt vectors themselves (``layers = "input"``):
  ``cosine_flat`` (cosine of the flattened ``[L, d]`` prompts), ``cosine_tokens`` (mean cosine over
  all ``L_s x L_t`` token pairs), ``euclidean_flat`` (``1 / (1 + ||p - q||)`` of the flattened
  prompts) and ``euclidean_tokens`` (mean of ``1 / (1 + ||p_i - q_j||)`` over all token pairs).
* **Overlapping rate of activated neurons** (``on``): the prompt is fed with an otherwise empty
  input (the tokenizer's special tokens around one mask token, prompt first as in
  :class:`~pipeline_steps.prompt_tuning.model.PromptModel`); forward hooks on
  :meth:`Backbone.ffn_modules` record each layer's FFN intermediate activation at the mask position
  (T5: the sentinel position in encoder blocks, the first decoder step in decoder blocks). A neuron
  is *active* when that value is ``> 0`` (after GELU for BERT/RoBERTa, i.e. a positive
  pre-activation; before ReLU for T5's ``wi``, i.e. kept by ReLU). ON is the cosine of the two
  prompts' binary activation vectors, over all layers and over windows of layers.

Finally each indicator is correlated (Spearman) with zero-shot transfer performance across pairs
with ``source_task != target_task``.

Steps (``python -m pipeline_steps STEP``): ``indicator-activations`` (one model: every prompt's
binary activation mask, cached as safetensors), ``indicator-table`` (the pairwise table) and
``indicator-correlation`` (Spearman table and scatter figure).
"""
from __future__ import annotations

import contextlib
import logging
import math
from collections import OrderedDict

import numpy as np
import pandas as pd
import torch

from .errors import UserError
from .io import load_tensors, parquet_provenance, read_parquet, save_tensors, stable_hash, write_parquet

log = logging.getLogger(__name__)

EMBEDDING_INDICATORS = ("cosine_flat", "cosine_tokens", "euclidean_flat", "euclidean_tokens")
INDICATORS = EMBEDDING_INDICATORS + ("on",)
INPUT_LAYERS = "input"  # the `layers` value of the embedding indicators
ALL_LAYERS = "all"
TABLE_COLUMNS = ["model", "seed", "source_task", "target_task", "indicator", "layers", "value"]
TRANSFER_COLUMNS = ["model", "source_task", "target_task", "seed", "score", "relative_score"]
PERFORMANCE = ("relative_score", "score")
CORRELATION_COLUMNS = ["model", "indicator", "layers", "performance", "spearman", "p_value", "n_pairs"]


# --- the empty input and the FFN activations ------------------------------------------------------

def empty_input(tokenizer) -> tuple[list[int], int]:
    """Token ids of an input that is only the special tokens around one mask token, and the mask's
    index in it: BERT ``[CLS] [MASK] [SEP]``, RoBERTa ``<s> <mask> </s>``, T5 ``<extra_id_0> </s>``."""
    from .data.tokenize import mask_token, special_affixes

    prefix, suffix = special_affixes(tokenizer)
    _, mask_id = mask_token(tokenizer)
    return [*prefix, mask_id, *suffix], len(prefix)


class FFNRecorder(contextlib.AbstractContextManager):
    """Forward hooks on every FFN module of a backbone; ``outputs[name]`` is the last output seen."""

    def __init__(self, backbone):
        self.modules = backbone.ffn_modules()
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = []

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.modules]

    def __enter__(self):
        for name, module in self.modules:
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def _hook(self, name):
        def hook(_module, _inputs, output):
            self.outputs[name] = output.detach()
        return hook

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return False


@torch.no_grad()
def ffn_activations(backbone, tokenizer, prompt: torch.Tensor, amp=None) -> tuple[list[str], torch.Tensor]:
    """FFN intermediate activations ``[n_layers, d_ff]`` (float32, CPU) of ``prompt`` (``[L, d]``)
    on the empty input, at the mask position (decoder blocks of T5: the first decoder step).

    Layer order and names are those of ``backbone.ffn_modules()``.
    """
    if prompt.dim() != 2 or prompt.shape[1] != backbone.hidden_size:
        raise ValueError(f"prompt of shape {tuple(prompt.shape)} does not fit hidden size {backbone.hidden_size}")
    device = backbone.word_embeddings.weight.device
    ids, mask_pos = empty_input(tokenizer)
    emb = backbone.embed(torch.tensor([ids], dtype=torch.long, device=device))
    length = prompt.shape[0]
    inputs = torch.cat([prompt.to(device=device, dtype=emb.dtype).unsqueeze(0), emb], dim=1)
    attention = torch.ones(inputs.shape[:2], dtype=torch.long, device=device)
    with FFNRecorder(backbone) as rec, (amp or contextlib.nullcontext()):
        if backbone.is_seq2seq:
            backbone.first_step_logits(inputs, attention)
        else:
            backbone.encode(inputs, attention)
    rows = []
    for name in rec.names:
        if name not in rec.outputs:
            raise RuntimeError(f"the FFN hook of layer {name} did not fire")
        out = rec.outputs[name]
        pos = 0 if name.startswith("decoder.") else length + mask_pos
        rows.append(out[0, pos].float().cpu())
    sizes = {r.shape[0] for r in rows}
    if len(sizes) != 1:
        raise ValueError(f"FFN sizes differ between layers ({sorted(sizes)}); cannot stack them")
    return rec.names, torch.stack(rows)


def active_neurons(activations: torch.Tensor) -> torch.Tensor:
    """Binary (bool) mask of the active neurons: activation ``> 0``."""
    return activations > 0


# --- pairwise similarities -------------------------------------------------------------------------

def _f64(x) -> torch.Tensor:
    return torch.as_tensor(x).detach().to(torch.float64).cpu()


def cosine(a, b) -> float:
    """Cosine of two vectors (flattened); NaN when either is all zeros or they differ in size."""
    a, b = _f64(a).flatten(), _f64(b).flatten()
    if a.numel() != b.numel():
        return math.nan
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return math.nan
    return float((a @ b / (na * nb)).clamp(-1.0, 1.0))


def euclidean_similarity(a, b) -> float:
    """``1 / (1 + ||a - b||)`` of the flattened tensors; NaN when they differ in size."""
    a, b = _f64(a).flatten(), _f64(b).flatten()
    if a.numel() != b.numel():
        return math.nan
    return float(1.0 / (1.0 + (a - b).norm()))


def token_cosine(p, q) -> float:
    """Mean cosine over all token pairs ``(p_i, q_j)`` of two prompts ``[L_p, d]``, ``[L_q, d]``."""
    p = torch.nn.functional.normalize(_f64(p), dim=-1)
    q = torch.nn.functional.normalize(_f64(q), dim=-1)
    return float((p @ q.T).clamp(-1.0, 1.0).mean())


def token_euclidean_similarity(p, q) -> float:
    """Mean of ``1 / (1 + ||p_i - q_j||)`` over all token pairs of two prompts."""
    return float((1.0 / (1.0 + torch.cdist(_f64(p), _f64(q)))).mean())


def embedding_similarities(p, q) -> dict[str, float]:
    return {"cosine_flat": cosine(p, q), "cosine_tokens": token_cosine(p, q),
            "euclidean_flat": euclidean_similarity(p, q), "euclidean_tokens": token_euclidean_similarity(p, q)}


def overlap_rate(mask_a, mask_b) -> float:
    """ON: cosine of two binary activation vectors (flattened over the layers given)."""
    return cosine(_f64(mask_a), _f64(mask_b))


def layer_groups(names: list[str], window: int, stride: int | None = None) -> "OrderedDict[str, list[int]]":
    """Layer groups for ON: ``all``, each stack of a seq2seq model (``encoder``, ``decoder``), and
    windows of ``window`` layers inside each stack, starting every ``stride`` layers (default
    ``window``: non-overlapping). The last window of a stack is cut at the stack's end, so every layer
    is covered. Labels use the backbone's 0-based names: ``encoder.0-2``, ``decoder.3-5``
    (``encoder.4`` for a one-layer window)."""
    if window < 1 or (stride is not None and stride < 1):
        raise UserError(f"indicators: window ({window}) and stride ({stride}) must be at least 1")
    stride = stride or window
    stacks: OrderedDict[str, list[tuple[int, int]]] = OrderedDict()  # stack -> [(row, layer number)]
    for row, name in enumerate(names):
        stack, _, number = name.rpartition(".")
        stacks.setdefault(stack, []).append((row, int(number)))
    groups: OrderedDict[str, list[int]] = OrderedDict([(ALL_LAYERS, list(range(len(names))))])
    if len(stacks) > 1:
        for stack, members in stacks.items():
            groups[stack] = [row for row, _ in members]
    for stack, members in stacks.items():
        start = 0
        while True:
            end = min(start + window, len(members))
            part = members[start:end]
            first, last = part[0][1], part[-1][1]
            label = f"{stack}.{first}" if first == last else f"{stack}.{first}-{last}"
            groups[label] = [row for row, _ in part]
            if end >= len(members):
                break
            start += stride
    return groups


# --- step 1: activations of every prompt of one model ---------------------------------------------

def run_key(task: str, seed: int) -> str:
    return f"{task}/seed{int(seed)}"


def compute_activations(*, model_spec: dict, prompts: list[dict], output: str, threads: int = 1) -> dict:
    """Binary FFN activation masks of every prompt of one model on the empty input.

    ``prompts``: ``[{"task", "seed", "path"}]``. Writes ``output`` (safetensors) with one bool tensor
    ``[n_layers, d_ff]`` per prompt, keyed ``"{task}/seed{seed}"``; the metadata holds the layer names,
    the empty input and each entry's prompt path and config hash.
    """
    from .runtime import autocast, load_bundle, set_threads
    from .prompt_tuning.model import load_prompt

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


def load_activations(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = load_tensors(path)
    if "layers" not in meta or not tensors:
        raise UserError(f"{path}: not an indicator activations file (no 'layers' metadata or no masks)")
    return tensors, meta


# --- step 2: the pairwise table ---------------------------------------------------------------------

def pair_indicators(prompt_s, prompt_t, mask_s, mask_t, groups: dict[str, list[int]]) -> list[tuple[str, str, float]]:
    """``(indicator, layers, value)`` of one ordered pair of prompts."""
    rows = [(k, INPUT_LAYERS, v) for k, v in embedding_similarities(prompt_s, prompt_t).items()]
    for label, idx in groups.items():
        rows.append(("on", label, overlap_rate(mask_s[idx], mask_t[idx])))
    return rows


def indicator_frame(prompts: dict[tuple, torch.Tensor], masks: dict[tuple, torch.Tensor],
                    groups: dict[str, dict[str, list[int]]]) -> pd.DataFrame:
    """Long table over all ordered pairs (the diagonal included) of prompts with the same model and seed.

    ``prompts`` and ``masks`` are keyed ``(model, task, seed)``; ``groups[model]`` from :func:`layer_groups`.
    """
    rows = []
    by_run: dict[tuple, list[str]] = {}
    for model, task, seed in prompts:
        by_run.setdefault((model, seed), []).append(task)
    for (model, seed), tasks in by_run.items():
        for s in tasks:
            for t in tasks:
                for indicator, layers, value in pair_indicators(
                        prompts[model, s, seed], prompts[model, t, seed], masks[model, s, seed],
                        masks[model, t, seed], groups[model]):
                    rows.append((model, int(seed), s, t, indicator, layers, value))
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def build_table(*, runs: list[dict], activations: dict[str, str], window: int, stride: int | None,
                table: str) -> pd.DataFrame:
    """Pairwise indicators of every (model, seed): ``indicators.parquet`` in the long layout
    ``model, seed, source_task, target_task, indicator, layers, value``.

    ``runs``: ``[{"model", "task", "seed", "prompt"}]``; ``activations``: ``{model: path}``.
    """
    from .prompt_tuning.model import load_prompt

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


# --- step 3: correlation with zero-shot transfer ---------------------------------------------------

def check_columns(df: pd.DataFrame, needed, path: str) -> None:
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {missing}; expected at least {list(needed)}")


def spearman(x, y) -> tuple[float, float, int]:
    """Spearman's rho, its two-sided p-value and the number of pairs (NaN values dropped).

    NaN rho/p with fewer than 3 pairs or a constant side."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    n = int(len(x))
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan, n
    res = spearmanr(x, y)
    return float(res.statistic), float(res.pvalue), n


def merge_transfer(indicators: pd.DataFrame, transfer: pd.DataFrame) -> pd.DataFrame:
    """Indicator rows joined with the transfer performance of the same (model, seed, source, target),
    off-diagonal pairs only."""
    keys = ["model", "seed", "source_task", "target_task"]
    ind = indicators[indicators["source_task"] != indicators["target_task"]]
    perf = transfer[keys + list(PERFORMANCE)].copy()
    perf["seed"] = perf["seed"].astype(int)
    ind = ind.assign(seed=ind["seed"].astype(int))
    if perf.duplicated(keys).any():
        dup = perf[perf.duplicated(keys, keep=False)].iloc[0]
        raise ValueError(f"transfer table has several rows for {dict(dup[keys])}")
    return ind.merge(perf, on=keys, how="inner")


def correlate(indicators: pd.DataFrame, transfer: pd.DataFrame) -> pd.DataFrame:
    """Spearman correlation of every (model, indicator, layers) with each transfer performance
    (``relative_score``, ``score``) across the off-diagonal pairs (all seeds pooled)."""
    merged = merge_transfer(indicators, transfer)
    rows = []
    for (model, indicator, layers), g in merged.groupby(["model", "indicator", "layers"], sort=False):
        for perf in PERFORMANCE:
            rho, p, n = spearman(g["value"], g[perf])
            rows.append((model, indicator, layers, perf, rho, p, n))
    out = pd.DataFrame(rows, columns=CORRELATION_COLUMNS)
    return out.astype({"n_pairs": "int64"})


def correlation_figure(merged: pd.DataFrame, corr: pd.DataFrame, path: str, performance: str = "relative_score"):
    """Scatter of each indicator (embedding similarities and ON over all layers) against transfer
    performance, one row per model, ON highlighted; last column: ON's Spearman rho per layer group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .figures import save_figure

    models = list(dict.fromkeys(merged["model"]))
    panels = [(k, INPUT_LAYERS) for k in EMBEDDING_INDICATORS] + [("on", ALL_LAYERS)]
    ncols = len(panels) + 1
    fig, axes = plt.subplots(max(1, len(models)), ncols, figsize=(3.0 * ncols, 2.8 * max(1, len(models))),
                             squeeze=False)
    c = corr[corr["performance"] == performance].set_index(["model", "indicator", "layers"])
    for r, model in enumerate(models):
        m = merged[merged["model"] == model]
        for col, (indicator, layers) in enumerate(panels):
            ax = axes[r][col]
            g = m[(m["indicator"] == indicator) & (m["layers"] == layers)]
            on = indicator == "on"
            ax.scatter(g["value"], g[performance], s=18, color="C3" if on else "C0", alpha=0.8)
            rho = c["spearman"].get((model, indicator, layers), math.nan)
            ax.set_title(f"{indicator} ({layers})\nρ = {rho:.2f}", fontsize=9, fontweight="bold" if on else None)
            if on:
                for side in ax.spines.values():
                    side.set_edgecolor("C3")
                    side.set_linewidth(2)
            ax.set_xlabel("indicator value", fontsize=8)
            if col == 0:
                ax.set_ylabel(f"{model}\n{performance}", fontsize=8)
        ax = axes[r][-1]
        on = corr[(corr["model"] == model) & (corr["indicator"] == "on") & (corr["performance"] == performance)]
        ax.bar(range(len(on)), on["spearman"].to_numpy(), color="C3")
        ax.set_xticks(range(len(on)), list(on["layers"]), rotation=60, fontsize=7, ha="right")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_ylim(-1, 1)
        ax.set_ylabel("Spearman ρ", fontsize=8)
        ax.set_title("ON per layer group", fontsize=9)
    fig.suptitle(f"Transferability indicators vs zero-shot transfer ({performance}, source ≠ target)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def correlation(*, indicators: str, transfer: str, table: str, figure: str) -> pd.DataFrame:
    """Step: ``indicator_correlation.parquet`` (model, indicator, layers, performance, spearman,
    p_value, n_pairs) and the scatter figure, from the indicator and zero-shot transfer tables."""
    ind = read_parquet(indicators)
    check_columns(ind, TABLE_COLUMNS, indicators)
    tr = read_parquet(transfer)
    check_columns(tr, TRANSFER_COLUMNS, transfer)
    try:
        merged = merge_transfer(ind, tr)
    except ValueError as e:
        raise UserError(f"{transfer}: {e}") from None
    if merged.empty:
        raise UserError(f"{transfer}: no (model, seed, source_task, target_task) with source != target in common "
                        f"with {indicators}; do both come from the same grid?")
    corr = correlate(ind, tr)
    write_parquet(corr, table, metadata={
        "step": "indicator_correlation", "method": "spearman", "pairs": "source_task != target_task, seeds pooled",
        "indicators_provenance": parquet_provenance(indicators), "transfer_provenance": parquet_provenance(transfer)})
    correlation_figure(merged, corr, figure)
    log.info("%d correlations written to %s", len(corr), table)
    return corr
