"""Data stage: load a task from its source, normalise, split, write Parquet.

Output schema (one file per task): ``idx`` (int64, row number in the source),
``text_a`` (str), ``text_b`` (str, empty for single-text tasks), ``label``
(int64, index into the task's ``label_names``), ``split`` (train/dev/test).
"""
from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import shown
from ..errors import UserError
from ..io import read_text, stable_hash, write_parquet
from . import demo

log = logging.getLogger(__name__)
SPLITS = ("train", "dev", "test")
# tasks.<name>.split defaults (the schema fills the same values; DynSAN has its own, dynsan/config.py)
TEST_FRACTION = 0.25
DEV_FRACTION = 0.15
SPLIT_SEED = 13
_SPLIT_ALIASES = {"train": "train", "dev": "dev", "validation": "dev", "valid": "dev", "val": "dev", "test": "test"}
_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


# --- sources ---------------------------------------------------------------------------------

def read_local(path: str, fmt: str | None = None) -> pd.DataFrame:
    """Read a CSV/TSV/JSONL/Parquet file strictly (UTF-8), with errors naming the file."""
    p = Path(path)
    try:
        found = p.is_file()
    except (OSError, ValueError) as e:  # a name too long for the file system, ...
        raise UserError(f"{shown(path)}: not a usable file name ({type(e).__name__})") from None
    if not found:
        raise UserError(f"{path}: data file not found" + (" (it is a folder)" if p.is_dir() else ""))
    fmt = fmt or _FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise UserError(f"{path}: cannot tell the format from the extension '{p.suffix}'; "
                        f"set source.format to one of csv, tsv, jsonl, parquet")
    # text formats through the one reader: UTF-8 (a byte-order mark of spreadsheet exports dropped) or
    # 'FILE: line N: not valid UTF-8'
    text = read_text(p, "data file") if fmt != "parquet" else None
    try:
        if fmt in ("csv", "tsv"):
            df = pd.read_csv(io.StringIO(text), sep="," if fmt == "csv" else "\t", keep_default_na=False, dtype=str)
        elif fmt == "jsonl":
            df = pd.read_json(io.StringIO(text), lines=True, dtype=False)
        else:
            df = pd.read_parquet(p)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: the file is empty") from None
    except Exception as e:  # the readers' own errors (pandas, pyarrow, json) all mean: not this format
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"{path}: cannot be read as {fmt}: {shown(first, 200)[1:-1]}") from None
    if not isinstance(df, pd.DataFrame):  # JSON lines that are not objects
        raise UserError(f"{path}: cannot be read as {fmt}: each line must be a JSON object")
    if len(df) == 0:
        raise UserError(f"{path}: the file has no rows")
    return df


def hub_splits(src: dict):
    """``(role, split, datasets.Dataset)`` for each configured split of a hub source ``{hub, subset?,
    revision?, splits}`` (needs network or a warm HF cache); a failed load is one clear UserError."""
    import datasets

    for role, split in (src.get("splits") or {"train": "train"}).items():
        if not split:
            continue
        try:
            ds = datasets.load_dataset(src["hub"], src.get("subset"), split=split, revision=src.get("revision"))
        except Exception as e:  # network, unknown id or split: all surface as one clear message
            raise UserError(f"hub dataset '{src['hub']}' (subset {src.get('subset')}, split '{split}') "
                            f"could not be loaded: {type(e).__name__}: {e}") from None
        yield role, split, ds


def read_hub(src: dict) -> pd.DataFrame:
    """Load the configured splits of a hub dataset."""
    frames = []
    for role, _, ds in hub_splits(src):
        df = ds.to_pandas()
        df["__split"] = role
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def load_raw(spec: dict) -> tuple[pd.DataFrame, str, str | None]:
    """Return (frame, origin for messages, name of the column holding source splits or None)."""
    src = spec["source"]
    if "demo" in src:
        return demo.generate(src["demo"], src.get("size", 600), seed=0), f"demo:{src['demo']}", None
    if "hub" in src:
        return read_hub(src), f"hub:{src['hub']}", "__split"
    return read_local(src["path"], src.get("format")), src["path"], src.get("split_field")


# --- normalisation ---------------------------------------------------------------------------

