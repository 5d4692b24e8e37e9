"""DynSAN steps (rules call these): prepare a task, train a variant, evaluate it, benchmark efficiency."""
from __future__ import annotations

import logging
import math
import time

import numpy as np
import pandas as pd
import torch

from ..errors import UserError
from ..io import load_tensors, read_parquet, save_tensors, stable_hash, write_json, write_parquet
from ..logsetup import Progress
from ..runtime import autocast, resolve_device, seed_everything, set_threads
from ..training import EMA, Checkpoint, EpochSampler, fit, trainable
from .config import ModelConfig, TrainConfig
from .metrics import best_over_golds, exact_match, f1
from .model import DynSABlock, DynSAN, best_spans, candidate_log_probs, candidate_loss, span_marginal_loss

log = logging.getLogger(__name__)
SPLITS = ("train", "dev", "test")


# --- prepare ------------------------------------------------------------------------------------------

def prepare(*, task: dict, embeddings: dict, limits: dict, max_chars: int, tokens: str, vocab: str,
            report: str) -> None:
    """Records -> splits -> tokens and spans (Parquet), the compact vocabulary's vectors and
    characters (safetensors) and a data report (JSON). Bad data fails before anything is written."""
    from .data import assign_splits, char_table, cross_split_duplicates, load_embeddings, load_records, tokenise_task

    kind = task.get("kind", "span")
    recs, origin = load_records(task)
    recs = assign_splits(recs, task)
    emb = load_embeddings(embeddings)
    df, compact, extra = tokenise_task(recs, emb, limits, kind)
    notes = data_notes(extra["report"], cross_split_duplicates(recs), getattr(emb, "latin1", {}).get("latin1_lines", 0))
    extra["report"].update(notes)
    for split in SPLITS:
        if not (df["split"] == split).any() if len(df) else True:
            raise UserError(f"{origin}: task '{task['name']}': the {split} split is empty after preparation "
                            f"(training questions without an answer span are dropped: "
                            f"{extra['report']['dropped_train_without_span']}); add data or raise the caps")
    vectors = torch.zeros(len(compact) + 2, emb.table.shape[1])
    if compact:
        vectors[2:] = emb.table[torch.tensor([i for _, i in compact], dtype=torch.long)]
    toks = ["[PAD]", "[NONE]"] + [t for t, _ in compact]
    chars, alphabet = char_table(toks, emb, max_chars)
    chars[:2] = 0
    meta = {"task": task["name"], "kind": kind, "embedding": emb.name, "tokens": toks, "n_chars": len(alphabet) + 1,
            "spec_hash": stable_hash([task, embeddings, limits, max_chars])}
    rep = dict(extra["report"], task=task["name"], kind=kind, origin=origin, embedding=emb.name,
               embedding_dim=int(emb.table.shape[1]))
    log.info("dynsan task %s: %s", task["name"], rep)
    for what, n in notes.items():
        if n:
            log.warning("dynsan task %s: %d %s", task["name"], n, NOTE_TEXT[what])
    save_tensors({"vectors": vectors, "chars": torch.from_numpy(chars)}, vocab, metadata=meta)
    write_parquet(df, tokens, metadata={"step": "dynsan_prepare", "task": task["name"], "spec_hash": meta["spec_hash"],
                                        "notes": notes})
    write_json(rep, report)


# the data job's counts that go into the summary table (one column each) and the console summary
NOTE_TEXT = {"dropped": "training questions dropped: no answer span found in the kept passages",
             "truncated": "questions cut to the limits (passages, passage_tokens, total_tokens)",
             "duplicates": "ids found in more than one split (train/test leakage if they are the same question)",
             "latin1_lines": "word-vector lines read as Latin-1 (not UTF-8)"}


def data_notes(report: dict, duplicates: int, latin1_lines: int) -> dict[str, int]:
    return {"dropped": int(report["dropped_train_without_span"]), "truncated": int(report["truncated"]),
            "duplicates": int(duplicates), "latin1_lines": int(latin1_lines)}


# --- batches ------------------------------------------------------------------------------------------

