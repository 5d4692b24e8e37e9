"""Helpers shared by the workflow tests: the tiny config, Snakemake through its API and its CLI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SNAKEFILE = REPO / "workflow" / "Snakefile"

TINY = {
    "threads": 1,
    "models": {"tiny-bert": {"source": "tiny:bert"}, "tiny-roberta": {"source": "tiny:roberta"}},
    "experiment": {"tasks": ["movies", "topics"], "models": ["tiny-bert"], "seeds": [1]},
    "prompt_tuning": {"prompt_length": 4, "steps": 4, "batch_size": 8, "eval_every": 2, "max_length": 32,
                      "checkpoint_every": 2},
    "transfer": {"random_seeds": [0]},
    # tiny-roberta is outside the grid: its prompts are built on demand for the projector
    "projector": {"pairs": [{"source": "tiny-bert", "target": "tiny-roberta", "train_tasks": ["movies"],
                             "eval_tasks": ["topics"]}],
                  "hidden": 16, "distance": {"steps": 20, "eval_every": 10},
                  "task": {"steps": 4, "batch_size": 8, "eval_every": 2}},
    "tasks": {
        "movies": {"source": {"demo": "movie_reviews", "size": 80}, "text_fields": ["text"],
                   "label_names": ["negative", "positive"], "template": "{text_a} It was {mask}.",
                   "label_words": {"negative": ["bad"], "positive": ["good"]}},
        "topics": {"source": {"demo": "topics", "size": 80}, "text_fields": ["text"],
                   "label_names": ["sports", "science", "business", "politics"], "template": "{mask} news: {text_a}",
                   "label_words": {k: [k] for k in ["sports", "science", "business", "politics"]}},
    },
}


def snakemake(workdir: Path, dryrun: bool = False, targets=()) -> None:
    """Run the workflow in ``workdir`` (its config.yaml) through the Snakemake API, 2 cores."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (ConfigSettings, DAGSettings, ExecutionSettings, OutputSettings,
                                          ResourceSettings, StorageSettings)

    with SnakemakeApi(OutputSettings(dryrun=dryrun, show_failed_logs=True)) as api:
        wf = api.workflow(resource_settings=ResourceSettings(cores=2),
                          config_settings=ConfigSettings(configfiles=[workdir / "config.yaml"]),
                          storage_settings=StorageSettings(), snakefile=SNAKEFILE, workdir=workdir)
        dag = wf.dag(DAGSettings(targets=set(targets)))
        dag.execute_workflow(executor="local", pseudo_executor="dryrun" if dryrun else None,
                             execution_settings=ExecutionSettings(latency_wait=2))


def outputs(workdir: Path) -> dict[str, int]:
    return {str(p.relative_to(workdir)): p.stat().st_mtime_ns for p in (workdir / "results").rglob("*") if p.is_file()}




def snakemake_cli(workdir: Path, *args: str, timeout: int = 300, env: dict | None = None,
                  cores: str | None = "1") -> subprocess.CompletedProcess:
    """``python -m snakemake -s workflow/Snakefile [--cores N] ARGS`` in ``workdir``, with this
    interpreter's bin folder first on PATH (jobs run in the same environment); no stdin."""
    env = {**(env if env is not None else os.environ)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), *(["--cores", cores] if cores else []), *args]
    return subprocess.run(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)


def tokenized_reviews(bundle, path: Path, n: int = 48) -> str:
    """A tokenised two-class review table (half train, a quarter dev, a quarter test) written to ``path``."""
    import numpy as np
    import pandas as pd

    from pipeline_steps.data.tokenize import tokenize_frame
    from pipeline_steps.io import write_parquet

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, n)
    texts = [("a great and fun film" if y else "an awful and dull film") + f" {i}" for i, y in enumerate(labels)]
    split = ["train"] * (n // 2) + ["dev"] * (n // 4) + ["test"] * (n - n // 2 - n // 4)
    df = pd.DataFrame({"idx": range(n), "text_a": texts, "text_b": "", "label": labels, "split": split})
    write_parquet(tokenize_frame(df, bundle.tokenizer, "{text_a} It was {mask}.", 32), path)
    return str(path)
