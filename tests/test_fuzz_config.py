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

from pipeline_steps import checks as checks_mod  # noqa: E402
from pipeline_steps import config as config_mod  # noqa: E402
from pipeline_steps.config import load_config  # noqa: E402
from pipeline_steps.specs import model_spec, pt_settings, task_spec
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
    problem = checks_mod.template_problem(template, fields)
    assert problem and fragment in problem, problem
    assert checks_mod.template_problem("{text_a} {{literal}} {mask}", 1) is None


def test_finite_walk_names_the_path_in_any_section():
    with pytest.raises(UserError, match=r"key 'kpt\.weights\.1': nan is not a finite number"):
        config_mod.check_plain_values({"kpt": {"weights": [1.0, math.nan]}})


# --- the KPT and DynSAN sections (issue 21): what only one stage reads ---------------------------------
# Mutations aimed at these sections' settings (present in config.yaml or not: every network key), and
# a preflight that builds what their jobs build: the DynSAN network of every planned (task, variant)
# with one forward pass through it on the shapes the limits allow, the efficiency sweep's block stack,
# KPT's settings and optimizer numbers. Property: refused naming a 'dynsan.'/'kpt.' key at start, or
# the jobs' networks run. (A wrong shape used to pass validation and end in a RuntimeError traceback.)

from pipeline_steps.dynsan.config import ModelConfig as _DynModel  # noqa: E402

_DYN_KEYS = [("dynsan", "model", f) for f in _DynModel.__dataclass_fields__] + \
    [("dynsan", "efficiency", f) for f in ("k", "d", "heads", "blocks")] + \
    [("dynsan", "limits", f) for f in ("passages", "passage_tokens", "total_tokens", "question_tokens")] + \
    [("dynsan", "variants", v, f) for v in ("dynsan", "random_k", "k16") for f in ("k", "passages", "selection", "gate")] + \
    [("dynsan", "train", f) for f in ("steps", "batch_size", "lr", "ema_decay", "beta", "max_answer_length")]
# the settings (numbers, switches) of these sections; their structure (names, sources, lists) is the
# general property's ground above, which walks every section of config.yaml
SECTION_PATHS = sorted(set(_DYN_KEYS) | {p for p in NUMBER_PATHS if p[0] in ("kpt", "dynsan")}, key=str)
SHAPES = st.one_of(st.integers(-2, 70), st.sampled_from([0, 1, 2, 3, 4, 6, 7, 8, 16, 32, 33, 64, 96, 128, 256, 400, 10**6,
                                                         2**40, 0.5, float("nan"), True, "gated", "all", "x", None]))


# the keys that decide tensor shapes get half the draws
SHAPE_PATHS = [p for p in _DYN_KEYS if p[1] in ("model", "efficiency", "limits") and p[-1] in (
    "d", "heads", "k", "blocks", "conv_kernel", "char_kernel", "char_dim", "char_channels", "max_chars", "max_passages",
    "passages", "passage_tokens", "total_tokens")]
PLAUSIBLE = {"d": st.sampled_from([8, 16, 24, 32, 48, 64]), "heads": st.sampled_from([1, 2, 4, 8]),
             "k": st.integers(1, 600), "conv_kernel": st.integers(1, 15), "char_kernel": st.integers(1, 15),
             "blocks": st.integers(1, 2), "char_channels": st.integers(1, 64), "char_dim": st.integers(1, 32),
             "candidate_frac": st.floats(0, 0.99), "ema_decay": st.floats(0, 0.999), "lr": st.floats(1e-5, 1.0),
             "selection": st.sampled_from(["gated", "random", "all"]), "gate": st.booleans(),
             "total_tokens": st.integers(1, 2000), "dropout": st.floats(0, 0.9)}


@st.composite
def section_mutations(draw) -> Mutation:
    path = draw(st.sampled_from(SECTION_PATHS))
    plausible = PLAUSIBLE.get(path[-1], st.integers(1, 48))  # half the values fit, so the networks get built
    return Mutation("put", path, draw(st.one_of(plausible, plausible, SHAPES, ODD)))


@st.composite
def shape_mutations(draw) -> Mutation:
    """A value that passes the schema for a key that decides tensor shapes: what the shape rules are for."""
    path = draw(st.sampled_from(SHAPE_PATHS))
    return Mutation("put", path, draw(PLAUSIBLE.get(path[-1], st.integers(1, 48))))