def _label_index(values: pd.Series, names: list[str], origin: str, field: str, rows: np.ndarray) -> np.ndarray:
    """``rows``: the source row number of each value (for messages)."""
    lookup = {n: i for i, n in enumerate(names)}
    out = np.empty(len(values), dtype=np.int64)
    for pos, (row, v) in enumerate(zip(rows.tolist(), values.tolist())):
        if isinstance(v, (float, np.floating)) and np.isfinite(v) and float(v).is_integer():
            v = int(v)  # an integer column with a missing value is read as floats: 1.0 means 1
        key = str(v).strip() if not isinstance(v, (int, np.integer)) or isinstance(v, bool) else v
        if isinstance(key, str) and key in lookup:
            out[pos] = lookup[key]
            continue
        try:
            as_int = int(key)
        except (TypeError, ValueError):
            as_int = None
        if as_int is not None and 0 <= as_int < len(names) and str(as_int) == str(key):
            out[pos] = as_int
            continue
        raise UserError(f"{origin}: row {row}: label {shown(v)} in column '{field}' is not one of the "
                        f"label_names {shown(names, 200)} (nor an index 0..{len(names) - 1})")
    return out


def normalise(raw: pd.DataFrame, spec: dict, origin: str, split_col: str | None) -> pd.DataFrame:
    fields = list(spec["text_fields"]) + [spec["label_field"]] + ([split_col] if split_col else [])
    missing = [f for f in fields if f not in raw.columns]
    if missing:
        raise UserError(f"{origin}: missing column(s) {missing}; the file has {shown(list(raw.columns), 300)}")
    twice = sorted({str(c) for c in raw.columns[raw.columns.duplicated()]} & {str(f) for f in fields})
    if twice:
        raise UserError(f"{origin}: column(s) {twice} appear more than once; keep one of each")
    raw = raw.reset_index(drop=True)
    raw["__idx"] = np.arange(len(raw), dtype=np.int64)
    ignore = {str(v) for v in spec.get("ignore_labels", [])}
    if ignore:
        raw = raw[~raw[spec["label_field"]].astype(str).isin(ignore)]
    if len(raw) == 0:
        raise UserError(f"{origin}: no rows left after dropping ignore_labels {sorted(ignore)}")
    out = pd.DataFrame({"idx": raw["__idx"].to_numpy()})
    for col, field in zip(("text_a", "text_b"), spec["text_fields"]):
        text = raw[field]
        empty = text.isna() | (text.astype(str).str.strip() == "")
        if empty.any():
            row = int(raw["__idx"][empty].iloc[0])
            raise UserError(f"{origin}: row {row}: empty text in column '{field}' ({int(empty.sum())} such rows)")
        if text.map(lambda v: isinstance(v, (dict, list, np.ndarray))).any():
            row = int(raw["__idx"][text.map(lambda v: isinstance(v, (dict, list, np.ndarray)))].iloc[0])
            raise UserError(f"{origin}: row {row}: column '{field}' holds a list or mapping, not text")
        out[col] = text.astype(str).to_numpy()
    if "text_b" not in out:
        out["text_b"] = ""
    out["label"] = _label_index(raw[spec["label_field"]], spec["label_names"], origin, spec["label_field"],
                                raw["__idx"].to_numpy())
    if split_col:
        values = raw[split_col].astype(str).str.strip().str.lower()
        bad = sorted(set(values) - set(_SPLIT_ALIASES))
        if bad:
            raise UserError(f"{origin}: column '{split_col}' has unknown split name(s) {shown(bad, 200)}; "
                            f"use train, dev (or validation) and test")
        out["split"] = values.map(_SPLIT_ALIASES).to_numpy()
    else:
        out["split"] = None
    return out


# --- splitting ---------------------------------------------------------------------------------

def _stratified_take(df: pd.DataFrame, fraction_or_n, rng: np.random.Generator) -> np.ndarray:
    """Row positions of a stratified sample: a fraction of each class, or n rows spread over classes."""
    chosen = []
    n_total = len(df)
    for _, group in df.groupby("label", sort=True):
        pos = group.index.to_numpy()
        pos = pos[rng.permutation(len(pos))]
        if isinstance(fraction_or_n, float):
            k = int(round(len(pos) * fraction_or_n))
        else:
            k = int(round(fraction_or_n * len(pos) / n_total))
        chosen.append(pos[: max(k, 1 if len(pos) > 1 else 0)])
    return np.sort(np.concatenate(chosen)) if chosen else np.array([], dtype=np.int64)


