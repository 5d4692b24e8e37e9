"""Compute and memory accounting for the efficient prompt-tuning methods (FPT, LPT).

FLOPs of one training step (forward + backward) from model dimensions and token counts
-------------------------------------------------------------------------------------------
One multiply-add counts as 2 FLOPs. For a sequence of ``s`` tokens (text plus prompt)
through one Transformer layer with hidden size ``d``, attention width ``a`` (heads x
head size) and FFN width ``f`` (``m`` = 2 matrices, 3 for T5's gated FFN):

    linear(s)    = 8·s·d·a + 2·m·s·d·f      (Q, K, V, O projections; FFN)
    attention(s) = 4·s²·a                   (Q·Kᵀ and the attention-weighted sum of V)

The prompt methods freeze every PLM weight, so the backward pass computes gradients with
respect to activations only: a linear map costs its forward FLOPs once more (no weight
gradient), and each of the two attention products twice (a gradient for both operands).
A layer that the gradient passes through therefore costs ``2·linear + 3·attention`` per
step, a layer run without gradient (LPT below the insertion layer) ``linear + attention``.
The heads: MLM verbalizer on a BERT-like model: the MLM head at the mask position only,
``2·d² + 2·d·V``; T5: the first decoder step, per decoder layer ``8·d·a`` (self-attention
of one token) ``+ 4·d·a + 4·s·d·a + 4·s·a`` (cross-attention to the ``s`` encoder
states) ``+ 2·m·d·f``, plus the LM head ``2·d·V``; each counted twice (forward and the
input-gradient backward). The embedding verbalizer's cosine is ``O(C·d)`` and is not
counted; nor are embeddings, LayerNorms, softmax, activation functions and residual
additions (all ``O(s·d)``), nor the optimizer update (``O(trainable parameters)``).

A step's FLOPs are the sum over the batch's sequences at their padded length (what the
hardware computes): ``b`` sequences of ``s = padded width + prompt length`` tokens.

Memory and time
---------------
Wall-clock seconds exclude dev evaluation (timed by ``Meter``). CPU seconds (process time, all
threads) are reported beside them: on a shared machine they depend much less on other load.
``peak_memory`` measures the process's peak memory around a block of training steps:
on CUDA ``torch.cuda.max_memory_allocated`` after a reset; on CPU the resident-set
high-water mark (``VmHWM``), reset on Linux through ``/proc/self/clear_refs`` after
returning freed heap memory to the system (``malloc_trim``), so the figure covers only
what the block itself adds to what is resident (the loaded model included).
"""
from __future__ import annotations

import ctypes
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass(frozen=True)
class ModelDims:
    """What the FLOPs formula needs to know about a (possibly partial) model."""
    hidden: int
    attention: int
    encoder_ffn: tuple[int, ...]                 # FFN width of each encoder layer
    decoder_ffn: tuple[int, ...] = ()            # T5: of each decoder layer
    ffn_matrices: int = 2                        # 3 for gated FFNs
    vocab: int = 0
    head: str = "none"                           # none | mlm | t5

    @property
    def encoder_layers(self) -> int:
        return len(self.encoder_ffn)

    @classmethod
    def from_backbone(cls, backbone, verbalizer_kind: str) -> "ModelDims":
        from .models.partial import _get, _layers, _stacks, ffn_projections

        cfg = backbone.config
        d = backbone.hidden_size
        if backbone.is_seq2seq:
            attention = cfg.num_heads * cfg.d_kv
        else:
            attention = cfg.hidden_size
        widths, matrices = {}, 2
        for name, stack in _stacks(backbone.hf).items():
            ws = []
            for layer in _layers(stack):
                module, _, ins, out = ffn_projections(layer)
                ws.append(_get(module, out).in_features)
                matrices = len(ins) + 1
            widths[name] = tuple(ws)
        vocab = backbone.word_embeddings.weight.shape[0]
        if verbalizer_kind == "mlm":
            head = "t5" if backbone.is_seq2seq else "mlm"
        else:
            head = "none"
        return cls(d, attention, widths["encoder"], widths.get("decoder", ()), matrices, vocab, head)

    def to_dict(self) -> dict:
        return {"hidden": self.hidden, "attention": self.attention, "encoder_ffn": list(self.encoder_ffn),
                "decoder_ffn": list(self.decoder_ffn), "ffn_matrices": self.ffn_matrices, "vocab": self.vocab,
                "head": self.head}


