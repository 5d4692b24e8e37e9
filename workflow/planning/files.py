"""Local files that jobs read, declared as the jobs' inputs (plain Python, no Snakemake import).

A file the workflow does not make (a task's CSV/TSV/JSONL/Parquet, DynSAN's data and word-vector
files, KPT's word lists and WordNet folder) is an input of each job that reads it, so Snakemake
reruns that job, and what depends on it, when the file is replaced, edited or touched: the same
rule as for the files the workflow makes. Paths are given as in the config (relative ones are read
from the working directory, as Snakemake reads inputs).
"""
from __future__ import annotations

from pathlib import Path


def _folder_files(folder: str | Path) -> list[str]:
    """The regular files of a folder (sorted; none when it does not exist: the job names it)."""
    folder = Path(folder).expanduser()
    return sorted(str(p) for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def task_files(cfg: dict, task: str) -> list[str]:
    """The data file ``prepare_data`` reads for ``task`` (none for demo and hub sources)."""
    src = cfg["tasks"][task]["source"]
    return [src["path"]] if "path" in src else []


def embedding_files(cfg: dict) -> list[str]:
    """DynSAN's word vectors: a word-vector file, or a local model folder's files (none when embedded)."""
    source = cfg["dynsan"]["embeddings"]["source"]
    if source == "embedded:minilm-l6":
        return []
    path = Path(source).expanduser()
    return _folder_files(path) if path.is_dir() else [str(path)]


def dynsan_task_files(cfg: dict, task: str) -> list[str]:
    """What ``dynsan_prepare`` reads for ``task``: its data file(s) (one, or one per split) and the word vectors."""
    paths = cfg["dynsan"]["tasks"][task]["source"].get("path")
    files = list(paths.values()) if isinstance(paths, dict) else ([paths] if paths else [])
    return files + embedding_files(cfg)
