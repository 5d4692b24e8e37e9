"""Bad input, tried the way a user meets it: the ``snakemake`` command in a working directory.

Two tables. ``AT_START``: the config is refused while Snakemake reads it, before any
job; nothing is written under ``results/``. ``IN_JOBS``: the problem can only be seen
by the job that reads the data or the model's tokenizer; that job stops at its start
(before any training) and writes nothing under its output names, and all such cases
run in one ``snakemake --keep-going`` over their targets. Every case checks the exit
status, the message (naming what to fix), and that no Python traceback reaches the user.
"""
from __future__ import annotations

import concurrent.futures
import copy
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from helpers import snakemake_cli

REPO = Path(__file__).resolve().parent.parent
SNAKEFILE = REPO / "workflow" / "Snakefile"
pytestmark = pytest.mark.workflow

MOVIES = {"source": {"demo": "movie_reviews", "size": 60}, "text_fields": ["text"],
          "label_names": ["negative", "positive"], "template": "{text_a} It was {mask}.",
          "label_words": {"negative": ["bad"], "positive": ["good"]}}
BASE = {
    "threads": 1,
    "models": {"tiny-bert": {"source": "tiny:bert"}},
    "experiment": {"tasks": ["movies"], "models": ["tiny-bert"], "seeds": [1]},
    "prompt_tuning": {"prompt_length": 4, "steps": 4, "batch_size": 8, "eval_every": 2, "max_length": 32},
    "tasks": {"movies": MOVIES},
}


def _set(path: str, value):
    def change(cfg: dict, wd: Path) -> None:
        *parents, last = path.split(".")
        node = cfg
        for key in parents:
            node = node[key]
        node[last] = value
    return change


def _rename_task(new: str):
    def change(cfg: dict, wd: Path) -> None:
        cfg["tasks"][new] = cfg["tasks"].pop("movies")
        cfg["experiment"]["tasks"] = [new]
    return change


def _drop(path: str):
    def change(cfg: dict, wd: Path) -> None:
        *parents, last = path.split(".")
        node = cfg
        for key in parents:
            node = node[key]
        del node[last]
    return change


def _raw(text: str | bytes):
    return text  # the config file's text (or bytes) as is


def _dynsan(section: str, **values):
    """A DynSAN section with the given values; no DynSAN task runs (the section is checked all the same)."""
    def change(cfg: dict, wd: Path) -> None:
        cfg.setdefault("dynsan", {}).setdefault(section, {}).update(values)
    return change


def _stage_only_model(cfg: dict, wd: Path) -> None:
    """A model named only in kpt.models (not in the experiment grid), whose folder is missing."""
    cfg["models"]["local-bert"] = {"source": "./models/local-bert"}
    cfg["kpt"] = {"models": ["local-bert"], "tasks": {"movies": {"knowledge_bases": ["near"]}},
                  "knowledge_bases": {"near": {"source": "embedding"}}}


def _kb_file(content: bytes):
    """KPT on the tiny grid with a word-list file (read at start) holding ``content``."""
    def change(cfg: dict, wd: Path) -> None:
        (wd / "kb.txt").write_bytes(content)
        cfg["kpt"] = {"models": ["tiny-bert"], "tasks": {"movies": {"knowledge_bases": ["words"]}},
                      "knowledge_bases": {"words": {"source": "file", "path": "kb.txt"}}}
    return change


