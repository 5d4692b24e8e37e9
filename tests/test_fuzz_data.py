"""Property-based data fuzzing of the data stage (issue #12; docs/robustness.md).

Generated CSV/TSV/JSONL/Parquet files: a valid base of 30 rows with up to four mistakes (missing,
extra, renamed or duplicated columns, empty or missing text, NaN, mixed types and labels outside
the list in the label column, one class, huge rows, odd split names), written in one of several
encodings (UTF-8, with a BOM, Latin-1, UTF-16), or an empty or garbage file.

Property: ``prepare.run`` writes a valid table (schema, dtypes, labels in range, three non-empty
splits, two classes in train), or raises ``UserError`` with one line that starts with the file's
path (and names the row or column where it knows it); either way no output and no temporary file
is left on failure. No other exception escapes.
"""
from __future__ import annotations

import copy
import json
import math
import re

import pandas as pd
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import event, given, note, strategies as st  # noqa: E402

from pipeline_steps.config import load_config  # noqa: E402
from pipeline_steps.specs import task_spec
from pipeline_steps.data import prepare  # noqa: E402
from pipeline_steps.errors import UserError  # noqa: E402
from pipeline_steps.io import read_parquet  # noqa: E402

NAMES = ["negative", "positive"]
TEXTS = st.one_of(st.sampled_from(["", " ", "a, \"quoted\" text", "line\nbreak", "\u00e9\u6f22\U0001f642", "x" * 20000,
                                   "tab\there", "=1+2", "null", "NaN"]), st.text(max_size=15))
LABELS = st.one_of(st.sampled_from(["negative", "positive", " positive ", "Positive", 0, 1, 2, -1, "1", "1.0", 1.0,
                                    True, None, math.nan, "maybe", "", "line\nbreak label", "x" * 5000]),
                   st.text(max_size=8), st.integers(), st.floats())


def base_rows(n: int = 30) -> list[dict]:
    return [{"text": f"{['a bad', 'a good'][i % 2]} movie number {i}", "label": NAMES[i % 2]} for i in range(n)]


@st.composite
def frames(draw) -> tuple[list[dict], list[str]]:
    """Rows (dicts) and a record of the mistakes made, for the report of a failing example."""
    rows, made = base_rows(draw(st.sampled_from([30, 30, 6, 3, 1]))), []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["text", "label", "label", "drop_col", "extra_col", "one_class", "huge",
                                     "split", "dup_rows", "no_rows"]))
        i = draw(st.integers(0, max(len(rows) - 1, 0)))
        if kind == "text" and rows:
            rows[i]["text"] = draw(TEXTS)
        elif kind == "label" and rows:
            rows[i]["label"] = draw(LABELS)
        elif kind == "drop_col":
            col = draw(st.sampled_from(["text", "label"]))
            for r in rows:
                r.pop(col, None)
        elif kind == "extra_col":
            for r in rows:
                r["extra"] = draw(st.sampled_from([1, "x", None]))
        elif kind == "one_class":
            for r in rows:
                r["label"] = "positive"
        elif kind == "huge" and rows:
            rows[i]["text"] = "word " * 50000
        elif kind == "split":
            values = draw(st.lists(st.sampled_from(["train", "dev", "validation", "test", "TEST ", "holdout", ""]),
                                   min_size=1, max_size=3))
            for j, r in enumerate(rows):
                r["part"] = values[j % len(values)]
        elif kind == "dup_rows":
            rows = rows + copy.deepcopy(rows[:5])
        elif kind == "no_rows":
            rows = []
        made.append(kind)
    return rows, made


