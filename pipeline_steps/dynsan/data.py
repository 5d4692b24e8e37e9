"""DynSAN data: sources (hub, local files, demo generator), tokenisation with the embedding's
tokenizer, distant supervision of answer spans, caps, and the cached Parquet + vocabulary.

Every source is turned into the same records before anything else happens::

    {"id": str, "question": str, "passages": [str, ...], "answers": [str, ...], "split": str|None,
     "candidates": [str, ...], "answer": str}      # the last two for candidate tasks only

Local files: ``.jsonl`` / ``.parquet`` with exactly those fields (``split`` optional), the
qangaroo JSON as WikiHop publishes it (a list of ``{id, query, answer, candidates, supports}``),
or MRQA JSONL (a header line, then ``{"context", "qas": [{"qid", "question", "answers"}]}``;
the context is split into passages at ``[DOC]``/``[PAR]`` markers).
"""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.prepare import hub_splits
from ..errors import UserError
from ..io import iter_lines, parse_json, read_text
from .config import DEV_FRACTION, SPLIT_SEED, TEST_FRACTION
from .metrics import normalize_answer

log = logging.getLogger(__name__)
SPLITS = ("train", "dev", "test")
_SPLIT_ALIASES = {"train": "train", "dev": "dev", "validation": "dev", "valid": "dev", "val": "dev", "test": "test"}
HUB_FORMATS = {  # registry formats: where question, passages and answers live in a hub record
    "searchqa": {"question": "question", "passages": "search_results.snippets", "answers": "answer"},
    "quasar": {"question": "question", "passages": "context.short.content", "answers": "answer"},
    "qangaroo": {"question": "query", "passages": "supports", "answer": "answer", "candidates": "candidates"},
}


# --- records ------------------------------------------------------------------------------------------

def _bad(origin: str, where, field: str, problem: str) -> UserError:
    return UserError(f"{origin}: record {where}: field '{field}' {problem}")


