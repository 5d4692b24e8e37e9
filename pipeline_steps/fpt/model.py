"""FPT stage models: a prompt model on a partial backbone that shares the full model's weights, and
the expansion to the next, larger stage."""
from __future__ import annotations

import torch

from ..flops import MeteredForward
from ..models.backbone import Backbone
from ..models.partial import PartialSpec, build_partial, plan_partial
from ..prompt_tuning.model import PromptModel
from .config import FPTStage


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
