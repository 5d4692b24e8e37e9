"""DynSAN (Zhuang & Wang, ACL 2019): the DynSA block, the multi-passage network, losses and decoding.

Shapes: ``B`` questions, ``P`` passages, ``L`` tokens, ``D`` model width, ``H`` heads. A
question's passages arrive padded to one length ``Lp`` (``[B, P, Lp]``); the cross-passage
blocks run on their concatenation (``T = P * Lp`` positions, padding masked out everywhere).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

NEG = -1e30


class SeparableConv(nn.Module):
    """LayerNorm -> depthwise 1-D conv -> pointwise conv -> ReLU, with a residual connection."""

    def __init__(self, d: int, kernel: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.depthwise = nn.Conv1d(d, d, kernel, padding=kernel // 2, groups=d, bias=False)
        self.pointwise = nn.Conv1d(d, d, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm(x).masked_fill(~mask[..., None], 0.0).transpose(1, 2)
        h = F.relu(self.pointwise(self.depthwise(h))).transpose(1, 2)
        return x + self.dropout(h)


def select_positions(scores: torch.Tensor, mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` positions of ``scores`` ``[B, H, L]`` among valid ones (``mask`` ``[B, L]``).

    Returns (indices ``[B, H, K']``, validity ``[B, H, K']``) with ``K' = min(k, L)``; when
    a row has fewer than ``k`` valid tokens the surplus picks are padding, marked invalid.
    """
    kk = min(k, scores.shape[-1])
    masked = scores.masked_fill(~mask[:, None, :], NEG)
    idx = masked.topk(kk, dim=-1).indices
    valid = torch.gather(mask[:, None, :].expand_as(scores), -1, idx)
    return idx, valid


