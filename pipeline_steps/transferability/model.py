"""Cross-model prompt projector (Su et al., NAACL 2022, section "cross-model transfer").

A soft prompt ``[L, d_src]`` of a source PLM is mapped to a prompt ``[L, d_tgt]`` of a
target PLM by a two-layer perceptron over the *flattened* prompt, followed by a
LayerNorm on every output token:

    P_tgt = LayerNorm( W2 tanh(W1 flatten(P_src) + b1) + b2 ).view(L, d_tgt)

Two training objectives (``transferability.projection``):

* ``distance``: regress onto the target model's own trained prompts of the same tasks (MSE);
* ``task``: feed the projected prompt through the frozen target PLM and its verbalizer and
  minimise the target task loss. ``ProjectedPromptModel`` is the wrapper for that: its only
  trainable parameters are the projector's, so ``training.train_module`` trains it on one task.
"""
from __future__ import annotations

import torch
from torch import nn

from ..models.backbone import Backbone
from ..prompt_tuning.model import PromptModel
from ..verbalizers import Verbalizer


class PromptProjector(nn.Module):
    """``[L, d_src]`` (or ``[B, L, d_src]``) -> ``[L, d_tgt]`` (or ``[B, L, d_tgt]``).

    ``out_scale`` initialises the LayerNorm gain, i.e. the per-token standard deviation of
    the projected prompts at the start (1.0 is PyTorch's default); the bias starts at 0.
    """

    def __init__(self, length: int, d_src: int, d_tgt: int, hidden: int = 256, out_scale: float = 1.0,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.length, self.d_src, self.d_tgt, self.hidden = length, d_src, d_tgt, hidden
        self.inner = nn.Linear(length * d_src, hidden)
        self.act = nn.Tanh()
        self.outer = nn.Linear(hidden, length * d_tgt)
        self.norm = nn.LayerNorm(d_tgt)
        self.reset_parameters(out_scale, generator)

    @torch.no_grad()
    def reset_parameters(self, out_scale: float = 1.0, generator: torch.Generator | None = None) -> None:
        """PyTorch's default Linear init (uniform +-1/sqrt(fan_in)), drawn from ``generator``."""
        for lin in (self.inner, self.outer):
            bound = lin.in_features ** -0.5
            lin.weight.uniform_(-bound, bound, generator=generator)
            lin.bias.uniform_(-bound, bound, generator=generator)
        self.norm.weight.fill_(out_scale)
        self.norm.bias.zero_()

    def shape_dict(self) -> dict:
        return {"length": self.length, "d_src": self.d_src, "d_tgt": self.d_tgt, "hidden": self.hidden}

    def forward(self, prompt: torch.Tensor) -> torch.Tensor:
        single = prompt.dim() == 2
        x = prompt.unsqueeze(0) if single else prompt
        if tuple(x.shape[1:]) != (self.length, self.d_src):
            raise ValueError(f"projector expects prompts of shape [L={self.length}, d={self.d_src}], "
                             f"got {tuple(prompt.shape)}")
        x = x.reshape(x.shape[0], -1).to(self.inner.weight.dtype)
        y = self.outer(self.act(self.inner(x))).view(x.shape[0], self.length, self.d_tgt)
        y = self.norm(y)
        return y[0] if single else y


class ProjectedPromptModel(nn.Module):
    """Frozen target PLM + frozen verbalizer, prompted by ``projector(source_prompt)``.

    Exposes ``forward(input_ids, attention_mask, mask_pos)`` and ``verbalizer`` like a
    ``PromptModel``, so ``train_module`` trains the projector (its only trainable
    parameters) on one task. Several instances may share one projector and backbone
    (one per task, each with its own verbalizer and source prompt).
    """

    def __init__(self, backbone: Backbone, verbalizer: Verbalizer, projector: PromptProjector,
                 source_prompt: torch.Tensor):
        super().__init__()
        device = backbone.word_embeddings.weight.device
        if projector.d_tgt != backbone.hidden_size:
            raise ValueError(f"projector outputs width {projector.d_tgt}, target model has hidden "
                             f"size {backbone.hidden_size}")
        # PromptModel does the prompting; its own prompt is a frozen placeholder, always overridden
        self.prompted = PromptModel(backbone, verbalizer, torch.zeros(projector.length, backbone.hidden_size))
        self.prompted.prompt.requires_grad_(False)
        self.projector = projector.to(device)
        self.register_buffer("source_prompt", source_prompt.detach().float().to(device), persistent=False)

    @property
    def verbalizer(self) -> Verbalizer:
        return self.prompted.verbalizer

    @property
    def backbone(self) -> Backbone:
        return self.prompted.backbone

    def projected(self) -> torch.Tensor:
        return self.projector(self.source_prompt)

    def forward(self, input_ids, attention_mask, mask_pos, prompt: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits ``[B, C]``; ``prompt`` (a target-width prompt) bypasses the projector."""
        p = self.projected() if prompt is None else prompt
        return self.prompted(input_ids, attention_mask, mask_pos, prompt=p)
