"""DynSAN: the DynSA block, network, losses, decoding, metrics, data sources and resumable training."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from pipeline_steps.dynsan.config import ModelConfig, resolve_variant
from pipeline_steps.dynsan.model import (DynSABlock, DynSAN, best_spans, candidate_log_probs, candidate_loss,
                                         select_positions, span_marginal_loss)


def block(**kw) -> DynSABlock:
    torch.manual_seed(0)
    cfg = ModelConfig.from_dict(dict(dict(d=8, heads=2, k=3, dropout=0.0), **kw))
    return DynSABlock(cfg).eval()


# --- the DynSA block -------------------------------------------------------------------------------

def test_top_k_selection_ignores_padding():
    scores = torch.tensor([[[0.9, 0.1, 0.5, 0.99, 0.7]]])
    mask = torch.tensor([[True, True, True, False, True]])
    idx, valid = select_positions(scores, mask, 2)
    assert sorted(idx[0, 0].tolist()) == [0, 4] and valid.all()
    idx, valid = select_positions(scores, mask, 5)  # more picks than valid tokens: the surplus is invalid
    assert valid.sum() == 4 and 3 in idx[0, 0][~valid[0, 0]].tolist()


def _manual_block(blk: DynSABlock, u: torch.Tensor, selected: list[list[int]], ids: list[int] | None = None) -> torch.Tensor:
    """The block's formula written out per head with explicit loops (no convolutions); with ``ids``, the
    identity links: ``+ b_h`` on the score of two selected occurrences of the same token id (> 1)."""
    length, d = u.shape[1:]
    h, dh = blk.heads, d // blk.heads
    p = F.relu(blk.fc(blk.norm(u)))[0]
    g = torch.sigmoid(blk.gate(p)).T                       # [H, L]
    dense = blk.dense(p).view(length, h, dh)
    q, k, v = blk.qkv(p).view(length, 3, h, dh).unbind(1)
    z = torch.zeros(length, h, dh)
    for head in range(h):
        sel = selected[head]
        a = torch.zeros(length, dh)
        scores = q[sel, head] @ k[sel, head].T / math.sqrt(dh)
        if ids is not None:
            for a_i, i in enumerate(sel):
                for a_j, j in enumerate(sel):
                    if ids[i] == ids[j] and ids[i] > 1:
                        scores[a_i, a_j] = scores[a_i, a_j] + blk.match[head]
        att = scores.softmax(-1) @ v[sel, head]
        a[sel] = att
        z[:, head] = (dense[:, head] + a) * (g[head] / g[head].max())[:, None]
    return u[0] + blk.out(z.reshape(length, d))


def test_top_k_scatter_unselected_positions_get_only_the_dense_path():
    blk = block(conv=False, k=3)
    u = torch.randn(1, 7, 8)
    mask = torch.ones(1, 7, dtype=torch.bool)
    out = blk(u, mask)
    g = blk.last_gate[0]
    selected = [g[h].topk(3).indices.tolist() for h in range(2)]
    assert sorted(blk.last_selected[0, 0].tolist()) == sorted(selected[0])
    assert torch.allclose(out[0], _manual_block(blk, u, selected), atol=1e-5)
    # a position no head selected gets only the dense path: u + Out(concat_h F_h * g_h / max g_h)
    free = [i for i in range(7) if all(i not in sel for sel in selected)]
    assert free
    p = F.relu(blk.fc(blk.norm(u)))[0]
    dense = blk.dense(p).view(7, 2, 4) * (g / g.amax(-1, keepdim=True)).T[..., None]
    want = u[0] + blk.out(dense.reshape(7, 8))
    assert torch.allclose(out[0, free], want[free], atol=1e-5)


def test_l_at_most_k_equals_full_attention():
    u = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    gated = block(conv=False, k=8)
    full = block(conv=False, k=8, selection="all")
    full.load_state_dict(gated.state_dict())
    assert torch.allclose(gated(u, mask), full(u, mask), atol=1e-6)
    small = block(conv=False, k=2, selection="all")
    small.load_state_dict(gated.state_dict())
    assert torch.allclose(small(u, mask), gated(u, mask), atol=1e-6)  # 'all' ignores k
    # and it is the written-out formula with every token selected
    out = gated(u[:1], mask[:1])
    assert torch.allclose(out[0], _manual_block(gated, u[:1], [list(range(5))] * 2), atol=1e-5)


def test_full_attention_drops_interior_padding():
    """'all' attends among the valid tokens only, however the padding lies (concatenated passages pad
    inside the sequence): the valid outputs equal those of the sequence with its padding cut out, and the
    attended positions are the valid ones (the longest row's count; shorter rows' surplus marked -1)."""
    torch.manual_seed(0)
    full = block(conv=False, k=2, selection="all").eval()
    u = torch.randn(2, 9, 8)
    mask = torch.tensor([[1, 1, 0, 0, 1, 1, 1, 0, 1], [0, 1, 1, 0, 0, 0, 1, 0, 0]], dtype=torch.bool)
    out = full(u, mask)
    assert full.last_selected.shape == (2, 2, 6)
    assert full.last_selected[0, 0].tolist() == [0, 1, 4, 5, 6, 8]
    assert full.last_selected[1, 1].tolist() == [1, 2, 6, -1, -1, -1]
    for row in range(2):
        keep = mask[row].nonzero().squeeze(1)
        alone = full(u[row:row + 1, keep], torch.ones(1, len(keep), dtype=torch.bool))
        assert torch.allclose(out[row, keep], alone[0], atol=1e-5)
    assert torch.equal(out[~mask], u[~mask])                           # padding passes through unchanged


def test_explore_draws_part_of_the_picks_at_random_while_training_only():
    """``explore``: in training, the gate's top (k - r) plus r tokens drawn among the rest (r = explore * k);
    in evaluation, the gate's top k, as without it. Padding is never drawn."""
    blk = block(conv=False, k=4, explore=0.5)
    u = torch.randn(1, 12, 8)
    mask = torch.ones(1, 12, dtype=torch.bool)
    mask[0, 10:] = False
    blk(u, mask)                                             # eval mode: plain top-k
    g = blk.last_gate[0]
    assert all(set(blk.last_selected[0, h].tolist()) == set(g[h].topk(4).indices.tolist()) for h in range(2))
    blk.train()
    draws = set()
    for seed in range(20):
        torch.manual_seed(seed)
        blk(u, mask)
        for h in range(2):
            picked = set(blk.last_selected[0, h].tolist())
            top2 = set(g[h].topk(2).indices.tolist())
            assert len(picked) == 4 and top2 <= picked and not picked & {10, 11}
            draws.add(frozenset(picked - top2))
    assert len(draws) > 5                                    # the other two vary from step to step
    assert block(k=4, explore=0.0).explore == 0.0
    with pytest.raises(ValueError, match="explore must be in"):
        ModelConfig.from_dict({"explore": 1.0})


