"""The workflow end to end, through Snakemake's Python API, on a tiny config."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from helpers import TINY, outputs, snakemake, snakemake_cli
from pipeline_steps.claims.spec import load_claims

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    wd = tmp_path_factory.mktemp("wf")
    (wd / "config.yaml").write_text(yaml.safe_dump(TINY))
    return wd


def test_dry_run_builds_nothing(workdir):
    snakemake(workdir, dryrun=True)
    assert not (workdir / "results").exists()


def test_full_run_then_noop_then_incremental(workdir):
    snakemake(workdir)
    table = pd.read_parquet(workdir / "results/tables/prompt_tuning.parquet")
    assert sorted(table["task"]) == ["movies", "topics"] and (table["model"] == "tiny-bert").all()
    zs = pd.read_parquet(workdir / "results/tables/transfer_zero_shot.parquet")
    assert len(zs) == 2 * (2 + 1)  # targets x (source prompts + one random prompt)
    assert set(zs["source_task"]) == {"movies", "topics", "random"}
    tpt = pd.read_parquet(workdir / "results/tables/transfer_init.parquet")
    assert sorted(zip(tpt["source_task"], tpt["target_task"])) == [("movies", "topics"), ("topics", "movies")]
    assert {"final_score", "steps_to_reach", "speedup"} <= set(tpt.columns)
    cross = pd.read_parquet(workdir / "results/tables/cross_model.parquet")
    assert sorted(cross["objective"]) == ["distance", "task"] and (cross["target_task"] == "topics").all()
    assert cross["zero_shot_score"].between(0, 1).all()
    corr = pd.read_parquet(workdir / "results/tables/indicator_correlation.parquet")
    assert {"indicator", "layers", "spearman", "p_value", "n_pairs"} <= set(corr.columns)
    assert table["test_score"].between(0, 1).all() and (table["verbalizer"] == "mlm").all()
    claims = pd.read_parquet(workdir / "results/tables/claims.parquet")
    assert set(claims["verdict"]) <= {"reproduced", "not reproduced", "inconclusive", "not run"}
    assert set(claims["claim_id"]) == {c["id"] for c in load_claims()["claims"]}
    by_id = claims.set_index("claim_id")
    # the tiny tasks declare no kind, and no FPT grid runs: not run, naming the keys that add them
    assert by_id.loc["transferability.same_kind_transfer", "verdict"] == "not run"
    assert "tasks.<name>.kind" in by_id.loc["transferability.same_kind_transfer", "note"]
    assert by_id.loc["fpt.less_compute", "verdict"] == "not run" and "fpt.models" in by_id.loc["fpt.less_compute", "note"]
    assert (workdir / "results/figures/claims.png").stat().st_size > 0
    for f in ["results/figures/prompt_tuning_scores.png", "results/figures/prompt_tuning_curves.png",
              "results/models/tiny-bert/model.safetensors", "results/prompts/tiny-bert/movies/seed1/prompt.safetensors"]:
        assert (workdir / f).stat().st_size > 0, f
    assert (workdir / "logs/train_prompt/tiny-bert-movies-seed1.log").read_text().count("step 4/4") == 1
    assert (workdir / "benchmarks/train_prompt/tiny-bert-movies-seed1.tsv").exists()
    assert not list((workdir / "results").rglob(".*.tmp")) and not list((workdir / "results/checkpoints").rglob("*.safetensors"))
    # a local run: the Snakefile's warm worker (warm_start, default on) ran jobs, and ended with the run
    worker_log = (workdir / "logs/warm_worker.log").read_text()
    served = re.findall(r"served (\d+) job\(s\), stopping", worker_log)
    assert len(served) == 1 and int(served[0]) > 0, worker_log
    assert any("warm start: this step runs in a child" in log.read_text() for log in (workdir / "logs").rglob("*.log"))

    first = outputs(workdir)
    snakemake(workdir)  # no-op: nothing is rebuilt
    assert outputs(workdir) == first

    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    cfg["tasks"]["movies"]["prompt_tuning"] = {"steps": 6}
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(workdir)
    after = outputs(workdir)
    changed = {k for k in first if after[k] != first[k]}
    unaffected = {k for k in first if k.startswith(("results/data/", "results/models/"))
                  or k.startswith(("results/prompts/tiny-bert/topics/", "results/eval/tiny-bert/topics/"))}
    assert unaffected and not changed & unaffected, sorted(changed & unaffected)
    assert {
        "results/prompts/tiny-bert/movies/seed1/prompt.safetensors",
        "results/prompts/tiny-bert/movies/seed1/peft/adapter_model.safetensors",
        "results/eval/tiny-bert/movies/seed1/scores.json",
        "results/tables/prompt_tuning.parquet",
        "results/transfer/zero_shot/tiny-bert/topics.parquet",  # uses the movies prompt
        "results/transfer/init/tiny-bert/topics/from-movies/seed1/prompt.safetensors",
        "results/transfer/init/tiny-bert/movies/from-topics/seed1/prompt.safetensors",  # movies' budget changed
        "results/tables/transfer_zero_shot.parquet",
        "results/tables/transfer_init.parquet",
    } <= changed
    table = pd.read_parquet(workdir / "results/tables/prompt_tuning.parquet").set_index("task")
    assert table.loc["movies", "steps"] == 6 and table.loc["topics", "steps"] == 4


def _cli(workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    return snakemake_cli(workdir, *extra)


def test_lint_is_clean(workdir):
    res = _cli(workdir, "--lint")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Lints for rule" not in res.stdout + res.stderr


def test_bad_config_fails_fast_without_traceback(tmp_path):
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    cfg["tasks"]["movies"]["template"] = "{text_a} no slot"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = _cli(tmp_path, "-n")
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "tasks.movies.template" in out and "Traceback" not in out
    assert not (tmp_path / "results").exists()


def _chromium() -> str:
    """Debian's chromium (installed with apt-get where missing and possible), or skip with the reason."""
    import shutil

    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is not installed and cannot be installed here (needs root and apt-get)")
    res = subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if res.returncode != 0 or not shutil.which("chromium"):
        pytest.skip(f"apt-get install chromium failed: {res.stderr.strip().splitlines()[-1:]}")
    return shutil.which("chromium")


