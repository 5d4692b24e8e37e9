"""A frozen PLM behind one small interface, whatever its family.

Prompt methods need the same few things from every model: its input word
embeddings, a forward pass from ``inputs_embeds``, the MLM head applied only
at chosen positions, the first decoder step of a seq2seq model, and the FFN
modules whose activations the transferability indicators read. ``Backbone``
provides them for BERT-like encoders (with or without an MLM head) and T5.
"""
from __future__ import annotations

import torch
from torch import nn


def position_limit(config) -> int | None:
    """Longest input (prompt included) the position embeddings allow; None when unbounded (T5)."""
    if getattr(config, "is_encoder_decoder", False):
        return None
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and config.model_type in ("roberta", "xlm-roberta", "camembert", "mpnet"):
        limit -= (config.pad_token_id or 0) + 1  # RoBERTa's and MPNet's positions start after the padding index
    return limit


class Backbone(nn.Module):
    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.hf = hf_model
        for p in self.hf.parameters():
            p.requires_grad_(False)
        self.hf.eval()
        cfg = hf_model.config
        self.config = cfg
        self.is_seq2seq = bool(getattr(cfg, "is_encoder_decoder", False))
        self.hidden_size = cfg.d_model if self.is_seq2seq else cfg.hidden_size
        self.max_positions = position_limit(cfg)
        self.word_embeddings = hf_model.get_input_embeddings()
        self._head = self._find_mlm_head()

    # -- structure ------------------------------------------------------------------------------
    def _find_mlm_head(self) -> nn.Module | None:
        if self.is_seq2seq:
            return None
        prefix = getattr(self.hf, "base_model_prefix", "")
        if not hasattr(self.hf, prefix) or self.hf.base_model is self.hf:
            return None  # a bare encoder (e.g. the embedded MiniLMs): no MLM head
        heads = [m for n, m in self.hf.named_children() if n != prefix]
        return heads[0] if len(heads) == 1 else None

    @property
    def has_mlm_head(self) -> bool:
        return self._head is not None or self.is_seq2seq

    @property
    def encoder_model(self) -> nn.Module:
        """The module that maps ``inputs_embeds`` to hidden states."""
        return self.hf.get_encoder() if self.is_seq2seq else self.hf.base_model

    def train(self, mode: bool = True):  # the PLM stays in eval mode (no dropout): it is frozen
        super().train(mode)
        self.hf.eval()
        return self

    def ffn_modules(self) -> list[tuple[str, nn.Module]]:
        """Per layer, the module whose output is the FFN intermediate activation.

        BERT/RoBERTa: ``intermediate`` (dense + activation). T5: ``DenseReluDense.wi`` (pre-ReLU,
        so ``> 0`` marks exactly the neurons ReLU keeps), encoder blocks then decoder blocks.
        """
        out = []
        if self.is_seq2seq:
            for part in ("encoder", "decoder"):
                stack = getattr(self.hf, part)
                for i, block in enumerate(stack.block):
                    ff = block.layer[-1].DenseReluDense
                    out.append((f"{part}.{i}", getattr(ff, "wi", None) or ff.wi_0))
            return out
        for i, layer in enumerate(self.encoder_model.encoder.layer):
            out.append((f"encoder.{i}", layer.intermediate))
        return out

    @property
    def num_layers(self) -> int:
        return len(self.ffn_modules())

    # -- computation ----------------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.word_embeddings(input_ids)

    def encode(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last hidden states of the encoder, ``[B, T, d]``."""
        return self.encoder_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask).last_hidden_state

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of the MLM head for the given hidden states only (e.g. ``[B, d]``)."""
        if self._head is None:
            raise ValueError("this model has no MLM head; use the embedding verbalizer")
        return self._head(hidden)

    def first_step_logits(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Seq2seq: vocabulary logits of the first decoder step, ``[B, V]``."""
        start = self.config.decoder_start_token_id
        dec = torch.full((inputs_embeds.shape[0], 1), start, dtype=torch.long, device=inputs_embeds.device)
        out = self.hf(inputs_embeds=inputs_embeds, attention_mask=attention_mask, decoder_input_ids=dec)
        return out.logits[:, 0]
