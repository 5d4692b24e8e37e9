"""The FPT and LPT chains end to end through Snakemake, on a tiny config."""
from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest
import yaml

from helpers import TINY, outputs, snakemake, snakemake_cli

pytestmark = pytest.mark.workflow

CONFIG = copy.deepcopy(TINY)
CONFIG["experiment"]["tasks"] = ["movies"]
CONFIG["fpt"] = {
    "models": ["tiny-bert"], "tasks": ["movies"], "methods": ["fpt_compound"], "score_samples": 16,
    "schedules": {"fpt_compound": [{"layers": 1, "ffn": 0.5, "steps": 2}, {"layers": 1, "ffn": 48, "steps": 2},
                                   {"steps": 2}]},
}
CONFIG["lpt"] = {"models": ["tiny-bert"], "tasks": ["movies"], "methods": ["lpt_mppg"],
                 "bottleneck": 8, "profile_steps": 2, "prompt_tuning": {"steps": 4}}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    wd = tmp_path_factory.mktemp("wf-efficient")
    (wd / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    return wd


def test_fpt_and_lpt_chains_then_incremental_stage_change(workdir):
    snakemake(workdir, targets=["fpt", "lpt"])
    fpt = pd.read_parquet(workdir / "results/tables/fpt.parquet")
    assert list(fpt["method"]) == ["pt", "fpt_compound"] and list(fpt["steps"]) == [6, 6]
    assert fpt["score"].between(0, 1).all() and (fpt["flops"] > 0).all() and (fpt["wall_seconds"] > 0).all()
    ratios = fpt.set_index("method")["flops_ratio_vs_pt"]
    assert ratios["pt"] == 1.0 and 0.3 < ratios["fpt_compound"] < 1.0
    stages = pd.read_parquet(workdir / "results/tables/fpt_stages.parquet").set_index(["method", "stage"])
    compound = stages.loc["fpt_compound"]
    assert list(compound["layers"]) == [1, 1, 2] and list(compound["ffn"]) == [32, 48, 64]
    assert list(compound["steps"]) == [2, 2, 2] and compound["flops"].is_monotonic_increasing
    assert compound["flops"].sum() == pytest.approx(fpt.set_index("method").loc["fpt_compound", "flops"])
    assert (workdir / "results/fpt/tiny-bert/movies/ffn_scores.safetensors").exists()
    lpt = pd.read_parquet(workdir / "results/tables/lpt.parquet")
    assert list(lpt["method"]) == ["pt", "lpt_mppg"]
    assert list(lpt["insert_layer"]) == [0, 1] and (lpt["step_seconds"] > 0).all()
    assert lpt.loc[0, "trainable_params"] == 4 * 32 and (lpt["peak_memory_mb"] > 0).all()
    for f in ["results/figures/fpt_score_vs_flops.png", "results/figures/lpt_score_vs_step_time.png",
              "logs/fpt_stage/tiny-bert-movies-seed1-fpt_compound-stage1.log", "benchmarks/lpt_run/tiny-bert-movies-seed1-pt.tsv"]:
        assert (workdir / f).stat().st_size > 0, f
    assert not list((workdir / "results/checkpoints").rglob("*.safetensors"))

    first = outputs(workdir)
    snakemake(workdir, targets=["fpt", "lpt"])  # no-op
    assert outputs(workdir) == first

    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    cfg["fpt"]["pt_steps"] = 6  # the totals now differ: the PT baseline keeps its 6 steps
    cfg["fpt"]["schedules"]["fpt_compound"][1]["steps"] = 3
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(workdir, targets=["fpt", "lpt"])
    after = outputs(workdir)
    changed = {k for k in first if after[k] != first[k]}
    run = "results/fpt/tiny-bert/movies/seed1/fpt_compound"
    files = ["prompt.safetensors", "optimizer.safetensors", "curve.parquet", "meta.json"]
    assert changed == {f"{run}/stage{i}/{f}" for i in (1, 2) for f in files} | {
        f"{run}/eval/scores.json", f"{run}/eval/predictions.parquet", "results/tables/fpt.parquet",
        "results/tables/fpt_stages.parquet", "results/figures/fpt_score_vs_flops.png"}
    fpt = pd.read_parquet(workdir / "results/tables/fpt.parquet").set_index("method")
    assert fpt.loc["fpt_compound", "steps"] == 7 and fpt.loc["pt", "steps"] == 6


def test_unequal_totals_fail_fast(tmp_path):
    cfg = copy.deepcopy(CONFIG)
    cfg["fpt"]["methods"] = ["fpt_compound", "fpt_depth"]
    cfg["fpt"]["schedules"]["fpt_depth"] = [{"layers": 1, "steps": 2}, {"steps": 2}]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = snakemake_cli(tmp_path, "-n")
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "fpt.schedules" in out and "pt_steps" in out and "Traceback" not in out


@pytest.mark.parametrize("change, message", [
    (lambda c: c["fpt"]["schedules"]["fpt_compound"][-1].update(layers=1), "must be the full model"),
    (lambda c: c["fpt"]["schedules"]["fpt_compound"][0].pop("ffn"), "sets layers and ffn"),
    (lambda c: c["fpt"].update(methods=["fpt_width"]), "no schedule for method 'fpt_width'"),
    (lambda c: c["lpt"].update(models=["nope"]), "lpt.models': unknown model 'nope'"),
])
def test_config_cross_checks(change, message):
    from pipeline_steps.config import load_config
    from pipeline_steps.errors import UserError

    cfg = copy.deepcopy(CONFIG)
    change(cfg)
    with pytest.raises(UserError, match=message):
        load_config(cfg)