def test_match_bias_links_occurrences_of_the_same_token():
    """``match_bias``: each head adds its learned b_h to the score of two selected occurrences of one token
    id (ids 0/1, padding and unknown, link nothing); without ids (encoder, passage block) nothing changes."""
    torch.manual_seed(0)
    cfg = ModelConfig.from_dict(dict(d=8, heads=2, k=4, dropout=0.0, conv=False, match_bias=True, match_bias_init=3.0))
    blk = DynSABlock(cfg, links=True).eval()
    plain = DynSABlock(cfg).eval()
    assert plain.match is None and blk.match.tolist() == [3.0, 3.0]
    with torch.no_grad():
        blk.match.copy_(torch.tensor([3.0, -1.5]))
    plain.load_state_dict({k: v for k, v in blk.state_dict().items() if k != "match"})
    u = torch.randn(1, 7, 8)
    mask = torch.ones(1, 7, dtype=torch.bool)
    ids = [5, 7, 5, 1, 9, 1, 7]
    out = blk(u, mask, torch.tensor([ids]))
    selected = [blk.last_selected[0, h].tolist() for h in range(2)]
    assert torch.allclose(out[0], _manual_block(blk, u, selected, ids), atol=1e-5)
    assert not torch.allclose(out, plain(u, mask), atol=1e-4)                 # the links change the output
    assert torch.allclose(blk(u, mask), plain(u, mask), atol=1e-6)            # no ids: no links
    full = DynSABlock(ModelConfig.from_dict(dict(cfg.to_dict(), selection="all")), links=True).eval()
    full.load_state_dict(blk.state_dict())
    out = full(u, mask, torch.tensor([ids]))
    assert torch.allclose(out[0], _manual_block(full, u, [list(range(7))] * 2, ids), atol=1e-5)
    out.sum().backward()
    assert full.match.grad is not None and full.match.grad.abs().sum() > 0   # the bias is learned
    net = DynSAN(ModelConfig(d=8, heads=2, k=64, blocks=2, dropout=0.0, char_dim=3, char_channels=4, max_chars=4,
                             match_bias=True), torch.randn(20, 6), torch.randint(0, 5, (20, 4)), 5)
    assert [n for n, _ in net.named_parameters() if n.endswith("match")] == ["blocks.0.match", "blocks.1.match"]
    m, _, _ = resolve_variant({"match_bias": True}, {}, {"match_bias": False}, 10)
    assert m["match_bias"] is False


def test_padding_does_not_change_valid_outputs():
    blk = block(k=3)
    u = torch.randn(1, 6, 8)
    mask = torch.ones(1, 6, dtype=torch.bool)
    padded = torch.cat([u, torch.randn(1, 3, 8)], 1)
    pmask = torch.cat([mask, torch.zeros(1, 3, dtype=torch.bool)], 1)
    assert torch.allclose(blk(u, mask), blk(padded, pmask)[:, :6], atol=1e-5)


def test_gate_receives_gradient_and_l1_term():
    torch.manual_seed(0)
    cfg = ModelConfig(d=8, heads=2, k=4, blocks=2, dropout=0.0, char_dim=3, char_channels=4, max_chars=4)
    net = DynSAN(cfg, torch.randn(20, 6), torch.randint(0, 5, (20, 4)), 5)
    q = torch.randint(2, 20, (2, 4))
    p = torch.randint(2, 20, (2, 3, 6))
    start, end = net(q, torch.ones(2, 4, dtype=torch.bool), p, torch.ones(2, 3, 6, dtype=torch.bool))
    loss = span_marginal_loss(start, end, torch.tensor([[[0, 1]], [[5, 7]]]), torch.ones(2, 1, dtype=torch.bool))
    loss.backward()
    for blk in net.dynsa_blocks():
        assert blk.gate.weight.grad is not None and blk.gate.weight.grad.abs().sum() > 0
    # L1: every gated call's sum of |G| (question + passages for the shared encoder), per question
    expect = 0.0
    for blk in net.dynsa_blocks():
        expect += sum(t.item() for t in blk.gate_sums)
    assert len(net.encoder.gate_sums) == 2
    assert net.gate_l1().item() == pytest.approx(expect / 2, rel=1e-6)
    net.zero_grad()
    net(q, torch.ones(2, 4, dtype=torch.bool), p, torch.ones(2, 3, 6, dtype=torch.bool))
    net.gate_l1().backward()
    assert net.blocks[0].gate.bias.grad.abs().sum() > 0


def test_variants_switch_what_they_say():
    u = torch.randn(1, 9, 8)
    mask = torch.ones(1, 9, dtype=torch.bool)
    assert len(block().convs) == 2 and len(block(conv=False).convs) == 0
    no_att = block(self_attention=False)
    assert no_att.qkv is None
    no_att(u, mask)
    assert no_att.last_selected is None
    no_gate = block(gate=False, selection="random")
    no_gate(u, mask)
    assert torch.equal(no_gate.last_gate, torch.ones(1, 2, 9)) and no_gate.gate_sums == []
    torch.manual_seed(1)
    rnd = block(selection="random", k=3)
    rnd(u, mask)
    picks = rnd.last_selected.clone()
    rnd(u, mask)
    assert picks.shape == (1, 2, 3) and not torch.equal(picks, rnd.last_selected)  # a new random draw
    full = block(selection="all", k=3)
    full(u, mask)
    assert full.last_selected.shape == (1, 2, 9)
    with pytest.raises(ValueError, match="gated' needs gate"):
        ModelConfig.from_dict({"gate": False})
    m, t, n = resolve_variant({"k": 256}, {"beta": 1e-5}, {"gate": False, "selection": "random", "passages": 3}, 10)
    assert m["selection"] == "random" and t["beta"] == 0.0 and n == 3
    m, t, n = resolve_variant({"k": 256}, {"beta": 1e-5}, {"k": 16, "beta": 0}, 10)
    assert m["k"] == 16 and t["beta"] == 0 and n == 10
    with pytest.raises(ValueError, match="unknown variant key"):
        resolve_variant({}, {}, {"kk": 1}, 1)