def assign_splits(df: pd.DataFrame, spec: dict, shortfall: dict | None = None) -> pd.DataFrame:
    """Deterministic train/dev/test from the task's split seed, then caps and k-shot subsets.

    With ``k_shot``, a class of train or dev with fewer than k examples keeps all it has: a warning
    names task, split and class, and ``shortfall[split]`` (if given) gets the examples lacking to k,
    summed over the classes (those absent from the split lack k), as KPT's ``k_shot_shortfall``."""
    cfg = spec.get("split", {})
    rng = np.random.default_rng(cfg.get("seed", SPLIT_SEED))
    df = df.sort_values("idx").reset_index(drop=True)
    have = set(df["split"].dropna())
    if not have:
        df["split"] = "train"
        test = _stratified_take(df, float(cfg.get("test_fraction", TEST_FRACTION)), rng)
        df.loc[test, "split"] = "test"
    elif "test" not in have and "dev" in have:
        df.loc[df["split"] == "dev", "split"] = "test"  # hub tasks without test labels: dev serves as test
    if "dev" not in set(df["split"]):
        train = df[df["split"] == "train"]
        dev = _stratified_take(train, float(cfg.get("dev_fraction", DEV_FRACTION)), rng)
        df.loc[dev, "split"] = "dev"
    k = spec.get("k_shot")
    for split in SPLITS:
        part = df[df["split"] == split]
        cap = spec.get(f"max_{split}")
        keep = part.index.to_numpy()
        if k and split in ("train", "dev") and len(part):
            keep = np.sort(np.concatenate([
                g.index.to_numpy()[rng.permutation(len(g))][:k] for _, g in part.groupby("label", sort=True)]))
            short = _k_shot_shortfall(part, k, spec, split)
            if shortfall is not None:
                shortfall[split] = short
        elif cap and len(part) > cap:
            keep = _stratified_take(part, int(cap), rng)
        df.loc[part.index.difference(keep), "split"] = None
    df = df[df["split"].notna()].copy()
    order = {s: i for i, s in enumerate(SPLITS)}
    df["__order"] = df["split"].map(order)
    return df.sort_values(["__order", "idx"]).drop(columns="__order").reset_index(drop=True)


def _k_shot_shortfall(part: pd.DataFrame, k: int, spec: dict, split: str) -> int:
    """Examples lacking to k in one split, summed over the task's classes; a warning for each short class."""
    have = part["label"].value_counts()
    names = spec.get("label_names") or sorted(have.index.tolist())
    total = 0
    for c, name in enumerate(names):
        n = int(have.get(c, 0))
        if n < k:
            log.warning("task %s: %s split: class %s has %d example(s), fewer than k_shot=%d: all are kept "
                        "(%d short)", spec.get("name"), split, shown(name), n, k, k - n)
            total += k - n
    return total


def check_splits(df: pd.DataFrame, spec: dict, origin: str) -> None:
    for split in SPLITS:
        part = df[df["split"] == split]
        if len(part) == 0:
            raise UserError(f"{origin}: the {split} split is empty (task '{spec['name']}'); "
                            f"add data or change split/max_{split}/k_shot")
    n_classes = df[df["split"] == "train"]["label"].nunique()
    if n_classes < 2:
        raise UserError(f"{origin}: the train split holds a single class (task '{spec['name']}'); "
                        f"a classifier needs at least two")


def prepare_task(spec: dict, shortfall: dict | None = None) -> pd.DataFrame:
    """The task's table; ``shortfall`` (if given) gets the k-shot shortfall per split (see assign_splits)."""
    raw, origin, split_col = load_raw(spec)
    df = normalise(raw, spec, origin, split_col)
    df = assign_splits(df, spec, shortfall)
    check_splits(df, spec, origin)
    df["idx"] = df["idx"].astype("int64")
    df["label"] = df["label"].astype("int64")
    return df[["idx", "text_a", "text_b", "label", "split"]]


def run(spec: dict, output: str) -> pd.DataFrame:
    """Rule entry point: prepare and write ``output`` (Parquet) atomically."""
    short = {"train": 0, "dev": 0}
    df = prepare_task(spec, short)
    counts = {s: int((df["split"] == s).sum()) for s in SPLITS}
    log.info("task %s: %s", spec["name"], counts)
    if sum(short.values()):
        log.warning("task %s: %d examples short of k_shot=%d per class (train %d, dev %d); fewer were kept",
                    spec["name"], sum(short.values()), spec["k_shot"], short["train"], short["dev"])
    # k_shot_shortfall: examples lacking to k per class, train + dev (0 without k_shot); it reaches the
    # prompt-tuning table's column of the same name (prompt_tuning/report.py)
    write_parquet(df, output, metadata={"step": "prepare_data", "task": spec["name"],
                                        "spec_hash": stable_hash(spec), "counts": counts,
                                        "k_shot_shortfall": sum(short.values()),
                                        "k_shot_shortfall_by_split": short})
    return df
