"""Fast Prompt Tuning (Huang et al., 2022): soft prompt tuning through progressively larger
partial PLMs.

A schedule is a list of stages, each a partial model size and a number of steps, ending
with the full model. Stage ``i`` trains the soft prompt (the same ``[L, d]`` tensor of
:mod:`.prompt_tuning`: partial models keep the hidden size) on a partial model built by
:mod:`pipeline_steps.models.partial`; at each expansion the prompt and the AdamW moments
carry over into the next, larger model. Sizes: ``layers`` (depth: a fraction or a number of
layers, chosen ``evenly`` or ``first``), ``ffn`` (width: a fraction or a number of FFN
neurons per layer, the top ones by mean absolute activation), or both (compound).

The verbalizer is frozen and shared by every stage. For the embedding verbalizer the class
vectors are, by default (``class_vectors: full``), the full model's encoding of the label
words, the target the final stage is evaluated against; ``partial`` encodes them with each
stage's partial model instead.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from ..flops import MeteredForward
from ..models.backbone import Backbone
from ..models.partial import SELECTIONS, PartialSpec, build_partial, plan_partial
from ..prompt_tuning.model import PromptModel

METHODS = {"fpt_depth": ("layers",), "fpt_width": ("ffn",), "fpt_compound": ("layers", "ffn")}


@dataclass
class FPTStage:
    steps: int
    layers: float | int | None = None   # None: all layers
    ffn: float | int | None = None      # None: full FFN width

    @property
    def is_full(self) -> bool:
        return self.layers is None and self.ffn is None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FPTConfig:
    stages: list[FPTStage] = field(default_factory=list)
    selection: str = "evenly"          # evenly | first
    class_vectors: str = "full"        # full | partial (embedding verbalizer)

    @classmethod
    def from_dict(cls, d: dict) -> "FPTConfig":
        stages = [s if isinstance(s, FPTStage) else FPTStage(**s) for s in d.get("stages", [])]
        cfg = cls(stages, d.get("selection", "evenly"), d.get("class_vectors", "full"))
        cfg.check()
        return cfg

    def check(self) -> None:
        if not self.stages:
            raise ValueError("an FPT schedule needs at least one stage")
        if not self.stages[-1].is_full:
            raise ValueError("the last stage of an FPT schedule must be the full model (no layers/ffn)")
        if any(s.steps < 1 for s in self.stages):
            raise ValueError("every FPT stage needs at least one step")
        if self.selection not in SELECTIONS:
            raise ValueError(f"unknown layer selection '{self.selection}' ({' | '.join(SELECTIONS)})")
        if self.class_vectors not in ("full", "partial"):
            raise ValueError(f"class_vectors must be full or partial, not '{self.class_vectors}'")

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)


class StagePromptModel(MeteredForward, PromptModel):
    """A ``PromptModel`` on one stage's (partial) backbone; records what it computes."""


def stage_backbone(full: Backbone, stage: FPTStage, selection: str = "evenly",
                   scores: dict[str, torch.Tensor] | None = None) -> tuple[Backbone, PartialSpec]:
    """The stage's model (sharing ``full``'s weights) and which layers/width it keeps."""
    spec = plan_partial(full, stage.layers, stage.ffn, selection)
    return build_partial(full, spec, scores), spec


def expand(model: PromptModel, larger: Backbone, verbalizer=None) -> StagePromptModel:
    """The next stage: the same prompt values on a larger backbone (the verbalizer is kept
    unless a stage-specific one is given). The AdamW moments travel beside it, through
    ``train_module(optimizer_state=...)``."""
    return StagePromptModel(larger, verbalizer if verbalizer is not None else model.verbalizer,
                            model.prompt.detach().cpu())