def test_cross_passage_switch_isolates_passages():
    torch.manual_seed(0)
    kw = dict(d=8, heads=2, k=64, blocks=1, dropout=0.0, char_dim=3, char_channels=4, max_chars=4, conv=False)
    vecs, chars = torch.randn(20, 6), torch.randint(0, 5, (20, 4))
    q, qm = torch.randint(2, 20, (1, 4)), torch.ones(1, 4, dtype=torch.bool)
    p, pm = torch.randint(2, 20, (1, 2, 5)), torch.ones(1, 2, 5, dtype=torch.bool)
    for cross, isolated in ((True, False), (False, True)):
        net = DynSAN(ModelConfig(cross_passage=cross, **kw), vecs, chars, 5).eval()
        before = net(q, qm, p, pm)[0][0, :5]
        p2 = p.clone()
        p2[0, 1] = torch.randint(2, 20, (5,))
        after = net(q, qm, p2, pm)[0][0, :5]
        assert torch.allclose(before, after, atol=1e-6) == isolated


def test_rank_embedding_added_per_passage():
    torch.manual_seed(0)
    cfg = ModelConfig(d=8, heads=2, k=64, blocks=1, dropout=0.0, char_dim=3, char_channels=4, max_chars=4)
    net = DynSAN(cfg, torch.randn(20, 6), torch.randint(0, 5, (20, 4)), 5).eval()
    q, qm = torch.randint(2, 20, (1, 4)), torch.ones(1, 4, dtype=torch.bool)
    same = torch.randint(2, 20, (5,))
    p, pm = torch.stack([same, same])[None], torch.ones(1, 2, 5, dtype=torch.bool)
    seen = {}
    net.blocks[0].register_forward_pre_hook(lambda m, a: seen.update(x=a[0].detach().clone()))
    net(q, qm, p, pm)
    x = seen["x"][0]
    diff = x[5:] - x[:5]  # identical passages: the only difference is rank 1's minus rank 0's embedding
    want = (net.rank.weight[1] - net.rank.weight[0]).detach()
    assert torch.allclose(diff, want.expand_as(diff), atol=1e-5)


# --- losses and decoding ----------------------------------------------------------------------------

def test_span_marginal_loss_by_hand():
    start = torch.tensor([[0.0, 1.0, 2.0, -1.0]])
    end = torch.tensor([[1.0, 0.0, 0.5, 3.0]])
    ps, pe = np.exp([0, 1, 2, -1]) / np.exp([0, 1, 2, -1]).sum(), np.exp([1, 0, .5, 3]) / np.exp([1, 0, .5, 3]).sum()
    spans = torch.tensor([[[1, 2], [2, 3], [0, 0]]])
    mask = torch.tensor([[True, True, False]])  # the third is padding
    want = -math.log(ps[1] * pe[2] + ps[2] * pe[3])
    assert span_marginal_loss(start, end, spans, mask).item() == pytest.approx(want, rel=1e-6)


def test_candidate_scoring_sums_mentions():
    r = torch.tensor([[0.0, 1.0, 2.0, 0.5]])
    pr = np.exp([0, 1, 2, .5]) / np.exp([0, 1, 2, .5]).sum()
    mentions = torch.tensor([[[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]]], dtype=torch.bool)
    lp = candidate_log_probs(r, mentions)
    assert lp[0, 0].exp().item() == pytest.approx(pr[0] + pr[2], rel=1e-6)
    assert lp[0, 1].exp().item() == pytest.approx(pr[1], rel=1e-6)
    assert lp[0, 2].item() < -1e20  # no mention: never predicted
    assert candidate_loss(r, mentions, torch.tensor([1])).item() == pytest.approx(-math.log(pr[1]), rel=1e-6)


def test_best_span_respects_order_length_and_passage():
    start = torch.tensor([[-5.0, 5.0, 0.0, 0.0, 0.0, 0.0]])
    end = torch.tensor([[9.0, 0.0, 0.0, 0.0, 4.0, 0.0]])
    passage = torch.tensor([[0, 0, 0, 0, 0, 1]])
    s, e, _ = best_spans(start, end, passage, max_len=8)
    assert (s.item(), e.item()) == (1, 4)  # end 0 comes before start 1: not allowed
    s, e, _ = best_spans(start, end, passage, max_len=3)
    assert e.item() - s.item() <= 2
    end2 = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 9.0]])
    s, e, _ = best_spans(start, end2, passage, max_len=8)
    assert passage[0, s] == passage[0, e]  # never across passages


# --- metrics: the SQuAD v1.1 script's definitions ------------------------------------------------------

from pipeline_steps.dynsan.metrics import em_f1, exact_match, f1, normalize_answer


@pytest.mark.parametrize("pred, gold, em, f", [
    ("The Beatles", "beatles", 1.0, 1.0),               # articles and case
    ("a cat!", "the cat", 1.0, 1.0),                    # punctuation
    ("an  apple   pie", "Apple pie.", 1.0, 1.0),        # whitespace collapsed
    ("theory of everything", "the theory", 0.0, 0.5),   # bag-of-tokens F1: p=1/3, r=1 -> 0.5
    ("", "anything", 0.0, 0.0),
    ("the", "a", 1.0, 0.0),                              # both normalise to '': EM 1, F1 0 (no tokens)
    ("New York City", "york new", 0.0, 0.8),             # order ignored: p=2/3 r=1 -> 0.8
])
def test_em_f1_squad_edge_cases(pred, gold, em, f):
    assert exact_match(pred, gold) == em
    assert f1(pred, gold) == pytest.approx(f)


def test_em_f1_max_over_golds_and_x100():
    s = em_f1(["paris", "big apple"], [["Paris", "the city of light"], ["New York", "the Big Apple!"]])
    assert s == {"em": 100.0, "f1": 100.0}
    s = em_f1(["rome", "london bridge"], [["paris"], ["london", "bridge of london"]])
    assert s["em"] == 0.0 and s["f1"] == pytest.approx(100 * (0 + 0.8) / 2)
    assert normalize_answer("  The  U.S.A. ") == "usa"


