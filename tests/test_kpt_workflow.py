"""The KPT stage end to end through Snakemake on a tiny config, and its config cross-checks."""
from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest
import yaml

from test_workflow import TINY, _cli, outputs, snakemake

pytestmark = pytest.mark.workflow

CONFIG = copy.deepcopy(TINY)
CONFIG.pop("projector")
CONFIG["kpt"] = {
    "models": ["tiny-bert"], "shots": [0, 2], "modes": ["prompt"],
    "settings": {"support_size": 16, "max_words": 6},
    "prompt_tuning": {"steps": 2, "eval_every": 2},
    "knowledge_bases": {"topic-words": {"source": "file", "path": "kb/topics.txt"},
                        "vader": {"source": "vader", "polarity": {"negative": -1, "positive": 1}, "min_score": 2.5}},
    "tasks": {"topics": {"knowledge_bases": ["topic-words"]},
              "movies": {"knowledge_bases": ["vader"], "settings": {"candidate_frac": 0.0}}},
}
KB = "sports,football,tennis,team\nscience,physics,lab,research\nbusiness,money,market,bank\npolitics,vote,law,election\n"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    wd = tmp_path_factory.mktemp("wf-kpt")
    (wd / "kb").mkdir()
    (wd / "kb" / "topics.txt").write_text(KB)
    (wd / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    return wd


def test_kpt_target_table_figures_and_incremental_kb_change(workdir):
    snakemake(workdir, targets=["kpt"])
    df = pd.read_parquet(workdir / "results/tables/kpt.parquet")
    assert list(df.columns[:8]) == ["model", "task", "shots", "seed", "mode", "variant", "knowledge_base",
                                    "words_per_class"]
    assert {"metric", "score", "n_test", "config_hash", "words_by_class"} <= set(df.columns)
    assert set(df["knowledge_base"]) == {"topic-words", "vader"} and set(df["shots"]) == {0, 2}
    zero = df[df.shots == 0]
    assert set(zero["variant"]) == {"manual", "manual+calibration", "kpt", "kpt-no-frequency", "kpt-no-relevance",
                                    "kpt-no-calibration"} and set(zero["mode"]) == {"none"}
    few = df[df.shots == 2]
    assert "kpt-no-learnable" in set(few["variant"]) and set(few["mode"]) == {"prompt"}
    assert df["score"].between(0, 1).all() and (df["n_test"] > 0).all()
    # the seed statistics of every summary table: one seed here, so the mean is the score, no interval
    assert (df["n_seeds"] == 1).all() and (df["score_mean"] == df["score"]).all() and df["score_ci_low"].isna().all()
    words = pd.read_parquet(workdir / "results/kpt/tiny-bert/movies/vader/seed1/zero-shot/words.parquet")
    assert (words[words.variant == "kpt"].source == "kb").sum() > 10  # the lexicon contributed words
    # the shipped blocklist removed VADER's slurs and violent words before the cap (issue #23)
    assert not {"rapist", "raping", "murder", "motherfucker"} & set(words["word"])
    assert (df[(df.knowledge_base == "vader") & (df.variant == "kpt")]["kb_words_blocked"] > 0).all()
    assert (df[df.variant == "manual"]["kb_words_blocked"] == 0).all()
    for f in ["results/figures/kpt_score_vs_shots.png", "results/figures/kpt_ablation.png",
              "results/figures/kpt_words.png", "benchmarks/kpt_run/tiny-bert-topics-topic-words-seed1-zero-shot.tsv"]:
        assert (workdir / f).stat().st_size > 0, f
    assert not list((workdir / "results/checkpoints").rglob("*.json"))

    first = outputs(workdir)
    snakemake(workdir, targets=["kpt"])  # no-op
    assert outputs(workdir) == first

    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    cfg["kpt"]["knowledge_bases"]["vader"]["min_score"] = 2.0  # only the movies task uses it
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(workdir, targets=["kpt"])
    after = outputs(workdir)
    changed = {k for k in first if after[k] != first[k]}
    runs = {str(Path(k).parent) for k in changed if k.startswith("results/kpt/")}
    assert runs == {"results/kpt/tiny-bert/movies/vader/seed1/zero-shot", "results/kpt/tiny-bert/movies/vader/seed1/2shot-prompt"}
    assert "results/tables/kpt.parquet" in changed

    (workdir / "kb" / "topics.txt").write_text(KB.replace("bank", "bank,trade"))  # editing the file reruns topics
    snakemake(workdir, targets=["kpt"])
    again = outputs(workdir)
    runs = {str(Path(k).parent) for k in again if k.startswith("results/kpt/") and again[k] != after[k]}
    assert runs == {"results/kpt/tiny-bert/topics/topic-words/seed1/zero-shot",
                    "results/kpt/tiny-bert/topics/topic-words/seed1/2shot-prompt"}


@pytest.mark.parametrize("change, message", [
    (lambda c: c["kpt"].update(models=["nope"]), "kpt.models': unknown model 'nope'"),
    (lambda c: c["kpt"]["tasks"]["topics"].update(knowledge_bases=["nope"]), "unknown knowledge base 'nope'"),
    (lambda c: c["kpt"]["tasks"].update(nope={"knowledge_bases": ["vader"]}), "kpt.tasks.nope': unknown task"),
    (lambda c: c["kpt"]["knowledge_bases"]["vader"].update(polarity={"negative": -1}), "no polarity"),
    (lambda c: c["kpt"]["knowledge_bases"]["topic-words"].update(path="kb/missing.txt"),
     "kb/missing.txt: knowledge-base file not found"),
    (lambda c: c["kpt"]["knowledge_bases"]["vader"].update(blocklist="kb/none.txt"),
     "kpt.knowledge_bases.vader.blocklist': kb/none.txt: blocklist file not found"),
])
def test_config_cross_checks(tmp_path, monkeypatch, change, message):
    from pipeline_steps.config import load_config
    from pipeline_steps.errors import UserError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "kb").mkdir()
    (tmp_path / "kb" / "topics.txt").write_text(KB)
    cfg = copy.deepcopy(CONFIG)
    change(cfg)
    with pytest.raises(UserError, match=message):
        load_config(cfg)


