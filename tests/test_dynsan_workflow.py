"""The DynSAN stage end to end through Snakemake on a tiny config: artifacts, a no-op re-run,
incremental re-runs, and a bad data file failing its job with a message and no output."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from test_workflow import TINY, _cli, outputs, snakemake

pytestmark = pytest.mark.workflow

CONFIG = copy.deepcopy(TINY)
CONFIG["experiment"]["tasks"] = ["movies"]
CONFIG["dynsan"] = {
    "run": {"tasks": ["bridge", "bridge_candidates"], "variants": ["dynsan", "full_attention"], "gate_examples": 2},
    "limits": {"passages": 6, "passage_tokens": 16, "total_tokens": 80},
    "model": {"d": 8, "heads": 2, "k": 4, "blocks": 1, "char_dim": 3, "char_channels": 4, "max_chars": 6},
    "train": {"steps": 4, "batch_size": 4, "eval_every": 2, "checkpoint_every": 2, "warmup_steps": 1,
              "ema_decay": 0.9, "lr": 0.01, "max_answer_length": 3},
    "efficiency": {"lengths": [16, 32], "k": 4, "d": 8, "heads": 2, "blocks": 1, "steps": 1},
    "tasks": {"bridge": {"kind": "span", "source": {"demo": "bridge", "size": 40}},
              "bridge_candidates": {"kind": "candidates", "source": {"demo": "bridge_candidates", "size": 40}}},
}
RUN = "results/dynsan/runs/{}/{}/seed1"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    wd = tmp_path_factory.mktemp("wf-dynsan")
    (wd / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    return wd


def test_dynsan_target_then_incremental_changes(workdir):
    snakemake(workdir, targets=["dynsan"])
    table = pd.read_parquet(workdir / "results/tables/dynsan.parquet")
    assert set(zip(table["task"], table["variant"])) == {
        ("bridge", "dynsan"), ("bridge", "full_attention"), ("bridge", "baseline_most_frequent"),
        ("bridge_candidates", "dynsan"), ("bridge_candidates", "full_attention"),
        ("bridge_candidates", "baseline_first_candidate"), ("bridge_candidates", "baseline_word_overlap")}
    span = table[table["task"] == "bridge"].set_index("variant")
    assert span.loc["dynsan", "em"] <= span.loc["dynsan", "f1"] and pd.isna(span.loc["dynsan", "accuracy"])
    cand = table[table["task"] == "bridge_candidates"].set_index("variant")
    assert 0 <= cand.loc["dynsan", "accuracy"] <= 100 and pd.isna(cand.loc["dynsan", "em"])
    runs = table[~table["variant"].str.startswith("baseline")]
    assert (runs["params"] > 0).all() and (runs["step_seconds"] > 0).all() and (runs["peak_memory_mb"] > 0).all()
    assert (runs["train_cpu_seconds"] > 0).all() and (runs["step_cpu_seconds"] > 0).all()  # CPU beside wall time
    assert runs["config_hash"].nunique() == 4
    # the seed statistics of the main score, and what the gated heads attended among
    assert (runs["score"] == runs["accuracy"].fillna(runs["f1"])).all() and (runs["n_seeds"] == 1).all()
    assert runs["score_ci_low"].isna().all()  # one seed: no interval
    gated = runs[runs["variant"] == "dynsan"]
    assert gated["selected_fraction"].between(0, 1).all() and gated["answer_share_all"].between(0, 1).all()
    eff = pd.read_parquet(workdir / "results/tables/dynsan_efficiency.parquet")
    assert sorted(zip(eff["variant"], eff["sequence_length"])) == [("all", 16), ("all", 32), ("gated", 16), ("gated", 32)]
    for f in ["results/figures/dynsan_scores.png", "results/figures/dynsan_curves.png",
              "results/figures/dynsan_efficiency.png", "results/figures/dynsan_gates.png",
              f"{RUN.format('bridge', 'dynsan')}/weights.safetensors", f"{RUN.format('bridge', 'dynsan')}/eval/predictions.parquet",
              "results/dynsan/data/bridge/report.json", "logs/dynsan_train/bridge-dynsan-seed1.log",
              "benchmarks/dynsan_train/bridge-dynsan-seed1.tsv"]:
        assert (workdir / f).stat().st_size > 0, f
    assert not list((workdir / "results/checkpoints").rglob("*.safetensors"))
    gates = pd.read_parquet(workdir / f"{RUN.format('bridge', 'dynsan')}/eval/gates.parquet")
    assert gates["id"].nunique() == 2

    first = outputs(workdir)
    snakemake(workdir, targets=["dynsan"])  # no-op
    assert outputs(workdir) == first

    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    cfg["dynsan"]["variants"] = {"dynsan": {}, "full_attention": {"selection": "all", "passages": 4}}
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(workdir, targets=["dynsan"])
    after = outputs(workdir)
    changed = {k for k in first if after[k] != first[k]}
    want = {"results/tables/dynsan.parquet"} | {f"results/figures/dynsan_{f}.png" for f in
                                                 ("scores", "curves", "efficiency", "gates")}
    for task in ("bridge", "bridge_candidates"):
        run = RUN.format(task, "full_attention")
        want |= {f"{run}/{f}" for f in ("weights.safetensors", "curve.parquet", "meta.json", "eval/predictions.parquet",
                                        "eval/scores.json", "eval/gates.parquet")}
    assert changed == want


def test_bad_data_file_fails_its_job_naming_record_and_field(tmp_path):
    bad = tmp_path / "qa.jsonl"
    bad.write_text(json.dumps({"id": "x1", "question": "q", "passages": ["p"], "answers": ["p"], "split": "train"}) + "\n"
                   + json.dumps({"id": "x2", "question": "q", "passages": ["p", ""], "answers": ["p"]}) + "\n")
    cfg = copy.deepcopy(CONFIG)
    cfg["dynsan"]["run"]["tasks"] = ["mine"]
    cfg["dynsan"]["tasks"] = {"mine": {"kind": "span", "source": {"path": str(bad)}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = _cli(tmp_path, "results/dynsan/data/mine/tokens.parquet")
    assert res.returncode != 0
    log = (tmp_path / "logs/dynsan_prepare/mine.log").read_text()
    assert f"error: {bad}: record 1 (id x2): field 'passages[1]' is empty" in log and "Traceback" not in log
    assert not (tmp_path / "results/dynsan/data/mine").exists() or not any((tmp_path / "results/dynsan/data/mine").iterdir())


def test_default_target_plans_every_stage_with_dynsan(tmp_path):
    """Regression: the DynSAN rules must not shadow common.smk's path patterns (DATA, ...)."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    res = _cli(tmp_path, "-n")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    for rule in ("prepare_data", "tokenize", "train_prompt", "dynsan_prepare", "dynsan_train", "dynsan_summarise"):
        assert rule in out, rule