class Questions:
    """The prepared questions of one split with ``passages`` kept per question."""

    def __init__(self, df: pd.DataFrame, passages: int, kind: str, train: bool = False):
        self.rows = df.to_dict("records")
        self.kind, self.passages = kind, passages
        if train:  # spans in passages beyond the cap are lost; a question left without one cannot train
            self.rows = [r for r in self.rows if self._has_target(r)]

    def _has_target(self, r) -> bool:
        return any(p < self.passages for p in r["span_p"])

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, idx, device) -> dict:
        rows = [self.rows[i] for i in idx]
        b = len(rows)
        n_p = max(min(len(r["p_ids"]), self.passages) for r in rows)
        lp = max(len(p) for r in rows for p in r["p_ids"][: self.passages])
        lq = max(len(r["q_ids"]) for r in rows)
        q = np.zeros((b, lq), dtype=np.int64)
        p = np.zeros((b, n_p, lp), dtype=np.int64)
        passage_of = np.full((b, n_p * lp), -1, dtype=np.int64)
        for i, r in enumerate(rows):
            q[i, : len(r["q_ids"])] = r["q_ids"]
            for j, ids in enumerate(r["p_ids"][: self.passages]):
                p[i, j, : len(ids)] = ids
                passage_of[i, j * lp: j * lp + len(ids)] = j
        spans = [[(pp * lp + s, pp * lp + e) for pp, s, e in zip(r["span_p"], r["span_s"], r["span_e"]) if pp < n_p]
                 for r in rows]
        n_s = max(1, max(len(s) for s in spans))
        span_t = np.zeros((b, n_s, 2), dtype=np.int64)
        span_m = np.zeros((b, n_s), dtype=bool)
        for i, s in enumerate(spans):
            if s:
                span_t[i, : len(s)] = s
                span_m[i, : len(s)] = True
        out = {"q_ids": torch.from_numpy(q), "q_mask": torch.from_numpy(q > 0), "p_ids": torch.from_numpy(p),
               "p_mask": torch.from_numpy(p > 0), "passage_of": torch.from_numpy(passage_of),
               "spans": torch.from_numpy(span_t), "span_mask": torch.from_numpy(span_m), "lp": lp}
        if self.kind == "candidates":
            n_c = max(len(r["candidates"]) for r in rows)
            men = np.zeros((b, n_c, n_p * lp), dtype=bool)
            for i, r in enumerate(rows):
                for c, pp, s, e in zip(r["mention_c"], r["mention_p"], r["mention_s"], r["mention_e"]):
                    if pp < n_p:
                        men[i, c, pp * lp + s: pp * lp + e + 1] = True
            out["mentions"] = torch.from_numpy(men)
            out["answer"] = torch.tensor([r["answer_index"] for r in rows])
        return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in out.items()}


def build_model(model_settings: dict, vocab_path: str, kind: str) -> tuple[DynSAN, dict]:
    tensors, meta = load_tensors(vocab_path)
    cfg = ModelConfig.from_dict(model_settings)
    return DynSAN(cfg, tensors["vectors"], tensors["chars"][:, : cfg.max_chars], meta["n_chars"], kind), meta


def task_loss(model: DynSAN, out, batch) -> torch.Tensor:
    start, end = out
    if model.kind == "candidates":
        return candidate_loss(start, batch["mentions"], batch["answer"])
    return span_marginal_loss(start, end, batch["spans"], batch["span_mask"])


