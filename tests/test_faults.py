"""Faults: killed jobs, retries, concurrent writers and workflows.

* A training job killed with SIGKILL (twice: once in a Snakemake retry, once for good)
  resumes from its last checkpoint and ends with the prompt an uninterrupted run of the
  same seed gives; no output ever shows under its final name before it is complete.
* A retried job gets more memory and time per attempt.
* A second Snakemake on the same working directory refuses to start; concurrent
  writers of one artifact or one model folder never expose a partial one.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from pipeline_steps.errors import UserError
from pipeline_steps.config import load_config
from pipeline_steps.specs import model_spec, pt_settings, task_spec
from pipeline_steps.io import load_tensors, read_parquet
from pipeline_steps.runtime import load_bundle
from pipeline_steps.training import Checkpoint, train_prompt
from pipeline_steps.prompt_tuning.config import PromptTuningConfig

REPO = Path(__file__).resolve().parent.parent
SNAKEFILE = REPO / "workflow" / "Snakefile"
RUN = "tiny-bert/movies/seed1"
STEPS = 1000  # about 6 s of tiny-bert training here: time for the test to kill it twice
CONFIG = {
    "threads": 1,
    "models": {"tiny-bert": {"source": "tiny:bert"}},
    "experiment": {"tasks": ["movies"], "models": ["tiny-bert"], "seeds": [1]},
    "prompt_tuning": {"prompt_length": 4, "steps": STEPS, "batch_size": 8, "eval_every": 100, "max_length": 32,
                      "checkpoint_every": 10, "lr": 0.05},
    "tasks": {"movies": {"source": {"demo": "movie_reviews", "size": 80}, "text_fields": ["text"],
                         "label_names": ["negative", "positive"], "template": "{text_a} It was {mask}.",
                         "label_words": {"negative": ["bad"], "positive": ["good"]}}},
}
FINAL = [f"results/prompts/{RUN}/prompt.safetensors", f"results/prompts/{RUN}/curve.parquet",
         f"results/prompts/{RUN}/meta.json"]
CKPT = "results/checkpoints/tiny-bert/movies/seed1"


def _env() -> dict:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def _snakemake(workdir: Path, *extra: str, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), *extra, FINAL[0]]
    return subprocess.Popen(cmd, cwd=workdir, env=_env(), stdin=subprocess.DEVNULL, stdout=open(out, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _train_process(workdir: Path) -> int | None:
    """Pid of the python running this workdir's train-prompt step (not its shell wrapper)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if (Path(cwd) == workdir and b"pipeline_steps" in argv and b"train-prompt" in argv
                and any(b'"checkpoint"' in a for a in argv)  # the workflow's job, not the reference run
                and Path(argv[0].decode()).name.startswith("python")):
            return int(entry.name)
    return None


def _ckpt_step(workdir: Path) -> int:
    try:
        return load_tensors(workdir / f"{CKPT}.safetensors")[1]["state"]["step"]
    except (OSError, ValueError, KeyError, UserError):
        return -1


