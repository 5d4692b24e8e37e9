"""Frozen, shared verbalizers: from a PLM's output to one score per class.

The verbalizer holds no trainable parameter, so a prompt trained on one task can
be applied to another task (zero-shot transfer) with nothing new to learn.

* ``MLMVerbalizer`` (Su et al.): the MLM head's logits at the mask position,
  restricted to each class's label words and averaged per class. The head runs
  at the mask position only. For T5, the first decoder step's logits.
* ``EmbeddingVerbalizer`` (this project's adaptation for encoders without an MLM
  head, such as the embedded MiniLM sentence encoders): the cosine between the
  model's output (at the mask position, or mean-pooled) and the frozen model's
  own encoding of each class's label words, times a fixed scale.

Both keep a ``[C, W]`` weight matrix over the label words, which is where a
knowledgeable verbalizer (KPT) plugs in its refined word sets and weights.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError
from .models.backbone import Backbone

log = logging.getLogger(__name__)


def label_word_ids(tokenizer, label_words: dict[str, list[str]], label_names: list[str]) -> tuple[list[int], torch.Tensor]:
    """First sub-token of each label word (with a leading space for BPE vocabularies).

    Returns the flat list of token ids and a ``[C, W]`` row-normalised averaging matrix.
    """
    ids, owner = [], []
    for c, name in enumerate(label_names):
        for word in label_words[name]:
            toks = tokenizer(" " + word.strip(), add_special_tokens=False)["input_ids"]
            if not toks or (len(toks) == 1 and toks[0] == tokenizer.unk_token_id):
                raise UserError(f"label word '{word}' of class '{name}' tokenises to nothing usable "
                                f"with this model's tokenizer")
            if len(toks) > 1:
                log.info("label word '%s' spans %d tokens; its first token is used", word, len(toks))
            ids.append(toks[0])
            owner.append(c)
    weights = torch.zeros(len(label_names), len(ids))
    for j, c in enumerate(owner):
        weights[c, j] = 1.0
    return ids, weights / weights.sum(1, keepdim=True)


class Verbalizer(nn.Module):
    kind: str = ""

    def __init__(self, word_ids: list[int], weights: torch.Tensor):
        super().__init__()
        self.register_buffer("word_ids", torch.tensor(word_ids, dtype=torch.long), persistent=False)
        self.register_buffer("weights", weights.float(), persistent=False)

    @property
    def num_classes(self) -> int:
        return self.weights.shape[0]

    def forward(self, backbone: Backbone, inputs_embeds, attention_mask, mask_pos) -> torch.Tensor:
        """``[B, C]`` class scores."""
        raise NotImplementedError

    def word_logits(self, backbone: Backbone, inputs_embeds, attention_mask, mask_pos) -> torch.Tensor:
        """``[B, W]`` per-label-word logits z(x), the input of knowledgeable verbalizers (KPT)."""
        raise NotImplementedError


class MLMVerbalizer(Verbalizer):
    """``token_ids``/``token_weights`` (optional): each word's score is the ``[W, T]``-weighted
    combination of its sub-tokens' logits (e.g. their mean); without them a word is its first sub-token."""
    kind = "mlm"

    def __init__(self, word_ids, weights, token_ids: list[int] | None = None, token_weights: torch.Tensor | None = None):
        super().__init__(word_ids, weights)
        has = token_ids is not None
        self.register_buffer("token_ids", torch.tensor(token_ids, dtype=torch.long) if has else None, persistent=False)
        self.register_buffer("token_weights", token_weights.float() if has else None, persistent=False)

    def vocab_logits(self, backbone, inputs_embeds, attention_mask, mask_pos) -> torch.Tensor:
        """``[B, V]`` vocabulary logits at the mask position (T5: at the first decoder step)."""
        if backbone.is_seq2seq:
            return backbone.first_step_logits(inputs_embeds, attention_mask)
        hidden = backbone.encode(inputs_embeds, attention_mask)
        at_mask = hidden[torch.arange(hidden.shape[0], device=hidden.device), mask_pos]
        return backbone.mlm_logits(at_mask)

    def forward(self, backbone, inputs_embeds, attention_mask, mask_pos):
        return self.from_vocab_logits(self.vocab_logits(backbone, inputs_embeds, attention_mask, mask_pos))

    def word_logits(self, backbone, inputs_embeds, attention_mask, mask_pos) -> torch.Tensor:
        return self.words_from_vocab(self.vocab_logits(backbone, inputs_embeds, attention_mask, mask_pos))

    def words_from_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        """``[B, V]`` vocabulary logits -> ``[B, W]`` per-word logits."""
        if self.token_ids is not None:
            return logits[:, self.token_ids].float() @ self.token_weights.T
        return logits[:, self.word_ids].float()

    def from_vocab_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """``[B, V]`` vocabulary logits (at the mask / first decoder step) -> ``[B, C]`` class scores."""
        return self.words_from_vocab(logits) @ self.weights.T