def _parquet_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Parquet columns hold one type: a mixed column is written as text (None stays null)."""
    for col in df.columns:
        kinds = {type(v) for v in df[col] if v is not None and not (isinstance(v, float) and math.isnan(v))}
        if len(kinds) > 1:
            df[col] = [None if v is None else str(v) for v in df[col]]
    return df


def encode(rows: list[dict], fmt: str, encoding: str) -> bytes:
    df = pd.DataFrame(rows)
    if fmt == "parquet":
        import io

        buf = io.BytesIO()
        _parquet_safe(df).to_parquet(buf, index=False)
        return buf.getvalue()
    if fmt == "jsonl":
        text = df.to_json(orient="records", lines=True, force_ascii=False) if len(df) else ""
    else:
        text = df.to_csv(index=False, sep="," if fmt == "csv" else "\t") if len(df.columns) else ""
    return text.encode(encoding, errors="replace")


FILES = st.one_of(
    st.tuples(frames(), st.sampled_from(["csv", "tsv", "jsonl", "parquet"]),
              st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "latin-1", "utf-16"])),
    st.tuples(st.just(([], ["raw bytes"])), st.sampled_from(["csv", "jsonl", "parquet"]),
              st.sampled_from([b"", b"\n", b"PAR1garbagePAR1", b"\xff\xfe\x00", b"[1, 2]\n", b"text,label\n",
                               b"{\"text\": \"a\"}\n{broken\n", b"1\n2\n", b"\"unclosed,label\n"])),
)


@pytest.fixture(scope="module")
def base_spec(minimal_config_module) -> dict:
    return task_spec(load_config(minimal_config_module), "t")


@pytest.fixture(scope="module")
def minimal_config_module() -> dict:
    return {"models": {"m": {"source": "embedded:minilm-l6"}},
            "tasks": {"t": {"source": {"demo": "movie_reviews", "size": 60}, "text_fields": ["text"],
                            "label_names": NAMES, "template": "{text_a} It was {mask}.",
                            "label_words": {"negative": ["bad"], "positive": ["good"]}}},
            "experiment": {"tasks": ["t"], "models": ["m"], "seeds": [1]}}


def check_valid_table(path, spec) -> None:
    df = read_parquet(path)
    assert list(df.columns) == ["idx", "text_a", "text_b", "label", "split"]
    assert str(df["idx"].dtype) == "int64" and str(df["label"].dtype) == "int64"
    assert df["idx"].is_unique and df["label"].between(0, len(spec["label_names"]) - 1).all()
    assert set(df["split"]) == {"train", "dev", "test"}
    assert df[df.split == "train"]["label"].nunique() >= 2
    assert df["text_a"].map(lambda t: isinstance(t, str) and t.strip() != "").all()


@given(FILES, st.booleans())
def test_fuzzed_data_gives_a_valid_table_or_one_error_line(base_spec, tmp_path_factory, case, split_field):
    (rows, made), fmt, payload = case
    note(f"mistakes: {made}, format {fmt}")
    folder = tmp_path_factory.mktemp("fuzz-data")
    src = folder / f"data.{fmt}"
    src.write_bytes(payload if isinstance(payload, bytes) else encode(rows, fmt, payload))
    spec = copy.deepcopy(base_spec)
    spec["source"] = {"path": str(src), "split_field": "part" if split_field else None}
    out = folder / "out" / "data.parquet"
    try:
        prepare.run(spec, str(out))
    except UserError as e:
        msg = str(e)
        note(msg)
        assert msg.startswith(str(src)) and "\n" not in msg and len(msg) < 700, msg
        assert not out.exists() and not list(folder.rglob(".data.parquet*")), "a failed run left an output"
        event("refused: " + re.sub(r"\d+", "N", msg[len(str(src)) + 2:])[:30])
        return
    check_valid_table(out, spec)
    event("accepted")


@pytest.mark.parametrize("content, fragment", [
    ("\ufefftext,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(40)), None),  # BOM: read as plain UTF-8
    ('{"text": "a", "label": 0}\n{"text": "b", "label": null}\n', "row 1"),       # the null row, not row 0
])
def test_bom_and_missing_label_rows(base_spec, tmp_path, content, fragment):
    suffix = ".jsonl" if content.startswith("{") else ".csv"
    src = tmp_path / f"d{suffix}"
    src.write_text(content, encoding="utf-8")
    spec = {**copy.deepcopy(base_spec), "source": {"path": str(src), "split_field": None}}
    if fragment is None:
        assert len(prepare.prepare_task(spec)) == 40
    else:
        with pytest.raises(UserError, match=fragment):
            prepare.prepare_task(spec)


# --- the KPT and DynSAN files (issue 21) ----------------------------------------------------------------
# Knowledge-base word lists, DynSAN records (JSONL, the qangaroo JSON list, MRQA) and word-vector files,
# built from valid pieces and odd ones (other JSON types, SQuAD layouts, duplicate ids, separators,
# bytes that are not UTF-8, BOMs, NaN). Property: the reader returns what its callers rely on, or
# raises one UserError line that starts with the file's path. Nothing else escapes.

from pipeline_steps.dynsan import data as dyn_data  # noqa: E402
from pipeline_steps.kpt.config import read_kb_file  # noqa: E402

KB_CLASSES = ["negative", "positive", "neutral"]
KB_WORDS = st.one_of(st.sampled_from(["good", "bad", " fine ", "so-so", "très bien", "great", "awful", "ok"]),
                     st.sampled_from(["", " ", ",", ";", "|", "\t", "a,b", "x" * 300, "\u6f22\u5b57", "#", "null"]),
                     st.text(max_size=8))
BAD_BYTES = [b"", b"\xe9", b"\xff\xfe", b"\xef\xbb\xbf", b"\x00", b"\r", b"\xc3"]


def refused_in_one_line(path, err: UserError, width: int) -> None:
    """A file refused as the rule asks: one line that names the file first, of bounded length; the
    hypothesis event is the message's kind (digits folded) after the path."""
    msg = str(err)
    note(msg)
    assert msg.startswith(str(path)) and "\n" not in msg and len(msg) < 700, msg
    event("refused: " + re.sub(r"\d+", "N", msg[len(str(path)) + 2:])[:width])