class DynSABlock(nn.Module):
    """One DynSA block on ``U`` ``[B, L, D]``: convolutions, then gated sparse multi-head attention.

    ``P = ReLU(FC(LN(U)))``; gate ``G = sigmoid(Affine(P))`` (one row per head); per head the
    top-``k`` positions of ``g_h`` attend among themselves only (scaled dot product), results are
    scattered back (zero elsewhere); a dense path ``F_h = Affine_h(P)`` covers every position;
    ``Z_h = (F_h + A_h) * g_h / max(g_h)``; output ``Linear(concat_h Z_h) + U``.
    With ``links`` (``match_bias``, not in the paper) head ``h`` adds ``b_h`` (learned) to the score of
    two selected occurrences of the same token id.
    """

    def __init__(self, cfg: ModelConfig, links: bool = False):
        super().__init__()
        d, self.heads, self.k = cfg.d, cfg.heads, cfg.k
        self.selection, self.use_gate, self.use_attention = cfg.selection, cfg.gate, cfg.self_attention
        self.explore = cfg.explore
        self.convs = nn.ModuleList([SeparableConv(d, cfg.conv_kernel, cfg.dropout) for _ in range(2)]) if cfg.conv else nn.ModuleList()
        self.norm = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)
        self.gate = nn.Linear(d, cfg.heads)
        self.dense = nn.Linear(d, d)
        self.qkv = nn.Linear(d, 3 * d) if cfg.self_attention else None
        # identity links (``links``: the final blocks when ``match_bias`` is on): a learned per-head bias on
        # the attention score of two occurrences of the same token (ids passed to ``forward``)
        self.match = nn.Parameter(torch.full((cfg.heads,), float(cfg.match_bias_init))) \
            if links and cfg.self_attention else None
        self.out = nn.Linear(d, d)
        self.dropout = nn.Dropout(cfg.dropout)
        self.last_gate: torch.Tensor | None = None       # [B, H, L] of the last call, for the figures
        self.gate_sums: list[torch.Tensor] = []           # sum of |G| per call since the network's forward began
        self.last_selected: torch.Tensor | None = None   # [B, H, K'] positions attended among

    def attention(self, p: torch.Tensor, mask: torch.Tensor, g: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """``A`` ``[B, H, L, dh]``: attention among the selected tokens of each head, zero elsewhere."""
        b, length, d = p.shape
        dh = d // self.heads
        q, k, v = self.qkv(p).view(b, length, 3, self.heads, dh).permute(2, 0, 3, 1, 4)  # 3 x [B, H, L, dh]
        shared = self.selection == "all" or length <= self.k  # every head attends among the same tokens
        if shared:
            # every valid token, padding dropped: the valid positions of each row first (in order), as
            # many as the longest row has; concatenated passages are mostly padding, so this is what
            # keeps full attention's cost at (valid tokens)^2 instead of (P * Lp)^2
            n = max(int(mask.sum(-1).max()), 1)
            order = (~mask).to(torch.int8).argsort(dim=-1, stable=True)[:, :n]        # [B, n]
            idx = order[:, None, :].expand(b, self.heads, n)
            valid = torch.gather(mask, 1, order)[:, None, :].expand(b, self.heads, n)
        else:
            scores = g.detach() if self.selection == "gated" else torch.rand(g.shape, device=p.device)
            explored = round(self.explore * min(self.k, length)) if self.training and self.selection == "gated" else 0
            if explored:  # the gate's top (k - r), then r drawn at random among the rest (epsilon-greedy)
                top = select_positions(scores, mask, min(self.k, length) - explored)[0]
                scores = torch.rand(g.shape, device=p.device).scatter(-1, top, 2.0)  # 2 > any draw in [0, 1)
            idx, valid = select_positions(scores, mask, self.k)
        self.last_selected = torch.where(valid, idx, -1).detach()
        gather = idx[..., None].expand(-1, -1, -1, dh)
        qs, ks, vs = (torch.gather(t, 2, gather) for t in (q, k, v))
        # a key mask ([B, H', 1, K'], broadcast over queries): a padding pick is never attended to; the
        # padding picks' own rows are zeroed below; a row with no valid pick at all attends to everything
        # (and is zeroed) rather than to nothing (NaN). H' = 1 when the heads share their tokens.
        keys = valid[:, :1] if shared else valid
        allowed = (keys | ~keys.any(-1, keepdim=True))[:, :, None, :]
        if self.match is not None and ids is not None:
            tok = torch.gather(ids, 1, order)[:, None, :] if shared else \
                torch.gather(ids[:, None, :].expand(b, self.heads, length), 2, idx)   # [B, H', K']
            # ids 0 and 1 are padding and out-of-vocabulary: they link nothing
            same = (tok[..., :, None] == tok[..., None, :]) & (tok[..., :, None] > 1)  # [B, H', K', K']
            bias = same.to(qs.dtype) * self.match.to(qs.dtype)[None, :, None, None]
            allowed = bias.masked_fill(~allowed, float("-inf"))
        a = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=allowed)
        a = a * valid[..., None]
        return torch.zeros_like(q).scatter(2, gather, a)

    def forward(self, u: torch.Tensor, mask: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        for conv in self.convs:
            u = conv(u, mask)
        b, length, d = u.shape
        dh = d // self.heads
        p = F.relu(self.fc(self.norm(u)))
        if self.use_gate:
            g = torch.sigmoid(self.gate(p)).transpose(1, 2) * mask[:, None, :]  # [B, H, L], 0 on padding
        else:
            g = mask[:, None, :].to(p.dtype).expand(b, self.heads, length)
        self.last_gate = g
        if self.use_gate:
            self.gate_sums.append(g.abs().sum())
        z = self.dense(p).view(b, length, self.heads, dh).transpose(1, 2)  # dense path F [B, H, L, dh]
        if self.use_attention:
            z = z + self.attention(p, mask, g, ids)
        else:
            self.last_selected = None
        if self.use_gate:
            z = z * (g / g.amax(-1, keepdim=True).clamp_min(1e-6))[..., None]
        z = z.transpose(1, 2).reshape(b, length, d)
        return u + self.dropout(self.out(z)).masked_fill(~mask[..., None], 0.0)


def sinusoid(length: int, d: int, device=None) -> torch.Tensor:
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(length, d, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: d // 2])
    return pe


class Highway(nn.Module):
    def __init__(self, d: int, layers: int = 2, dropout: float = 0.1):
        super().__init__()
        self.transform = nn.ModuleList([nn.Linear(d, d) for _ in range(layers)])
        self.gates = nn.ModuleList([nn.Linear(d, d) for _ in range(layers)])
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        for t, g in zip(self.transform, self.gates):
            gate = torch.sigmoid(g(x))
            x = gate * self.dropout(F.relu(t(x))) + (1 - gate) * x
        return x


class Embedder(nn.Module):
    """Frozen pretrained word vectors + a character CNN -> 2-layer highway -> linear to D (layer-
    normalised), + sinusoidal positions."""

    def __init__(self, vectors: torch.Tensor, chars: torch.Tensor, n_chars: int, cfg: ModelConfig):
        super().__init__()
        self.words = nn.Embedding.from_pretrained(vectors.float(), freeze=True)
        self.register_buffer("token_chars", chars.long(), persistent=False)  # [V, C] character ids per token
        self.chars = nn.Embedding(n_chars, cfg.char_dim, padding_idx=0)
        self.char_conv = nn.Conv1d(cfg.char_dim, cfg.char_channels, cfg.char_kernel, padding=cfg.char_kernel // 2)
        width = vectors.shape[1] + cfg.char_channels
        self.highway = Highway(width, 2, cfg.dropout)
        self.proj = nn.Linear(width, cfg.d)
        # the projected vectors are brought to unit scale per dimension (norm ~ sqrt(D)) so that the
        # sinusoidal positions (norm sqrt(D/2)) do not drown the token identity
        self.norm = nn.LayerNorm(cfg.d)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # a token's embedding does not depend on its context: compute it once per distinct token of
        # the batch (word vector, character CNN, highway, projection), then index (dropout masks are
        # thereby shared by a token's occurrences within one batch)
        shape = ids.shape
        uniq, inverse = torch.unique(ids.reshape(-1), return_inverse=True)
        c = self.chars(self.token_chars[uniq]).transpose(1, 2)
        c = F.relu(self.char_conv(c)).amax(-1)
        x = torch.cat([self.dropout(self.words(uniq)), self.dropout(c)], -1)
        x = self.norm(self.proj(self.highway(x)))[inverse].view(*shape, -1)
        return x + sinusoid(shape[-1], x.shape[-1], x.device)


class Trilinear(nn.Module):
    """QANet context-query attention: S_ij = w . [c_i; q_j; c_i * q_j]; output [c; a; c*a; c*b]."""

    def __init__(self, d: int):
        super().__init__()
        self.wc, self.wq = nn.Linear(d, 1, bias=False), nn.Linear(d, 1, bias=False)
        self.wcq = nn.Parameter(torch.empty(d).uniform_(-1 / math.sqrt(d), 1 / math.sqrt(d)))

    def forward(self, c, cmask, q, qmask):
        s = self.wc(c) + self.wq(q).transpose(1, 2) + (c * self.wcq) @ q.transpose(1, 2)  # [N, Lc, Lq]
        s_q = s.masked_fill(~qmask[:, None, :], NEG).softmax(-1)
        s_c = s.masked_fill(~cmask[:, :, None], NEG).softmax(1)
        a = s_q @ q
        b = s_q @ (s_c.transpose(1, 2) @ c)
        return torch.cat([c, a, c * a, c * b], -1)


class DynSAN(nn.Module):
    """The multi-passage reader. ``forward`` returns token logits over all passages' positions:
    span tasks ``(start [B, T], end [B, T])``, candidate tasks ``(r [B, T], None)``; ``T = P * Lp``."""

    def __init__(self, cfg: ModelConfig, vectors: torch.Tensor, chars: torch.Tensor, n_chars: int,
                 kind: str = "span"):
        super().__init__()
        self.cfg, self.kind = cfg, kind
        self.embed = Embedder(vectors, chars, n_chars, cfg)
        self.encoder = DynSABlock(cfg)       # shared by the question and every passage
        self.cq = Trilinear(cfg.d)
        self.cq_proj = nn.Linear(4 * cfg.d, cfg.d)
        self.passage_block = DynSABlock(cfg)
        self.rank = nn.Embedding(cfg.max_passages, cfg.d)
        self.blocks = nn.ModuleList([DynSABlock(cfg, links=cfg.match_bias) for _ in range(cfg.blocks)])
        self.start = nn.Linear(2 * cfg.d, 1)
        self.end = nn.Linear(2 * cfg.d, 1)

    def dynsa_blocks(self) -> list[DynSABlock]:
        return [m for m in self.modules() if isinstance(m, DynSABlock)]

    def gate_l1(self) -> torch.Tensor:
        """L1 norm of all gate matrices G of the last forward (every block, every call), per question."""
        terms = [t for blk in self.dynsa_blocks() for t in blk.gate_sums]
        return torch.stack(terms).sum() / self._batch if terms else torch.zeros(())

    def forward(self, q_ids, q_mask, p_ids, p_mask):
        b, n_p, lp = p_ids.shape
        self._batch = b
        for blk in self.dynsa_blocks():
            blk.gate_sums = []
        q = self.encoder(self.embed(q_ids), q_mask)                       # [B, Lq, D]
        flat_mask = p_mask.reshape(b * n_p, lp)
        c = self.encoder(self.embed(p_ids.reshape(b * n_p, lp)), flat_mask)
        lq = q.shape[1]
        qx = q[:, None].expand(b, n_p, lq, q.shape[-1]).reshape(b * n_p, lq, -1)
        qm = q_mask[:, None].expand(b, n_p, lq).reshape(b * n_p, lq)
        x = self.cq_proj(self.cq(c, flat_mask, qx, qm))
        x = self.passage_block(x, flat_mask)                               # [B*P, Lp, D]
        ranks = torch.arange(n_p, device=x.device).clamp_max(self.cfg.max_passages - 1)
        x = x.view(b, n_p, lp, -1) + self.rank(ranks)[None, :, None, :]
        if self.cfg.cross_passage:
            x, mask = x.reshape(b, n_p * lp, -1), p_mask.reshape(b, n_p * lp)
            ids = p_ids.reshape(b, n_p * lp)
        else:  # ablation: the final blocks see one passage at a time
            x, mask = x.reshape(b * n_p, lp, -1), flat_mask
            ids = p_ids.reshape(b * n_p, lp)
        outs = []
        for blk in self.blocks:
            x = blk(x, mask, ids)
            outs.append(x)
        mid = outs[(len(outs) - 1) // 2]
        last = outs[-1]
        start = self.start(torch.cat([mid, last], -1)).squeeze(-1).reshape(b, n_p * lp)
        tokens = p_mask.reshape(b, n_p * lp)
        start = start.masked_fill(~tokens, NEG)
        if self.kind == "candidates":
            return start, None
        end = self.end(torch.cat([last, mid], -1)).squeeze(-1).reshape(b, n_p * lp).masked_fill(~tokens, NEG)
        return start, end


# --- losses and decoding ---------------------------------------------------------------------------

def span_marginal_loss(start: torch.Tensor, end: torch.Tensor, spans: torch.Tensor, span_mask: torch.Tensor) -> torch.Tensor:
    """-log sum over gold spans of p_start(s) p_end(e); softmax over all tokens of all passages.

    ``spans`` ``[B, S, 2]`` (global token positions), ``span_mask`` ``[B, S]`` (real spans).
    """
    ls, le = start.float().log_softmax(-1), end.float().log_softmax(-1)
    s = torch.gather(ls, 1, spans[..., 0]) + torch.gather(le, 1, spans[..., 1])
    return -(s.masked_fill(~span_mask, NEG).logsumexp(-1)).mean()


def candidate_log_probs(r_logits: torch.Tensor, mentions: torch.Tensor) -> torch.Tensor:
    """log P(candidate) = log sum of r over the candidate's mentions; ``mentions`` ``[B, C, T]`` bool.
    Candidates without any mention get a very low score."""
    lr = r_logits.float().log_softmax(-1)
    return lr[:, None, :].masked_fill(~mentions, NEG).logsumexp(-1)


def candidate_loss(r_logits, mentions, answer: torch.Tensor) -> torch.Tensor:
    lp = candidate_log_probs(r_logits, mentions)
    return -lp.gather(1, answer[:, None]).squeeze(1).mean()


def best_spans(start: torch.Tensor, end: torch.Tensor, passage_of: torch.Tensor, max_len: int):
    """Best (s, e) with s <= e <= s + max_len - 1 inside one passage, by log p_start + log p_end.

    ``passage_of`` ``[B, T]``: passage index of each position, -1 on padding. Returns
    (start ``[B]``, end ``[B]``, score ``[B]``), O(T * max_len).
    """
    ls, le = start.float().log_softmax(-1), end.float().log_softmax(-1)
    b, t = ls.shape
    best = torch.full((b,), -math.inf, device=ls.device)
    bs = torch.zeros(b, dtype=torch.long, device=ls.device)
    be = torch.zeros_like(bs)
    for off in range(min(max_len, t)):
        score = ls[:, : t - off] + le[:, off:]
        ok = (passage_of[:, : t - off] == passage_of[:, off:]) & (passage_of[:, off:] >= 0)
        score = score.masked_fill(~ok, -math.inf)
        val, pos = score.max(-1)
        better = val > best
        best = torch.where(better, val, best)
        bs = torch.where(better, pos, bs)
        be = torch.where(better, pos + off, be)
    return bs, be, best