def _wait_for(what: str, cond, proc: subprocess.Popen, out: Path, workdir: Path, timeout: float = 240):
    """Poll ``cond`` while checking that no final output shows up early."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        early = [f for f in FINAL if (workdir / f).exists()]
        assert not early, f"final outputs visible before the job finished: {early}"
        value = cond()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"snakemake ended (status {proc.returncode}) before {what}:\n{out.read_text()[-3000:]}")
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}:\n{out.read_text()[-3000:]}")


@pytest.mark.workflow
def test_killed_training_resumes_from_checkpoint_to_the_same_prompt(tmp_path):
    wd = tmp_path / "wf"
    wd.mkdir()
    (wd / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    out1 = tmp_path / "run1.out"
    run1 = _snakemake(wd, "--cores", "2", "--retries", "1", out=out1)

    # a second workflow on the same directory refuses to start while the first one holds it
    _wait_for("the data stage", lambda: (wd / "results/data/movies/data.parquet").exists(), run1, out1, wd)
    # (started in the background: it takes seconds to start, while the training below must be caught running)
    second = subprocess.Popen([sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--cores", "1", FINAL[0]],
                              cwd=wd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    # the uninterrupted reference: the same step, same arguments, no checkpoint, other output names
    _wait_for("the tokens", lambda: (wd / "results/data/movies/tokens-tiny-bert.parquet").exists(), run1, out1, wd)
    cfg = load_config(wd / "config.yaml")
    ref_args = dict(model_spec=model_spec(cfg, "tiny-bert"), task_spec=task_spec(cfg, "movies"),
                    settings=pt_settings(cfg, "movies"), seed=1, tokenized="results/data/movies/tokens-tiny-bert.parquet",
                    prompt="ref/prompt.safetensors", curve="ref/curve.parquet", meta="ref/meta.json")
    ref = subprocess.Popen([sys.executable, "-m", "pipeline_steps", "train-prompt", "--args", json.dumps(ref_args)],
                           cwd=wd, env={**_env(), "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)

    # attempt 1: SIGKILL after a few checkpoints; Snakemake retries the job with more memory and time
    _wait_for("checkpoint step >= 40", lambda: _ckpt_step(wd) >= 40, run1, out1, wd)
    pid = _train_process(wd)
    assert pid, "train-prompt process not found"
    os.kill(pid, signal.SIGKILL)
    # attempt 2 resumes from that checkpoint; SIGKILL it too once it got further
    log = wd / "logs/train_prompt/tiny-bert-movies-seed1.log"
    resumed = _wait_for("attempt 2 to resume", lambda: re.findall(
        r"resumed from checkpoint at step (\d+)", log.read_text() if log.exists() else ""), run1, out1, wd)
    assert int(resumed[0]) >= 40
    _wait_for("attempt 2 to checkpoint further", lambda: _ckpt_step(wd) >= int(resumed[0]) + 60, run1, out1, wd)
    pid2 = _train_process(wd)
    assert pid2 and pid2 != pid
    os.kill(pid2, signal.SIGKILL)
    assert run1.wait(timeout=120) != 0
    second_out, _ = second.communicate(timeout=120)
    assert second.returncode != 0 and "cannot be locked" in second_out, second_out
    text1 = out1.read_text()
    attempts = re.findall(r"rule train_prompt:.*?resources: ([^\n]*)", text1, flags=re.S)
    assert len(attempts) == 2, text1[-3000:]
    assert "mem_mb=4000" in attempts[0] and "runtime=120" in attempts[0], attempts
    assert "mem_mb=8000" in attempts[1] and "runtime=240" in attempts[1], attempts
    assert not [f for f in FINAL if (wd / f).exists()]  # nothing under a final name
    killed_at = _ckpt_step(wd)
    assert killed_at >= int(resumed[0]) + 60

    # the user reruns: the job resumes from the last checkpoint and completes
    out2 = tmp_path / "run2.out"
    run2 = _snakemake(wd, "--cores", "1", out=out2)
    assert run2.wait(timeout=300) == 0, out2.read_text()[-3000:]
    assert f"resumed from checkpoint at step {killed_at}" in log.read_text()
    assert not (wd / f"{CKPT}.safetensors").exists() and not (wd / f"{CKPT}.json").exists()
    assert not [p for p in (wd / "results/prompts").rglob(".*")]  # no temporary file beside the final ones

    assert ref.wait(timeout=300) == 0
    got, got_meta = load_tensors(wd / FINAL[0])
    want, want_meta = load_tensors(wd / "ref/prompt.safetensors")
    assert torch.equal(got["prompt"], want["prompt"])
    drop = lambda m: {k: v for k, v in m.items() if k != "train_seconds"}  # noqa: E731
    assert drop(got_meta) == drop(want_meta) and got_meta["steps"] == STEPS
    assert drop(json.loads((wd / FINAL[2]).read_text())) == drop(json.loads((wd / "ref/meta.json").read_text()))
    cols = ["step", "loss", "dev_score"]
    pd.testing.assert_frame_equal(pd.read_parquet(wd / FINAL[1])[cols], pd.read_parquet(wd / "ref/curve.parquet")[cols])


# --- a checkpoint is one file: a kill leaves a whole one; a damaged one is not resumed ---------------------

WORDS = {"negative": ["bad", "terrible"], "positive": ["good", "great"]}
TASK = {"name": "toy", "label_words": WORDS, "label_names": ["negative", "positive"], "metric": "accuracy"}


def test_damaged_checkpoint_is_not_resumed_and_a_later_one_is(tiny_spec, tmp_path):
    from test_prompt_tuning import make_model, toy_split

    bert = load_bundle(tiny_spec("bert"))
    cfg = PromptTuningConfig(prompt_length=4, steps=12, batch_size=8, eval_every=4, checkpoint_every=4, lr=0.1)
    data = toy_split(bert.tokenizer, 40)

    def run(checkpoint=None, stop_at=None):
        def hook(state):
            if stop_at and state.step == stop_at:
                raise KeyboardInterrupt
        model = make_model(bert, seed=5)
        best, state = train_prompt(model, data, data, cfg, seed=5, metric="accuracy", device="cpu",
                                   checkpoint=checkpoint, tag="t", on_eval=hook)
        return best, state, model.prompt.detach().clone()

    best_ref, state_ref, last_ref = run()
    at4, at8 = Checkpoint(tmp_path / "a.safetensors"), Checkpoint(tmp_path / "b.safetensors")
    for ck, stop in ((at4, 8), (at8, 12)):  # stopped at an evaluation: the last checkpoint is 4 steps earlier
        with pytest.raises(KeyboardInterrupt):
            run(ck, stop_at=stop)
    # one file holds tensors and counters: swapping in the later checkpoint resumes from step 8
    assert load_tensors(at4.path)[1]["state"]["step"] == 4 and load_tensors(at8.path)[1]["state"]["step"] == 8
    at4.path.write_bytes(at8.path.read_bytes())
    best, state, last = run(at4)
    assert torch.equal(last, last_ref) and torch.equal(best, best_ref)
    assert [(r["loss"], r["dev_score"]) for r in state.curve] == [(r["loss"], r["dev_score"]) for r in state_ref.curve]
    # a damaged file (cut short) is ignored: training starts afresh and ends where the reference did
    at8.path.write_bytes(at8.path.read_bytes()[:-100])
    best, state, last = run(at8)
    assert torch.equal(last, last_ref) and torch.equal(best, best_ref) and len(state.curve) == len(state_ref.curve)


# --- concurrent writers ---------------------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import sys, numpy as np, pandas as pd
    from pipeline_steps.io import write_parquet
    path, me, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    for r in range(rounds):
        n = 50_000 + 1000 * me + r  # every version of the file has its own length
        write_parquet(pd.DataFrame({"writer": np.full(n, me), "round": np.full(n, r), "x": np.arange(n)}), path)
    """)


