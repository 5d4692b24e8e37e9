"""The warm worker (pipeline_steps/warm.py): a step run through it gives the same files, status and
messages as a step run in its own process; signals reach it; a worker nobody needs goes away."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from helpers import tokenized_reviews
from pipeline_steps import warm
from pipeline_steps.io import load_tensors
from pipeline_steps.prompt_tuning.config import PromptTuningConfig
from pipeline_steps.runtime import load_bundle

REPO = Path(__file__).resolve().parent.parent
WARM_LINE = "warm start: this step runs in a child of the warm worker"


def _job_env(extra: dict | None = None) -> dict:
    """The environment of a job, as a rule's shell gives it (the repo on PYTHONPATH)."""
    env = {k: v for k, v in os.environ.items() if k not in (warm.ENV_SOCKET, warm.ENV_SWITCH)}
    env["PYTHONPATH"] = str(REPO)
    env.update({key: "1" for key in warm.THREAD_ENV})
    return {**env, **(extra or {})}


def _wait(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def _start_worker(root: Path, prelude: str | None = None) -> dict:
    """``python -m pipeline_steps.warm serve`` for jobs with ``_job_env()``, owned by this test process (as
    by Snakemake's); with ``prelude``, that Python code runs first in the worker's process."""
    sock = str(root / "w.sock")
    env = _job_env({warm.ENV_SOCKET: sock})
    log = root / "worker.log"
    serve = [sock, str(os.getpid())]
    argv = ["-m", "pipeline_steps.warm", "serve", *serve] if prelude is None else \
        ["-c", f"{prelude}; import sys; from pipeline_steps import warm; warm.serve(sys.argv[1], int(sys.argv[2]))",
         *serve]
    proc = subprocess.Popen([sys.executable, *argv], env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            cwd=REPO, start_new_session=True)
    _wait(lambda: os.path.exists(sock) or proc.poll() is not None, 120, "the worker's socket")
    assert proc.poll() is None, log.read_text()
    return {"proc": proc, "env": env, "log": log, "sock": sock}


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    w = _start_worker(tmp_path_factory.mktemp("warm"))
    yield w
    w["proc"].terminate()
    w["proc"].wait(timeout=20)
    assert not os.path.exists(w["sock"])  # it cleans up after itself
    assert "stopping" in w["log"].read_text()


def _step(env, *argv, cwd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline_steps", *argv], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300, **kw)


def _train_args(tiny_spec, tmp_path, name: str, steps: int) -> list[str]:
    spec = tiny_spec("bert")
    tok = tmp_path / "tok.parquet"
    if not tok.exists():
        tokenized_reviews(load_bundle(spec), tok)
    from helpers import TINY
    from pipeline_steps.config import validate
    from pipeline_steps.specs import task_spec

    cfg = json.loads(json.dumps(TINY))
    validate(cfg, origin="test")
    task = task_spec(cfg, "movies")
    settings = PromptTuningConfig(prompt_length=4, steps=steps, batch_size=8, eval_every=2, max_length=32,
                                  checkpoint_every=1000).to_dict()
    args = {"model_spec": spec, "task_spec": task, "settings": settings, "seed": 3, "tokenized": str(tok)}
    files = {k: str(tmp_path / name / f"{k}.{ext}") for k, ext in
             (("prompt", "safetensors"), ("curve", "parquet"), ("meta", "json"))}
    return ["train-prompt", "--args", json.dumps(args), "--files", json.dumps(files)]


def test_a_step_in_the_worker_writes_what_a_cold_process_writes(worker, tiny_spec, tmp_path):
    warm_run = _step(worker["env"], *_train_args(tiny_spec, tmp_path, "warm", 6), cwd=tmp_path)
    cold_run = _step({**worker["env"], warm.ENV_SWITCH: "0"}, *_train_args(tiny_spec, tmp_path, "cold", 6),
                     cwd=tmp_path)
    assert warm_run.returncode == 0 and cold_run.returncode == 0, warm_run.stderr + cold_run.stderr
    assert WARM_LINE in warm_run.stderr and WARM_LINE not in cold_run.stderr
    assert "train-prompt done" in warm_run.stderr  # the step's own log lines reach the job's stderr
    got, got_meta = load_tensors(tmp_path / "warm/prompt.safetensors")
    want, want_meta = load_tensors(tmp_path / "cold/prompt.safetensors")
    assert torch.equal(got["prompt"], want["prompt"])
    drop = lambda m: {k: v for k, v in m.items() if not k.endswith("seconds")}  # noqa: E731
    assert drop(json.loads((tmp_path / "warm/meta.json").read_text())) == \
        drop(json.loads((tmp_path / "cold/meta.json").read_text()))


def test_status_and_error_lines_come_back_unchanged(worker, tmp_path):
    res = _step(worker["env"], "no-such-step", cwd=tmp_path)
    assert res.returncode == 2 and "unknown step 'no-such-step'" in res.stderr
    res = _step(worker["env"], "tokenize", "--args", "{}", cwd=tmp_path)
    assert res.returncode == 2 and "step tokenize: missing argument(s)" in res.stderr
    assert "Traceback" not in res.stderr and WARM_LINE in res.stderr
    # the job's working folder is the child's: a relative output lands there
    src = tmp_path / "d.csv"
    src.write_text("text,label\n" + "".join(f"review {i},{'ab'[i % 2]}\n" for i in range(40)))
    spec = {"name": "t", "source": {"path": "d.csv"}, "text_fields": ["text"], "label_field": "label",
            "label_names": ["a", "b"], "template": "{text_a} {mask}", "label_words": {"a": ["x"], "b": ["y"]}}
    res = _step(worker["env"], "prepare-data", "--args", json.dumps({"spec": spec, "output": "out.parquet"}),
                cwd=tmp_path)
    assert res.returncode == 0 and (tmp_path / "out.parquet").stat().st_size > 0, res.stderr


def test_another_environment_runs_cold_and_the_worker_says_why(worker, tmp_path):
    offline = "0" if worker["env"].get("HF_HUB_OFFLINE") == "1" else "1"  # differs from the worker's
    res = _step({**worker["env"], "HF_HUB_OFFLINE": offline, "PTW_TEST_MARK": "x"}, "no-such-step", cwd=tmp_path)
    assert res.returncode == 2 and "unknown step" in res.stderr and WARM_LINE not in res.stderr
    assert "declined a job (another environment: HF_HUB_OFFLINE, PTW_TEST_MARK)" in worker["log"].read_text()
    # the thread counts Snakemake sets per job are part of the environment: 2 threads is not 1
    res = _step({**worker["env"], "OMP_NUM_THREADS": "2"}, "no-such-step", cwd=tmp_path)
    assert res.returncode == 2 and WARM_LINE not in res.stderr
    # no worker at the path: cold, no error
    res = _step({**worker["env"], warm.ENV_SOCKET: str(tmp_path / "none.sock")}, "no-such-step", cwd=tmp_path)
    assert res.returncode == 2 and "unknown step" in res.stderr and "warm" not in res.stderr


def _children(worker_proc) -> set[int]:
    return {c.pid for c in psutil.Process(worker_proc.pid).children()}


def _new_child_of(worker_proc, before: set[int]) -> psutil.Process:
    """The worker's child that was not there before (not one a failed earlier test left running)."""
    pid = _wait(lambda: next(iter(_children(worker_proc) - before), None), 60, "the worker's child")
    return psutil.Process(pid)


def _end_a_long_step(worker, tiny_spec, tmp_path, how):
    before = _children(worker["proc"])
    job = subprocess.Popen([sys.executable, "-m", "pipeline_steps", *_train_args(tiny_spec, tmp_path, how, 100000)],
                           env=worker["env"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True)
    child = _new_child_of(worker["proc"], before)
    os.kill(job.pid, getattr(signal, how))
    try:
        status = job.wait(timeout=30)
        assert status == (128 + signal.SIGTERM if how == "SIGTERM" else -signal.SIGKILL)
        _wait(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, 30, "the child to end")
    finally:  # never leave a 100000-step child behind for the next test
        job.kill()
        if child.is_running():
            child.kill()
    assert not (tmp_path / how / "prompt.safetensors").exists()
    assert worker["proc"].poll() is None  # the worker itself carries on


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_ending_the_job_ends_the_step(worker, tiny_spec, tmp_path, how):
    """Snakemake cancels a job by signalling its process: the step in the worker's child ends with it
    (SIGTERM is passed on; after SIGKILL the child notices that the job process is gone)."""
    _end_a_long_step(worker, tiny_spec, tmp_path, how)


def test_a_signal_right_after_the_fork_is_not_lost(tmp_path_factory, tiny_spec, tmp_path):
    """A SIGTERM the job passes on while the freshly forked child still has the worker's handlers must
    still end the child (it failed in CI: the worker's handler took it, and the step ran on). A worker
    whose children pause 1 s right after the fork holds that window open."""
    w = _start_worker(tmp_path_factory.mktemp("slowfork"),
                      prelude="import os, time; os.register_at_fork(after_in_child=lambda: time.sleep(1.0))")
    try:
        _end_a_long_step(w, tiny_spec, tmp_path, "SIGTERM")
    finally:
        w["proc"].terminate()
        w["proc"].wait(timeout=20)


def test_worker_ends_with_its_run_and_refuses_a_shared_folder(tmp_path, monkeypatch):
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    sock = str(tmp_path / "p.sock")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline_steps.warm", "serve", sock, str(parent.pid)],
                            env=_job_env({warm.ENV_SOCKET: sock}), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    _wait(lambda: os.path.exists(sock), 120, "the worker's socket")
    parent.kill()
    parent.wait()
    out, _ = proc.communicate(timeout=30)  # the Snakemake process that owned it is gone: so is it
    assert proc.returncode == 0 and "served 0 job(s), stopping" in out and not os.path.exists(sock)

    # the socket folder must be private to the user: any other user could run code as us
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.delenv(warm.ENV_SOCKET, raising=False)
    shared = tmp_path / f"ptw-warm-{os.getuid()}"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    assert warm.start(sys.executable, str(REPO), str(tmp_path / "w.log")) is None
    assert warm.ENV_SOCKET not in os.environ
    monkeypatch.setenv(warm.ENV_SWITCH, "0")  # switched off
    shared.chmod(0o700)
    assert warm.start(sys.executable, str(REPO), str(tmp_path / "w.log")) is None
