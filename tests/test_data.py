import copy
import hashlib

import pandas as pd
import pytest

from pipeline_steps.config import load_config
from pipeline_steps.specs import task_spec
from pipeline_steps.data import demo, prepare
from pipeline_steps.errors import UserError
from pipeline_steps.io import parquet_provenance, read_parquet


def spec(minimal_config, **changes):
    task = minimal_config["tasks"]["t"]
    task.update(changes)
    return task_spec(load_config(minimal_config), "t")


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_demo_generators_are_deterministic_and_distinct():
    a, b = demo.generate("movie_reviews", 100), demo.generate("movie_reviews", 100)
    assert a.equals(b)
    assert not a["text"].equals(demo.generate("product_reviews", 100)["text"])
    nli = demo.generate("nli", 90)
    assert set(nli.columns) == {"premise", "hypothesis", "label"}
    assert set(nli["label"]) == {"entailment", "neutral", "contradiction"}
    assert demo.generate("topics", 200)["label"].nunique() == 4


def test_prepare_schema_splits_and_determinism(minimal_config, tmp_path):
    s = spec(minimal_config, source={"demo": "movie_reviews", "size": 200})
    out1, out2 = tmp_path / "a.parquet", tmp_path / "b.parquet"
    prepare.run(s, out1)
    prepare.run(s, out2)
    assert sha(out1) == sha(out2)  # byte-identical: Snakemake checksums skip unchanged work
    df = read_parquet(out1)
    assert list(df.columns) == ["idx", "text_a", "text_b", "label", "split"]
    assert str(df["idx"].dtype) == "int64" and str(df["label"].dtype) == "int64"
    counts = df["split"].value_counts()
    assert counts["test"] == 50 and counts["dev"] == 22 and counts["train"] == 128
    assert df["idx"].is_unique and (df["text_b"] == "").all()
    assert parquet_provenance(out1)["task"] == "t"
    # another split seed gives other splits
    other = prepare.prepare_task(spec(minimal_config, source={"demo": "movie_reviews", "size": 200},
                                      split={"seed": 7}))
    assert set(other[other.split == "test"]["idx"]) != set(df[df.split == "test"]["idx"])


def test_k_shot_and_caps(minimal_config):
    df = prepare.prepare_task(spec(minimal_config, source={"demo": "topics", "size": 400}, k_shot=4, max_test=40,
                                   label_names=["sports", "science", "business", "politics"],
                                   label_words={k: [k] for k in ["sports", "science", "business", "politics"]},
                                   template="{mask} news: {text_a}"))
    train = df[df.split == "train"]
    assert train["label"].value_counts().to_dict() == {0: 4, 1: 4, 2: 4, 3: 4}
    assert len(df[df.split == "dev"]) == 16
    assert abs(len(df[df.split == "test"]) - 40) <= 2


def test_k_shot_shortfall_is_counted_warned_and_stored(minimal_config, tmp_path, caplog):
    plain = copy.deepcopy(minimal_config)  # spec() changes its argument
    # train: 10 + 10, dev: 3 negative and no positive, test: 5 + 5; k_shot=8: dev lacks 5 + 8
    parts = [("train", "negative", 10), ("train", "positive", 10), ("dev", "negative", 3),
             ("test", "negative", 5), ("test", "positive", 5)]
    rows = [{"sentence": f"{split} {label} {i}", "y": label, "part": split}
            for split, label, n in parts for i in range(n)]
    p = tmp_path / "d.csv"
    pd.DataFrame(rows).to_csv(p, index=False)
    s = spec(minimal_config, source={"path": str(p), "split_field": "part"}, text_fields=["sentence"],
             label_field="y", k_shot=8)
    with caplog.at_level("WARNING", logger="pipeline_steps.data.prepare"):
        df = prepare.run(s, tmp_path / "out.parquet")
    assert df["split"].value_counts().to_dict() == {"train": 16, "dev": 3, "test": 10}
    prov = parquet_provenance(tmp_path / "out.parquet")
    assert prov["k_shot_shortfall"] == 13 and prov["k_shot_shortfall_by_split"] == {"train": 0, "dev": 13}
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "task t: dev split: class 'negative' has 3 example(s), fewer than k_shot=8: all are kept (5 short)",
        "task t: dev split: class 'positive' has 0 example(s), fewer than k_shot=8: all are kept (8 short)",
        "task t: 13 examples short of k_shot=8 per class (train 0, dev 13); fewer were kept"], messages
    # the count changes nothing in the rows kept
    short = {}
    assert prepare.prepare_task(s, short).equals(df) and short == {"train": 0, "dev": 13}
    # enough examples, or no k_shot: 0 and no warning
    caplog.clear()
    with caplog.at_level("WARNING", logger="pipeline_steps.data.prepare"):
        prepare.run(spec(copy.deepcopy(plain), k_shot=None), tmp_path / "plain.parquet")
        prepare.run(spec(copy.deepcopy(plain), k_shot=2), tmp_path / "two.parquet")
    assert parquet_provenance(tmp_path / "plain.parquet")["k_shot_shortfall"] == 0
    assert parquet_provenance(tmp_path / "two.parquet")["k_shot_shortfall_by_split"] == {"train": 0, "dev": 0}
    assert not caplog.records