# --- data: distant supervision, sources, bad records ----------------------------------------------------

from pipeline_steps.dynsan import data as D
from pipeline_steps.errors import UserError


class WordEmb:
    """A tiny word-level embedding for tests (the word-vector code path without a file)."""

    def __init__(self):
        self.lowercase, self.vocab = True, {"[PAD]": 0, "[UNK]": 1}
        self.table = torch.zeros(2, 3)
        self.name = "test"

    encode = D.WordVectors.encode
    piece_text = D.WordVectors.piece_text


def test_find_spans_every_match():
    toks = "the cat sat on the cat mat".split()
    assert D.find_spans(toks, ["the", "cat"]) == [(0, 1), (4, 5)]
    assert D.find_spans(toks, ["dog"]) == [] and D.find_spans(toks, []) == []


def test_distant_supervision_keeps_every_span_normalised():
    recs = [{"id": "q1", "split": "train", "question": "who?", "answers": ["The Beatles", "beatles"],
             "passages": ["I like the Beatles.", "No answer here.", "BEATLES, again: the beatles!"]},
            {"id": "q2", "split": "train", "question": "what?", "answers": ["zebra"], "passages": ["no zebras"]},
            {"id": "q3", "split": "test", "question": "what?", "answers": ["zebra"], "passages": ["none"]}]
    limits = {"passages": 5, "passage_tokens": 50, "total_tokens": 500, "question_tokens": 10}
    df, vocab, extra = D.tokenise_task(recs, WordEmb(), limits, "span")
    assert list(df["id"]) == ["q1", "q3"]                      # q2 (train, no span) dropped, q3 kept
    assert extra["report"]["dropped_train_without_span"] == 1 and extra["report"]["unanswerable"]["test"] == 1
    r = df.iloc[0]
    spans = sorted(zip(r["span_p"], r["span_s"], r["span_e"]))
    assert spans == [(0, 3, 3), (2, 0, 0), (2, 5, 5)]          # 'the' is not part of a span after normalising
    p2 = r["passages"][2]
    assert p2[r["p_starts"][2][5]: r["p_ends"][2][5]] == "beatles"
    assert not df.iloc[1]["answerable"]


def test_caps_on_passages_and_tokens():
    recs = [{"id": "q", "split": "dev", "question": "x", "answers": ["a"],
             "passages": ["a b c d e", "f g h", "i j", "k"]}]
    limits = {"passages": 3, "passage_tokens": 4, "total_tokens": 6, "question_tokens": 10}
    df, _, _ = D.tokenise_task(recs, WordEmb(), limits, "span")
    assert [len(p) for p in df.iloc[0]["p_ids"]] == [4, 2]      # 4 per passage, 6 in all, 3 passages at most


def test_candidate_mentions_and_answer_index():
    recs = [{"id": "w", "split": "train", "question": "country_of x", "answers": ["peru"], "answer": "peru",
             "candidates": ["chile", "peru"], "passages": ["x lives in lima.", "lima is in peru ; chile too", "peru"]}]
    limits = {"passages": 5, "passage_tokens": 50, "total_tokens": 500, "question_tokens": 10}
    df, _, _ = D.tokenise_task(recs, WordEmb(), limits, "candidates")
    r = df.iloc[0]
    assert r["answer_index"] == 1
    mentions = sorted(zip(r["mention_c"], r["mention_p"], r["mention_s"]))
    assert mentions == [(0, 1, 5), (1, 1, 3), (1, 2, 0)]


def test_demo_generator_deterministic_and_needs_two_passages():
    a, b = D.generate_demo("bridge_candidates", 20, seed=3), D.generate_demo("bridge_candidates", 20, seed=3)
    assert a == b and a != D.generate_demo("bridge_candidates", 20, seed=4)
    for r in a:
        person = r["question"].split(" was ")[1].replace(" born?", "")
        assert r["answer"] in r["candidates"] and len(r["candidates"]) == 3 and len(r["passages"]) == 6
        holder = [p for p in r["passages"] if r["answer"] in p.split(" ") or r["answer"] + "." in p]
        if "country" in r["question"]:   # the answer's passage does not name the person: a second hop is needed
            assert all(person not in p for p in holder)
        for c in r["candidates"]:
            assert sum(c in p for p in r["passages"]) >= 1  # every wrong answer is mentioned too


def _write_jsonl(path, recs):
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")


def test_jsonl_and_parquet_schema_loaders(tmp_path):
    recs = [{"id": "a", "question": "q?", "passages": ["p one", "p two"], "answers": ["one"], "split": "train"},
            {"id": "b", "question": "r?", "passages": ["x"], "answers": "x", "split": "validation"}]
    _write_jsonl(tmp_path / "d.jsonl", recs)
    pd.DataFrame(recs[:1]).to_parquet(tmp_path / "d.parquet")
    out, _ = D.load_records({"name": "t", "source": {"path": str(tmp_path / "d.jsonl")}})
    assert [r["split"] for r in out] == ["train", "dev"] and out[1]["answers"] == ["x"]
    out, _ = D.load_records({"name": "t", "source": {"path": str(tmp_path / "d.parquet")}})
    assert out[0]["passages"] == ["p one", "p two"]


def test_qangaroo_and_mrqa_loaders(tmp_path):
    wikihop = [{"id": "WH_train_0", "query": "country_of_citizenship anna", "answer": "peru",
                "candidates": ["peru", "chile"], "supports": ["anna lives in lima", "lima is in peru"]}]
    (tmp_path / "train.json").write_text(json.dumps(wikihop))
    out, _ = D.load_records({"name": "w", "kind": "candidates", "source": {"path": {"train": str(tmp_path / "train.json")}}})
    assert out[0]["question"].startswith("country_of") and out[0]["answers"] == ["peru"] and out[0]["split"] == "train"
    mrqa = [{"header": {"dataset": "SearchQA"}},
            {"context": "[DOC] [TLE] t1 [PAR] first snippet [DOC] [TLE] t2 [PAR] second one",
             "qas": [{"qid": "m1", "question": "which?", "answers": ["second"]}]}]
    _write_jsonl(tmp_path / "m.jsonl", mrqa)
    out, _ = D.load_records({"name": "m", "source": {"path": str(tmp_path / "m.jsonl")}})
    assert out[0]["id"] == "m1" and "second one" in " ".join(out[0]["passages"]) and len(out[0]["passages"]) >= 2