def _one_line(value, limit: int = 60) -> str:
    """A value quoted in a message: newlines and other control characters escaped, long values cut."""
    text = repr(str(value))[1:-1]
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def json_type(value) -> str:
    """The JSON name of a value's type (the words a user sees in the file)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple, np.ndarray)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _strings(value, origin: str, where, field: str, what: str = "a list of strings") -> list[str]:
    """``value`` as a list of strings: a list (or array) whose items are all strings, else refused
    naming the field and what it holds (a mapping is never iterated as its keys)."""
    if not isinstance(value, (list, tuple, np.ndarray)):
        raise _bad(origin, where, field, f"must be {what}, got {json_type(value)}")
    value = list(value)
    for i, v in enumerate(value):
        if not isinstance(v, str):
            raise _bad(origin, where, field, f"must be {what}, got an array with {json_type(v)} at [{i}]")
    return value


def _answer_texts(answers, origin: str, where) -> list[str]:
    """The answer strings of the layouts in use: a string, a list of strings, SQuAD's column layout
    ``{"text": [...], "answer_start": [...]}`` (Hugging Face datasets) and SQuAD's JSON layout
    ``[{"text": ..., "answer_start": ...}, ...]``; anything else is refused by name."""
    what = ("a string or a list of strings (or SQuAD's {\"text\": [...], \"answer_start\": [...]} or "
            "[{\"text\": ...}, ...])")
    if isinstance(answers, str):
        return [answers]
    if isinstance(answers, dict):
        if "text" not in answers:
            raise _bad(origin, where, "answers", f"must be {what}, got object with keys {sorted(answers)[:6]}")
        text = answers["text"]
        return [text] if isinstance(text, str) else _strings(text, origin, where, "answers.text")
    if isinstance(answers, (list, tuple, np.ndarray)) and len(answers) and all(isinstance(a, dict) for a in answers):
        out = []
        for i, a in enumerate(answers):
            if not isinstance(a.get("text"), str):
                raise _bad(origin, where, f"answers[{i}].text", f"must be a string, got {json_type(a.get('text'))}")
            out.append(a["text"])
        return out
    if not isinstance(answers, (list, tuple, np.ndarray)):
        raise _bad(origin, where, "answers", f"must be {what}, got {json_type(answers)}")
    return _strings(answers, origin, where, "answers", what)


def check_record(rec: dict, origin: str, where, kind: str) -> dict:
    """Validate one normalised record, each field's JSON type included; the message names the file,
    the record and the field (``record 7 (id q3): field 'answers' must be ..., got object``)."""
    for f in ("question", "passages") + (("candidates", "answer") if kind == "candidates" else ("answers",)):
        if f not in rec or rec[f] is None:
            raise _bad(origin, where, f, "is missing")
    if not isinstance(rec["question"], str):
        raise _bad(origin, where, "question", f"must be a string, got {json_type(rec['question'])}")
    if not rec["question"].strip():
        raise _bad(origin, where, "question", "must be a non-empty string")
    passages = _strings(rec["passages"], origin, where, "passages")
    if not passages:
        raise _bad(origin, where, "passages", "is empty")
    for i, p in enumerate(passages):
        if not p.strip():
            raise _bad(origin, where, f"passages[{i}]", "is empty")
    rid = rec.get("id")
    if isinstance(rid, (float, np.floating)) and float(rid).is_integer():
        rid = int(rid)
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (str, int, np.integer))):
        raise _bad(origin, where, "id", f"must be a string or an integer, got {json_type(rid)}")
    split = rec.get("split")
    if split is not None and not isinstance(split, str):
        raise _bad(origin, where, "split", f"must be a string, got {json_type(split)}")
    out = {"id": str(rid if rid is not None else where), "question": rec["question"], "passages": passages,
           "split": split, "has_id": rid is not None}
    if kind == "candidates":
        cands = _strings(rec["candidates"], origin, where, "candidates")
        if not isinstance(rec["answer"], str):
            raise _bad(origin, where, "answer", f"must be a string, got {json_type(rec['answer'])}")
        if rec["answer"] not in cands:
            raise _bad(origin, where, "candidates", f"does not contain the answer '{_one_line(rec['answer'])}'")
        out.update(candidates=cands, answer=rec["answer"], answers=[rec["answer"]])
    else:
        answers = [a for a in _answer_texts(rec["answers"], origin, where) if a.strip()]
        if not answers:
            raise _bad(origin, where, "answers", "has no non-empty answer")
        out["answers"] = answers
    return out


def _plain(value):
    """A Parquet cell as plain Python (arrays to lists, also inside structs: SQuAD's answers column)."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _get(rec, path: str):
    """A dotted field path; a list of dicts on the way is mapped (``search_results.snippets``)."""
    value = rec
    for part in path.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, (list, np.ndarray)):
            value = [v.get(part) if isinstance(v, dict) else None for v in value]
        else:
            return None
        if value is None:
            return None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    return value


def from_hub_record(rec: dict, fmt: dict, idx) -> dict:
    out = {"id": rec.get("id", idx), "split": rec.get("__split")}
    for key, path in fmt.items():
        out[key] = _get(rec, path)
    if isinstance(out.get("answers"), str):
        out["answers"] = [out["answers"]]
    return out


_MRQA_SPLIT = re.compile(r"\[DOC\]|\[PAR\]")
_MRQA_TAGS = re.compile(r"\[(TLE|SEP|DOC|PAR)\]")


def from_mrqa(lines: list[dict], origin: str = "mrqa") -> list[dict]:
    recs = []
    for n, line in enumerate(lines, 1):
        if "header" in line:
            continue
        ctx, qas = line.get("context"), line.get("qas", [])
        if ctx is not None and not isinstance(ctx, str):
            raise UserError(f"{origin}: line {n}: field 'context' must be a string, got {json_type(ctx)}")
        if not isinstance(qas, list) or not all(isinstance(qa, dict) for qa in qas):
            raise UserError(f"{origin}: line {n}: field 'qas' must be a list of objects, got "
                            f"{json_type(qas) if not isinstance(qas, list) else 'a list holding other values'}")
        passages = [_MRQA_TAGS.sub(" ", p).strip() for p in _MRQA_SPLIT.split(ctx or "")]
        passages = [" ".join(p.split()) for p in passages if p.strip()] if ctx is not None else None
        for qa in qas:
            recs.append({"id": qa.get("qid"), "question": qa.get("question"), "passages": passages,
                         "answers": qa.get("answers")})
    return recs