# (case, change to the tiny config or raw config text, fragments the message must contain)
AT_START = [
    ("malformed YAML", _raw("models: [unclosed\n  tiny: 1\n"), ["config.yaml: malformed YAML", "line 1, column 9"]),
    ("config not a mapping", _raw("- models\n- tasks\n"), ["config.yaml", "must be a mapping"]),
    ("unknown key", _set("tasks.movies.tempalte", "{text_a} {mask}"), ["tasks.movies", "'tempalte'"]),
    ("wrong type", _set("prompt_tuning.steps", "many"), ["prompt_tuning.steps", "'many'", "integer"]),
    ("missing required key", _drop("tasks.movies.label_names"), ["tasks.movies", "'label_names' is a required"]),
    ("unknown model name", _set("experiment.models", ["tiny-gpt"]), ["experiment.models", "'tiny-gpt'",
                                                                       "defined models: tiny-bert"]),
    ("unknown task name", _set("experiment.tasks", ["movies", "films"]), ["experiment.tasks", "'films'"]),
    ("unknown built-in model", _set("models.tiny-bert.source", "tiny:gpt"), ["models.tiny-bert.source",
                                                                             "'tiny:gpt'", "known:"]),
    ("missing data file", _set("tasks.movies.source", {"path": "data/missing.csv"}),
     ["tasks.movies.source.path", "data/missing.csv", "does not exist"]),
    ("template without the mask slot", _set("tasks.movies.template", "{text_a} It was good."),
     ["tasks.movies.template", "mask"]),
    ("template with an unknown slot", _set("tasks.movies.template", "{text_a} {txt} {mask}"),
     ["tasks.movies.template", "txt"]),
    ("label words for other classes", _set("tasks.movies.label_words", {"negative": ["bad"], "pos": ["good"]}),
     ["tasks.movies.label_words", "label_names"]),
    ("task name with a path separator", _rename_task("a/b"), ["key 'tasks'", "'a/b'", "letters, digits"]),
    ("task name '..'", _rename_task(".."), ["key 'tasks'", "'..'", "folder names under results/"]),
    ("negative learning rate", _set("prompt_tuning.lr", -0.1), ["prompt_tuning.lr", "-0.1"]),
    ("unknown device", _set("models.tiny-bert.device", "tpu"), ["models.tiny-bert.device", "'tpu'"]),
    ("GPU type with a space", _set("models.tiny-bert.gpu_model", "a100 80gb"), ["models.tiny-bert.gpu_model"]),
    # issue 21: sections only one step reads, the readers, a stage-only model
    ("DynSAN even conv kernel", _dynsan("model", conv_kernel=4),
     ["key 'dynsan.model'", "conv_kernel must be odd", "got 4"]),
    ("DynSAN width not a multiple of heads", _dynsan("model", d=30, heads=4), ["key 'dynsan.model'", "d (30)", "heads (4)"]),
    ("DynSAN sweep width not a multiple of heads", _dynsan("efficiency", d=30, heads=4),
     ["key 'dynsan.efficiency'", "d (30) must be a multiple of heads (4)"]),
    ("model only in kpt.models, missing", _stage_only_model,
     ["models.local-bert.source", "./models/local-bert", "does not exist", "used by kpt.models"]),
    ("config file not UTF-8", _raw(b"threads: 1\n# caf\xe9\n"), ["config.yaml: line 2: not valid UTF-8"]),
    ("word-list line of separators only", _kb_file(b"bad,awful\n , ;\n"),
     ["kb.txt: line 2: no word, only separators"]),
    ("word-list file not UTF-8", _kb_file(b"bad,awful\ngood,caf\xe9\n"), ["kb.txt: line 2: not valid UTF-8"]),
]


def _snakemake(wd: Path, *args: str, timeout: int = 600) -> tuple[int, str]:
    env = {**os.environ}
    env.pop("PTW_CUDA_FALLBACK", None)
    res = snakemake_cli(wd, *args, timeout=timeout, env=env, cores=None)
    return res.returncode, res.stdout + res.stderr


def _start_case(wd: Path, change) -> tuple[int, str]:
    wd.mkdir(parents=True)
    if isinstance(change, bytes):
        (wd / "config.yaml").write_bytes(change)
    elif isinstance(change, str):
        (wd / "config.yaml").write_text(change)
    else:
        cfg = copy.deepcopy(BASE)
        change(cfg, wd)
        (wd / "config.yaml").write_text(yaml.safe_dump(cfg))
    return _snakemake(wd, "--cores", "1")


def test_bad_config_is_refused_before_any_job(tmp_path):
    assert len(AT_START) + len(IN_JOBS) >= 15
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # independent snakemake processes
        results = list(pool.map(lambda c: _start_case(tmp_path / f"case{AT_START.index(c)}", c[1]), AT_START))
    problems = []
    for (case, _, fragments), (rc, out), i in zip(AT_START, results, range(len(AT_START))):
        wd = tmp_path / f"case{i}"
        missing = [f for f in fragments if f not in out]
        if rc == 0 or missing or "Traceback" in out or (wd / "results").exists() or (wd / "logs").exists():
            problems.append(f"{case}: status {rc}, missing {missing}, output:\n{out[-1500:]}")
    assert not problems, "\n\n".join(problems)


# --- problems only a job can see: the data, the tokenizer, the model's size, the training ---------------

def _csv(rows: list[dict]) -> str:
    return pd.DataFrame(rows).to_csv(index=False)