@pytest.mark.parametrize("name, text, message", [
    ("d.jsonl", '{"question": "q", "passages": ["p"], "answers": ["a"]}\n\n{"question": "r",\n', r"line 3: not valid JSON \("),
    ("d.jsonl", '{"question": "q", "passages": ["p"], "answers": ["a"]}\n["a list"]\n', r"line 2: a JSON object expected$"),
    ("w.json", '[{"query": "q", "supports": ["p"]}, ]', r"line 1: not valid JSON \("),
    ("w.json", '{"query": "q"}', r"a qangaroo file holds a JSON list of records$"),
])
def test_unparsable_files_name_file_and_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    fmt = "qangaroo" if name.endswith(".json") else None
    with pytest.raises(UserError, match=f"^{path}: " + message):
        D.read_local(str(path), fmt)


def test_hub_records_of_each_source():
    searchqa = {"question": "This man wrote Hamlet", "answer": "Shakespeare", "category": "X",
                "search_results": {"snippets": ["Hamlet by Shakespeare", "a play"], "urls": ["u1", "u2"]}}
    r = D.check_record(D.from_hub_record(searchqa, D.HUB_FORMATS["searchqa"], 0), "hub", 0, "span")
    assert r["passages"] == ["Hamlet by Shakespeare", "a play"] and r["answers"] == ["Shakespeare"]
    quasar = {"uid": "s1", "question": "who?", "answer": "bob",
              "context": {"short": [{"confidence": 0.9, "content": "bob did it"}], "long": []}}
    r = D.check_record(D.from_hub_record(quasar, D.HUB_FORMATS["quasar"], 0), "hub", 0, "span")
    assert r["passages"] == ["bob did it"]
    quasar_cols = dict(quasar, context={"short": {"confidence": [0.9], "content": ["bob did it"]}})  # datasets' column layout
    assert D.from_hub_record(quasar_cols, D.HUB_FORMATS["quasar"], 0)["passages"] == ["bob did it"]
    qangaroo = {"id": "WH_dev_1", "query": "q", "answer": "b", "candidates": ["a", "b"], "supports": ["a b"]}
    r = D.check_record(D.from_hub_record(qangaroo, D.HUB_FORMATS["qangaroo"], 0), "hub", 0, "candidates")
    assert r["candidates"] == ["a", "b"] and r["answer"] == "b" and r["id"] == "WH_dev_1"


@pytest.mark.parametrize("record, kind, message", [
    ({"question": "q", "answers": ["a"]}, "span", r"field 'passages' is missing"),
    ({"question": "q", "passages": ["ok", " "], "answers": ["a"]}, "span", r"field 'passages\[1\]' is empty"),
    ({"question": "q", "passages": [], "answers": ["a"]}, "span", r"field 'passages' is empty"),
    ({"question": "q", "passages": ["p"], "answers": [3]}, "span", r"field 'answers' must be a string or a list"),
    ({"question": "q", "passages": "p", "answers": ["a"]}, "span", r"field 'passages' must be a list"),
    ({"question": "q", "passages": ["p"], "candidates": ["x"], "answer": "y"}, "candidates",
     r"field 'candidates' does not contain the answer 'y'"),
    ({"question": "", "passages": ["p"], "answers": ["a"]}, "span", r"field 'question'"),
])
def test_bad_records_name_file_record_and_field(tmp_path, record, kind, message):
    path = tmp_path / "bad.jsonl"
    _write_jsonl(path, [record])
    with pytest.raises(UserError, match=f"{path}: record 0: " + message):
        D.load_records({"name": "t", "kind": kind, "source": {"path": str(path)}})


def test_prepare_writes_nothing_on_bad_data(tmp_path):
    from pipeline_steps.dynsan.steps import prepare

    path = tmp_path / "bad.jsonl"
    _write_jsonl(path, [{"id": "a", "question": "q", "passages": ["p"], "answers": ["p"]},
                        {"id": "b", "question": "q", "passages": ["p"]}])
    out = {k: str(tmp_path / "out" / f) for k, f in (("tokens", "t.parquet"), ("vocab", "v.safetensors"),
                                                     ("report", "r.json"))}
    with pytest.raises(UserError, match=r"record 1 \(id b\): field 'answers' is missing"):
        prepare(task={"name": "t", "source": {"path": str(path)}}, embeddings={"source": "embedded:minilm-l6"},
                limits={"passages": 2, "passage_tokens": 8, "total_tokens": 16, "question_tokens": 8}, max_chars=8, **out)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_word_vector_file(tmp_path):
    vec = tmp_path / "w.vec"
    vec.write_text("3 2\nparis 1 0\nfrance 0 1\nis 0.5 0.5\n")
    wv = D.WordVectors(str(vec))
    ids, toks, offs = wv.encode("Paris is in France.")
    assert toks == ["paris", "is", "in", "france", "."] and ids[:2] == [2, 4] and ids[2] == 1
    assert wv.table.shape == (5, 2) and offs[3] == (12, 18)
    (tmp_path / "bad.vec").write_text("a 1 2\nb 1\n")
    with pytest.raises(UserError, match="line 2"):
        D.WordVectors(str(tmp_path / "bad.vec"))


# --- the steps: prepare, train (resume), evaluate, efficiency ---------------------------------------------

from pipeline_steps.io import load_tensors, read_json

TINY_MODEL = dict(d=8, heads=2, k=4, blocks=1, dropout=0.1, char_dim=3, char_channels=4, max_chars=6)
TINY_TRAIN = dict(steps=6, batch_size=4, eval_batch_size=8, lr=0.01, warmup_steps=2, ema_decay=0.9,
                  eval_every=3, checkpoint_every=2, max_answer_length=3)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from pipeline_steps.dynsan.steps import prepare

    root = tmp_path_factory.mktemp("dynsan-data")
    out = {}
    for demo, kind in (("bridge", "span"), ("bridge_candidates", "candidates")):
        files = {"tokens": str(root / demo / "tokens.parquet"), "vocab": str(root / demo / "vocab.safetensors"),
                 "report": str(root / demo / "report.json")}
        prepare(task={"name": demo, "kind": kind, "source": {"demo": demo, "size": 40}},
                embeddings={"source": "embedded:minilm-l6"},
                limits={"passages": 6, "passage_tokens": 16, "total_tokens": 80, "question_tokens": 12},
                max_chars=6, **files)
        out[kind] = files
    return out


