"""Property-based config fuzzing (issue #12; docs/robustness.md).

Start from the shipped demo ``config.yaml``, apply one to three generated mistakes (drop a key,
a value of another type, NaN/inf/negative/zero/huge numbers, empty or duplicate lists, unknown
names, odd strings, unicode, very long values, broken templates, renamed entries, dangling
references in every section that names tasks or models), write it as YAML, and load it.

Property: ``load_config`` either accepts the file, and then the start-up checks of every job the
config plans (``preflight`` below) pass or raise ``UserError``; or it raises ``UserError`` whose one
line names the key. No other exception escapes. Failing examples print as a short list of
``Mutation(...)`` records (the shrunk case).
"""
from __future__ import annotations

import copy
import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import event, given, note, strategies as st  # noqa: E402

from pipeline_steps import config as config_mod  # noqa: E402
from pipeline_steps.config import load_config, model_spec, pt_settings, task_spec  # noqa: E402
from pipeline_steps.errors import UserError  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub model in a fuzzed grid must fail fast, offline
REPO = Path(__file__).resolve().parent.parent
BASE = yaml.safe_load((REPO / "config.yaml").read_text())


# --- the places a mutation can hit --------------------------------------------------------------

def _walk(node: Any, path: tuple = ()):
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, path + (i,))


ALL = [(p, v) for p, v in _walk(BASE) if p]
PATHS = [p for p, _ in ALL]
NUMBER_PATHS = [p for p, v in ALL if isinstance(v, (int, float)) and not isinstance(v, bool)]
LIST_PATHS = [p for p, v in ALL if isinstance(v, list)]
DICT_PATHS = [()] + [p for p, v in ALL if isinstance(v, dict)]
TASKS, MODELS = sorted(BASE["tasks"]), sorted(BASE["models"])
# every place outside the definitions that names a task or a model: experiment, transfer, projector,
# fpt, lpt today, and whatever section is added later (KPT, DynSAN) without changing this test
REF_PATHS = [p for p, v in ALL if p[0] not in ("tasks", "models") and isinstance(v, str) and v in TASKS + MODELS]
NAME_LISTS = [p for p, v in ALL if p[0] not in ("tasks", "models") and isinstance(v, list) and v
              and all(isinstance(x, str) and x in TASKS + MODELS for x in v)]
assert len(REF_PATHS) > 10 and {p[0] for p in REF_PATHS} >= {"experiment", "transfer", "projector", "fpt", "lpt"}


@dataclass(frozen=True)
class Mutation:
    op: str          # drop | set | ref | add_name | template | rename | dup | empty | add_key
    path: tuple
    value: Any = None


ODD_CONSTANTS = [float("nan"), float("inf"), float("-inf"), -1, 0, -0.0, 1e308, 2**64, 10**30, 2.0, 0.5, 1e-300,
                 True, False, None, "", " ", "x" * 5000, "../../etc/passwd", "a/b", "/abs/dir", "~user/x",
                 "\u00e9\u6f22\u5b57\U0001f642", "a\x00b", "a\nb", "{mask}", [], {}, [1, 1], ["a", "a"],
                 {"a": 1}, [[]], "embedded:minilm-l9", "tiny:gpt", "roberta-base"]
NUMBERS = st.one_of(st.sampled_from([float("nan"), float("inf"), float("-inf"), -1, 0, -0.0, 1e308, 2**64, 2.0,
                                     1e-300, True, "3"]), st.floats(), st.integers())
ODD = st.one_of(st.sampled_from(ODD_CONSTANTS), st.integers(), st.floats(), st.text(max_size=20),
                st.lists(st.one_of(st.integers(), st.text(max_size=5)), max_size=3))
NAMES = st.one_of(st.sampled_from(["nope", "", "..", "a/b", "x y", "\u00e9t\u00e9", "a" * 300] + TASKS + MODELS),
                  st.text(max_size=12))
PIECES = ["{text_a}", "{text_b}", "{mask}", "{mask}", "{txt}", "{}", "{0}", "{mask!r}", "{text_a:>3}", "{",
          "}", "{{", "}}", " It was ", "\u00e9 ", "{text_a[0]}", "{ mask }"]
TEMPLATES = st.lists(st.sampled_from(PIECES), max_size=6).map("".join)


