"""The tiny workflow submitted to a real Slurm through workflow/profiles/slurm.

A private single-node cluster (tests/slurm/cluster.py: Debian's slurm-wlm and munge,
installed here with apt-get when missing) offers two fake GPUs as gres. The grid has
one CPU model and one model with ``device: cuda`` and ``gpu_model: fake``, so its
train and evaluate jobs are GPU-tagged and submitted with ``--gpus=fake:1``. There is
no usable CUDA on the node, so those jobs run with the test-only switch
``PTW_CUDA_FALLBACK=cpu`` (pipeline_steps.runtime): they are scheduled as GPU jobs,
receive a GPU from Slurm (``CUDA_VISIBLE_DEVICES`` is set inside them) and compute
on the CPU. What each job asked for and got is read from Slurm's own job records.

Skips, with the reason, where Slurm cannot be installed or started (not root, no
apt-get, no network, no device nodes); set ``PTW_SLURM_TEST=require`` to make that
a failure instead.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slurm.cluster import SlurmCluster, Unavailable, ensure_installed  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SNAKEFILE = REPO / "workflow" / "Snakefile"
PROFILE = REPO / "workflow" / "profiles" / "slurm"
pytestmark = pytest.mark.slurm
RUN_TIMEOUT = 540

WORDS = {"negative": ["bad"], "positive": ["good"]}
CONFIG = {
    "threads": 1,
    "models": {"cpu-bert": {"source": "tiny:bert"},
               "gpu-bert": {"source": "tiny:bert", "device": "cuda", "gpu_model": "fake"}},
    "experiment": {"tasks": ["movies"], "models": ["cpu-bert", "gpu-bert"], "seeds": [1]},
    "prompt_tuning": {"prompt_length": 4, "steps": 4, "batch_size": 8, "eval_every": 2, "max_length": 32},
    "tasks": {"movies": {"source": {"demo": "movie_reviews", "size": 80}, "text_fields": ["text"],
                         "label_names": ["negative", "positive"], "template": "{text_a} It was {mask}.",
                         "label_words": WORDS}},
}


def profile_default_resources() -> dict:
    return (yaml.safe_load((PROFILE / "config.yaml").read_text()) or {}).get("default-resources") or {}


@pytest.fixture(scope="module")
def cluster():
    partition = str(profile_default_resources().get("slurm_partition") or "main")
    c = SlurmCluster(partition=partition, gpu_type="fake", gpus=2)
    try:
        ensure_installed()
        c.start()
    except Unavailable as e:
        c.stop()
        c.remove()
        if os.environ.get("PTW_SLURM_TEST") == "require":
            pytest.fail(f"Slurm test cluster unavailable: {e}")
        pytest.skip(f"Slurm test cluster unavailable: {e}")
    try:
        yield c
    finally:
        c.stop()
        c.remove()


def test_profile_tags_gpu_jobs_and_names_partition_and_account():
    """The profile's own promises: slurm executor, partition and account keys, retries."""
    prof = yaml.safe_load((PROFILE / "config.yaml").read_text())
    assert prof["executor"] == "slurm" and prof["retries"] >= 1
    assert {"slurm_partition", "slurm_account", "mem_mb", "runtime"} <= set(prof["default-resources"])


def _rule(rec: dict) -> tuple[str, str]:
    m = re.fullmatch(r"rule_(\w+?)(?:_wildcards_(.*))?", rec.get("Comment", ""))
    assert m, f"job {rec.get('JobId')} has no Snakemake rule comment: {rec.get('Comment')}"
    return m.group(1), m.group(2) or ""


