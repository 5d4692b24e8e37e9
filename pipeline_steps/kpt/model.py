"""KPT's refinements and the knowledgeable verbalizer, on per-word logits z(x) ``[B, W]``.

z(x) comes from ``Verbalizer.word_logits`` (MLM logits at the mask, mean of a word's sub-tokens or
its first; for the embedding verbalizer, the scaled cosine with each word's own encoding).

* frequency: drop words whose prior z_bar (mean of z over an unlabeled support set) is in the
  lowest ``candidate_frac`` (ranked over the vocabulary for MLM, among the label words otherwise);
* relevance: tf/idf of each word's centred support logits against the class anchors, drop tf < 0,
  keep the top fraction of each class, the fraction chosen once for all classes;
* calibration: log p_cal(v|x) = log_softmax over the kept words of z_v(x) - z_bar_v;
* learnable: alpha_c = softmax(w_c) over the class's words, w trained (starts at 0);
class score = sum_v alpha_cv log p_cal(v|x). Anchors (each class's first word) are never dropped.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..verbalizers import Verbalizer


def class_scores(z: torch.Tensor, owner: torch.Tensor, num_classes: int, weights: torch.Tensor | None = None,
                 prior: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, W]`` word logits -> ``[B, C]``: sum over each class's words of alpha_cv * log p(v|x).

    ``owner`` ``[W]`` class of each word; ``weights`` ``[W]`` (None: all 0, i.e. the mean);
    ``prior`` ``[W]`` z_bar for calibration (None: uncalibrated).
    """
    z = z.float()
    if prior is not None:
        z = z - prior
    logp = torch.log_softmax(z, dim=-1)
    member = owner.unsqueeze(0) == torch.arange(num_classes, device=owner.device).unsqueeze(1)  # [C, W]
    w = torch.zeros(owner.shape[0], device=z.device) if weights is None else weights.float()
    alpha = torch.softmax(w.unsqueeze(0).masked_fill(~member, -math.inf), dim=-1)  # [C, W]
    return logp @ alpha.T