@st.composite
def mutations(draw) -> Mutation:
    op = draw(st.sampled_from(["number", "set", "ref", "template", "drop", "add_name", "rename", "dup", "empty",
                               "add_key", "number", "ref", "template"]))
    if op == "number":  # numbers deserve their own weight: most settings are numbers
        return Mutation("set", draw(st.sampled_from(NUMBER_PATHS)), draw(NUMBERS))
    if op == "set":
        return Mutation(op, draw(st.sampled_from(PATHS)), draw(ODD))
    if op == "ref":
        return Mutation(op, draw(st.sampled_from(REF_PATHS)), draw(NAMES))
    if op == "add_name":
        return Mutation(op, draw(st.sampled_from(NAME_LISTS)), draw(NAMES))
    if op == "template":
        return Mutation(op, ("tasks", draw(st.sampled_from(TASKS)), "template"), draw(TEMPLATES))
    if op == "rename":
        kind = draw(st.sampled_from(["tasks", "models"]))
        return Mutation(op, (kind, draw(st.sampled_from(TASKS if kind == "tasks" else MODELS))), draw(NAMES))
    if op in ("dup", "empty"):
        return Mutation(op, draw(st.sampled_from(LIST_PATHS)))
    if op == "add_key":
        return Mutation(op, draw(st.sampled_from(DICT_PATHS)), draw(st.sampled_from(["tempalte", "lr", "kpt", "x"])))
    return Mutation(op, draw(st.sampled_from(PATHS)))


def _parent(cfg, path):
    node = cfg
    for key in path[:-1]:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            return None
    return node if isinstance(node, (dict, list)) else None


def apply(cfg: dict, m: Mutation) -> None:
    """Apply ``m`` where its path still exists (an earlier mutation may have removed it)."""
    if m.op == "add_key":
        node = _parent(cfg, m.path + ("_",))
        if isinstance(node, dict):
            node[m.value] = 1
        return
    parent, last = _parent(cfg, m.path), m.path[-1] if m.path else None
    if parent is None:
        return
    try:
        current = parent[last]
    except (KeyError, IndexError, TypeError):
        return
    if m.op == "drop":
        del parent[last]
    elif m.op in ("set", "ref", "template"):
        parent[last] = copy.deepcopy(m.value)
    elif m.op == "add_name" and isinstance(current, list):
        current.append(m.value)
    elif m.op == "dup" and isinstance(current, list) and current:
        current.append(copy.deepcopy(current[0]))
    elif m.op == "empty" and isinstance(current, list):
        current.clear()
    elif m.op == "rename" and isinstance(parent, dict):
        parent[m.value] = parent.pop(last)


# --- what every planned job checks at its start, without loading weights -------------------------

@pytest.fixture(scope="module")
def models_dir(tiny_dir, tmp_path_factory) -> Path:
    """results/models as the workflow builds it: tiny models, and MiniLM-L3 stood in by L6's folder
    (same uncased BERT vocabulary; the ONNX conversion is a build step, not a start-up check)."""
    from pipeline_steps.models.registry import minilm_l6_dir

    root = tmp_path_factory.mktemp("models")
    for kind in ("bert", "roberta", "t5"):
        (root / f"tiny-{kind}").symlink_to(tiny_dir / kind)
    (root / "minilm-l3").symlink_to(minilm_l6_dir())
    return root


def _tokenizer_and_limit(source: str, revision, models_dir: Path):
    got = _load_cached(source, revision, models_dir)
    if isinstance(got, UserError):
        raise got
    return got


@functools.lru_cache(maxsize=None)
def _load_cached(source: str, revision, models_dir: Path):
    """Tokenizer and position limit of a model, or its UserError (a hub id offline fails once, not per example)."""
    from pipeline_steps.models.backbone import position_limit
    from pipeline_steps.models.registry import load_model_config, load_tokenizer

    spec = {"name": "m", "source": source, "revision": revision, "trust_remote_code": False}
    try:
        return load_tokenizer(spec, models_dir), position_limit(load_model_config(spec, models_dir))
    except UserError as e:
        return e


def planned_runs(cfg: dict) -> list[tuple[str, str, dict]]:
    """(task, model, prompt-tuning settings) of every job that tokenises and trains."""
    runs = [(t, m, pt_settings(cfg, t)) for t in cfg["experiment"]["tasks"] for m in cfg["experiment"]["models"]]
    for section in ("fpt", "lpt"):
        sec = cfg[section]
        for t in sec["tasks"]:
            for m in sec["models"]:
                runs.append((t, m, {**pt_settings(cfg, t), **(sec.get("prompt_tuning") or {})}))
    for pair in cfg["projector"]["pairs"]:
        for t in dict.fromkeys(pair["train_tasks"] + pair["eval_tasks"]):
            for m in (pair["source"], pair["target"]):
                runs.append((t, m, pt_settings(cfg, t)))
    return runs


def optimizer_step(lr, weight_decay, grad_clip) -> None:
    """What training does with the numbers, on one dummy parameter: AdamW, clip, one step (this is
    where ``lr: .nan`` used to die with the optimizer's traceback)."""
    import torch

    p = torch.zeros(3, requires_grad=True)
    opt = torch.optim.AdamW([p], lr=lr, weight_decay=weight_decay)
    (p * 1.0).sum().backward()
    torch.nn.utils.clip_grad_norm_([p], grad_clip, error_if_nonfinite=True)
    opt.step()


