"""Settings of the DynSAN stage (no torch import): the network, one variant (ablation) and training."""
from __future__ import annotations

from dataclasses import dataclass

from ..settings import SCHEMA_CAP, SchemaSection, Settings

SELECTIONS = ("gated", "random", "all")
# splits drawn for a task without its own (dynsan.tasks.<name>.split; the schema writes the same defaults):
# DynSAN holds out 0.2 for test where the classification tasks hold out 0.25 (data/prepare.py)
TEST_FRACTION = 0.2
DEV_FRACTION = 0.15
SPLIT_SEED = 13


@dataclass
class ModelConfig(Settings):
    """The network and the variant switches (the ablations of the paper are values of these)."""
    what = "dynsan model"
    schema = (SchemaSection(("$defs", "dynsan_model"), schema_only_bounds={
        **{f"{k} maximum": SCHEMA_CAP for k in ("d", "k", "blocks", "char_dim", "char_channels", "char_kernel",
                                                "max_chars", "max_passages", "match_bias_init")},
        "match_bias_init minimum": SCHEMA_CAP}),)

    d: int = 128                 # model width D
    heads: int = 8               # H
    k: int = 256                 # tokens each head attends among
    blocks: int = 4              # N DynSA blocks over all passages
    dropout: float = 0.1
    conv_kernel: int = 7
    char_dim: int = 15           # trainable character embeddings
    char_channels: int = 64      # character CNN filters
    char_kernel: int = 5
    max_chars: int = 16          # characters kept per token
    max_passages: int = 64       # size of the passage-rank embedding
    # variant switches
    selection: str = "gated"     # gated | random | all (all = full self-attention, the baseline)
    gate: bool = True            # scale heads by the gate (and regularise it)
    conv: bool = True            # the two depthwise-separable convolutions of each block
    cross_passage: bool = True   # the N final blocks see all passages as one sequence
    self_attention: bool = True  # the attention path (off: the dense path only)
    # not in the paper: in the final (cross-passage) blocks each head adds a learned bias to the attention
    # score of two occurrences of the same token, so that a mention can find its other mentions in other
    # passages (the link a two-hop question needs: person -> city in one passage, the city -> its
    # country in another); docs/dynsan.md, "What the two-hop questions need"
    match_bias: bool = False
    match_bias_init: float = 5.0  # its initial value (per head, learned)

    def check(self) -> None:
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection '{self.selection}' is not one of {list(SELECTIONS)}")
        self.at_least(2, "d")
        self.at_least(1, "heads", "k", "blocks", "conv_kernel", "char_dim", "char_channels", "char_kernel",
                      "max_chars", "max_passages")
        if self.d % self.heads:
            raise ValueError(f"d ({self.d}) must be a multiple of heads ({self.heads})")
        if self.selection == "gated" and not self.gate:
            raise ValueError("selection 'gated' needs gate: true (the gate picks the tokens); "
                             "use selection 'random' or 'all' without a gate")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.conv_kernel % 2 == 0:  # padding kernel // 2 keeps the length (the residual's shape) only if odd
            raise ValueError(f"conv_kernel must be odd (an even kernel changes the sequence length and breaks "
                             f"the residual connection), got {self.conv_kernel}")


@dataclass
class TrainConfig(Settings):
    what = "dynsan training"
    schema = (SchemaSection(("$defs", "dynsan_train"), schema_only_bounds={
        f"{k} maximum": SCHEMA_CAP for k in ("lr", "beta", "grad_clip")}),)

    steps: int = 20000
    batch_size: int = 32
    eval_batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 500
    ema_decay: float = 0.9999
    beta: float = 1e-5           # weight of the gate's L1 term
    grad_clip: float = 5.0
    eval_every: int = 1000
    checkpoint_every: int = 500
    max_answer_length: int = 8   # decoding: end <= start + max_answer_length - 1
    eval_max: int = 0            # dev questions scored during training (0 = all)

    def check(self) -> None:
        for name in ("steps", "batch_size", "eval_batch_size", "eval_every", "checkpoint_every", "max_answer_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        self.at_least(0, "beta", "warmup_steps", "eval_max")
        self.above(0, "lr", "grad_clip")


# variant keys that are model switches, and the ones that change the data or the loss
VARIANT_MODEL_KEYS = ("selection", "gate", "conv", "cross_passage", "self_attention", "match_bias", "k")
VARIANT_KEYS = VARIANT_MODEL_KEYS + ("beta", "passages")


def resolve_variant(model: dict, train: dict, variant: dict, passages: int) -> tuple[dict, dict, int]:
    """(model settings, train settings, passages kept) of one variant: the section's settings with the
    variant's overrides; ``gate: false`` also removes the gate's L1 term."""
    unknown = set(variant) - set(VARIANT_KEYS)
    if unknown:
        raise ValueError(f"unknown variant key(s) {sorted(unknown)}; known: {list(VARIANT_KEYS)}")
    m = dict(model, **{k: v for k, v in variant.items() if k in VARIANT_MODEL_KEYS})
    t = dict(train)
    if "beta" in variant:
        t["beta"] = variant["beta"]
    if not m.get("gate", True):
        t["beta"] = 0.0
    ModelConfig.from_dict(m)
    TrainConfig.from_dict(t)
    return m, t, int(variant.get("passages", passages))