def read_local(path: str, fmt: str | None = None) -> list[dict]:
    p = Path(path)
    if not p.exists():
        raise UserError(f"{path}: data file not found")
    if p.suffix.lower() in (".parquet", ".pq"):
        try:
            df = pd.read_parquet(p)
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: cannot be read: {e}") from None
        return [{k: _plain(v) for k, v in r.items()} for r in df.to_dict("records")]
    text = read_text(p, "data file")
    stripped = text.lstrip()
    if fmt == "qangaroo" or (fmt is None and stripped.startswith("[")):
        data = parse_json(text, str(path), list, "a qangaroo file holds a JSON list of records")
        return [{"id": r.get("id", i), "question": r.get("query"), "passages": r.get("supports"),
                 "candidates": r.get("candidates"), "answer": r.get("answer")} if isinstance(r, dict) else
                {"__bad": True} for i, r in enumerate(data)]
    lines = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        lines.append(parse_json(line, str(path), dict, "a JSON object expected", line=n))
    if not lines:
        raise UserError(f"{path}: the file has no records")
    if fmt == "mrqa" or (fmt is None and "header" in lines[0]):
        return from_mrqa(lines, str(path))
    return lines


def read_hub(src: dict) -> list[dict]:
    fmt = dict(HUB_FORMATS.get(src.get("format", ""), {}), **(src.get("fields") or {}))
    if not fmt:
        raise UserError(f"hub dataset '{src['hub']}': give source.format ({', '.join(HUB_FORMATS)}) or source.fields")
    recs = []
    for role, split, ds in hub_splits(src):
        for i, rec in enumerate(ds):
            rec = dict(rec, __split=role)
            recs.append(from_hub_record(rec, fmt, f"{split}:{i}"))
    return recs


def load_records(spec: dict) -> tuple[list[dict], str]:
    """All records of a task (validated), and the origin used in messages."""
    src, kind = spec["source"], spec.get("kind", "span")
    if "demo" in src:
        options = {k: src[k] for k in ("passages", "filler", "candidates") if k in src}
        raws = [(f"demo:{src['demo']}", generate_demo(src["demo"], src.get("size", 600), src.get("seed", 0), **options))]
    elif "hub" in src:
        raws = [(f"hub:{src['hub']}", read_hub(src))]
    else:
        paths = src["path"]
        if isinstance(paths, str):
            raws = [(paths, read_local(paths, src.get("format")))]
        else:
            raws = []
            for split, path in paths.items():
                recs = read_local(path, src.get("format"))
                raws.append((path, [dict(r, split=split) for r in recs]))
    out, first_seen = [], {}
    for origin, recs in raws:
        for i, r in enumerate(recs):
            rid = r.get("id") if isinstance(r, dict) else None
            where = f"{i}" + (f" (id {_one_line(rid)})" if isinstance(rid, (str, int)) and not isinstance(rid, bool) else "")
            if not isinstance(r, dict) or r.get("__bad"):
                raise UserError(f"{origin}: record {i}: not a JSON object")
            rec = check_record(r, origin, where, kind)
            split = rec.get("split")
            if split is not None:
                key = split.strip().lower()
                if key not in _SPLIT_ALIASES:
                    raise _bad(origin, where, "split", f"'{_one_line(split)}' is not train, dev (validation) or test")
                rec["split"] = _SPLIT_ALIASES[key]
            if rec["has_id"]:  # a record without an id is named by its position: no duplicate possible
                seen = first_seen.setdefault((rec["split"], rec["id"]), (origin, i))
                if seen != (origin, i):
                    place = f"split '{rec['split']}'" if rec["split"] else "the records without a split"
                    raise UserError(f"{origin}: record {where}: the id is also record {seen[1]}'s"
                                    f"{'' if seen[0] == origin else f' in {seen[0]}'} ({place}); ids must be unique "
                                    f"within a split (a repeated question would count twice in training or scoring)")
            out.append(rec)
    return out, raws[0][0]


