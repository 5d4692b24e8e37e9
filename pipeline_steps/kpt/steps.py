"""The KPT step rules call: every verbalizer variant of one (model, task, knowledge base, seed, shots,
mode) in one job, the model loaded once.

Zero-shot (shots 0): one forward pass over the support set and the test split gives the per-word
logits of every candidate word; each variant is then a refinement and aggregation of those.
Few-shot: per variant, a soft prompt (mode ``prompt``: frozen PLM) or the whole PLM (mode ``model``)
is trained, with the variant's learnable word weights, on k examples per class (best dev score
kept). Refinements and calibration use the support set's logits before training, as KPT does.
Each finished variant is kept in the checkpoint folder, so a killed job resumes where it stopped.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..errors import UserError
from ..io import read_json, stable_hash, write_json, write_parquet
from ..models.backbone import position_limit
from ..models.registry import load_model_config, load_tokenizer
from ..prompt_tuning.config import PromptTuningConfig
from ..prompt_tuning.model import PromptModel
from ..runtime import autocast, load_bundle, seed_everything, set_threads
from ..training import Checkpoint, TokenizedSplit, load_splits, pad_id, predict, score, train_module, trainable
from ..verbalizers import EmbeddingVerbalizer, MLMVerbalizer
from .config import KPTConfig, switches, variants_for
from .knowledge import Candidate, apply_blocklist, blocklist_path, check_file_usable, expand, kb_words, read_blocklist
from .model import KnowledgeableVerbalizer, PlainModel, frequency_drop, relevance

log = logging.getLogger(__name__)


# --- data -----------------------------------------------------------------------------------------

def subset(data: TokenizedSplit, rows) -> TokenizedSplit:
    rows = np.asarray(rows, dtype=np.int64)
    return TokenizedSplit([data.input_ids[i] for i in rows], data.mask_pos[rows], data.labels[rows], data.pad_id)


def sample_support(train: TokenizedSplit, size: int, seed: int) -> TokenizedSplit:
    """``size`` training inputs (labels not used), seeded."""
    rng = np.random.default_rng([seed, 7])
    rows = np.sort(rng.choice(len(train), min(size, len(train)), replace=False))
    return subset(train, rows)


def sample_k_shot(data: TokenizedSplit, k: int, seed: int, num_classes: int, salt: int,
                  shortfall: list | None = None) -> TokenizedSplit:
    """k examples per class (all of a class with fewer), seeded; rows in class order. Each class with
    fewer than k adds how many it lacks to ``shortfall`` (it reaches the table's ``k_shot_shortfall``)."""
    rng = np.random.default_rng([seed, salt])
    rows = []
    for c in range(num_classes):
        idx = np.flatnonzero(data.labels == c)
        if len(idx) < k:
            log.warning("class %d has %d examples, fewer than k=%d: all are used", c, len(idx), k)
            if shortfall is not None:
                shortfall.append(k - len(idx))
        rows.extend(np.sort(rng.choice(idx, min(k, len(idx)), replace=False)).tolist())
    if not rows:
        raise UserError("k-shot sampling found no example")
    return subset(data, rows)


# --- the base verbalizer over every candidate word ------------------------------------------------

class WordLogits(torch.nn.Module):
    """Adapter: a verbalizer's per-word (or, for MLM, vocabulary) logits as the model output."""

    def __init__(self, base, vocab: bool = False):
        super().__init__()
        self.base = base
        self.vocab = vocab

    def forward(self, backbone, inputs_embeds, attention_mask, mask_pos):
        if self.vocab:
            return self.base.vocab_logits(backbone, inputs_embeds, attention_mask, mask_pos)
        return self.base.word_logits(backbone, inputs_embeds, attention_mask, mask_pos)


def build_base(bundle, entries: list[Candidate], num_classes: int, multi_token: str):
    """A verbalizer whose ``word_logits`` covers every entry (class averaging weights as usual)."""
    owner = [e.cls for e in entries]
    weights = torch.zeros(num_classes, len(entries))
    weights[owner, torch.arange(len(entries))] = 1.0
    weights = weights / weights.sum(1, keepdim=True).clamp(min=1)
    first = [e.token_ids[0] for e in entries]
    device = bundle.backbone.word_embeddings.weight.device
    if bundle.verbalizer_kind == "mlm":
        if not bundle.backbone.has_mlm_head:
            raise UserError(f"model '{bundle.spec['name']}': verbalizer 'mlm' needs an MLM head")
        tokens, tw = None, None
        if multi_token == "mean":
            tokens = [t for e in entries for t in e.token_ids]
            tw = torch.zeros(len(entries), len(tokens))
            col = 0
            for i, e in enumerate(entries):
                tw[i, col:col + len(e.token_ids)] = 1.0 / len(e.token_ids)
                col += len(e.token_ids)
        return MLMVerbalizer(first, weights, tokens, tw).to(device)
    words = [e.word for e in entries]
    vecs = EmbeddingVerbalizer.encode_words(bundle.backbone, bundle.tokenizer, words)
    class_vecs = torch.stack([vecs[[i for i, o in enumerate(owner) if o == c]].mean(0) for c in range(num_classes)])
    return EmbeddingVerbalizer(first, weights, class_vecs, pooling=bundle.spec.get("pooling", "mask"),
                               scale=bundle.spec.get("embedding_scale", 20.0), word_vectors=vecs).to(device)


def refine(entries: list[Candidate], sw: dict, support_z: torch.Tensor, vocab_prior: torch.Tensor | None,
           cfg: KPTConfig, num_classes: int) -> dict:
    """The variant's kept words (indices into ``entries``) and, per considered word, why it was
    dropped and its prior / tf / idf."""
    if sw["knowledge"]:
        cols = [i for i, e in enumerate(entries) if e.status == "kept"]
    else:
        cols = [i for i, e in enumerate(entries) if e.source in ("anchor", "manual")]
    cols_t = torch.tensor(cols, dtype=torch.long)
    owner = torch.tensor([entries[i].cls for i in cols], dtype=torch.long)
    is_anchor = torch.tensor([entries[i].source == "anchor" for i in cols])
    prior_all = support_z.float().mean(0)
    prior = prior_all[cols_t]
    dropped = [None] * len(cols)
    active = torch.ones(len(cols), dtype=torch.bool)
    info = {"frequency_threshold": None, "relevance_rate": None}
    if sw["frequency"] and cfg.candidate_frac > 0:
        drop, thr = frequency_drop(prior, cfg.candidate_frac, vocab_prior, protect=is_anchor)
        info["frequency_threshold"] = thr
        for j in torch.nonzero(drop).squeeze(1).tolist():
            dropped[j] = "frequency"
        active &= ~drop
    tf = idf = torch.full((len(cols),), float("nan"))
    if sw["relevance"]:
        anchors = torch.tensor([int(torch.nonzero(is_anchor & (owner == c))[0]) for c in range(num_classes)])
        rel = relevance(support_z[:, cols_t], owner, anchors, active, num_classes)
        tf, idf = rel["tf"], rel["idf"]
        info["relevance_rate"] = rel["rate"]
        for j in torch.nonzero(active & ~rel["keep"]).squeeze(1).tolist():
            dropped[j] = "relevance"
        active &= rel["keep"]
    kept = [cols[j] for j in range(len(cols)) if active[j]]
    return {"considered": cols, "kept": kept, "dropped": dropped, "prior": prior, "tf": tf, "idf": idf,
            "prior_all": prior_all, **info}


def word_rows(variant: str, entries, ref: dict, sw: dict, label_names, alpha: dict[int, float],
              expansion_dropped: list[Candidate] = ()) -> list[dict]:
    rows = []
    pos = {i: j for j, i in enumerate(ref["considered"])}
    universe = range(len(entries)) if sw["knowledge"] else ref["considered"]
    for i in universe:
        e = entries[i]
        j = pos.get(i)
        kept = i in alpha
        why = None if kept else (ref["dropped"][j] if j is not None else e.status)
        rows.append({"variant": variant, "class": label_names[e.cls], "class_id": e.cls, "word": e.word,
                     "source": e.source, "token_ids": list(e.token_ids), "kept": kept, "dropped_by": why,
                     "prior": float(ref["prior"][j]) if j is not None else None,
                     "tf": float(ref["tf"][j]) if j is not None and not np.isnan(float(ref["tf"][j])) else None,
                     "idf": float(ref["idf"][j]) if j is not None and not np.isnan(float(ref["idf"][j])) else None,
                     "weight": alpha.get(i)})
    if sw["knowledge"]:  # candidates dropped by expansion (duplicate/tokenizer/cap) and absent from `entries`
        rows += [{"variant": variant, "class": label_names[e.cls], "class_id": e.cls, "word": e.word, "source": e.source,
                  "token_ids": list(e.token_ids), "kept": False, "dropped_by": e.status, "prior": None, "tf": None,
                  "idf": None, "weight": None} for e in expansion_dropped]
    return rows


# --- the job ------------------------------------------------------------------------------------------

def run(*, model_spec: dict, task_spec: dict, kb: dict, settings: dict, prompt_tuning: dict, seed: int, shots: int,
        mode: str, variants: list[str], tokenized: str, words: str, scores: str, meta: str,
        checkpoint_dir: str | None = None, threads: int = 1) -> dict:
    """All variants of one setting; writes ``words`` (Parquet: every variant's label words, kept or
    dropped and why), ``scores`` (Parquet: one row per variant) and ``meta`` (JSON provenance)."""
    set_threads(threads)
    seed_everything(seed)
    cfg = KPTConfig.from_dict(settings)
    # prompt mode trains in batches of kpt.prompt_tuning.batch_size where given, else kpt.settings.batch_size
    ptcfg = PromptTuningConfig.from_dict({**prompt_tuning, "batch_size": prompt_tuning.get("batch_size", cfg.batch_size)})
    names, C = task_spec["label_names"], len(task_spec["label_names"])
    variants = variants_for(variants, shots, cfg.relevance_few_shot)
    origin = f"knowledge base '{kb['name']}'" + (f" ({kb['path']})" if kb.get("path") else "")
    # cheap checks first: the knowledge base and the tokenizer, before any weights load
    tokenizer = load_tokenizer(model_spec)
    if shots and mode == "prompt":  # the soft prompt and the inputs must fit the model's positions
        from ..prompt_tuning.steps import check_lengths

        check_lengths(None, ptcfg, model_spec["name"], limit=position_limit(load_model_config(model_spec)))
    block_file = blocklist_path(kb.get("blocklist", True))
    blocklist = read_blocklist(block_file) if block_file else None
    expansion = None
    if kb["source"] != "embedding":
        expansion = kb_words(kb, task_spec)
        if kb["source"] == "file":
            check_file_usable(kb["path"], task_spec, expansion, tokenizer, cfg.max_subtokens)
    t0 = time.perf_counter()
    bundle = load_bundle(model_spec)
    if expansion is None:
        expansion = kb_words(kb, task_spec, tokenizer=bundle.tokenizer, embeddings=bundle.backbone.word_embeddings.weight)
    expansion, blocked = apply_blocklist(expansion, blocklist)  # before the cap: blocked words free no slot
    if any(blocked.values()):
        log.info("%s: the blocklist removed %d knowledge-base words (%s)", origin, sum(blocked.values()),
                 ", ".join(f"{k}: {v}" for k, v in blocked.items()))
    cands = expand(task_spec, expansion, bundle.tokenizer, max_words=cfg.max_words, max_subtokens=cfg.max_subtokens,
                   origin=origin)
    entries = [e for e in cands if e.token_ids and (e.status == "kept" or e.source in ("anchor", "manual"))]
    gone = [e for e in cands if e not in entries]
    for c in range(C):
        if not any(e.cls == c and e.status == "kept" for e in entries):
            raise UserError(f"{origin}: no usable word for class '{names[c]}'")
    base = build_base(bundle, entries, C, cfg.multi_token)
    device, amp = bundle.device, autocast(model_spec, bundle.device)
    data = load_splits(tokenized, pad_id(bundle.tokenizer), ("train", "dev", "test"))
    support = sample_support(data["train"], cfg.support_size, seed)
    test = data["test"]
    metric = task_spec["metric"]
    provenance = {"model": model_spec["name"], "task": task_spec["name"], "knowledge_base": kb["name"], "seed": seed,
                  "shots": shots, "mode": mode if shots else "none", "verbalizer": bundle.verbalizer_kind,
                  "settings": cfg.to_dict(), "kb": kb, "variants": variants,
                  "blocklist": None if blocklist is None else {"path": blocklist.path, "sha256": blocklist.sha256,
                                                               "entries": len(blocklist.words) + len(blocklist.prefixes)},
                  "kb_words_blocked": blocked}
    provenance["config_hash"] = stable_hash([model_spec, task_spec, kb, cfg.to_dict(), seed, shots, mode, variants,
                                             ptcfg.to_dict() if shots else None,
                                             blocklist.sha256 if blocklist is not None else None])
    ckdir = Path(checkpoint_dir) if checkpoint_dir else None

    run_name = f"kpt {model_spec['name']}/{task_spec['name']}/{kb['name']}/seed{seed}"

    def support_logits(model_for):
        """Support word logits (and, for MLM, the vocabulary-wide prior) under the given wrapper."""
        what = f"{run_name}: support set"
        if bundle.verbalizer_kind == "mlm":
            vocab = torch.from_numpy(predict(model_for(WordLogits(base, vocab=True)), support, ptcfg.eval_batch_size,
                                             device, amp=amp, describe=what))
            return base.words_from_vocab(vocab.to(device)).cpu(), vocab.mean(0)
        z = torch.from_numpy(predict(model_for(WordLogits(base)), support, ptcfg.eval_batch_size, device, amp=amp,
                                     describe=what))
        return z, None

    score_rows, all_words, shortfall = [], [], []
    if shots == 0:
        plain = lambda head: PlainModel(bundle.backbone, head)  # noqa: E731
        support_z, vocab_prior = support_logits(plain)
        test_z = torch.from_numpy(predict(plain(WordLogits(base)), test, ptcfg.eval_batch_size, device, amp=amp,
                                          describe=f"{run_name}: test split, every candidate word"))
        for v in variants:
            sw = switches(v, shots, cfg.relevance_few_shot)
            ref = refine(entries, sw, support_z, vocab_prior, cfg, C)
            kv = KnowledgeableVerbalizer(base, ref["kept"], [entries[i].cls for i in ref["kept"]], C,
                                         prior=ref["prior_all"][ref["kept"]] if sw["calibration"] else None)
            preds = kv.scores(test_z.to(device)).argmax(1).cpu().numpy()
            alpha = dict(zip(ref["kept"], kv.alpha().cpu().tolist()))
            score_rows.append(_score_row(v, sw, metric, score(preds, test.labels, metric, C), len(test), ref, entries,
                                         C, alpha, None, blocked))
            all_words += word_rows(v, entries, ref, sw, names, alpha, gone)
    else:
        if mode not in ("prompt", "model"):
            raise UserError(f"unknown KPT training mode '{mode}' (prompt | model)")
        train = sample_k_shot(data["train"], shots, seed, C, salt=1, shortfall=shortfall)
        dev = sample_k_shot(data["dev"], shots, seed, C, salt=2, shortfall=shortfall)
        if mode == "prompt":
            from ..prompt_tuning.steps import initial_prompt

            init, _ = initial_prompt(bundle, ptcfg, seed, None, task_spec["name"])
            wrap = lambda head: PromptModel(bundle.backbone, head, init)  # noqa: E731
            run_cfg = ptcfg
            lr = ptcfg.lr
        else:
            initial = {k: v.detach().clone() for k, v in bundle.backbone.hf.state_dict().items()}
            wrap = lambda head: PlainModel(bundle.backbone, head)  # noqa: E731
            per_epoch = max(1, len(train) // cfg.batch_size)
            run_cfg = PromptTuningConfig.from_dict({**ptcfg.to_dict(), "lr": cfg.model_lr, "batch_size": cfg.batch_size,
                                                    "steps": cfg.model_epochs * per_epoch, "eval_every": per_epoch,
                                                    "warmup_steps": 0})
            lr = cfg.model_lr
        support_z, vocab_prior = support_logits(wrap)
        for v in variants:
            done = ckdir / f"{v}.done.json" if ckdir else None
            if done is not None and done.exists():
                saved = read_json(done)
                if saved.get("config_hash") == provenance["config_hash"]:
                    log.info("variant %s: finished before, taken from %s", v, done)
                    score_rows.append(saved["score"])
                    all_words += saved["words"]
                    continue
            sw = switches(v, shots, cfg.relevance_few_shot)
            ref = refine(entries, sw, support_z, vocab_prior, cfg, C)
            kv = KnowledgeableVerbalizer(base, ref["kept"], [entries[i].cls for i in ref["kept"]], C,
                                         prior=ref["prior_all"][ref["kept"]] if sw["calibration"] else None,
                                         learnable=sw["learnable"])
            if mode == "model":
                bundle.backbone.hf.load_state_dict(initial)
                for p in bundle.backbone.hf.parameters():
                    p.requires_grad_(True)
            model = wrap(kv)
            scales = {"verbalizer.word_weights": cfg.weight_lr / lr} if sw["learnable"] else None
            describe = f"kpt {model_spec['name']}/{task_spec['name']}/{kb['name']}/seed{seed}/{shots}shot-{mode}/{v}"
            ckpt = Checkpoint(ckdir / f"{v}.safetensors") if ckdir else None
            best, state, _ = train_module(model, train, dev, run_cfg, seed=seed, metric=metric, device=device,
                                          checkpoint=ckpt, tag=stable_hash([provenance["config_hash"], v]),
                                          describe=describe, amp=amp, lr_scales=scales)
            params = trainable(model)
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(best[n].to(p.device))
            preds = predict(model, test, run_cfg.eval_batch_size, device, amp=amp, describe=f"{describe}: test").argmax(1)
            alpha = dict(zip(ref["kept"], kv.alpha().cpu().tolist()))
            row = _score_row(v, sw, metric, score(preds, test.labels, metric, C), len(test), ref, entries, C, alpha,
                             state, blocked)
            words_v = word_rows(v, entries, ref, sw, names, alpha, gone)
            score_rows.append(row)
            all_words += words_v
            if mode == "model":
                for p in bundle.backbone.hf.parameters():
                    p.requires_grad_(False)
            if done is not None:
                write_json({"config_hash": provenance["config_hash"], "score": row, "words": words_v}, done)
            if ckpt:
                ckpt.remove()
        if mode == "model":
            bundle.backbone.hf.load_state_dict(initial)
    provenance["seconds"] = round(time.perf_counter() - t0, 3)
    provenance["k_shot_shortfall"] = int(sum(shortfall))  # examples missing to k per class, train + dev
    for r in score_rows:
        r["k_shot_shortfall"] = provenance["k_shot_shortfall"]
    frame = pd.DataFrame(score_rows)
    write_parquet(pd.DataFrame(all_words), words, metadata=provenance)
    write_parquet(frame, scores, metadata=provenance)
    write_json(provenance, meta)
    if ckdir:
        for v in variants:
            (ckdir / f"{v}.done.json").unlink(missing_ok=True)
    for r in score_rows:
        log.info("%s %s %s/%s %d-shot %s: %s %.4f (%s words per class)", model_spec["name"], task_spec["name"],
                 kb["name"], r["variant"], shots, provenance["mode"], metric, r["score"], r["words_by_class"])
    return provenance


def _score_row(variant, sw, metric, value, n, ref, entries, C, alpha, state, blocked: dict | None = None) -> dict:
    counts = [sum(1 for i in ref["kept"] if entries[i].cls == c) for c in range(C)]
    return {"variant": variant, "metric": metric, "score": float(value), "n_test": int(n),
            "words_per_class": float(np.mean(counts)), "words_by_class": counts,
            "kb_words_kept": int(sum(1 for i in ref["kept"] if entries[i].source == "kb")),
            "kb_words_blocked": int(sum((blocked or {}).values())) if sw["knowledge"] else 0,
            "frequency": sw["frequency"], "relevance": sw["relevance"], "calibration": sw["calibration"],
            "learnable": sw["learnable"], "relevance_rate": ref["relevance_rate"],
            "best_dev_score": None if state is None else float(state.best_score),
            "best_step": None if state is None else int(state.best_step),
            "train_seconds": None if state is None else round(state.elapsed, 3)}