def put(cfg: dict, m: Mutation) -> None:
    """Set ``m.path`` to ``m.value``, creating the mappings on the way (keys absent from config.yaml)."""
    node = cfg
    for key in m.path[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(key, {})
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return
    if isinstance(node, dict):
        node[m.path[-1]] = copy.deepcopy(m.value)
    elif isinstance(node, list) and isinstance(m.path[-1], int) and m.path[-1] < len(node):
        node[m.path[-1]] = copy.deepcopy(m.value)


def section_preflight(cfg: dict) -> str:
    """Build and run what the DynSAN and KPT jobs build; returns what was run (for the statistics)."""
    import torch

    from pipeline_steps.dynsan.config import dynsan_settings
    from pipeline_steps.dynsan.config import ModelConfig, TrainConfig
    from pipeline_steps.dynsan.model import DynSABlock, DynSAN
    from pipeline_steps.kpt.config import KPTConfig

    torch.set_num_threads(1)  # tiny tensors: thread hand-offs cost more than the work (the jobs run with threads: 1)
    for task, entry in cfg["kpt"]["tasks"].items():
        k = KPTConfig.from_dict({**cfg["kpt"]["settings"], **(entry.get("settings") or {})})
        optimizer_step(k.weight_lr, 0.0, 1.0)
        optimizer_step(k.model_lr, 0.0, 1.0)
    sec = cfg["dynsan"]
    built = "settings only"
    for task in sec["run"]["tasks"]:
        limits = dict(sec["limits"], **(sec["tasks"][task].get("limits") or {}))
        for variant in sec["run"]["variants"]:
            m, t, passages = dynsan_settings(cfg, task, variant)
            mc, tc = ModelConfig.from_dict(m), TrainConfig.from_dict(t)
            optimizer_step(tc.lr, 0.0, tc.grad_clip)
            if mc.d > 64 or mc.blocks > 2 or mc.char_channels * mc.char_kernel > 1024 or mc.char_dim > 64:
                continue  # too large to build per example in the ci time; its settings passed the same checks
            torch.manual_seed(0)
            n_p, lp, lq = min(passages, limits["passages"], 3), min(limits["passage_tokens"], 24), min(limits["question_tokens"], 6)
            net = DynSAN(mc, torch.randn(12, 5), torch.randint(0, 6, (12, mc.max_chars)), 6,
                         sec["tasks"][task]["kind"]).eval()
            with torch.no_grad():
                start, _ = net(torch.randint(2, 12, (1, lq)), torch.ones(1, lq, dtype=torch.bool),
                               torch.randint(2, 12, (1, n_p, lp)), torch.ones(1, n_p, lp, dtype=torch.bool))
            assert start.shape == (1, n_p * lp)
            built = "network run"
    eff = sec["efficiency"]
    if sec["run"]["tasks"] and eff["d"] <= 64 and eff["blocks"] <= 4:
        length = min(min(eff["lengths"]), 96)
        for selection in eff["variants"]:
            blk = DynSABlock(ModelConfig(d=eff["d"], heads=eff["heads"], k=eff["k"], dropout=0.0, selection=selection))
            with torch.no_grad():
                blk(torch.randn(1, length, eff["d"]), torch.ones(1, length, dtype=torch.bool))
    return built


def test_demo_sections_pass_their_preflight():
    assert section_preflight(load_config(copy.deepcopy(BASE))) == "network run"


@given(st.lists(shape_mutations(), min_size=1, max_size=3), st.lists(section_mutations(), max_size=2))
def test_fuzzed_kpt_and_dynsan_sections_refused_at_start_or_their_networks_run(tmp_path_factory, shapes, muts):
    cfg = copy.deepcopy(BASE)
    for m in shapes + muts:
        put(cfg, m)
    path = tmp_path_factory.getbasetemp() / "fuzz-sections.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    try:
        loaded = load_config(path)
    except UserError as e:
        msg = str(e)
        note(msg)
        assert msg.startswith(f"{path}: key '") and "\n" not in msg and len(msg) < 700, msg
        event("refused: " + msg[len(str(path)) + 7:].split("'")[0].split(".")[0])
        return
    event("accepted, " + section_preflight(loaded))  # any exception here is a shape the start-up check missed