def preflight(cfg: dict, models_dir: Path) -> None:
    """The jobs' start-up checks: settings objects build (PromptTuningConfig, FPT schedules, late
    prompt, projector), the optimizer accepts the numbers, the tokenizer loads, label words tokenise,
    the template encodes within max_length, prompt_length + max_length fit the model's positions."""
    from pipeline_steps.data.tokenize import TemplateEncoder
    from pipeline_steps.prompt_tuning.config import PromptTuningConfig
    from pipeline_steps.prompt_tuning.steps import check_label_words, check_lengths
    from pipeline_steps.fpt.config import FPTConfig
    from pipeline_steps.lpt.config import LatePromptConfig
    from pipeline_steps.transferability.config import ProjectorConfig

    fpt = cfg["fpt"]
    for method in fpt["methods"]:
        FPTConfig.from_dict({"stages": fpt["schedules"][method], "selection": fpt["layer_selection"],
                             "class_vectors": fpt["class_vectors"]})
    lpt = cfg["lpt"]
    for method in lpt["methods"]:
        LatePromptConfig.from_dict({"generator": method.removeprefix("lpt_"), "insert_layer": lpt["insert_layer"],
                                    "bottleneck": lpt["bottleneck"],
                                    "prompt_length": lpt["prompt_length"] or cfg["prompt_tuning"]["prompt_length"]})
    if lpt["lr"] is not None:
        optimizer_step(lpt["lr"], 0.0, 1.0)
    for objective in cfg["projector"]["objectives"]:
        pc = ProjectorConfig.from_dict({"hidden": cfg["projector"]["hidden"], **cfg["projector"][objective]})
        optimizer_step(pc.lr, pc.weight_decay, pc.grad_clip)
    for task, model, settings in planned_runs(cfg):
        mspec, tspec = model_spec(cfg, model), task_spec(cfg, task)
        pt = PromptTuningConfig.from_dict(settings)
        optimizer_step(pt.lr, pt.weight_decay, pt.grad_clip)
        tok, limit = _tokenizer_and_limit(mspec["source"], mspec["revision"], models_dir)
        check_label_words(tok, tspec, model)
        TemplateEncoder(tok, tspec["template"], pt.max_length, len(tspec["text_fields"]))
        check_lengths(None, pt, model, limit=limit)


# --- the property ---------------------------------------------------------------------------------

def test_demo_config_passes_preflight(models_dir):
    preflight(load_config(copy.deepcopy(BASE)), models_dir)


@given(st.lists(mutations(), min_size=1, max_size=3))
def test_fuzzed_config_is_accepted_or_refused_naming_the_key(models_dir, tmp_path_factory, muts):
    cfg = copy.deepcopy(BASE)
    for m in muts:
        apply(cfg, m)
    path = tmp_path_factory.getbasetemp() / "fuzz-config.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))  # what the user writes: a YAML file
    try:
        loaded = load_config(path)
    except UserError as e:
        msg = str(e)
        note(msg)
        assert msg.startswith(f"{path}: key '") and "\n" not in msg and len(msg) < 700, msg
        event("refused by validate")
        return
    try:
        preflight(loaded, models_dir)
        event("accepted, preflight passes")
    except UserError as e:
        note(f"preflight: {e}")
        event("accepted, refused by preflight")


def test_the_two_issue_classes_are_refused_naming_the_key(tmp_path):
    text = (REPO / "config.yaml").read_text()
    for old, new, key in [("  lr: 0.03\n", "  lr: .nan\n", "prompt_tuning.lr"),
                          ("  lr: 0.005 ", "  lr: .inf ", "lpt.lr"),
                          ('template: "{text_a} It was {mask}."', 'template: "{text_a} It was {mask} {mask}."',
                           "tasks.movies.template")]:
        assert old in text
        p = tmp_path / "config.yaml"
        p.write_text(text.replace(old, new, 1))
        with pytest.raises(UserError) as e:
            load_config(p)
        assert f"key '{key}'" in str(e.value), str(e.value)
        assert ("finite" in str(e.value)) or ("exactly once" in str(e.value)), str(e.value)


@pytest.mark.parametrize("template, fields, fragment", [
    ("{text_a} {mask} {mask}", 1, "{mask} exactly once"),
    ("{text_a} {text_a} {mask}", 1, "{text_a} exactly once"),
    ("{text_a} {mask}", 2, "{text_b} exactly once"),
    ("{text_a} {text_b} {mask}", 1, "second entry in text_fields"),
    ("{text_a} {answer} {mask}", 1, "unknown placeholder(s) ['answer']"),
    ("{text_a} {} {mask}", 1, "unknown placeholder(s) ['']"),
    ("{text_a} {mask!r}", 1, "format spec or conversion"),
    ("{text_a} {mask} }", 1, "not a valid template"),
])
def test_template_problems(template, fields, fragment):
    problem = config_mod.template_problem(template, fields)
    assert problem and fragment in problem, problem
    assert config_mod.template_problem("{text_a} {{literal}} {mask}", 1) is None


def test_finite_walk_names_the_path_in_any_section():
    with pytest.raises(UserError, match=r"key 'kpt\.weights\.1': nan is not a finite number"):
        config_mod.check_plain_values({"kpt": {"weights": [1.0, math.nan]}})