def selection_counts(model: DynSAN, batch: dict) -> dict:
    """What the first cross-passage block's heads attended among, in the last forward pass, summed over
    heads and questions: all tokens, selected ones, answer tokens (gold spans or candidate mentions)
    and passage tokens that occur in the question, with how many of each were selected. Empty when the
    block has no attention path."""
    blk = model.blocks[0]
    if blk.last_selected is None:
        return {}
    sel_idx = blk.last_selected  # [B, H, K'], -1 = padding pick
    b, heads, _ = sel_idx.shape
    if b != batch["p_ids"].shape[0]:  # blocks per passage (no cross-passage attention): not one sequence
        return {}
    mask = batch["p_mask"].reshape(b, -1)
    selected = torch.zeros(b, heads, mask.shape[1] + 1, dtype=torch.bool, device=mask.device)
    selected.scatter_(2, torch.where(sel_idx >= 0, sel_idx, mask.shape[1]), True)
    selected = selected[..., :-1] & mask[:, None, :]
    answer = torch.zeros_like(mask)
    for i, (spans, ok) in enumerate(zip(batch["spans"].tolist(), batch["span_mask"].tolist())):
        for (s_, e_), keep in zip(spans, ok):
            if keep:
                answer[i, s_: e_ + 1] = True
    ids = batch["p_ids"].reshape(b, -1)
    question = torch.stack([torch.isin(ids[i], batch["q_ids"][i][batch["q_mask"][i]]) for i in range(b)]) & mask
    answer &= mask
    out = {"tokens": int(mask.sum()) * heads, "selected": int(selected.sum()),
           "answer": int(answer.sum()) * heads, "selected_answer": int((selected & answer[:, None]).sum()),
           "question": int(question.sum()) * heads, "selected_question": int((selected & question[:, None]).sum())}
    if "mentions" in batch:  # candidate tasks: the mentions of every candidate, the answer's among them
        mention = batch["mentions"].any(1) & mask
        answer_mention = answer & mention
        out.update({"mention": int(mention.sum()) * heads, "selected_mention": int((selected & mention[:, None]).sum()),
                    "answer_mention": int(answer_mention.sum()) * heads,
                    "selected_answer_mention": int((selected & answer_mention[:, None]).sum())})
    return out


def selection_shares(counts: dict) -> dict:
    """Shares of answer, question-word and (candidate tasks) candidate-mention tokens among the selected
    tokens and among all tokens, and their ratio (enrichment: 1 = no better than picking tokens at random,
    K/L = ``selected_fraction``). Candidate tasks also get the answer's share among the candidate mentions,
    selected and all (``answer_vs_mentions_enrichment`` 1: the heads pick the answer's mentions no more
    often than the other candidates'; a gate that picks every entity mention has a high answer enrichment
    but this ratio near 1)."""
    if not counts or not counts["tokens"]:
        return {}
    out = {"selected_fraction": counts["selected"] / counts["tokens"]}
    for kind in ("answer", "question", "mention"):
        if kind not in counts:
            continue
        among_selected = counts[f"selected_{kind}"] / max(1, counts["selected"])
        among_all = counts[kind] / counts["tokens"]
        out.update({f"{kind}_share_selected": among_selected, f"{kind}_share_all": among_all,
                    f"{kind}_enrichment": among_selected / among_all if among_all else float("nan")})
    if counts.get("mention"):
        among_selected = counts["selected_answer_mention"] / max(1, counts["selected_mention"])
        among_all = counts["answer_mention"] / counts["mention"]
        out.update({"answer_share_of_mentions_selected": among_selected, "answer_share_of_mentions_all": among_all,
                    "answer_vs_mentions_enrichment": among_selected / among_all if among_all else float("nan")})
    return out


@torch.no_grad()
def predict(model: DynSAN, data: Questions, batch_size: int, device, max_answer_length: int, amp=None,
            limit: int = 0, describe: str = "dynsan scoring", selection: dict | None = None) -> pd.DataFrame:
    """One row per question: id, prediction, passage, score, gold, em, f1 (candidate tasks: em = accuracy).
    A long pass logs progress every ~30 s. ``selection``: a dict that the token-selection counts of every
    batch are added to (``selection_counts``)."""
    model.eval()
    n = len(data) if not limit else min(limit, len(data))
    rows = []
    progress = Progress(log, describe, total=n, unit="questions")
    for lo in range(0, n, batch_size):
        progress.update(lo)
        idx = list(range(lo, min(n, lo + batch_size)))
        batch = data.batch(idx, device)
        with amp or torch.autocast("cpu", enabled=False):
            start, end = model(batch["q_ids"], batch["q_mask"], batch["p_ids"], batch["p_mask"])
        if selection is not None:
            for key, value in selection_counts(model, batch).items():
                selection[key] = selection.get(key, 0) + value
        lp = batch["lp"]
        if model.kind == "candidates":
            lp_c = candidate_log_probs(start, batch["mentions"])
            best = lp_c.argmax(-1)
            for j, i in enumerate(idx):
                r = data.rows[i]
                c = int(best[j])
                pred = r["candidates"][c] if c < len(r["candidates"]) else ""
                men = [pp for cc, pp in zip(r["mention_c"], r["mention_p"]) if cc == c]
                rows.append({"id": r["id"], "prediction": pred, "passage": int(men[0]) if men else -1,
                             "score": float(lp_c[j, c]), "gold": list(r["answers"]),
                             "em": 100.0 * float(pred == r["candidates"][r["answer_index"]]), "f1": float("nan")})
            continue
        s, e, sc = best_spans(start, end, batch["passage_of"], max_answer_length)
        for j, i in enumerate(idx):
            r = data.rows[i]
            pp = int(s[j]) // lp
            ss, ee = int(s[j]) - pp * lp, int(e[j]) - pp * lp
            text = r["passages"][pp][r["p_starts"][pp][ss]: r["p_ends"][pp][ee]] if math.isfinite(float(sc[j])) else ""
            gold = list(r["answers"])
            rows.append({"id": r["id"], "prediction": text, "passage": pp, "score": float(sc[j]), "gold": gold,
                         "em": 100.0 * best_over_golds(exact_match, text, gold),
                         "f1": 100.0 * best_over_golds(f1, text, gold)})
    return pd.DataFrame(rows)