def test_concurrent_writers_never_expose_a_partial_artifact(tmp_path):
    path = tmp_path / "shared" / "table.parquet"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(i), "40"], env=env) for i in range(3)]
    victim = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "9", "100000"], env=env)
    seen, reads = set(), 0
    deadline = time.monotonic() + 120
    killed = False
    while any(w.poll() is None for w in writers) and time.monotonic() < deadline:
        if path.exists():
            t = read_parquet(path)  # one open file: raises on a partial one
            writer, rnd = int(t["writer"].iloc[0]), int(t["round"].iloc[0])
            assert len(t) == 50_000 + 1000 * writer + rnd and (t["writer"] == writer).all()
            assert np.array_equal(t["x"].to_numpy(), np.arange(len(t)))
            seen.add(writer)
            reads += 1
            if not killed and 9 in seen:
                victim.send_signal(signal.SIGKILL)  # killed at any point, mid-write included
                killed = True
        time.sleep(0.001)
    victim.kill()
    victim.wait()
    assert all(w.wait(timeout=60) == 0 for w in writers)
    assert reads > 20 and len(seen) >= 2, (reads, seen)
    t = read_parquet(path)
    assert len(t) == 50_000 + 1000 * int(t["writer"].iloc[0]) + int(t["round"].iloc[0])
    # the only leftovers are hidden temporary files of the killed writer, never the final name
    assert {p.name for p in path.parent.iterdir() if not p.name.startswith(".")} == {"table.parquet"}


BUILDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from pipeline_steps.models.build import atomic_dir
    final, me, sync, rounds = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    for r in range(rounds):
        with atomic_dir(final) as tmp:
            for name in ("config.json", "model.safetensors", "tokenizer.json"):
                (tmp / name).write_text(f"{me}-{r};" * 100)
            (sync / f"ready{r}-{me}").touch()
            while not (sync / f"go{r}").exists():
                time.sleep(0.001)
        (sync / f"done{r}-{me}").touch()
    """)
FILES = {"config.json", "model.safetensors", "tokenizer.json"}


def test_concurrent_builders_of_one_model_folder(tmp_path):
    """Two workflows sharing a models folder may build the same model at the same moment."""
    final, sync = tmp_path / "models" / "tiny-bert", tmp_path / "sync"
    sync.mkdir()
    n, rounds = 4, 5
    procs = [subprocess.Popen([sys.executable, "-c", BUILDER, str(final), str(i), str(sync), str(rounds)],
                              env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, text=True)
             for i in range(n)]

    def wait_all(prefix: str, r: int) -> None:
        deadline = time.monotonic() + 120
        while sum((sync / f"{prefix}{r}-{i}").exists() for i in range(n)) < n:
            failed = [p.stderr.read() for p in procs if p.poll() not in (None, 0)]
            assert not failed and time.monotonic() < deadline, failed or f"timeout waiting for {prefix}{r}"
            try:  # absent (a builder may have just moved it aside), empty or complete: never partial
                names = set(os.listdir(final))
            except FileNotFoundError:
                names = set()
            assert not names or names == FILES, f"partial model folder visible: {names}"

    for r in range(rounds):
        wait_all("ready", r)  # every builder holds a complete folder under its temporary name
        (sync / f"go{r}").touch()  # and all install at once
        wait_all("done", r)
        contents = {(final / name).read_text() for name in FILES}
        assert len(contents) == 1 and contents.pop().endswith(f"-{r};")  # one builder's complete folder
    assert all(p.wait(timeout=60) == 0 for p in procs)
    assert [p.name for p in final.parent.iterdir()] == ["tiny-bert"]  # no temporary folder left behind