def _train(prepared, kind, where, **kw):
    from pipeline_steps.dynsan.steps import train

    files = {k: str(where / f) for k, f in (("weights", "w.safetensors"), ("curve", "c.parquet"), ("meta", "m.json"),
                                           ("checkpoint", "ck.safetensors"))}
    train(task="t", variant="v", kind=kind, model_settings=dict(TINY_MODEL, **kw.pop("model", {})),
          train_settings=dict(TINY_TRAIN), passages=6, seed=3, tokens=prepared[kind]["tokens"],
          vocab=prepared[kind]["vocab"], **files, **kw)
    return files


def test_prepare_report_and_vocabulary(prepared):
    rep = read_json(prepared["span"]["report"])
    assert rep["questions"]["train"] > 0 and rep["dropped_train_without_span"] == 0
    tensors, meta = load_tensors(prepared["span"]["vocab"])
    assert tensors["vectors"].shape == (rep["vocabulary"], 384) and meta["tokens"][:2] == ["[PAD]", "[NONE]"]
    assert torch.equal(tensors["vectors"][:2], torch.zeros(2, 384))  # padding and 'no token' are zero vectors
    df = pd.read_parquet(prepared["span"]["tokens"])
    r = df.iloc[0]
    s, p = r["span_s"][0], r["span_p"][0]
    assert r["passages"][p][r["p_starts"][p][s]: r["p_ends"][p][r["span_e"][0]]] == r["answers"][0]


def test_resume_after_a_kill_gives_the_same_weights(prepared, tmp_path):
    full = _train(prepared, "span", tmp_path / "full")
    part = tmp_path / "part"
    files = _train(prepared, "span", part, stop_after=4)  # a process that ends after the step-4 checkpoint
    assert (part / "ck.safetensors").exists() and not (part / "w.safetensors").exists()
    _train(prepared, "span", part)                        # the re-run resumes from step 4
    a, _ = load_tensors(full["weights"])
    b, prov = load_tensors(files["weights"])
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert not (part / "ck.safetensors").exists()         # removed once the run is complete
    ca, cb = pd.read_parquet(full["curve"]), pd.read_parquet(files["curve"])
    assert list(ca["step"]) == [3, 6] and ca["dev_score"].tolist() == cb["dev_score"].tolist()
    assert prov["settings"]["seed"] == 3 and prov["weights"] == "ema_best_dev"
    meta = read_json(full["meta"])
    assert meta["params"] > 0 and meta["step_seconds"] > 0 and meta["peak_memory_mb"] > 0
    assert meta["train_cpu_seconds"] > 0 and meta["step_cpu_seconds"] == pytest.approx(meta["train_cpu_seconds"] / 6,
                                                                                       rel=0.01)
    resumed = read_json(files["meta"])  # CPU time carried in the checkpoint, as wall time
    assert resumed["train_cpu_seconds"] > 0 and resumed["step_cpu_seconds"] > 0


def test_training_logs_progress_between_evaluations(prepared, tmp_path, monkeypatch, caplog):
    """Progress lines at least every PTW_PROGRESS_SECONDS (default 30 s; 0 here: every step) besides the
    evaluation lines, so a long run between evaluations is not silent."""
    import logging

    monkeypatch.setenv("PTW_PROGRESS_SECONDS", "0")
    with caplog.at_level(logging.INFO):
        _train(prepared, "span", tmp_path)
    lines = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("dynsan t/v seed 3: 1/6 steps") and "s left" in m for m in lines), lines
    assert any("dev at step 3" in m and "questions" in m for m in lines)  # the dev scoring pass too
    monkeypatch.setenv("PTW_PROGRESS_SECONDS", "30")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        _train(prepared, "span", tmp_path / "quiet")
    assert not [r for r in caplog.records if " steps, " in r.getMessage()]  # a short run: no progress lines


def test_checkpoint_of_other_settings_is_ignored(prepared, tmp_path):
    _train(prepared, "span", tmp_path, stop_after=2)
    files = _train(prepared, "span", tmp_path, model={"k": 3})  # other settings: starts afresh
    assert read_json(files["meta"])["steps"] == 6


def test_evaluate_writes_predictions_scores_and_gates(prepared, tmp_path):
    from pipeline_steps.dynsan.steps import evaluate

    for kind in ("span", "candidates"):
        files = _train(prepared, kind, tmp_path / kind)
        out = {k: str(tmp_path / kind / f) for k, f in (("predictions", "p.parquet"), ("scores", "s.json"),
                                                       ("gates", "g.parquet"))}
        evaluate(weights=files["weights"], tokens=prepared[kind]["tokens"], vocab=prepared[kind]["vocab"],
                 gate_examples=2, **out)
        pred, sc = pd.read_parquet(out["predictions"]), read_json(out["scores"])
        assert list(pred.columns[:5]) == ["id", "prediction", "passage", "score", "gold"]
        assert sc["n"] == len(pred) > 0
        if kind == "span":
            assert 0 <= sc["em"] <= sc["f1"] <= 100
            assert pred["em"].mean() == pytest.approx(sc["em"])
        else:
            assert 0 <= sc["accuracy"] <= 100 and set(pred["prediction"]) <= {c for cs in
                pd.read_parquet(prepared[kind]["tokens"])["candidates"] for c in cs}
        g = pd.read_parquet(out["gates"])
        assert g["id"].nunique() == 2 and g["gate"].between(0, 1).all() and (g["heads_selected"] > 0).any()
        assert g["in_answer"].any() and g["in_question"].any()


def test_efficiency_sweep_table(tmp_path):
    from pipeline_steps.dynsan.steps import efficiency

    efficiency(lengths=[16, 64], k=8, variants=["gated", "all"], d=8, heads=2, blocks=1, steps=1,
               table=str(tmp_path / "e.parquet"))
    df = pd.read_parquet(tmp_path / "e.parquet")
    assert len(df) == 4 and set(df["variant"]) == {"gated", "all"} and (df["step_seconds"] > 0).all()
    assert list(df.columns[:5]) == ["variant", "sequence_length", "k", "step_seconds", "peak_memory_mb"]