def summary_scores(pred: pd.DataFrame, kind: str) -> dict:
    if kind == "candidates":
        return {"accuracy": float(pred["em"].mean()) if len(pred) else 0.0, "n": len(pred)}
    return {"em": float(pred["em"].mean()) if len(pred) else 0.0, "f1": float(pred["f1"].mean()) if len(pred) else 0.0,
            "n": len(pred)}


def main_score(scores: dict) -> float:
    return scores["accuracy"] if "accuracy" in scores else scores["f1"]


# --- training ------------------------------------------------------------------------------------------

def _device(device: str) -> torch.device:
    """The project's device resolution (a clear error without CUDA; the test-only CPU fallback)."""
    return resolve_device({"device": device, "name": "dynsan (dynsan.device)"})


def _amp(device: torch.device, dtype: str):
    """The project's one mixed-precision policy (``runtime.autocast``)."""
    return autocast({"dtype": dtype, "name": "dynsan (dynsan.dtype)"}, device)


def train(*, task: str, variant: str, kind: str, model_settings: dict, train_settings: dict, passages: int,
          seed: int, tokens: str, vocab: str, weights: str, curve: str, meta: str, checkpoint: str,
          device: str = "cpu", dtype: str = "float32", threads: int = 1, stop_after: int | None = None) -> None:
    """Train one (task, variant, seed) with the project's training loop (``training.fit``: Adam, warmup,
    clipping, an EMA of the weights evaluated and kept, best by dev score); resumable from ``checkpoint``
    (written every ``checkpoint_every`` steps, removed at the end). ``stop_after``: end the process after
    that many steps, leaving the checkpoint (tests of resuming)."""
    from ..flops import peak_memory

    set_threads(threads)
    seed_everything(seed)
    dev = _device(device)
    tcfg = TrainConfig.from_dict(train_settings)
    df = read_parquet(tokens)
    train_q = Questions(df[df["split"] == "train"], passages, kind, train=True)
    dev_q = Questions(df[df["split"] == "dev"], passages, kind)
    if len(train_q) == 0:
        raise UserError(f"{tokens}: no training question keeps an answer span within {passages} passages")
    torch.manual_seed(seed)
    model, vmeta = build_model(model_settings, vocab, kind)
    model.to(dev)
    params = trainable(model)
    optimizer = torch.optim.Adam(list(params.values()), lr=tcfg.lr)
    amp = _amp(dev, dtype)
    settings = {"task": task, "variant": variant, "kind": kind, "model": model_settings, "train": train_settings,
                "passages": passages, "seed": seed}
    config_hash = stable_hash([settings, vmeta.get("spec_hash")])
    sampler = EpochSampler(len(train_q), tcfg.batch_size, seed)
    describe = f"dynsan {task}/{variant} seed {seed}"

    def loss_at(step: int) -> torch.Tensor:
        batch = train_q.batch(sampler.rows(step).tolist(), dev)
        model.train()
        with amp:
            out = model(batch["q_ids"], batch["q_mask"], batch["p_ids"], batch["p_mask"])
        loss = task_loss(model, out, batch)
        return loss + tcfg.beta * model.gate_l1() if tcfg.beta else loss

    def dev_score(step: int) -> float:
        pred = predict(model, dev_q, tcfg.eval_batch_size, dev, tcfg.max_answer_length, amp, tcfg.eval_max,
                       describe=f"{describe}: dev at step {step}")
        return main_score(summary_scores(pred, kind))

    ckpt = Checkpoint(checkpoint)
    with peak_memory(dev) as mem:
        best, state = fit(params, optimizer, steps=tcfg.steps, grad_clip=tcfg.grad_clip,
                          lr=lambda s: tcfg.lr * min(1.0, (s + 1) / tcfg.warmup_steps) if tcfg.warmup_steps else tcfg.lr,
                          loss_at=loss_at, dev_score=dev_score, eval_every=tcfg.eval_every, checkpoint=ckpt,
                          checkpoint_every=tcfg.checkpoint_every, tag=config_hash, describe=describe,
                          metric="accuracy" if kind == "candidates" else "F1",
                          nan_hint=f"lower train.lr (now {tcfg.lr}) or check the data",
                          ema=EMA(params, tcfg.ema_decay), reseed=seed, curve_loss="mean", stop_after=stop_after)
    if state.step < tcfg.steps:  # stopped early as asked
        return
    n_params = sum(p.numel() for p in params.values())
    provenance = {"settings": settings, "config_hash": config_hash, "vocab_spec_hash": vmeta.get("spec_hash"),
                  "embedding": vmeta.get("embedding"), "best_step": state.best_step, "weights": "ema_best_dev"}
    save_tensors(best, weights, metadata=provenance)
    write_parquet(pd.DataFrame(state.curve, columns=["step", "loss", "dev_score", "elapsed_seconds"]), curve,
                  metadata=provenance)
    write_json(dict(provenance, params=n_params, steps=state.step, best_dev_score=state.best_score,
                    train_seconds=round(state.train_seconds, 3), step_seconds=state.train_seconds / state.step,
                    train_cpu_seconds=round(state.train_cpu_seconds, 3),
                    step_cpu_seconds=state.train_cpu_seconds / state.step, wall_seconds=round(state.elapsed, 3),
                    peak_memory_mb=round(mem.peak_mb, 1) if math.isfinite(mem.peak_mb) else None,
                    memory_method=mem.method, device=str(dev)), meta)
    ckpt.remove()