def cross_split_duplicates(recs: list[dict]) -> int:
    """Ids that occur in more than one split (after ``assign_splits``). Counted and warned, not refused:
    per-split files often number their records from 0 each, so the same id in train and test is
    not always the same question; a reader of the table sees the count (docs/robustness.md)."""
    splits: dict[str, set] = {}
    for r in recs:
        if r.get("has_id", True):
            splits.setdefault(r["id"], set()).add(r["split"])
    return sum(1 for s in splits.values() if len(s) > 1)


def assign_splits(recs: list[dict], spec: dict) -> list[dict]:
    """Sources' own splits are kept (a source without test: its dev serves as test); missing
    splits are drawn from train by ``split.seed``; then the ``max_<split>`` caps."""
    cfg = spec.get("split") or {}
    rng = np.random.default_rng(cfg.get("seed", SPLIT_SEED))
    have = {r["split"] for r in recs if r["split"]}
    if not have:
        order = rng.permutation(len(recs))
        n_test = int(round(len(recs) * cfg.get("test_fraction", TEST_FRACTION)))
        for j, i in enumerate(order):
            recs[i]["split"] = "test" if j < n_test else "train"
    elif "test" not in have and "dev" in have:
        for r in recs:
            if r["split"] == "dev":
                r["split"] = "test"
    if "dev" not in {r["split"] for r in recs}:
        train = [i for i, r in enumerate(recs) if r["split"] == "train"]
        n_dev = int(round(len(train) * cfg.get("dev_fraction", DEV_FRACTION)))
        for i in np.asarray(train)[rng.permutation(len(train))[:n_dev]]:
            recs[i]["split"] = "dev"
    kept = []
    for split in SPLITS:
        part = [r for r in recs if r["split"] == split]
        cap = spec.get(f"max_{split}")
        if cap and len(part) > cap:
            keep = set(rng.permutation(len(part))[:cap].tolist())
            part = [r for j, r in enumerate(part) if j in keep]
        kept.extend(part)
    return kept


# --- tokenizers and the embedding table -------------------------------------------------------------

_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


class WordPieces:
    """The embedded MiniLM's tokenizer and word-piece embedding matrix (real pretrained vectors)."""

    def __init__(self, model_dir: str):
        from safetensors import safe_open
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model_dir)
        with safe_open(str(Path(model_dir) / "model.safetensors"), framework="pt") as f:
            name = next(k for k in f.keys() if k.endswith("word_embeddings.weight"))
            self.table = f.get_tensor(name).float()
        self.name = f"wordpiece:{Path(model_dir).name}"

    def encode(self, text: str) -> tuple[list[int], list[str], list[tuple[int, int]]]:
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        return ids, self.tok.convert_ids_to_tokens(ids), [tuple(o) for o in enc["offset_mapping"]]

    def piece_text(self, token: str) -> str:
        return token[2:] if token.startswith("##") else token