def frequency_drop(prior: torch.Tensor, frac: float, reference: torch.Tensor | None = None,
                   protect: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """Words whose prior is below the ``frac`` cut of ``reference`` (vocabulary-wide mean logits for
    MLM; None: rank among the words' own priors). Returns (drop mask ``[W]``, threshold)."""
    ref = (prior if reference is None else reference).float()
    if frac <= 0 or ref.numel() == 0:
        return torch.zeros_like(prior, dtype=torch.bool), -math.inf
    k = int(frac * ref.numel())
    threshold = float(torch.sort(ref).values[min(k, ref.numel() - 1)])
    drop = prior.float() < threshold
    if protect is not None:
        drop &= ~protect
    return drop, threshold


def relevance(support: torch.Tensor, owner: torch.Tensor, anchors: torch.Tensor, active: torch.Tensor,
              num_classes: int) -> dict:
    """KPT's relevance refinement on support word logits ``[N, W]``.

    q_v = a word's logits minus their mean over the support set; tf = cos(q_v, q_anchor(own class));
    idf = 1 / (mean over the other classes of |cos(q_v, q_anchor(c'))|^p)^(1/p), p = 10/(C-2+0.01)+1.
    Words with tf < 0 are dropped; the rest are ranked by tf x idf per class and each class keeps
    max(1, floor(r * n_c)) of its n_c words, with r in {0, 1/M, ..., (M-1)/M} (M: the longest class
    list) chosen once for all classes as the one whose per-class boundary scores are nearest 1
    (squared error), as in the KPT code. Anchors are always kept.

    Returns tf, idf, score ``[W]`` (nan for inactive words), keep mask ``[W]`` and the rate.
    """
    q = support.float().T  # [W, N]
    q = q - q.mean(dim=1, keepdim=True)
    qn = q / q.norm(dim=1, keepdim=True).clamp(min=1e-12)
    cos = qn @ qn[anchors].T  # [W, C]
    W = owner.shape[0]
    tf = cos[torch.arange(W), owner]
    p = 10.0 / (num_classes - 2 + 0.01) + 1.0
    other = torch.ones_like(cos, dtype=torch.bool)
    other[torch.arange(W), owner] = False
    others = cos.abs().masked_select(other).view(W, num_classes - 1)
    scale = others.max(dim=1, keepdim=True).values.clamp(min=1e-12)  # power mean without underflow (p is ~1000 for C=2)
    idf = 1.0 / ((others / scale).pow(p).mean(dim=1).pow(1.0 / p) * scale.squeeze(1)).clamp(min=1e-12)
    score = tf * idf
    is_anchor = torch.zeros(W, dtype=torch.bool)
    is_anchor[anchors] = True
    alive = active & ((tf >= 0) | is_anchor)
    ranked = []
    for c in range(num_classes):
        idx = [i for i in torch.nonzero(alive & (owner == c)).squeeze(1).tolist()]
        idx.sort(key=lambda i: -float(score[i]))
        ranked.append(idx)
    longest = max(len(r) for r in ranked)
    best_rate, best_loss = 0.0, math.inf
    for step in range(longest):
        rate = step / longest
        loss = 0.0
        for r in ranked:
            cut = int(rate * len(r))
            boundary = score[r[min(cut, len(r) - 1)]]
            loss += (float(boundary) - 1.0) ** 2
        if loss < best_loss:  # earliest rate on ties, as a stable sort would pick
            best_rate, best_loss = rate, loss
    keep = torch.zeros(W, dtype=torch.bool)
    for r in ranked:
        keep[r[:max(1, int(len(r) * best_rate))]] = True
    keep |= is_anchor & active
    nan = torch.full((W,), math.nan)
    return {"tf": torch.where(active, tf, nan), "idf": torch.where(active, idf, nan),
            "score": torch.where(active, score, nan), "keep": keep, "rate": best_rate}


class KnowledgeableVerbalizer(nn.Module):
    """Class scores from a base verbalizer's per-word logits over a subset ``columns`` of its words.

    ``owner`` ``[K]`` class of each kept word, ``prior`` ``[K]`` the calibration z_bar (None: off),
    ``learnable``: a trainable weight per kept word (``word_weights``, starting at 0).
    """
    kind = "kpt"

    def __init__(self, base: Verbalizer, columns: list[int], owner: list[int], num_classes: int,
                 prior: torch.Tensor | None = None, learnable: bool = False):
        super().__init__()
        self.base = base
        self._num_classes = num_classes
        device = base.word_ids.device
        self.register_buffer("columns", torch.tensor(columns, dtype=torch.long, device=device), persistent=False)
        self.register_buffer("owner", torch.tensor(owner, dtype=torch.long, device=device), persistent=False)
        self.register_buffer("prior", None if prior is None else prior.float().to(device), persistent=False)
        self.word_weights = nn.Parameter(torch.zeros(len(columns), device=device), requires_grad=learnable)

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def alpha(self) -> torch.Tensor:
        """``[K]`` each kept word's weight within its class (softmax of w over the class's words)."""
        member = self.owner.unsqueeze(0) == torch.arange(self._num_classes, device=self.owner.device).unsqueeze(1)
        a = torch.softmax(self.word_weights.detach().unsqueeze(0).masked_fill(~member, -math.inf), dim=-1)
        return a.sum(0)

    def scores(self, z_all: torch.Tensor) -> torch.Tensor:
        """Class scores from the base verbalizer's ``[B, W_all]`` word logits."""
        return class_scores(z_all[:, self.columns], self.owner, self._num_classes, self.word_weights, self.prior)

    def forward(self, backbone, inputs_embeds, attention_mask, mask_pos):
        return self.scores(self.base.word_logits(backbone, inputs_embeds, attention_mask, mask_pos))


class PlainModel(nn.Module):
    """A PLM and a verbalizer with no soft prompt (KPT's ``model`` training mode: the PLM is tuned)."""

    def __init__(self, backbone, verbalizer):
        super().__init__()
        self.backbone = backbone
        self.verbalizer = verbalizer

    def forward(self, input_ids, attention_mask, mask_pos, prompt=None):
        return self.verbalizer(self.backbone, self.backbone.embed(input_ids), attention_mask, mask_pos)