# --- evaluation ----------------------------------------------------------------------------------------

def evaluate(*, weights: str, tokens: str, vocab: str, predictions: str, scores: str, gates: str,
             split: str = "test", gate_examples: int = 4, device: str = "cpu", dtype: str = "float32",
             threads: int = 1) -> None:
    """Score the trained (EMA, best-dev) weights on ``split``; per-question predictions; for a
    few dev questions, the gate values and selections of the first cross-passage block."""
    set_threads(threads)
    dev = _device(device)
    best, prov = load_tensors(weights)
    s = prov["settings"]
    tcfg = TrainConfig.from_dict(s["train"])
    model, vmeta = build_model(s["model"], vocab, s["kind"])
    model.load_state_dict(best, strict=False)
    model.to(dev)
    df = read_parquet(tokens)
    data = Questions(df[df["split"] == split], s["passages"], s["kind"])
    torch.manual_seed(s["seed"])
    counts = {}
    pred = predict(model, data, tcfg.eval_batch_size, dev, tcfg.max_answer_length, _amp(dev, dtype),
                   describe=f"dynsan {s['task']}/{s['variant']} seed {s['seed']}: {split}", selection=counts)
    sc = dict(summary_scores(pred, s["kind"]), split=split, task=s["task"], variant=s["variant"], seed=s["seed"],
              unanswerable=int((~df[df["split"] == split]["answerable"]).sum()), config_hash=prov["config_hash"],
              selection=selection_shares(counts))
    log.info("%s/%s seed %d %s: %s", s["task"], s["variant"], s["seed"], split, sc)
    gate_rows = gate_table(model, Questions(df[df["split"] == "dev"], s["passages"], s["kind"]), vmeta["tokens"],
                           gate_examples, dev)
    write_parquet(pred, predictions, metadata={"weights": weights, "config_hash": prov["config_hash"]})
    write_parquet(gate_rows, gates, metadata={"weights": weights, "config_hash": prov["config_hash"]})
    write_json(sc, scores)


