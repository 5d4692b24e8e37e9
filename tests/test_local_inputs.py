"""Local files are inputs of the jobs that read them: a touched or edited data file, word-vector file
or knowledge-base file reruns what depends on it (issue #23), through Snakemake on tiny configs."""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

from helpers import TINY, outputs, snakemake

pytestmark = pytest.mark.workflow

CSV = "text,label\n" + "".join(f"{'a fine film' if i % 2 else 'a dull film'} number {i},{i % 2}\n" for i in range(40))
RECORDS = [{"id": str(i), "question": "where is paris ?", "passages": ["paris is in france .", "lima"],
            "answers": ["France"], "split": s} for i, s in enumerate(["train", "train", "dev", "test"])]
VEC = "4 2\nparis 1 0\nfrance 0 1\nin 0.5 0.5\nlima 2 2\n"


def _config() -> dict:
    cfg = copy.deepcopy(TINY)
    cfg.pop("projector")
    cfg["tasks"]["mine"] = {"source": {"path": "data/mine.csv"}, "text_fields": ["text"],
                            "label_names": ["negative", "positive"], "template": "{text_a} It was {mask}.",
                            "label_words": {"negative": ["bad"], "positive": ["good"]}}
    cfg["experiment"]["tasks"] = ["mine"]
    cfg["dynsan"] = {"run": {"tasks": ["qa"]}, "embeddings": {"source": "data/w.vec"},
                     "limits": {"passages": 2, "passage_tokens": 8, "total_tokens": 16, "question_tokens": 8},
                     "tasks": {"qa": {"kind": "span", "source": {"path": "data/qa.jsonl"}}}}
    return cfg


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    wd = tmp_path_factory.mktemp("wf-local")
    (wd / "data").mkdir()
    (wd / "data" / "mine.csv").write_text(CSV)
    (wd / "data" / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n")
    (wd / "data" / "w.vec").write_text(VEC)
    (wd / "config.yaml").write_text(yaml.safe_dump(_config()))
    return wd


DATA, DYN = "results/data/mine/data.parquet", "results/dynsan/data/qa/tokens.parquet"


def _touch(path: Path) -> None:
    os.utime(path, None)  # now, newer than every output: what `touch` or an editor's save does


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k in after if before.get(k) != after[k]}


def test_a_touched_or_edited_data_file_reruns_its_jobs(workdir):
    snakemake(workdir, targets=[DATA, DYN])
    first = outputs(workdir)
    assert len(pd.read_parquet(workdir / DATA)) == 40
    snakemake(workdir, targets=[DATA, DYN])  # nothing changed: nothing runs
    assert outputs(workdir) == first

    # touched, content unchanged: newer than the outputs, but Snakemake compares the checksum it
    # recorded for an input file (up to 1 MB) and reruns nothing: the results are not stale
    _touch(workdir / "data" / "mine.csv")
    snakemake(workdir, targets=[DATA, DYN])
    assert outputs(workdir) == first

    (workdir / "data" / "mine.csv").write_text(CSV + "".join(f"one more {i},1\n" for i in range(6)))
    _touch(workdir / "data" / "mine.csv")
    snakemake(workdir, targets=[DATA, DYN])  # edited: the task's data job reruns, with the new rows; DynSAN's not
    edited = outputs(workdir)
    assert len(pd.read_parquet(workdir / DATA)) == 46
    assert _changed(first, edited) == {DATA}

    new = workdir / "data" / "w.vec.new"  # the word vectors replaced by another file: DynSAN's data job reruns
    new.write_text(VEC.replace("lima 2 2", "lima 2 3"))
    os.replace(new, workdir / "data" / "w.vec")
    snakemake(workdir, targets=[DATA, DYN])
    after = outputs(workdir)
    assert DYN in _changed(edited, after) and DATA not in _changed(edited, after)

    (workdir / "data" / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in RECORDS + [dict(RECORDS[0], id="9")])
                                               + "\n")
    snakemake(workdir, targets=[DATA, DYN])
    assert len(pd.read_parquet(workdir / DYN)) == len(RECORDS) + 1


def test_planned_inputs(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "workflow"))
    from planning.files import dynsan_task_files, embedding_files, task_files
    from planning.kpt import kb_inputs

    cfg = _config()
    cfg["dynsan"]["tasks"]["split"] = {"source": {"path": {"train": "a.jsonl", "test": "b.jsonl"}}}
    cfg["kpt"] = {"knowledge_bases": {"f": {"source": "file", "path": "kb/x.txt"},
                                      "wn": {"source": "wordnet", "path": str(tmp_path)},
                                      "gone": {"source": "wordnet", "path": str(tmp_path / "none")}}}
    (tmp_path / "data.noun").write_text("")
    (tmp_path / "index.noun").write_text("")
    assert task_files(cfg, "mine") == ["data/mine.csv"] and task_files(cfg, "movies") == []
    assert dynsan_task_files(cfg, "split") == ["a.jsonl", "b.jsonl", "data/w.vec"]
    cfg["dynsan"]["embeddings"]["source"] = "embedded:minilm-l6"
    assert embedding_files(cfg) == []
    cfg["dynsan"]["embeddings"]["source"] = str(tmp_path)  # a model folder: its files
    assert embedding_files(cfg) == [str(tmp_path / "data.noun"), str(tmp_path / "index.noun")]
    from pipeline_steps.kpt.config import BLOCKLIST

    assert kb_inputs(cfg, "f") == ["kb/x.txt", str(BLOCKLIST)]  # the word list and the shipped blocklist
    cfg["kpt"]["knowledge_bases"]["f"]["blocklist"] = False
    assert kb_inputs(cfg, "f") == ["kb/x.txt"]
    cfg["kpt"]["knowledge_bases"]["f"]["blocklist"] = "lists/mine.txt"
    assert kb_inputs(cfg, "f") == ["kb/x.txt", "lists/mine.txt"]
    assert kb_inputs(cfg, "wn") == [str(tmp_path / "data.noun"), str(tmp_path / "index.noun"), str(BLOCKLIST)]
    assert kb_inputs(cfg, "gone") == [str(BLOCKLIST)]  # no WordNet there: the job names the folder