def test_config_cross_checks(minimal_config):
    from pipeline_steps.config import load_config
    from pipeline_steps.dynsan.config import dynsan_settings

    cfg = dict(minimal_config, dynsan={"run": {"tasks": ["b"], "variants": ["dynsan", "rk"]},
                                       "tasks": {"b": {"source": {"demo": "bridge"}}},
                                       "variants": {"dynsan": {}, "rk": {"selection": "random", "k": 8, "passages": 2}}})
    full = load_config(cfg)
    model, train, passages = dynsan_settings(full, "b", "rk")
    assert model["selection"] == "random" and model["k"] == 8 and model["d"] == 128 and passages == 2
    assert train["lr"] == 0.001 and train["warmup_steps"] == 500 and train["ema_decay"] == 0.9999
    for change, message in [
        (lambda c: c["dynsan"]["run"].update(variants=["nope"]), "dynsan.run.variants': unknown variant 'nope'"),
        (lambda c: c["dynsan"]["run"].update(tasks=["x"]), "dynsan.run.tasks': unknown task 'x'"),
        (lambda c: c["dynsan"]["variants"].update(rk={"gate": False}), "gated' needs gate"),
        (lambda c: c["dynsan"]["tasks"]["b"].update(kind="candidates"), "is a span task"),
        (lambda c: c["dynsan"]["tasks"]["b"].update(source={"path": "missing.jsonl"}), "does not exist"),
        (lambda c: c["dynsan"]["tasks"]["b"].update(source={"hub": "x/y"}), "needs format"),
        (lambda c: c["dynsan"].update(model={"d": 10, "heads": 4}), "multiple of heads"),
    ]:
        bad = json.loads(json.dumps(cfg))
        change(bad)
        with pytest.raises(UserError, match=message):
            load_config(bad)


def test_planning_grid_and_gate_run(repo_config):
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent / "workflow"))
    from planning import dynsan as plan

    cfg = json.loads(json.dumps(repo_config))
    cfg["dynsan"]["run"].update(tasks=["bridge", "bridge_candidates"], variants=["full_attention", "no_conv"], seeds=[1, 2])
    assert len(plan.grid(cfg)) == 8
    assert plan.gate_run(cfg, "bridge") == {"dtask": "bridge", "variant": "no_conv", "seed": 1}
    cfg["dynsan"]["run"]["variants"] = ["full_attention"]
    assert plan.gate_run(cfg, "bridge") is None and plan.summary_inputs(cfg)["gates"] == {}
    a = plan.run_args(cfg, {"dtask": "bridge", "variant": "full_attention", "seed": "2"})
    assert a["model_settings"]["selection"] == "all" and a["seed"] == 2
    assert not [k for k, v in a.items() if isinstance(v, str) and "/" in v]  # settings only: paths come from the rule
    assert plan.files(plan.RUN, plan.RUN_FILES, {"dtask": "bridge", "variant": "full_attention", "seed": 2})["weights"] \
        == "results/dynsan/runs/bridge/full_attention/seed2/weights.safetensors"