class WordVectors:
    """A word-vector file in the common text format (``word v1 v2 ...``; an optional ``count dim``
    first line, as fastText ``.vec``) with a word tokenizer; unknown words share one vector."""

    def __init__(self, path: str, lowercase: bool = True, max_words: int | None = None, encoding: str = "utf-8"):
        import torch

        p = Path(path)
        if not p.exists():
            raise UserError(f"{path}: word-vector file not found")
        self.lowercase, self.vocab, rows, dim = lowercase, {"[PAD]": 0, "[UNK]": 1}, [], None
        self.latin1 = {}
        # the one reader of text files: UTF-8 or a line-numbered refusal (Latin-1 lines on request)
        for n, line in iter_lines(p, "word-vector file", encoding, self.latin1,
                                  hint=", or set dynsan.embeddings.encoding: utf-8-or-latin-1 to read such lines as Latin-1"):
            parts = line.rstrip().split(" ")
            if n == 1 and len(parts) == 2 and all(x.isdigit() for x in parts):
                continue
            if len(parts) < 2:
                continue
            try:
                vec = [float(x) for x in parts[1:]]
            except ValueError:
                raise UserError(f"{path}: line {n}: not 'word number number ...'") from None
            if not all(math.isfinite(x) for x in vec):
                raise UserError(f"{path}: line {n}: a vector holds a number that is not finite (nan or inf)")
            if dim is None:
                dim = len(vec)
            elif len(vec) != dim:
                raise UserError(f"{path}: line {n}: {len(vec)} numbers, earlier lines have {dim}")
            word = parts[0].lower() if lowercase else parts[0]
            if word in self.vocab:
                continue
            self.vocab[word] = len(self.vocab)
            rows.append(vec)
            if max_words and len(rows) >= max_words:
                break
        if not rows:
            raise UserError(f"{path}: no word vectors found")
        self.table = torch.cat([torch.zeros(2, dim), torch.tensor(rows, dtype=torch.float32)])
        self.name = f"vectors:{p.name}"

    def encode(self, text: str):
        ids, toks, offs = [], [], []
        for m in _WORD.finditer(text):
            w = m.group().lower() if self.lowercase else m.group()
            ids.append(self.vocab.get(w, 1))
            toks.append(w)
            offs.append((m.start(), m.end()))
        return ids, toks, offs

    def piece_text(self, token: str) -> str:
        return token


def load_embeddings(emb: dict):
    source = emb.get("source", "embedded:minilm-l6")
    if source == "embedded:minilm-l6":
        from ..models.registry import minilm_l6_dir

        return WordPieces(str(minilm_l6_dir()))
    source = str(Path(source).expanduser())  # as the config check reads it
    if emb.get("format", "vec") == "vec" and not Path(source).is_dir():
        return WordVectors(source, emb.get("lowercase", True), emb.get("max_words"), emb.get("encoding", "utf-8"))
    return WordPieces(source)  # a local model folder with a tokenizer and model.safetensors


# --- distant supervision ------------------------------------------------------------------------------

def find_spans(tokens: list[str], answer_tokens: list[str]) -> list[tuple[int, int]]:
    """Every exact match (inclusive token positions) of ``answer_tokens`` in ``tokens``."""
    n = len(answer_tokens)
    if n == 0:
        return []
    return [(i, i + n - 1) for i in range(len(tokens) - n + 1) if tokens[i:i + n] == answer_tokens]


def answer_tokens(emb, answer: str) -> list[str]:
    """The answer normalised as SQuAD does (articles, punctuation, case), then tokenised."""
    norm = normalize_answer(answer) or answer.lower().strip()
    return [t.lower() for t in emb.encode(norm)[1]]


def _norm_passage_tokens(emb, toks: list[str], text: str, offs) -> list[str]:
    """Passage tokens in the answers' normalised form; punctuation and articles become '' (never match)."""
    out = []
    for t, (s, e) in zip(toks, offs):
        piece = normalize_answer(text[s:e]) if not t.startswith("##") else t.lower()
        out.append(t.lower() if piece else "")
    return out


# --- the prepared task ---------------------------------------------------------------------------------