class EmbeddingVerbalizer(Verbalizer):
    kind = "embedding"

    def __init__(self, word_ids, weights, class_vectors: torch.Tensor, pooling: str = "mask", scale: float = 20.0,
                 word_vectors: torch.Tensor | None = None):
        super().__init__(word_ids, weights)
        self.register_buffer("class_vectors", F.normalize(class_vectors.float(), dim=-1), persistent=False)
        # [W, d]: each label word's own encoding (for word_logits); optional
        self.register_buffer("word_vectors", None if word_vectors is None else F.normalize(word_vectors.float(), dim=-1),
                             persistent=False)
        self.pooling = pooling
        self.scale = scale

    @staticmethod
    @torch.no_grad()
    def encode_words(backbone: Backbone, tokenizer, words: list[str], batch_size: int = 64) -> torch.Tensor:
        """``[W, d]`` the frozen model's mean-pooled, normalised encoding of each word on its own."""
        device = backbone.word_embeddings.weight.device
        out = []
        for start in range(0, len(words), batch_size):
            enc = tokenizer(words[start:start + batch_size], padding=True, return_tensors="pt").to(device)
            hidden = backbone.encode(backbone.embed(enc["input_ids"]), enc["attention_mask"]).float()
            m = enc["attention_mask"].unsqueeze(-1).float()
            out.append(F.normalize((hidden * m).sum(1) / m.sum(1), dim=-1))
        return torch.cat(out)

    @staticmethod
    @torch.no_grad()
    def encode_label_words(backbone: Backbone, tokenizer, label_words, label_names) -> torch.Tensor:
        """The frozen model's mean-pooled encoding of each class's label words (no prompt)."""
        device = backbone.word_embeddings.weight.device
        vecs = []
        for name in label_names:
            enc = tokenizer(label_words[name], padding=True, return_tensors="pt").to(device)
            hidden = backbone.encode(backbone.embed(enc["input_ids"]), enc["attention_mask"]).float()
            m = enc["attention_mask"].unsqueeze(-1).float()
            words = F.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)
            vecs.append(words.mean(0))
        return torch.stack(vecs)

    def forward(self, backbone, inputs_embeds, attention_mask, mask_pos):
        return self.from_hidden(backbone.encode(inputs_embeds, attention_mask), attention_mask, mask_pos)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor, mask_pos: torch.Tensor) -> torch.Tensor:
        """``[B, d]`` the output compared with the label words (mask position or mean-pooled), normalised."""
        hidden = hidden.float()
        if self.pooling == "mask":
            rep = hidden[torch.arange(hidden.shape[0], device=hidden.device), mask_pos]
        else:
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            rep = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        return F.normalize(rep, dim=-1)

    def from_hidden(self, hidden: torch.Tensor, attention_mask: torch.Tensor, mask_pos: torch.Tensor) -> torch.Tensor:
        """Last hidden states ``[B, T, d]`` (prompt included) -> ``[B, C]`` class scores."""
        return self.scale * self.pool(hidden, attention_mask, mask_pos) @ self.class_vectors.T

    def word_logits(self, backbone, inputs_embeds, attention_mask, mask_pos) -> torch.Tensor:
        """``[B, W]``: scale x cosine of the output with each label word's own encoding."""
        if self.word_vectors is None:
            raise ValueError("this embedding verbalizer was built without per-word vectors")
        hidden = backbone.encode(inputs_embeds, attention_mask)
        return self.scale * self.pool(hidden, attention_mask, mask_pos) @ self.word_vectors.T


def build_verbalizer(kind: str, backbone: Backbone, tokenizer, label_words, label_names,
                     pooling: str = "mask", scale: float = 20.0) -> Verbalizer:
    """``kind`` in {auto, mlm, embedding}; auto -> mlm when the model has an MLM head."""
    if kind == "auto":
        kind = "mlm" if backbone.has_mlm_head else "embedding"
    ids, weights = label_word_ids(tokenizer, label_words, label_names)
    if kind == "mlm":
        if not backbone.has_mlm_head:
            raise UserError("verbalizer 'mlm' needs a model with an MLM head (or T5); "
                            "this one is a bare encoder: use verbalizer 'embedding'")
        verb = MLMVerbalizer(ids, weights)
    else:
        vecs = EmbeddingVerbalizer.encode_label_words(backbone, tokenizer, label_words, label_names)
        verb = EmbeddingVerbalizer(ids, weights, vecs, pooling=pooling, scale=scale)
    return verb.to(backbone.word_embeddings.weight.device)