def test_tiny_workflow_runs_on_slurm_and_gpu_jobs_get_gpus(cluster, tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    env = cluster.env()
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env["PTW_CUDA_FALLBACK"] = "cpu"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--profile", str(cluster.profile()),
           "--workflow-profile", str(PROFILE), "results/tables/prompt_tuning.parquet"]  # the prompt-tuning chain
    out_path = tmp_path / "snakemake.out"
    start = time.monotonic()
    with open(out_path, "w") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
            rc = None
    seconds = time.monotonic() - start
    output = out_path.read_text()
    diagnostics = f"\n--- snakemake (last lines) ---\n{output[-4000:]}\n--- slurm ---\n" + \
        cluster.log_tail("slurmctld.log", "slurmd.log")
    assert rc == 0, f"snakemake on Slurm {'timed out' if rc is None else f'exited {rc}'} after {seconds:.0f} s{diagnostics}"
    print(f"tiny workflow on Slurm: {seconds:.0f} s")

    table = pd.read_parquet(tmp_path / "results/tables/prompt_tuning.parquet")
    assert sorted(table["model"]) == ["cpu-bert", "gpu-bert"] and table["test_score"].between(0, 1).all()

    # Slurm's records: every job went through sbatch, to the profile's partition, and finished
    records = [r for r in cluster.jobs() if r.get("Comment", "").startswith("rule_")]
    rules = sorted(_rule(r)[0] for r in records)
    assert rules == sorted(["build_model", "prepare_data", "tokenize", "tokenize", "train_prompt", "train_prompt",
                            "evaluate_prompt", "evaluate_prompt", "summarise_prompts"]), rules
    assert {r["Partition"] for r in records} == {cluster.partition}
    assert {r["JobState"] for r in records} == {"COMPLETED"}
    gpu_jobs = []
    for r in records:
        rule, wildcards = _rule(r)
        tagged = rule in ("train_prompt", "evaluate_prompt") and "gpu-bert" in wildcards.split("_")
        if tagged:
            gpu_jobs.append(rule)
            assert r.get("TresPerJob") == "gres:gpu:fake:1", r  # --gpus=fake:1: gpu and gpu_model
            assert r.get("JOB_GRES", "").startswith("gpu:fake:1"), r  # and Slurm allocated one
        else:
            assert "TresPerJob" not in r and r.get("JOB_GRES") == "(null)", r
        # per-rule resources reached sbatch: threads -> CPUs, mem_mb -> --mem, runtime -> -t
        assert r["NumCPUs"] == "1", r
        want_mem, want_time = {"train_prompt": ("4000M", "02:00:00"), "evaluate_prompt": ("4000M", "01:00:00"),
                               "tokenize": ("2000M", "00:30:00"), "prepare_data": ("2000M", "00:30:00"),
                               "build_model": ("3000M", "00:30:00"),
                               "summarise_prompts": ("2000M", "00:10:00")}[rule]
        assert (r["MinMemoryNode"], r["TimeLimit"]) == (want_mem, want_time), (rule, r)
    assert sorted(gpu_jobs) == ["evaluate_prompt", "train_prompt"]

    # inside the jobs: GPU-tagged ones saw the GPU Slurm gave them, the others none
    for rule in ("train_prompt", "evaluate_prompt"):
        gpu_log = (tmp_path / f"logs/{rule}/gpu-bert-movies-seed1.log").read_text()
        cpu_log = (tmp_path / f"logs/{rule}/cpu-bert-movies-seed1.log").read_text()
        assert re.search(r"CUDA_VISIBLE_DEVICES=[01]\b", gpu_log), gpu_log
        assert "running on CPU because PTW_CUDA_FALLBACK=cpu" in gpu_log
        assert "CUDA_VISIBLE_DEVICES=<unset>" in cpu_log, cpu_log


def test_where_slurm_cannot_be_installed_the_reason_says_why(monkeypatch):
    """What the fixture turns into a skip message, for the usual reasons."""
    from slurm import cluster as mod

    monkeypatch.setattr(mod, "_which", lambda name: None if name in ("slurmd", "munged", "apt-get") else f"/x/{name}")
    monkeypatch.setattr(mod.os, "geteuid", lambda: 1000)
    with pytest.raises(Unavailable, match=r"Slurm is not installed \(munged, slurmd missing\) and installing it needs root"):
        ensure_installed()
    monkeypatch.setattr(mod.os, "geteuid", lambda: 0)
    with pytest.raises(Unavailable, match="no apt-get to install slurm-wlm and munge"):
        ensure_installed()
    monkeypatch.setenv("PTW_SLURM_INSTALL", "0")
    with pytest.raises(Unavailable, match="PTW_SLURM_INSTALL=0"):
        ensure_installed()