def tokenise_task(recs: list[dict], emb, limits: dict, kind: str) -> tuple[pd.DataFrame, list, dict]:
    """Tokenise questions and passages once; spans by distant supervision; caps from ``limits``.

    Returns (frame, vocabulary, extras): the vocabulary is a list of (token string, id in the
    embedding table) per compact id from 2 on; compact id 0 is padding, 1 stands for a question or
    passage list with no token left (both zero vectors). Tokens are told apart by their string, so
    unknown words of a word-vector file share the unknown vector but keep their own characters.
    """
    index: dict[str, int] = {}
    vocab: list[tuple[str, int]] = []

    def compact(ids, toks):
        out = []
        for i, t in zip(ids, toks):
            if t not in index:
                index[t] = len(vocab) + 2
                vocab.append((t, int(i)))
            out.append(index[t])
        return out

    max_p, max_tok, max_total = limits["passages"], limits["passage_tokens"], limits["total_tokens"]
    rows, dropped, truncated = [], {s: 0 for s in SPLITS}, 0
    unanswerable = {s: 0 for s in SPLITS}
    for rec in recs:
        q_ids, q_toks, _ = emb.encode(rec["question"])
        q_ids = compact(q_ids[: limits["question_tokens"]], q_toks[: limits["question_tokens"]]) or [1]
        p_ids, p_starts, p_ends, p_texts, norm_toks, total = [], [], [], [], [], 0
        cut = len(rec["passages"]) > max_p
        for text in rec["passages"][:max_p]:
            ids, toks, offs = emb.encode(text)
            room = max_total - total
            if room <= 0:
                cut = True
                break
            cut = cut or len(ids) > min(max_tok, room)
            ids, toks, offs = ids[:max_tok], toks[:max_tok], offs[:max_tok]
            ids, toks, offs = ids[:room], toks[:room], offs[:room]
            if not ids:
                continue
            total += len(ids)
            p_ids.append(compact(ids, toks))
            p_starts.append([o[0] for o in offs])
            p_ends.append([o[1] for o in offs])
            p_texts.append(text)
            norm_toks.append(_norm_passage_tokens(emb, toks, text, offs))
        if not p_ids:
            p_ids, p_starts, p_ends, p_texts, norm_toks = [[1]], [[0]], [[0]], [""], [[""]]

        def spans_of(strings):
            sp = []
            for a in strings:
                at = answer_tokens(emb, a)
                for pi, toks in enumerate(norm_toks):
                    # match on the tokens that survive normalisation (no articles, no punctuation),
                    # then map back to passage positions
                    kept = [(j, t) for j, t in enumerate(toks) if t]
                    sp.extend((pi, kept[s][0], kept[e][0]) for s, e in find_spans([t for _, t in kept], at))
            return sorted(set(sp))

        row = {"id": rec["id"], "split": rec["split"], "question": rec["question"], "q_ids": q_ids,
               "passages": p_texts, "p_ids": p_ids, "p_starts": p_starts, "p_ends": p_ends,
               "answers": list(rec["answers"]), "candidates": list(rec.get("candidates") or []),
               "answer_index": -1}
        if kind == "candidates":
            mentions = [(ci, pi, s, e) for ci, c in enumerate(row["candidates"]) for pi, s, e in spans_of([c])]
            row["answer_index"] = row["candidates"].index(rec["answer"])
            answerable = any(m[0] == row["answer_index"] for m in mentions)
            row.update(mention_c=[m[0] for m in mentions], mention_p=[m[1] for m in mentions],
                       mention_s=[m[2] for m in mentions], mention_e=[m[3] for m in mentions])
            spans = [(pi, s, e) for ci, pi, s, e in mentions if ci == row["answer_index"]]
        else:
            spans = spans_of(rec["answers"])
            answerable = bool(spans)
            row.update(mention_c=[], mention_p=[], mention_s=[], mention_e=[])
        row.update(span_p=[s[0] for s in spans], span_s=[s[1] for s in spans], span_e=[s[2] for s in spans],
                   answerable=answerable)
        truncated += cut
        if not answerable:
            unanswerable[rec["split"]] += 1
            if rec["split"] == "train":
                dropped["train"] += 1
                continue
        rows.append(row)
    df = pd.DataFrame(rows)
    counts = {s: int((df["split"] == s).sum()) if len(df) else 0 for s in SPLITS}
    report = {"questions": counts, "dropped_train_without_span": dropped["train"], "truncated": int(truncated),
              "unanswerable": unanswerable, "vocabulary": len(vocab) + 2,
              "mean_passages": float(df["p_ids"].map(len).mean()) if len(df) else 0.0,
              "mean_tokens": float(df["p_ids"].map(lambda p: sum(map(len, p))).mean()) if len(df) else 0.0}
    return df, vocab, {"report": report}