GOOD_ROWS = [{"text": f"{w} movie number {i}", "label": lab}
             for i in range(30) for w, lab in [("a good", "positive"), ("a bad", "negative")]]


def _file_task(filename: str, **extra) -> dict:
    return {**copy.deepcopy(MOVIES), "source": {"path": f"data/{filename}"}, **extra}


# (case, task name, task config, data file contents, failing rule, target, fragments)
IN_JOBS = [
    ("unreadable Parquet", "broken_parquet", _file_task("broken.parquet"), b"PAR1 this is not parquet PAR1",
     "prepare_data", "data", ["data/broken.parquet", "cannot be read as parquet"]),
    ("labels outside the label list", "odd_label", _file_task("odd.csv"),
     _csv(GOOD_ROWS + [{"text": "so so", "label": "maybe"}]), "prepare_data", "data",
     ["data/odd.csv", "label 'maybe'", "label_names ['negative', 'positive']"]),
    ("one-class data", "one_class", _file_task("one.csv"), _csv([r for r in GOOD_ROWS if r["label"] == "positive"]),
     "prepare_data", "data", ["data/one.csv", "single class", "task 'one_class'"]),
    ("empty split", "no_train", _file_task("split.csv", source={"path": "data/split.csv", "split_field": "part"}),
     _csv([{**r, "part": "test"} for r in GOOD_ROWS]), "prepare_data", "data",
     ["data/split.csv", "the train split is empty", "task 'no_train'"]),
    ("missing text column", "no_column", _file_task("cols.csv", text_fields=["review"]), _csv(GOOD_ROWS),
     "prepare_data", "data", ["data/cols.csv", "missing column(s) ['review']", "the file has ['text', 'label']"]),
    ("text that is not UTF-8", "latin1", _file_task("latin1.csv"), "text,label\n".encode() +
     "caf\u00e9 fine,positive\n".encode("latin-1") + b"bad,negative\n", "prepare_data", "data",
     ["data/latin1.csv", "not valid UTF-8", "re-save the file as UTF-8"]),
    ("label word that tokenises to nothing", "snowman", {**copy.deepcopy(MOVIES), "label_words": {
        "negative": ["\u2603\u2603"], "positive": ["good"]}}, None, "tokenize", "tokens",
     ["tasks.snowman.label_words", "'\u2603\u2603'", "tokenises to nothing", "tiny-bert"]),
    ("prompt longer than the model allows", "long_prompt", {**copy.deepcopy(MOVIES), "prompt_tuning": {
        "prompt_length": 150}}, None, "train_prompt", "prompt",
     ["model 'tiny-bert'", "prompt_length 150 + max_length 32 exceeds the model's 160 positions"]),
    ("training that diverges (NaN loss)", "diverge", {**copy.deepcopy(MOVIES), "prompt_tuning": {"lr": 1e30}},
     None, "train_prompt", "prompt", ["prompt tuning tiny-bert/diverge/seed1: loss is nan at step 2",
                                      "lower the learning rate"]),
]
OUTPUTS = {
    "data": ["results/data/{task}/data.parquet"],
    "tokens": ["results/data/{task}/tokens-{model}.parquet"],
    "prompt": ["results/prompts/{model}/{task}/seed1/prompt.safetensors",
               "results/prompts/{model}/{task}/seed1/curve.parquet", "results/prompts/{model}/{task}/seed1/meta.json"],
}
LOGS = {"prepare_data": "logs/prepare_data/{task}.log", "tokenize": "logs/tokenize/{task}-{model}.log",
        "train_prompt": "logs/train_prompt/{model}-{task}-seed1.log"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the device case needs a machine without CUDA")
def test_bad_data_and_settings_stop_their_job_at_its_start(tmp_path):
    cfg = copy.deepcopy(BASE)
    cfg["models"]["cuda-bert"] = {"source": "tiny:bert", "device": "cuda"}
    (tmp_path / "data").mkdir()
    for _, task, spec, content, *_ in IN_JOBS:
        cfg["tasks"][task] = spec
        if content is not None:
            p = tmp_path / spec["source"]["path"]
            p.write_bytes(content if isinstance(content, bytes) else content.encode())
    cfg["experiment"] = {"tasks": sorted(cfg["tasks"]), "models": ["tiny-bert", "cuda-bert"], "seeds": [1]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    fill = lambda pattern, task, model="tiny-bert": pattern.format(task=task, model=model)  # noqa: E731
    targets = [fill(OUTPUTS[kind][0], task) for _, task, _, _, _, kind, _ in IN_JOBS]
    targets.append(fill(OUTPUTS["prompt"][0], "movies", "cuda-bert"))  # a cuda model where there is none
    rc, out = _snakemake(tmp_path, "--cores", "2", "--keep-going", *targets)

    assert rc != 0 and "Traceback" not in out, out[-3000:]
    problems = []
    cases = [(c, t, r, k, f) for c, t, _, _, r, k, f in IN_JOBS]
    cases.append(("device cuda without a GPU", "movies", "train_prompt", "prompt",
                  ["model 'cuda-bert' asks for device cuda, but no CUDA device is visible", "set device: cpu"]))
    for case, task, rule, kind, fragments in cases:
        model = "cuda-bert" if case.startswith("device cuda") else "tiny-bert"
        log = tmp_path / fill(LOGS[rule], task, model)
        text = log.read_text() if log.exists() else ""
        lines = [line for line in text.splitlines() if line.startswith("error: ")]
        missing = [f for f in fragments if f not in text or f not in out]
        written = [f for pattern in OUTPUTS[kind] if (tmp_path / (f := fill(pattern, task, model))).exists()]
        if len(lines) != 1 or missing or written or "Traceback" in text or f"Error in rule {rule}" not in out:
            problems.append(f"{case}: {rule} log {log.name}: error lines {lines}, missing {missing}, "
                            f"written {written}\n{text[-800:]}")
        if rule == "train_prompt":  # refused at the start or at the first steps, not after training
            assert "step 2/4" not in text and "step 4/4" not in text, (case, text[-800:])
    assert not problems, "\n\n".join(problems)


# --- issue 21: DynSAN files only its data job reads, and settings that are valid but mean less -------------

def _jsonl(rows: list[dict]) -> bytes:
    import json

    return "".join(json.dumps(r) + "\n" for r in rows).encode()


_QA = {"question": "where was anna born?", "passages": ["anna was born in paris ."], "answers": ["paris"]}
# (case, task, file written under data/ (None: a demo task), fragments of the job's one error line)
DYNSAN_IN_JOBS = [
    ("word vectors not UTF-8", "vectors", None,
     ["data/w.vec: line 3: not valid UTF-8", "dynsan.embeddings.encoding: utf-8-or-latin-1"]),
    ("an answers field in another layout", "answer_object",
     _jsonl([dict(_QA, id="q1"), dict(_QA, id="q2", answers={"paris": 1})]),
     ["answer_object.jsonl: record 1 (id q2): field 'answers' must be a string or a list of strings", "got object"]),
    ("the same id twice in a split", "duplicate_id",
     _jsonl([dict(_QA, id="q1", split="train"), dict(_QA, id="q2", split="train"), dict(_QA, id="q1", split="train")]),
     ["duplicate_id.jsonl: record 2 (id q1): the id is also record 0's (split 'train')", "unique within a split"]),
]


def _dynsan_config() -> dict:
    cfg = copy.deepcopy(BASE)
    cfg["dynsan"] = {"run": {"tasks": [c[1] for c in DYNSAN_IN_JOBS], "variants": ["dynsan"]},
                     "embeddings": {"source": "data/w.vec"},
                     "limits": {"passages": 4, "passage_tokens": 16, "total_tokens": 64},
                     "model": {"d": 8, "heads": 2, "k": 4, "blocks": 1, "char_dim": 3, "char_channels": 4},
                     "efficiency": {"lengths": [16], "k": 4, "d": 8, "heads": 2, "blocks": 1, "steps": 1},
                     "tasks": {task: {"source": {"demo": "bridge", "size": 20} if content is None else
                                      {"path": f"data/{task}.jsonl"}} for _, task, content, _ in DYNSAN_IN_JOBS}}
    return cfg


def test_bad_dynsan_files_stop_their_data_job(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "w.vec").write_bytes(b"2 2\nparis 1 0\ncaf\xe9 0 1\n")  # a Latin-1 word, as in real files
    for _, task, content, _ in DYNSAN_IN_JOBS:
        if content is not None:
            (tmp_path / "data" / f"{task}.jsonl").write_bytes(content)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(_dynsan_config()))
    targets = [f"results/dynsan/data/{task}/tokens.parquet" for _, task, _, _ in DYNSAN_IN_JOBS]
    rc, out = _snakemake(tmp_path, "--cores", "2", "--keep-going", *targets)
    assert rc != 0 and "Traceback" not in out, out[-3000:]
    problems = []
    for case, task, _, fragments in DYNSAN_IN_JOBS:
        log = tmp_path / f"logs/dynsan_prepare/{task}.log"
        text = log.read_text() if log.exists() else ""
        lines = [line for line in text.splitlines() if line.startswith("error: ")]
        missing = [f for f in fragments if f not in text]
        written = [p.name for p in (tmp_path / f"results/dynsan/data/{task}").glob("*")]
        if len(lines) != 1 or missing or written or "Traceback" in text:
            problems.append(f"{case}: error lines {lines}, missing {missing}, written {written}\n{text[-800:]}")
    assert not problems, "\n\n".join(problems)


def test_variant_equal_to_full_attention_is_warned_at_start(tmp_path):
    """k >= the tokens a question keeps: the gated variant is full attention. Valid, so planned, but said."""
    cfg = _dynsan_config()
    cfg["dynsan"]["run"]["tasks"] = ["vectors"]
    cfg["dynsan"]["embeddings"] = {"source": "embedded:minilm-l6"}
    cfg["dynsan"]["model"]["k"] = 64
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    rc, out = _snakemake(tmp_path, "-n", "dynsan")
    assert rc == 0 and "Traceback" not in out, out[-3000:]
    assert ("warning: config: key 'dynsan.variants.dynsan' (task 'vectors'): k 64 >= the 64 tokens a question keeps"
            in out and "the same model as selection 'all'" in out), out[-3000:]
    assert not (tmp_path / "results").exists()


def test_counts_reach_the_tables_and_the_console(tmp_path):
    """Issue 21, class 4: dropped, truncated and cross-split duplicated DynSAN records and a KPT k-shot
    shortfall are columns of the stages' tables and 'note:' lines of the run's console output."""
    qa = [dict(_QA, id=f"q{i}") for i in range(8)]
    files = {"train": qa[:6] + [dict(_QA, id="lost", answers=["tokyo"])],  # no span for tokyo: dropped
             "dev": [dict(r, id=f"d{i}") for i, r in enumerate(qa[:3])],
             "test": [dict(_QA, id="q0")] + [dict(r, id=f"t{i}", passages=["anna was born in paris ."] * 6)
                                             for i, r in enumerate(qa[:3])]}  # q0 is in train too; 6 passages > 4
    (tmp_path / "data").mkdir()
    for split, rows in files.items():
        (tmp_path / "data" / f"{split}.jsonl").write_bytes(_jsonl(rows))
    cfg = _dynsan_config()
    cfg["dynsan"]["run"] = {"tasks": ["mine"], "variants": ["dynsan"]}
    cfg["dynsan"]["embeddings"] = {"source": "embedded:minilm-l6"}
    cfg["dynsan"]["train"] = {"steps": 2, "batch_size": 4, "eval_every": 2, "checkpoint_every": 2, "warmup_steps": 1}
    cfg["dynsan"]["tasks"] = {"mine": {"source": {"path": {s: f"data/{s}.jsonl" for s in files}}}}
    cfg["kpt"] = {"models": ["tiny-bert"], "shots": [40], "modes": ["prompt"], "variants": ["manual"],
                  "settings": {"support_size": 8}, "prompt_tuning": {"steps": 1, "eval_every": 1},
                  "tasks": {"movies": {"knowledge_bases": ["near"]}},
                  "knowledge_bases": {"near": {"source": "embedding"}}}  # 60 reviews: fewer than 40 per class
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    rc, out = _snakemake(tmp_path, "--cores", "2", "dynsan", "kpt")
    assert rc == 0, out[-3000:]
    dyn = pd.read_parquet(tmp_path / "results/tables/dynsan.parquet")
    mine = dyn[dyn["task"] == "mine"].iloc[0]
    assert (mine["dropped"], mine["truncated"], mine["duplicates"], mine["latin1_lines"]) == (1, 3, 1, 0)
    kpt = pd.read_parquet(tmp_path / "results/tables/kpt.parquet")
    assert (kpt["k_shot_shortfall"] > 0).all()
    assert ("note: dynsan.parquet: task mine: 1 training questions dropped (no answer span in the kept passages); "
            "3 questions cut to dynsan.limits; 1 ids in more than one split") in out, out[-3000:]
    assert f"note: kpt.parquet: model tiny-bert, task movies, knowledge_base near, shots 40, mode prompt, seed 1: " \
           f"{int(kpt['k_shot_shortfall'].iloc[0])} examples short of k per class" in out, out[-3000:]