def _with_bytes(text: str, draw) -> bytes:
    """The text as UTF-8, sometimes with odd bytes spliced in at a line start or end."""
    raw = text.encode("utf-8")
    if draw(st.integers(0, 3)) == 0:
        lines = raw.split(b"\n")
        i = draw(st.integers(0, max(len(lines) - 1, 0)))
        lines[i] = draw(st.sampled_from(BAD_BYTES)) + lines[i] + draw(st.sampled_from(BAD_BYTES))
        raw = b"\n".join(lines)
    return raw


@st.composite
def kb_files(draw) -> tuple[str, bytes]:
    if draw(st.booleans()):  # text: one line of comma-separated words per class
        n = draw(st.sampled_from([3, 3, 3, 3, 2, 4, 0]))
        lines = [",".join(draw(st.lists(KB_WORDS, min_size=draw(st.sampled_from([1, 1, 0])), max_size=4)))
                 for _ in range(n)]
        return ".txt", _with_bytes("\n".join(lines) + draw(st.sampled_from(["", "\n", "\n\n"])), draw)
    names = KB_CLASSES if draw(st.booleans()) else draw(st.lists(st.sampled_from(KB_CLASSES + ["other"]), unique=True,
                                                                  max_size=4))
    obj = {c: draw(st.one_of(st.lists(KB_WORDS, min_size=1, max_size=4), st.lists(KB_WORDS, max_size=4), KB_WORDS,
                             st.sampled_from([None, 1, {"w": 1}, [["x"]]]))) for c in names}
    top = draw(st.sampled_from(["obj", "obj", "obj", "list", "broken"]))
    text = json.dumps(obj) if top == "obj" else json.dumps(list(obj)) if top == "list" else json.dumps(obj)[:-1]
    return ".json", _with_bytes(text, draw)


@given(kb_files())
def test_fuzzed_kb_file_gives_words_per_class_or_one_error_line(tmp_path_factory, case):
    suffix, raw = case
    path = tmp_path_factory.mktemp("kb") / f"kb{suffix}"
    path.write_bytes(raw)
    try:
        words = read_kb_file(path, KB_CLASSES)
    except UserError as e:
        refused_in_one_line(path, e, 24)
        return
    assert list(words) == KB_CLASSES
    for ws in words.values():  # every class has words, none blank or made of separators only
        assert ws and all(isinstance(w, str) and w.strip() and w.strip(" ,;|\t") for w in ws), words
    event("accepted")


RECORD_VALUES = st.one_of(
    st.sampled_from(["anna", "", " ", None, 0, 1.5, True, [], ["anna"], ["anna", 3], [[]], {}, {"x": 1},
                     {"text": ["anna"], "answer_start": [0]}, {"text": "anna"}, {"text": [1]},
                     [{"text": "anna", "answer_start": 0}], [{"text": 2}], ["", " "], ["p one", ""], "train", "TEST",
                     "holdout", "q1"]),
    st.text(max_size=6))
FIELDS = ["id", "question", "passages", "answers", "split", "candidates", "answer"]


def _record(i: int, kind: str) -> dict:
    rec = {"id": f"q{i}", "question": f"where was anna {i} born?", "passages": ["anna was born in paris .", "lima"],
           "answers": ["paris"], "split": ["train", "dev", "test"][i % 3]}
    if kind == "candidates":
        rec.update(candidates=["paris", "lima"], answer="paris")
    return rec


