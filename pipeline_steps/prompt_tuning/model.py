"""Soft prompt tuning (Lester et al.; Su et al.): a trainable prompt before the input.

Layout is PEFT's: ``L`` virtual tokens before *all* input tokens, special tokens
included, with position ids running over the whole sequence; so a prompt
exported as a PEFT adapter gives the same predictions (see ``peft_export``).
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from ..io import load_tensors
from ..models.backbone import Backbone
from ..verbalizers import Verbalizer


def init_prompt(backbone: Backbone, length: int, how: str, generator: torch.Generator,
                special_ids: list[int] | None = None) -> torch.Tensor:
    """``[L, d]`` initial prompt: ``vocab`` copies embeddings of random non-special tokens,
    ``random`` draws from a normal with the embedding matrix's std."""
    emb = backbone.word_embeddings.weight.detach().float().cpu()
    if how == "vocab":
        allowed = torch.ones(emb.shape[0], dtype=torch.bool)
        if special_ids:
            allowed[torch.tensor(special_ids, dtype=torch.long)] = False
        pool = allowed.nonzero().squeeze(1)
        pick = pool[torch.randint(len(pool), (length,), generator=generator)]
        return emb[pick].clone()
    if how == "random":
        return torch.randn(length, emb.shape[1], generator=generator) * emb.std()
    raise ValueError(f"unknown prompt init '{how}' (random | vocab)")


class PromptModel(nn.Module):
    """Frozen backbone + frozen verbalizer + one trainable soft prompt."""

    def __init__(self, backbone: Backbone, verbalizer: Verbalizer, prompt: torch.Tensor):
        super().__init__()
        self.backbone = backbone
        self.verbalizer = verbalizer
        self.prompt = nn.Parameter(prompt.clone().float().to(backbone.word_embeddings.weight.device))

    @property
    def prompt_length(self) -> int:
        return self.prompt.shape[0]

    def forward(self, input_ids, attention_mask, mask_pos, prompt: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits ``[B, C]``. ``prompt`` overrides the model's own (``[L, d]`` or ``[B, L, d]``)."""
        emb = self.backbone.embed(input_ids)
        p = self.prompt if prompt is None else prompt
        if p.dim() == 2:
            p = p.unsqueeze(0).expand(emb.shape[0], -1, -1)
        length = p.shape[1]
        inputs = torch.cat([p.to(emb.dtype), emb], dim=1)
        mask = torch.cat([attention_mask.new_ones(emb.shape[0], length), attention_mask], dim=1)
        return self.verbalizer(self.backbone, inputs, mask, mask_pos + length)


def load_prompt(path: str) -> tuple[torch.Tensor, dict]:
    """A prompt artifact (safetensors with a ``prompt`` tensor) and its provenance."""
    tensors, meta = load_tensors(path)
    if "prompt" not in tensors:
        raise UserError(f"{path}: not a prompt artifact (no 'prompt' tensor)")
    return tensors["prompt"], meta
