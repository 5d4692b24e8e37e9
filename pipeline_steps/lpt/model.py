"""LPT's prompt generators and the late-prompt model (see the package docstring)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..flops import MeteredForward
from ..models.backbone import Backbone
from ..prompt_tuning.model import PromptModel
from ..verbalizers import Verbalizer
from .config import LatePromptConfig


class LayerRunner:
    """Embeddings, a range of encoder layers, and the final transform, called one by one, so
    a sequence can be changed between two layers. BERT/RoBERTa: ``embeddings`` then
    ``encoder.layer``; MPNet: the same, with the encoder's relative position bias (for the
    sequence's length) passed to every layer; T5: the encoder stack's ``block`` (relative position
    bias from block 0) then ``final_layer_norm``."""

    def __init__(self, backbone: Backbone):
        self.backbone = backbone
        self.is_t5 = backbone.is_seq2seq
        self.stack = backbone.hf.encoder if self.is_t5 else backbone.encoder_model
        self.layers = self.stack.block if self.is_t5 else self.stack.encoder.layer

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def embed(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """The hidden states entering layer 0."""
        if self.is_t5:
            return self.stack.dropout(inputs_embeds)
        return self.stack.embeddings(inputs_embeds=inputs_embeds)

    def run(self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Layers ``start .. stop-1`` on ``hidden`` ``[B, S, d]`` with the 2-D mask ``[B, S]``."""
        if start >= stop:
            return hidden
        from transformers.masking_utils import create_bidirectional_mask

        mask = create_bidirectional_mask(config=self.stack.config, inputs_embeds=hidden, attention_mask=attention_mask)
        if not self.is_t5:
            extra = ()
            if hasattr(self.stack.encoder, "compute_position_bias"):  # MPNet
                extra = (self.stack.encoder.compute_position_bias(hidden),)
            for layer in self.layers[start:stop]:
                out = layer(hidden, mask, *extra)
                hidden = out[0] if isinstance(out, tuple) else out
            return hidden
        length = hidden.shape[1]
        bias = self.layers[0].layer[0].SelfAttention.compute_bias(length, length, device=hidden.device)
        for block in self.layers[start:stop]:
            hidden = block(hidden, mask, bias)[0]
        return hidden

    def finish(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.is_t5:
            return self.stack.dropout(self.stack.final_layer_norm(hidden))
        return hidden


def first_real_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the first non-pad token of each row (left or right padding)."""
    return attention_mask.to(torch.long).argmax(dim=1)


def pool_membership(attention_mask: torch.Tensor, length: int) -> torch.Tensor:
    """``[B, L, T]`` bool: token ``t`` of row ``b`` falls in pooling bin ``i``.

    Bins cover the row's real tokens in order, as adaptive pooling of the unpadded sequence
    does: bin ``i`` of ``n`` tokens spans ``floor(i·n/L) .. ceil((i+1)·n/L) - 1``.
    """
    real = attention_mask.bool()
    rank = real.long().cumsum(1) - 1                                        # position among real tokens
    n = real.long().sum(1, keepdim=True)                                    # [B, 1]
    i = torch.arange(length, device=attention_mask.device).unsqueeze(0)     # [1, L]
    start = (i * n) // length
    end = ((i + 1) * n + length - 1) // length
    r = rank.unsqueeze(1)                                                   # [B, 1, T]
    return real.unsqueeze(1) & (r >= start.unsqueeze(-1)) & (r < end.unsqueeze(-1))


class NaiveGenerator(nn.Module):
    kind = "naive"

    def __init__(self, prompt: torch.Tensor):
        super().__init__()
        self.prompt = nn.Parameter(prompt.clone().float())

    def forward(self, hidden, attention_mask):
        return self.prompt.unsqueeze(0).expand(hidden.shape[0], -1, -1)


class NPGenerator(nn.Module):
    """Instance-aware generator from the first token's hidden state."""
    kind = "npg"

    def __init__(self, hidden_size: int, bottleneck: int, length: int):
        super().__init__()
        self.length = length
        self.down = nn.Linear(hidden_size, bottleneck)
        self.up = nn.Linear(bottleneck, length * hidden_size)

    def forward(self, hidden, attention_mask):
        first = hidden[torch.arange(hidden.shape[0], device=hidden.device), first_real_index(attention_mask)]
        out = self.up(F.relu(self.down(first.float())))
        return out.view(hidden.shape[0], self.length, hidden.shape[-1])


class PoolingGenerator(nn.Module):
    """Token-wise down-projection, adaptive pooling over the real tokens to ``L`` positions."""

    def __init__(self, hidden_size: int, bottleneck: int, length: int, pooling: str):
        super().__init__()
        if pooling not in ("avg", "max"):
            raise ValueError(f"pooling must be avg or max, not {pooling}")
        self.kind = "appg" if pooling == "avg" else "mppg"
        self.length, self.pooling = length, pooling
        self.down = nn.Linear(hidden_size, bottleneck)
        self.up = nn.Linear(bottleneck, hidden_size)

    def forward(self, hidden, attention_mask):
        z = self.down(hidden.float())                                       # [B, T, r]
        member = pool_membership(attention_mask, self.length)               # [B, L, T]
        if self.pooling == "avg":
            w = member.float()
            pooled = (w @ z) / w.sum(-1, keepdim=True)
        else:
            z4 = z.unsqueeze(1).masked_fill(~member.unsqueeze(-1), float("-inf"))
            pooled = z4.amax(dim=2)
        return self.up(F.relu(pooled))


def build_generator(cfg: LatePromptConfig, hidden_size: int, init: torch.Tensor | None = None) -> nn.Module:
    """``init``: the naive generator's starting prompt ``[L, d]``."""
    if cfg.generator == "naive":
        if init is None:
            raise ValueError("the naive generator needs an initial prompt")
        return NaiveGenerator(init)
    if cfg.generator == "npg":
        return NPGenerator(hidden_size, cfg.bottleneck, cfg.prompt_length)
    return PoolingGenerator(hidden_size, cfg.bottleneck, cfg.prompt_length, "avg" if cfg.generator == "appg" else "max")


class _LateView:
    """What a verbalizer calls as ``backbone``: its ``encode`` runs the late-prompt forward.

    The verbalizer gets the attention mask already extended by the ``L`` prompt positions
    and the mask position shifted by ``L``; ``encode`` strips the extension for the layers
    below ``k`` and returns ``[B, L + T, d]``.
    """

    def __init__(self, model: "LatePromptModel"):
        self._model = model
        self.is_seq2seq = model.backbone.is_seq2seq

    def encode(self, inputs_embeds, attention_mask):
        return self._model.encode(inputs_embeds, attention_mask)

    def mlm_logits(self, hidden):
        return self._model.backbone.mlm_logits(hidden)

    def first_step_logits(self, inputs_embeds, attention_mask):
        from transformers.modeling_outputs import BaseModelOutput

        bb = self._model.backbone
        enc = self.encode(inputs_embeds, attention_mask)
        dec = torch.full((enc.shape[0], 1), bb.config.decoder_start_token_id, dtype=torch.long, device=enc.device)
        out = bb.hf(encoder_outputs=BaseModelOutput(last_hidden_state=enc), attention_mask=attention_mask,
                    decoder_input_ids=dec)
        return out.logits[:, 0]


class LatePromptModel(nn.Module):
    """Frozen backbone + frozen verbalizer + a trainable late-prompt generator at layer ``k``."""

    def __init__(self, backbone: Backbone, verbalizer: Verbalizer, generator: nn.Module, insert_layer: int,
                 prompt_length: int):
        super().__init__()
        self.backbone = backbone
        self.verbalizer = verbalizer
        self.generator = generator.to(backbone.word_embeddings.weight.device)
        self.runner = LayerRunner(backbone)
        if not 0 <= insert_layer < self.runner.num_layers:
            raise ValueError(f"insert_layer {insert_layer} is outside 0 .. {self.runner.num_layers - 1}")
        self.insert_layer = insert_layer
        self.prompt_length = prompt_length
        self._view = _LateView(self)

    @staticmethod
    def depth(backbone: Backbone) -> int:
        """Number of layers a late prompt can be inserted at (T5: the encoder's)."""
        return LayerRunner(backbone).num_layers

    def lower(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Hidden states entering layer ``k``; never part of an autograd graph."""
        with torch.no_grad():
            hidden = self.runner.embed(inputs_embeds)
            return self.runner.run(hidden, attention_mask, 0, self.insert_layer)

    def encode(self, inputs_embeds: torch.Tensor, extended_mask: torch.Tensor) -> torch.Tensor:
        """Last hidden states ``[B, L + T, d]``; ``extended_mask`` is ``[B, L + T]``."""
        mask = extended_mask[:, self.prompt_length:]
        hidden = self.lower(inputs_embeds, mask)
        prompt = self.generator(hidden, mask)
        hidden = torch.cat([prompt.to(hidden.dtype), hidden], dim=1)
        hidden = self.runner.run(hidden, extended_mask, self.insert_layer, self.runner.num_layers)
        return self.runner.finish(hidden)

    def generate(self, input_ids, attention_mask) -> torch.Tensor:
        """The late prompt ``[B, L, d]`` for a batch (what the generator makes of layer ``k``)."""
        with torch.no_grad():
            emb = self.backbone.embed(input_ids)
        return self.generator(self.lower(emb, attention_mask), attention_mask)

    def forward(self, input_ids, attention_mask, mask_pos, prompt=None) -> torch.Tensor:
        """Class logits ``[B, C]`` (``prompt`` is accepted for the training loop's sake; unused)."""
        with torch.no_grad():
            emb = self.backbone.embed(input_ids)
        ext = torch.cat([attention_mask.new_ones(attention_mask.shape[0], self.prompt_length), attention_mask], 1)
        return self.verbalizer(self._view, emb, ext, mask_pos + self.prompt_length)


class MeteredLatePromptModel(MeteredForward, LatePromptModel):
    pass


class MeteredPromptModel(MeteredForward, PromptModel):
    pass