def test_sigkill_mid_run_then_resume_matches_uninterrupted(prepared, tmp_path):
    """A real kill: the training process gets SIGKILL once a checkpoint exists; the re-run resumes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    def cli_args(where):
        return {"task": "t", "variant": "v", "kind": "span", "model_settings": TINY_MODEL,
                "train_settings": dict(TINY_TRAIN, steps=60, eval_every=30, checkpoint_every=2), "passages": 6,
                "seed": 3, "tokens": prepared["span"]["tokens"], "vocab": prepared["span"]["vocab"],
                **{k: str(where / f) for k, f in (("weights", "w.safetensors"), ("curve", "c.parquet"),
                                                  ("meta", "m.json"), ("checkpoint", "ck.safetensors"))}}

    def run(where, kill=False):
        proc = subprocess.Popen([sys.executable, "-m", "pipeline_steps", "dynsan-train", "--args",
                                 json.dumps(cli_args(where))], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if kill:
            deadline = time.time() + 120
            while not (where / "ck.safetensors").exists() and time.time() < deadline and proc.poll() is None:
                time.sleep(0.01)
            os.kill(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=300)
        return proc.returncode, err

    code, _ = run(tmp_path / "full")
    assert code == 0
    code, _ = run(tmp_path / "killed", kill=True)
    if code == 0:
        pytest.skip("the run finished before it could be killed")
    assert code == -signal.SIGKILL and not (tmp_path / "killed" / "w.safetensors").exists()
    code, err = run(tmp_path / "killed")
    assert code == 0 and "resumed from checkpoint at step" in err
    a, _ = load_tensors(tmp_path / "full" / "w.safetensors")
    b, _ = load_tensors(tmp_path / "killed" / "w.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_read_hub_through_datasets(monkeypatch):
    """The hub path: one load_dataset call per configured split, records mapped by the format."""
    import datasets

    calls = []

    def fake_load(name, subset, split, revision=None):
        calls.append((name, subset, split))
        return [{"question": f"q {split}", "answer": "a", "search_results": {"snippets": ["a b", "c"]}}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    spec = {"name": "s", "kind": "span", "source": {"hub": "kyunghyuncho/search_qa", "subset": "train_test_val",
                                                    "format": "searchqa", "splits": {"train": "train", "dev": "validation"}}}
    recs, origin = D.load_records(spec)
    assert calls == [("kyunghyuncho/search_qa", "train_test_val", "train"),
                     ("kyunghyuncho/search_qa", "train_test_val", "validation")]
    assert [r["split"] for r in recs] == ["train", "dev"] and recs[1]["passages"] == ["a b", "c"]
    assert origin == "hub:kyunghyuncho/search_qa"

    def failing(*a, **k):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", failing)
    with pytest.raises(UserError, match="could not be loaded: ConnectionError"):
        D.load_records(spec)


def test_prepare_with_a_word_vector_file(tmp_path):
    from pipeline_steps.dynsan.steps import prepare

    (tmp_path / "w.vec").write_text("4 2\nparis 1 0\nfrance 0 1\nin 0.5 0.5\nlima 2 2\n")
    recs = [{"id": str(i), "question": "where is paris ?", "passages": ["paris is in france .", "lima"],
             "answers": ["France"], "split": s} for i, s in enumerate(["train", "dev", "test"])]
    _write_jsonl(tmp_path / "d.jsonl", recs)
    out = {k: str(tmp_path / f) for k, f in (("tokens", "t.parquet"), ("vocab", "v.safetensors"), ("report", "r.json"))}
    prepare(task={"name": "t", "source": {"path": str(tmp_path / "d.jsonl")}},
            embeddings={"source": str(tmp_path / "w.vec")},
            limits={"passages": 2, "passage_tokens": 8, "total_tokens": 16, "question_tokens": 8}, max_chars=6, **out)
    tensors, meta = load_tensors(out["vocab"])
    vec = dict(zip(meta["tokens"], tensors["vectors"].tolist()))
    assert vec["paris"] == [1, 0] and vec["france"] == [0, 1]
    assert vec["where"] == vec["?"] == [0, 0] and "where" in meta["tokens"] and "?" in meta["tokens"]  # unknown words
    df = pd.read_parquet(out["tokens"])
    assert list(df["span_p"][0]) == [0] and list(df["span_s"][0]) == [3]
    assert read_json(out["report"])["embedding"] == "vectors:w.vec"


def test_selection_counts_and_shares_by_hand():
    """Two heads over 6 passage tokens: head 0 picks positions 1 and 4, head 1 picks 2 (and a padding
    pick); answer tokens 1-2, question word at 0 and 4."""
    from types import SimpleNamespace

    import torch

    from pipeline_steps.dynsan.steps import selection_counts, selection_shares

    block = SimpleNamespace(last_selected=torch.tensor([[[1, 4], [2, -1]]]))
    model = SimpleNamespace(blocks=[block])
    batch = {"p_ids": torch.tensor([[[5, 6, 7], [8, 5, 9]]]), "p_mask": torch.ones(1, 2, 3, dtype=torch.bool),
             "q_ids": torch.tensor([[5, 0]]), "q_mask": torch.tensor([[True, False]]),
             "spans": torch.tensor([[[1, 2]]]), "span_mask": torch.tensor([[True]])}
    counts = selection_counts(model, batch)
    assert counts == {"tokens": 12, "selected": 3, "answer": 4, "selected_answer": 2, "question": 4,
                      "selected_question": 1}
    shares = selection_shares(counts)
    assert shares["selected_fraction"] == 0.25
    assert shares["answer_share_selected"] == 2 / 3 and shares["answer_enrichment"] == 2.0
    assert shares["question_enrichment"] == 1.0
    # a candidate task: candidate 0 (the answer) is mentioned at 1-2, candidate 1 at 4-5
    mentions = torch.zeros(1, 2, 6, dtype=torch.bool)
    mentions[0, 0, 1:3] = True
    mentions[0, 1, 4:6] = True
    counts = selection_counts(model, {**batch, "mentions": mentions})
    assert {k: counts[k] for k in ("mention", "selected_mention", "answer_mention", "selected_answer_mention")} == {
        "mention": 8, "selected_mention": 3, "answer_mention": 4, "selected_answer_mention": 2}
    shares = selection_shares(counts)
    assert shares["mention_share_selected"] == 1.0 and shares["mention_enrichment"] == 1.5
    # every pick is a mention; among the picked mentions 2 of 3 are the answer's, against 1 of 2 of all
    assert shares["answer_share_of_mentions_selected"] == 2 / 3 and shares["answer_share_of_mentions_all"] == 0.5
    assert shares["answer_vs_mentions_enrichment"] == pytest.approx(4 / 3)
    block.last_selected = None  # no attention path: nothing to count
    assert selection_counts(model, batch) == {} and selection_shares({}) == {}


def test_haystack_demo_needs_two_passages_for_two_hop_questions():
    """The long demo: many passages, every candidate mentioned equally often, the two-hop answer never in
    the asked person's passage, and surface rules (first candidate, word overlap) near chance on the
    two-hop half."""
    import re

    import numpy as np

    from pipeline_steps.dynsan.data import generate_demo

    recs = generate_demo("haystack_candidates", 200, 3, passages=24, filler=3, candidates=4)
    assert recs == generate_demo("haystack_candidates", 200, 3, passages=24, filler=3, candidates=4)
    words = lambda text: re.findall(r"\w+", text)  # noqa: E731
    overlap_right, first_right = [], []
    for i, r in enumerate(recs):
        assert len(r["passages"]) == 24 and len(r["candidates"]) == 4 == len(set(r["candidates"]))
        assert r["answer"] in r["candidates"] and r["answers"] == [r["answer"]]
        person = r["question"].split(" was ")[1].removesuffix(" born?")
        mentions = {c: sum(c in words(p) for p in r["passages"]) for c in r["candidates"]}
        assert len(set(mentions.values())) == 1, mentions  # counting mentions cannot find the answer
        with_person = [p for p in r["passages"] if person in p]
        assert len(with_person) == 1
        two_hop = i % 2 == 1
        assert (r["answer"] in words(with_person[0])) != two_hop
        if two_hop:
            q = set(words(r["question"]))
            score = {c: max(len(q & set(words(p))) for p in r["passages"] if c in words(p)) for c in r["candidates"]}
            overlap_right.append(max(r["candidates"], key=lambda c: score[c]) == r["answer"])
            first_right.append(r["candidates"][0] == r["answer"])
    assert np.mean(overlap_right) < 0.4 and np.mean(first_right) < 0.4  # chance: 0.25
    assert sum(len(words(p)) for p in recs[0]["passages"]) > 500  # hundreds of words per question


def test_haystack_settings_are_checked_at_start(minimal_config):
    from pipeline_steps.config import validate
    from pipeline_steps.errors import UserError

    import copy

    cfg = copy.deepcopy(minimal_config)
    cfg.setdefault("dynsan", {}).setdefault("tasks", {})["hay"] = {
        "kind": "candidates", "source": {"demo": "haystack_candidates", "size": 50, "passages": 6, "candidates": 4}}
    with pytest.raises(UserError, match="candidates.*need at least 8 passages"):
        validate(cfg)
    cfg["dynsan"]["tasks"]["hay"] = {"kind": "candidates", "source": {"demo": "bridge_candidates", "size": 50,
                                                                      "filler": 2}}
    with pytest.raises(UserError, match="haystack demos only"):
        validate(cfg)
