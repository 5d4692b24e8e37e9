"""Partial PLMs for progressive training (FPT): fewer layers, narrower FFNs, or both.

A partial model is built from a loaded, frozen model without copying its weights:
the module tree is copied (``deepcopy`` with every parameter and buffer memoised to
itself, so the copy *shares* all tensors) and then cut:

* **depth**: the layer list (``encoder.layer`` for BERT/RoBERTa, ``encoder.block``
  and ``decoder.block`` for T5) is replaced by a list of the kept layers;
* **width**: in each kept layer, the FFN's input projection keeps the rows and its
  output projection the columns of the kept neurons (new, smaller ``nn.Linear``
  modules: the only weights that are copied).

The result is wrapped in :class:`~pipeline_steps.models.backbone.Backbone`, so the
partial model has the same interface as the full one (``embed``, ``encode``,
``mlm_logits``, ``first_step_logits``, ``ffn_modules``, ``hidden_size``,
``num_layers``) and ``PromptModel`` and the verbalizers work on it unchanged. The
full model is never modified.

FFN neuron scores (the width criterion) are the mean absolute activation of each
neuron, i.e. of the input of the FFN's output projection, over the real (non-pad)
tokens of a sample of training inputs, without a prompt.
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass

import torch
from torch import nn

from .backbone import Backbone

from ..fpt.config import SELECTIONS  # noqa: E402  (the layer selections FPT's schedules name)


# --- layer selection ----------------------------------------------------------------------------

def select_layers(num_layers: int, keep: int, how: str = "evenly") -> list[int]:
    """Indices of the ``keep`` layers of a ``num_layers`` stack that a partial model keeps.

    ``evenly``: the first and the last layer and evenly spaced ones between them; the
    ``num_layers - 1`` steps are split into ``keep - 1`` gaps as equal as possible, the
    longer gaps last (6 of 24 -> 0, 4, 8, 13, 18, 23). ``first``: layers ``0 .. keep-1``.
    """
    if not 1 <= keep <= num_layers:
        raise ValueError(f"cannot keep {keep} of {num_layers} layers")
    if how == "first" or keep == num_layers:
        return list(range(keep))
    if how != "evenly":
        raise ValueError(f"unknown layer selection '{how}' ({' | '.join(SELECTIONS)})")
    if keep == 1:
        return [0]
    gaps = keep - 1
    base, extra = divmod(num_layers - 1, gaps)
    return [i * base + max(0, i - (gaps - extra)) for i in range(keep)]


def resolve_size(value: float | int | None, full: int, what: str) -> int:
    """A stage size: ``None`` (full), a fraction in (0, 1) of ``full``, or an absolute count."""
    if value is None:
        return full
    if 0 < value < 1:
        return max(1, int(value * full + 0.5))  # half rounds up
    if value != int(value) or not 1 <= value <= full:
        raise ValueError(f"{what} {value}: give a fraction in (0, 1) or a whole number from 1 to {full}")
    return int(value)


# --- structure -------------------------------------------------------------------------------

def _stacks(hf: nn.Module) -> dict[str, nn.Module]:
    """The layer-holding modules by name: ``{"encoder": <module with .layer>}`` for BERT-like
    encoders, ``{"encoder": T5Stack, "decoder": T5Stack}`` (``.block``) for T5."""
    if getattr(hf.config, "is_encoder_decoder", False):
        return {"encoder": hf.encoder, "decoder": hf.decoder}
    return {"encoder": hf.base_model.encoder}


def _layers(stack: nn.Module) -> nn.ModuleList:
    return stack.block if hasattr(stack, "block") else stack.layer


def _set_layers(stack: nn.Module, layers: nn.ModuleList) -> None:
    if hasattr(stack, "block"):
        stack.block = layers
    else:
        stack.layer = layers


def ffn_projections(layer: nn.Module) -> tuple[nn.Module, str, list[str], str]:
    """(FFN module, kind, names of its input projections, name of its output projection)."""
    if hasattr(layer, "intermediate"):  # BERT / RoBERTa: intermediate.dense, output.dense
        return layer, "bert", ["intermediate.dense"], "output.dense"
    ff = layer.layer[-1].DenseReluDense  # T5 block: wi (or gated wi_0, wi_1) and wo
    ins = ["wi_0", "wi_1"] if hasattr(ff, "wi_0") else ["wi"]
    return ff, "t5", ins, "wo"


def _get(module: nn.Module, dotted: str) -> nn.Module:
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def _set(module: nn.Module, dotted: str, value: nn.Module) -> None:
    *path, last = dotted.split(".")
    for part in path:
        module = getattr(module, part)
    setattr(module, last, value)


def shared_copy(module: nn.Module) -> nn.Module:
    """A copy of the module tree whose parameters and buffers are the original tensors."""
    memo = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())}
    return copy.deepcopy(module, memo)


def slice_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping output features (``dim=0``) or input features (``dim=1``) ``index``."""
    weight = linear.weight.detach().index_select(dim, index.to(linear.weight.device))
    has_bias = linear.bias is not None
    out_f, in_f = weight.shape
    new = nn.Linear(in_f, out_f, bias=has_bias, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if has_bias:
            new.bias.copy_(linear.bias.detach()[index.to(linear.bias.device)] if dim == 0 else linear.bias.detach())
    new.requires_grad_(False)
    return new


def ffn_width(backbone: Backbone) -> int:
    layer = _layers(_stacks(backbone.hf)["encoder"])[0]
    module, _, _, out_name = ffn_projections(layer)
    return _get(module, out_name).in_features


@dataclass
class PartialSpec:
    """Which part of a model a stage trains with: layer indices per stack (``None``: all) and
    FFN width (``None``: full)."""
    layers: dict[str, list[int]] | None = None
    ffn: int | None = None

    def to_dict(self) -> dict:
        return {"layers": self.layers, "ffn": self.ffn}


def plan_partial(backbone: Backbone, layers: float | int | None, ffn: float | int | None,
                 selection: str = "evenly") -> PartialSpec:
    """Resolve a stage's sizes (fractions or counts) against ``backbone``. T5: the same layer
    selection is applied to the encoder and the decoder."""
    stacks = _stacks(backbone.hf)
    kept = None
    if layers is not None:
        kept = {}
        for name, stack in stacks.items():
            n = len(_layers(stack))
            kept[name] = select_layers(n, resolve_size(layers, n, "layers"), selection)
        if all(kept[n] == list(range(len(_layers(stacks[n])))) for n in kept):
            kept = None
    width = None
    if ffn is not None:
        full = ffn_width(backbone)
        width = resolve_size(ffn, full, "ffn")
        if width == full:
            width = None
    return PartialSpec(kept, width)


def top_neurons(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` highest scores (ties: lower index first), in ascending order."""
    order = torch.argsort(scores.float(), descending=True, stable=True)
    return torch.sort(order[:k]).values


def build_partial(backbone: Backbone, spec: PartialSpec, scores: dict[str, torch.Tensor] | None = None) -> Backbone:
    """A partial ``Backbone`` sharing ``backbone``'s weights. ``scores``: per FFN module name
    (``encoder.3``, ``decoder.0``: the names of ``Backbone.ffn_modules``, in full-model
    numbering), one score per neuron; needed when ``spec.ffn`` is set."""
    if spec.layers is None and spec.ffn is None:
        return backbone
    hf = shared_copy(backbone.hf)
    for name, stack in _stacks(hf).items():
        layers = _layers(stack)
        keep = spec.layers[name] if spec.layers else list(range(len(layers)))
        if hasattr(stack, "block") and 0 not in keep:
            raise ValueError("a partial T5 must keep block 0 (it holds the relative position bias)")
        if spec.ffn is not None:
            if scores is None:
                raise ValueError("FFN width reduction needs neuron scores")
            for i in keep:
                key = f"{name}.{i}"
                if key not in scores:
                    raise ValueError(f"no FFN scores for layer '{key}'")
                index = top_neurons(scores[key], spec.ffn)
                module, _, ins, out = ffn_projections(layers[i])
                for n in ins:
                    _set(module, n, slice_linear(_get(module, n), index, 0))
                _set(module, out, slice_linear(_get(module, out), index, 1))
        if spec.layers:
            _set_layers(stack, nn.ModuleList([layers[i] for i in keep]))
    partial = Backbone(hf)
    partial.partial_spec = spec
    return partial


# --- FFN neuron scores ---------------------------------------------------------------------------

@torch.no_grad()
def ffn_scores(backbone: Backbone, batches) -> dict[str, torch.Tensor]:
    """Mean absolute activation of every FFN neuron over the real tokens of ``batches``.

    ``batches`` yields dicts with ``input_ids`` and ``attention_mask``. The activation is
    the input of the FFN's output projection (BERT: after the GELU; T5: after the ReLU,
    times the linear branch for gated FFNs). Returns ``{layer name: [ffn]}``, names as in
    ``Backbone.ffn_modules`` (T5 decoder: the first decoder step only).
    """
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, float] = {}
    current = {}
    hooks = []
    for name, stack in _stacks(backbone.hf).items():
        for i, layer in enumerate(_layers(stack)):
            module, _, _, out = ffn_projections(layer)
            key = f"{name}.{i}"

            def hook(mod, args, key=key, part=name):
                act = args[0].detach().float().abs()
                weight = current["enc"] if part == "encoder" else None
                if weight is not None:
                    total = (act * weight.unsqueeze(-1)).sum((0, 1))
                    n = float(weight.sum())
                else:
                    total, n = act.sum((0, 1)), float(act.shape[0] * act.shape[1])
                sums[key] = sums.get(key, 0) + total.cpu()
                counts[key] = counts.get(key, 0.0) + n
            hooks.append(_get(module, out).register_forward_pre_hook(hook))
    try:
        for b in batches:
            mask = b["attention_mask"]
            current["enc"] = mask.float()
            emb = backbone.embed(b["input_ids"])
            if backbone.is_seq2seq:
                backbone.first_step_logits(emb, mask)
            else:
                backbone.encode(emb, mask)
    finally:
        for h in hooks:
            h.remove()
    return {k: sums[k] / counts[k] for k in sums}