def char_table(tokens: list[str], emb, max_chars: int) -> tuple[np.ndarray, list[str]]:
    """Character ids ``[V, max_chars]`` of each compact token (0 = padding); the character list."""
    chars: dict[str, int] = {}
    out = np.zeros((len(tokens), max_chars), dtype=np.int64)
    for v, tok in enumerate(tokens):
        for j, ch in enumerate(emb.piece_text(tok)[:max_chars] if tok else ""):
            out[v, j] = chars.setdefault(ch, len(chars) + 1)
    return out, list(chars)


# --- demo generator -----------------------------------------------------------------------------------

_FIRST = ["anna", "ben", "clara", "david", "emma", "frank", "grace", "henry", "irene", "jack", "karen", "leo",
          "maria", "nick", "olga", "peter", "rosa", "sam", "tina", "victor", "wendy", "oscar", "laura", "paul"]
_LAST = ["smith", "brown", "miller", "wilson", "moore", "taylor", "clark", "lewis", "walker", "hall", "young",
         "king", "wright", "hill", "green", "baker", "adams", "nelson", "carter", "mitchell"]
_CITIES = ["paris", "berlin", "madrid", "rome", "vienna", "prague", "oslo", "dublin", "lisbon", "athens", "cairo",
           "lima", "tokyo", "seoul", "delhi", "boston", "denver", "chicago", "houston", "toronto", "sydney", "moscow",
           "warsaw", "munich", "milan", "naples", "geneva", "zurich", "amsterdam", "brussels"]
_COUNTRIES = ["france", "spain", "italy", "germany", "norway", "sweden", "poland", "greece", "egypt", "peru",
              "chile", "japan", "kenya", "india", "canada", "mexico"]
_BORN = ["{p} was born in {c}.", "{p} is a native of {c}.", "the writer {p} grew up in {c}.",
         "{p} spent a childhood in {c}."]
_LIES = ["{c} is a city in {k}.", "{c} lies in {k}.", "the city of {c} is located in {k}.",
         "{c} belongs to {k}."]


_FILLER = ["the {a} {n} was {v} near the {n2}.", "people said the {n} looked {a} that year.",
           "a {a} {n} stood beside the {n2}.", "nobody {v} the {n} before the {a} season.",
           "the old {n} was {v} by the {a} {n2}.", "in spring the {n} and the {n2} were {a}."]
_ADJ = ["quiet", "bright", "narrow", "ancient", "busy", "cold", "green", "famous", "small", "empty", "wooden", "tall"]
_NOUN = ["market", "bridge", "river", "garden", "station", "harbour", "museum", "tower", "library", "square",
         "forest", "theatre", "school", "factory", "church", "valley"]
_VERB = ["painted", "repaired", "visited", "closed", "opened", "rebuilt", "crossed", "described"]
DEMOS = ("bridge", "bridge_candidates", "haystack", "haystack_candidates")


def _filler(rng, n: int) -> list[str]:
    """``n`` sentences of background text that names no person, city or country."""
    out = []
    for _ in range(n):
        t = _FILLER[rng.integers(len(_FILLER))]
        a, v = _ADJ[rng.integers(len(_ADJ))], _VERB[rng.integers(len(_VERB))]
        n1, n2 = (_NOUN[j] for j in rng.choice(len(_NOUN), 2, replace=False))
        out.append(t.format(a=a, v=v, n=n1, n2=n2))
    return out