def test_report_holds_every_figure_and_renders(workdir, tmp_path):
    """`snakemake --report` after the full run: every figure the run drew is in the report, with its
    caption and stage category, as a PNG identical to the file; a headless browser renders it."""
    import base64
    import hashlib
    import re

    figures = sorted((workdir / "results/figures").glob("*.png"))
    assert len(figures) >= 6, figures  # prompt tuning, transfer (2), indicators, projection
    report = workdir / "report.html"
    res = _cli(workdir, "--report", str(report))
    assert res.returncode == 0, res.stdout + res.stderr
    html = report.read_text()
    embedded = {hashlib.sha256(base64.b64decode(m)).hexdigest()
                for m in re.findall(r"data:image/png(?:;[^;,]+)*;base64,([A-Za-z0-9+/=]+)", html)}
    for fig in figures:
        assert fig.name in html, fig.name
        assert hashlib.sha256(fig.read_bytes()).hexdigest() in embedded, f"{fig.name} is not embedded as drawn"
    for text in ["0. Claims", "1. Prompt tuning", "2. Cross-task transfer", "3. Transferability indicators",
                 "4. Cross-model projection", "Heatmap per model", "Prompt-tuning research workflow"]:
        assert text in html, text

    chromium = _chromium()
    shot = tmp_path / "report.png"
    res = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
                          "--virtual-time-budget=15000", f"--screenshot={shot}", f"file://{report}"],
                         capture_output=True, text=True, timeout=180)
    assert shot.exists() and shot.stat().st_size > 20_000, res.stderr[-2000:]
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000",
                          "--dump-dom", f"file://{report}"], capture_output=True, text=True, timeout=180).stdout
    assert "Prompt tuning" in dom and "Cross-task transfer" in dom, dom[:2000]  # the app drew its menu
    assert dom.index("0. Claims") < dom.index("1. Prompt tuning")  # the claims page comes first