@torch.no_grad()
def gate_table(model: DynSAN, data: Questions, vocab_tokens: list[str], n: int, device) -> pd.DataFrame:
    """Per token of ``n`` dev questions: the first cross-passage block's gate (mean over heads), how
    many heads selected it, whether it lies in a gold span and whether it occurs in the question."""
    cols = ["id", "position", "passage", "token", "gate", "heads_selected", "in_answer", "in_question"]
    blk = model.blocks[0]
    if not (blk.use_gate and blk.use_attention and model.cfg.cross_passage) or n == 0 or len(data) == 0:
        return pd.DataFrame(columns=cols)
    model.eval()
    out = []
    for i in range(min(n, len(data))):
        batch = data.batch([i], device)
        model(batch["q_ids"], batch["q_mask"], batch["p_ids"], batch["p_mask"])
        g = blk.last_gate[0].float().mean(0).cpu().numpy()
        sel = np.zeros(len(g), dtype=int)
        for h in blk.last_selected[0].cpu().numpy():
            sel[h[h >= 0]] += 1
        r, lp = data.rows[i], batch["lp"]
        answer = set()
        for s_, e_ in batch["spans"][0][batch["span_mask"][0]].tolist():
            answer.update(range(s_, e_ + 1))
        qtoks = {vocab_tokens[t] for t in r["q_ids"]}
        ids = batch["p_ids"][0].reshape(-1).cpu().numpy()
        for pos in np.nonzero(batch["p_mask"][0].reshape(-1).cpu().numpy())[0]:
            tok = vocab_tokens[ids[pos]]
            out.append({"id": r["id"], "position": int(pos), "passage": int(pos // lp), "token": tok,
                        "gate": float(g[pos]), "heads_selected": int(sel[pos]), "in_answer": pos in answer,
                        "in_question": tok in qtoks})
    return pd.DataFrame(out, columns=cols)


# --- efficiency ----------------------------------------------------------------------------------------

def efficiency(*, lengths: list[int], k: int, variants: list[str], d: int, heads: int, blocks: int, steps: int,
               table: str, device: str = "cpu", dtype: str = "float32", threads: int = 1) -> None:
    """Step time and peak memory of a training step (forward + backward) of ``blocks`` DynSA blocks
    on one sequence of each length, gated top-``k`` selection vs full self-attention (``all``).
    ``peak_memory_mb`` is the peak above the memory in use before the steps."""
    from ..flops import peak_memory

    set_threads(threads)
    dev = _device(device)
    amp = _amp(dev, dtype)
    rows = []
    for length in lengths:
        for variant in variants:
            torch.manual_seed(0)
            cfg = ModelConfig(d=d, heads=heads, k=k, dropout=0.0, selection=variant)
            stack = torch.nn.ModuleList([DynSABlock(cfg) for _ in range(blocks)]).to(dev)
            x = torch.randn(1, length, d, device=dev)
            mask = torch.ones(1, length, dtype=torch.bool, device=dev)

            def one_step():
                h = x
                with amp:
                    for blk in stack:
                        h = blk(h, mask)
                h.float().pow(2).mean().backward()
                stack.zero_grad(set_to_none=True)

            one_step()  # warm-up
            with peak_memory(dev) as mem:
                t = time.perf_counter()
                for _ in range(steps):
                    one_step()
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                sec = (time.perf_counter() - t) / steps
            rows.append({"variant": variant, "sequence_length": length, "k": k, "step_seconds": sec,
                         "peak_memory_mb": max(0.0, mem.peak_mb - mem.baseline_mb), "memory_method": mem.method,
                         "device": str(dev)})
            log.info("efficiency: %s L=%d k=%d: %.4f s/step, +%.1f MB", variant, length, k, sec, rows[-1]["peak_memory_mb"])
            del stack, x
    write_parquet(pd.DataFrame(rows), table, metadata={"step": "dynsan_efficiency", "d": d, "heads": heads,
                                                       "blocks": blocks, "steps": steps})
