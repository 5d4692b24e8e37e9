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
import math
import re

import pandas as pd
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import event, given, note, strategies as st  # noqa: E402

from pipeline_steps.config import load_config, task_spec  # noqa: E402
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