def generate_haystack(kind: str, size: int, seed: int = 0, passages: int = 24, filler: int = 3,
                      candidates: int = 4) -> list[dict]:
    """The paper's regime in small: ``passages`` passages per question (half "PERSON was born in
    CITY.", half "CITY lies in COUNTRY.", each padded with ``filler`` sentences of background text),
    for ``passages / 2`` people of whom one is asked about. Half the questions ask for the city (one
    hop: the passage naming the person), half for the country (two hops: that passage, then the one
    about its city; the person and the country never share a passage). Every other person, city and
    country is a plausible wrong answer; the candidates (``haystack_candidates``) are the answer and
    ``candidates - 1`` of them. Deterministic from ``seed``."""
    rng = np.random.default_rng(seed)
    people_n = max(2, passages // 2)
    most = min(len(_FIRST), len(_LAST), len(_CITIES), len(_COUNTRIES))
    if people_n > most or candidates > people_n:
        raise UserError(f"dynsan demo {kind}: passages {passages} / candidates {candidates} out of range "
                        f"(at most {2 * most} passages, candidates <= passages / 2)")
    recs = []
    for i in range(size):
        people = [f"{_FIRST[a]} {_LAST[b]}" for a, b in zip(rng.choice(len(_FIRST), people_n, replace=False),
                                                               rng.choice(len(_LAST), people_n, replace=False))]
        cities = [_CITIES[j] for j in rng.choice(len(_CITIES), people_n, replace=False)]
        # distinct countries: every candidate is mentioned equally often (twice for a city, once for a
        # country), so counting mentions cannot find the answer
        countries = [_COUNTRIES[j] for j in rng.choice(len(_COUNTRIES), people_n, replace=False)]
        texts = []
        for p, c, k in zip(people, cities, countries):
            for fact in (_BORN[rng.integers(len(_BORN))].format(p=p, c=c), _LIES[rng.integers(len(_LIES))].format(c=c, k=k)):
                sentences = _filler(rng, filler)
                sentences.insert(int(rng.integers(len(sentences) + 1)), fact)
                texts.append(" ".join(sentences))
        texts = [texts[j] for j in rng.permutation(len(texts))]
        two_hop = bool(i % 2)
        pool = countries if two_hop else cities
        answer = pool[0]
        others = pool[1:]
        cands = [answer] + [others[j] for j in rng.choice(len(others), candidates - 1, replace=False)]
        question = f"in which {'country' if two_hop else 'city'} was {people[0]} born?"
        rec = {"id": f"{kind}-{i}", "question": question, "passages": texts, "answers": [answer], "split": None}
        if kind == "haystack_candidates":
            rec["candidates"] = [cands[j] for j in rng.permutation(len(cands))]
            rec["answer"] = answer
        recs.append(rec)
    return recs


def generate_demo(kind: str, size: int, seed: int = 0, **options) -> list[dict]:
    """Multi-passage questions that need two passages: passage A links a person to a city (the
    bridge), passage B gives the city's country; distractor pairs mention other people, cities and
    countries (the plausible wrong answers). Half the questions ask for the city (one hop), half for
    the country (two hops). ``bridge``: answer spans; ``bridge_candidates``: the same with the
    candidate answers listed (WikiHop style). Deterministic from ``seed``."""
    if kind in ("haystack", "haystack_candidates"):
        return generate_haystack(kind, size, seed, **options)
    if kind not in ("bridge", "bridge_candidates"):
        raise UserError(f"unknown dynsan demo '{kind}'; known: {', '.join(DEMOS)}")
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(size):
        people = [f"{_FIRST[a]} {_LAST[b]}" for a, b in zip(rng.choice(len(_FIRST), 3, replace=False),
                                                               rng.choice(len(_LAST), 3, replace=False))]
        cities = [_CITIES[j] for j in rng.choice(len(_CITIES), 3, replace=False)]
        countries = [_COUNTRIES[j] for j in rng.choice(len(_COUNTRIES), 3, replace=False)]
        passages = []
        for p, c, k in zip(people, cities, countries):
            passages.append(_BORN[rng.integers(len(_BORN))].format(p=p, c=c))
            passages.append(_LIES[rng.integers(len(_LIES))].format(c=c, k=k))
        order = rng.permutation(len(passages))
        passages = [passages[j] for j in order]
        two_hop = bool(i % 2)
        if two_hop:
            question, answer, cands = f"in which country was {people[0]} born?", countries[0], countries
        else:
            question, answer, cands = f"in which city was {people[0]} born?", cities[0], cities
        rec = {"id": f"{kind}-{i}", "question": question, "passages": passages, "answers": [answer], "split": None}
        if kind == "bridge_candidates":
            rec["candidates"] = [cands[j] for j in rng.permutation(3)]
            rec["answer"] = answer
        recs.append(rec)
    return recs