def test_local_csv_with_split_column_and_string_labels(minimal_config, tmp_path):
    rows = [{"sentence": f"text {i}", "y": ["negative", "positive"][i % 2], "part": ["train", "validation", "test"][i % 3]}
            for i in range(60)]
    p = tmp_path / "d.csv"
    pd.DataFrame(rows).to_csv(p, index=False)
    df = prepare.prepare_task(spec(minimal_config, source={"path": str(p), "split_field": "part"},
                                   text_fields=["sentence"], label_field="y"))
    assert df["split"].value_counts().to_dict() == {"train": 20, "dev": 20, "test": 20}
    assert df.loc[df.idx == 1, "label"].item() == 1


def test_jsonl_and_parquet_sources_with_int_labels(minimal_config, tmp_path):
    frame = pd.DataFrame({"a": [f"premise {i}" for i in range(80)], "b": [f"hyp {i}" for i in range(80)],
                          "label": [i % 2 for i in range(80)]})
    frame.to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    frame.to_parquet(tmp_path / "d.parquet")
    kw = dict(text_fields=["a", "b"], template="{text_a} ? {mask} , {text_b}")
    j = prepare.prepare_task(spec(minimal_config, source={"path": str(tmp_path / "d.jsonl")}, **kw))
    q = prepare.prepare_task(spec(minimal_config, source={"path": str(tmp_path / "d.parquet")}, **kw))
    pd.testing.assert_frame_equal(j, q)
    assert (j["text_b"].str.startswith("hyp")).all()


def _bad(minimal_config, tmp_path, content: bytes | str, *fragments, suffix=".csv", **changes):
    p = tmp_path / f"bad{suffix}"
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp_path / "out.parquet"
    with pytest.raises(UserError) as e:
        prepare.run(spec(minimal_config, source={"path": str(p)}, **changes), out)
    assert not out.exists() and not list(tmp_path.glob(".out.parquet*"))  # no partial output
    for f in fragments:
        assert f in str(e.value), str(e.value)
    return str(e.value)


def test_bad_missing_column(minimal_config, tmp_path):
    _bad(minimal_config, tmp_path, "sentence,label\nhi,0\n", "bad.csv", "missing column", "'text'")


def test_bad_unknown_label(minimal_config, tmp_path):
    csv = "text,label\n" + "".join(f"t{i},{['negative', 'positive'][i % 2]}\n" for i in range(20)) + "odd,meh\n"
    _bad(minimal_config, tmp_path, csv, "bad.csv", "'meh'", "label_names")


def test_bad_label_index_out_of_range(minimal_config, tmp_path):
    _bad(minimal_config, tmp_path, "text,label\na,0\nb,1\nc,5\n", "'5'")


def test_bad_encoding(minimal_config, tmp_path):
    _bad(minimal_config, tmp_path, "text,label\ncaf\xe9,0\n".encode("latin-1"), "bad.csv", "UTF-8")


def test_bad_empty_file(minimal_config, tmp_path):
    _bad(minimal_config, tmp_path, "", "bad.csv", "empty")


def test_bad_empty_split(minimal_config, tmp_path):
    csv = "text,label,s\n" + "".join(f"t{i},{i % 2},test\n" for i in range(20))
    p = tmp_path / "bad.csv"
    p.write_text(csv)
    with pytest.raises(UserError) as e:
        prepare.prepare_task(spec(minimal_config, source={"path": str(p), "split_field": "s"}))
    assert "bad.csv" in str(e.value) and "train split is empty" in str(e.value)


def test_bad_single_class(minimal_config, tmp_path):
    _bad(minimal_config, tmp_path, "text,label\n" + "".join(f"t{i},1\n" for i in range(30)), "single class")


def test_bad_empty_text(minimal_config, tmp_path):
    _bad(minimal_config, tmp_path, "text,label\na,0\n,1\nc,1\n", "row 1", "empty text")


def test_bad_unreadable_parquet(minimal_config, tmp_path):
    _bad(minimal_config, tmp_path, b"PAR1 this is not parquet", "bad.parquet", "parquet", suffix=".parquet")


def test_bad_unknown_extension(minimal_config, tmp_path):
    _bad(minimal_config, tmp_path, "x", "source.format", suffix=".txt")


def test_bad_split_names(minimal_config, tmp_path):
    csv = "text,label,s\n" + "".join(f"t{i},{i % 2},{['train', 'holdout'][i % 2]}\n" for i in range(20))
    p = tmp_path / "bad.csv"
    p.write_text(csv)
    with pytest.raises(UserError, match="holdout"):
        prepare.prepare_task(spec(minimal_config, source={"path": str(p), "split_field": "s"}))


def test_ignore_labels_drops_unlabeled_rows(minimal_config, tmp_path):
    csv = "text,label\n" + "".join(f"t{i},{[0, 1, -1][i % 3]}\n" for i in range(60))
    p = tmp_path / "d.csv"
    p.write_text(csv)
    df = prepare.prepare_task(spec(minimal_config, source={"path": str(p)}, ignore_labels=[-1]))
    assert len(df) == 40 and set(df["label"]) == {0, 1}