def layer_flops(s: int, d: int, a: int, f: int, m: int = 2) -> tuple[int, int]:
    """(linear, attention) forward FLOPs of one encoder layer on one sequence of ``s`` tokens."""
    return 8 * s * d * a + 2 * m * s * d * f, 4 * s * s * a


def sequence_flops(dims: ModelDims, s: int, prompt_length: int = 0, insert_layer: int = 0,
                   grad_below: bool = True) -> int:
    """Training-step FLOPs (forward + backward) for one sequence of ``s`` text tokens.

    The ``prompt_length`` prompt vectors are part of the sequence from layer ``insert_layer``
    on (0: input prompt tuning). ``grad_below=False``: the layers below ``insert_layer`` run
    forward only (LPT).
    """
    d, a, m = dims.hidden, dims.attention, dims.ffn_matrices
    total = 0
    for i, f in enumerate(dims.encoder_ffn):
        tokens = s + (prompt_length if i >= insert_layer else 0)
        lin, att = layer_flops(tokens, d, a, f, m)
        total += (lin + att) if (i < insert_layer and not grad_below) else (2 * lin + 3 * att)
    s_out = s + prompt_length
    if dims.head == "mlm":
        total += 2 * (2 * d * d + 2 * d * dims.vocab)
    elif dims.head == "t5":
        dec = sum(8 * d * a + 4 * d * a + 4 * s_out * d * a + 4 * s_out * a + 2 * m * d * f for f in dims.decoder_ffn)
        total += 2 * (dec + 2 * d * dims.vocab)
    return total


def step_flops(dims: ModelDims, batch: int, width: int, prompt_length: int = 0, insert_layer: int = 0,
               grad_below: bool = True) -> int:
    """FLOPs of one training step on ``batch`` sequences padded to ``width`` text tokens."""
    return batch * sequence_flops(dims, width, prompt_length, insert_layer, grad_below)


# --- what a training run did ----------------------------------------------------------------

@dataclass
class Meter:
    """Filled by a model's forward: the shape of every training batch and the time spent in
    evaluation forwards (so that wall time can exclude dev evaluation)."""
    shapes: list = field(default_factory=list)
    eval_seconds: float = 0.0
    eval_cpu_seconds: float = 0.0

    def train_batch(self, batch: int, width: int) -> None:
        self.shapes.append((int(batch), int(width)))

    def timed_eval(self, fn, *args, **kwargs):
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            self.eval_seconds += time.perf_counter() - t0
            self.eval_cpu_seconds += time.process_time() - c0

    def mean_step_flops(self, dims: ModelDims, **kw) -> float:
        if not self.shapes:
            return 0.0
        return sum(step_flops(dims, b, w, **kw) for b, w in self.shapes) / len(self.shapes)


# --- memory -------------------------------------------------------------------------------------

def _proc_status_kb(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mb() -> float:
    kb = _proc_status_kb("VmRSS")
    if kb is not None:
        return kb / 1024
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


class peak_memory:
    """Context manager: ``.baseline_mb`` (resident/allocated at entry) and ``.peak_mb`` (the
    peak inside the block). ``.method`` says how it was measured."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.baseline_mb = self.peak_mb = float("nan")
        self.method = ""

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_mb = torch.cuda.memory_allocated(self.device) / 2**20
            self.method = "cuda_max_allocated"
            return self
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        self.baseline_mb = rss_mb()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self.method = "cpu_vmhwm_reset"
        except OSError:
            self.method = "cpu_maxrss_process"  # cannot reset: the process-wide high-water mark
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            kb = _proc_status_kb("VmHWM") if self.method == "cpu_vmhwm_reset" else None
            if kb is not None:
                self.peak_mb = kb / 1024
            else:
                import resource

                scale = 1 if sys.platform == "darwin" else 1024
                self.peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
        return False


class MeteredForward:
    """Mixin for a model class whose ``forward(input_ids, attention_mask, mask_pos, prompt=None)``
    returns class logits: with ``meter`` set, training forwards record their batch shape and
    evaluation forwards their time."""
    meter: Meter | None = None

    def forward(self, input_ids, attention_mask, mask_pos, prompt=None):
        meter = self.meter
        if meter is None:
            return super().forward(input_ids, attention_mask, mask_pos, prompt=prompt)
        if self.training:
            meter.train_batch(*input_ids.shape)
            return super().forward(input_ids, attention_mask, mask_pos, prompt=prompt)
        return meter.timed_eval(super().forward, input_ids, attention_mask, mask_pos, prompt=prompt)
