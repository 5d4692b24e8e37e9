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

The steps that compute and tabulate them are ``steps.compute_activations`` and ``steps.indicator_table``;
the correlation is ``report.correlation``.
"""
from __future__ import annotations

import contextlib
import math
from collections import OrderedDict

import pandas as pd
import torch

from ..errors import UserError
from ..io import load_tensors
from .config import (  # noqa: F401
    ALL_LAYERS,
    EMBEDDING_INDICATORS,
    INDICATORS,
    INPUT_LAYERS,
    TABLE_COLUMNS,
)


def empty_input(tokenizer) -> tuple[list[int], int]:
    """Token ids of an input that is only the special tokens around one mask token, and the mask's
    index in it: BERT ``[CLS] [MASK] [SEP]``, RoBERTa ``<s> <mask> </s>``, T5 ``<extra_id_0> </s>``."""
    from ..data.tokenize import mask_token, special_affixes

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


def run_key(task: str, seed: int) -> str:
    return f"{task}/seed{int(seed)}"


def load_activations(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = load_tensors(path)
    if "layers" not in meta or not tensors:
        raise UserError(f"{path}: not an indicator activations file (no 'layers' metadata or no masks)")
    return tensors, meta


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