def test_bad_kb_line_fails_the_dry_run(tmp_path):
    cfg = copy.deepcopy(CONFIG)
    (tmp_path / "kb").mkdir()
    (tmp_path / "kb" / "topics.txt").write_text("sports\nscience\n\nbusiness\npolitics\n")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = _cli(tmp_path, "-n", "kpt")
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "kb/topics.txt: line 3: empty line" in out and "Traceback" not in out


def test_overlay_removes_a_kpt_task_and_checks_what_kpt_uses(tmp_path):
    """`--configfile config.yaml overlay.yaml`: `movies: null` drops the task from KPT (the other stages keep
    it), kpt.prompt_tuning.max_length plans KPT's own tokenization, and a task only KPT uses with a missing
    file stops the dry run naming the key (issue #23)."""
    (tmp_path / "kb").mkdir()
    (tmp_path / "kb" / "topics.txt").write_text(KB)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    overlay = {"kpt": {"tasks": {"movies": None}, "prompt_tuning": {"max_length": 24, "batch_size": 4}}}
    (tmp_path / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    res = _cli(tmp_path, "-n", "kpt", "--configfile", "config.yaml", "overlay.yaml")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "results/kpt/tiny-bert/topics/topic-words/seed1/zero-shot" in out and "results/kpt/tiny-bert/movies" not in out
    assert "results/kpt/tokens/topics/tokens-tiny-bert-len24.parquet" in out  # kpt_tokenize at KPT's length

    mine = dict(copy.deepcopy(CONFIG["tasks"]["topics"]), source={"path": "data/mine.csv"})
    overlay = {"tasks": {"mine": mine}, "kpt": {"tasks": {"movies": None, "mine": {"knowledge_bases": ["topic-words"]}}}}
    (tmp_path / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    res = _cli(tmp_path, "-n", "kpt", "--configfile", "config.yaml", "overlay.yaml")
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "Traceback" not in out
    assert "tasks.mine.source.path': data file 'data/mine.csv' does not exist (used by kpt.tasks.mine" in out