@st.composite
def dynsan_files(draw) -> tuple[str, str, bytes]:
    kind = draw(st.sampled_from(["span", "candidates"]))
    recs = [_record(i, kind) for i in range(draw(st.sampled_from([6, 6, 2, 1])))]
    for _ in range(draw(st.integers(0, 3))):
        what = draw(st.sampled_from(["field", "field", "drop", "dup_id", "not_object"]))
        i = draw(st.integers(0, len(recs) - 1))
        if not isinstance(recs[i], dict) or not isinstance(recs[0], dict):
            continue
        if what == "field":
            recs[i][draw(st.sampled_from(FIELDS))] = draw(RECORD_VALUES)
        elif what == "drop":
            recs[i].pop(draw(st.sampled_from(FIELDS)), None)
        elif what == "dup_id":
            recs[i]["id"] = recs[0].get("id", "q0")
        else:
            recs[i] = draw(st.sampled_from([[1], "text", 3, None]))
    layout = draw(st.sampled_from(["jsonl", "jsonl", "qangaroo", "mrqa"]))
    if layout == "qangaroo":
        kind = "candidates"
        text = json.dumps([{"id": r.get("id"), "query": r.get("question"), "supports": r.get("passages"),
                            "candidates": r.get("candidates", ["paris"]), "answer": r.get("answer", "paris")}
                           if isinstance(r, dict) else r for r in recs])
        return kind, ".json", _with_bytes(text, draw)
    if layout == "mrqa":
        kind = "span"
        lines = [{"header": {"dataset": "x"}}] + [
            {"context": " [PAR] ".join(r["passages"]) if isinstance(r, dict) and isinstance(r.get("passages"), list)
             and all(isinstance(p, str) for p in r["passages"]) else (r.get("passages") if isinstance(r, dict) else r),
             "qas": [{"qid": r.get("id"), "question": r.get("question"), "answers": r.get("answers")}]
             if isinstance(r, dict) else r} for r in recs]
        return kind, ".jsonl", _with_bytes("".join(json.dumps(x) + "\n" for x in lines), draw)
    return kind, ".jsonl", _with_bytes("".join(json.dumps(r) + "\n" for r in recs), draw)


@given(dynsan_files())
def test_fuzzed_dynsan_records_are_valid_or_one_error_line(tmp_path_factory, case):
    kind, suffix, raw = case
    path = tmp_path_factory.mktemp("dyn") / f"d{suffix}"
    path.write_bytes(raw)
    try:
        recs, _ = dyn_data.load_records({"name": "t", "kind": kind, "source": {"path": str(path)}})
    except UserError as e:
        refused_in_one_line(path, e, 32)
        return
    seen = set()
    for r in recs:  # what tokenise_task relies on
        assert isinstance(r["question"], str) and r["question"].strip()
        assert r["passages"] and all(isinstance(p, str) and p.strip() for p in r["passages"])
        assert r["answers"] and all(isinstance(a, str) and a.strip() for a in r["answers"])
        assert r["split"] in (None, "train", "dev", "test")
        if kind == "candidates":
            assert r["answer"] in r["candidates"] and all(isinstance(c, str) for c in r["candidates"])
        if r["has_id"]:
            assert (r["split"], r["id"]) not in seen, "a duplicate id within a split was kept"
            seen.add((r["split"], r["id"]))
    event("accepted")


NUMS = st.one_of(st.floats(-3, 3).map(lambda x: f"{x:.3f}"), st.sampled_from(["nan", "inf", "-inf", "1e400", "x", "",
                                                                            "0x1", "1,5", "--1"]))


@st.composite
def vector_files(draw) -> bytes:
    dim = draw(st.integers(1, 4))
    lines = []
    if draw(st.booleans()):
        lines.append(draw(st.sampled_from([f"5 {dim}", "5", "a b", f"{dim} 5 1"])))
    for i in range(draw(st.integers(0, 6))):
        word = draw(st.sampled_from(["paris", "Paris", "lima", "caf\u00e9", "w" * 200, "\u6f22", "", "paris"]))
        numbers = [f"{draw(st.floats(-1, 1)):.3f}" for _ in range(dim)]
        if draw(st.integers(0, 4)) == 0:
            numbers[draw(st.integers(0, dim - 1))] = draw(NUMS)
        if draw(st.integers(0, 5)) == 0:
            numbers = numbers[:-1] if draw(st.booleans()) else numbers + ["0.1"]
        lines.append(" ".join([word] + numbers) + draw(st.sampled_from(["", " ", "\r"])))
    return _with_bytes("\n".join(lines) + "\n", draw)


@given(vector_files(), st.sampled_from(["utf-8", "utf-8-or-latin-1"]), st.sampled_from([None, 2]))
def test_fuzzed_word_vectors_give_a_finite_table_or_one_error_line(tmp_path_factory, raw, encoding, max_words):
    import torch

    path = tmp_path_factory.mktemp("vec") / "w.vec"
    path.write_bytes(raw)
    try:
        wv = dyn_data.WordVectors(str(path), max_words=max_words, encoding=encoding)
    except UserError as e:
        refused_in_one_line(path, e, 28)
        return
    assert wv.table.shape[0] == len(wv.vocab) and bool(torch.isfinite(wv.table).all())
    assert max_words is None or len(wv.vocab) <= max_words + 2
    event("accepted")
