"""Settings of the DynSAN stage (no torch import): the network, one variant (ablation) and training;
the section's cross-checks and the specs of its jobs."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError, unknown_name
from ..settings import SCHEMA_CAP, SchemaSection, Settings

SELECTIONS = ("gated", "random", "all")
# splits drawn for a task without its own (dynsan.tasks.<name>.split; the schema writes the same defaults):
# DynSAN holds out 0.2 for test where the classification tasks hold out 0.25 (data/prepare.py)
TEST_FRACTION = 0.2
DEV_FRACTION = 0.15
SPLIT_SEED = 13


@dataclass
class ModelConfig(Settings):
    """The network and the variant switches (the ablations of the paper are values of these)."""
    what = "dynsan model"
    schema = (SchemaSection(("$defs", "dynsan_model"), schema_only_bounds={
        **{f"{k} maximum": SCHEMA_CAP for k in ("d", "k", "blocks", "char_dim", "char_channels", "char_kernel",
                                                "max_chars", "max_passages", "match_bias_init")},
        "match_bias_init minimum": SCHEMA_CAP}),)

    d: int = 128                 # model width D
    heads: int = 8               # H
    k: int = 256                 # tokens each head attends among
    blocks: int = 4              # N DynSA blocks over all passages
    dropout: float = 0.1
    conv_kernel: int = 7
    char_dim: int = 15           # trainable character embeddings
    char_channels: int = 64      # character CNN filters
    char_kernel: int = 5
    max_chars: int = 16          # characters kept per token
    max_passages: int = 64       # size of the passage-rank embedding
    # variant switches
    selection: str = "gated"     # gated | random | all (all = full self-attention, the baseline)
    gate: bool = True            # scale heads by the gate (and regularise it)
    conv: bool = True            # the two depthwise-separable convolutions of each block
    cross_passage: bool = True   # the N final blocks see all passages as one sequence
    self_attention: bool = True  # the attention path (off: the dense path only)
    # not in the paper: in the final (cross-passage) blocks each head adds a learned bias to the attention
    # score of two occurrences of the same token, so that a mention can find its other mentions in other
    # passages (the link a two-hop question needs: person -> city in one passage, the city -> its
    # country in another); docs/dynsan.md, "What the two-hop questions need"
    match_bias: bool = False
    match_bias_init: float = 5.0  # its initial value (per head, learned)
    # not in the paper: while training, this share of each head's k picks is drawn at random among the
    # tokens the gate did not pick (epsilon-greedy top-k); evaluation keeps the gate's top k. The top-k
    # choice passes no gradient, so a gate that starts by picking the wrong tokens never learns that others
    # matter; docs/dynsan.md, "Training that learns the haystack"
    explore: float = 0.0

    def check(self) -> None:
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection '{self.selection}' is not one of {list(SELECTIONS)}")
        self.at_least(2, "d")
        self.at_least(1, "heads", "k", "blocks", "conv_kernel", "char_dim", "char_channels", "char_kernel",
                      "max_chars", "max_passages")
        if self.d % self.heads:
            raise ValueError(f"d ({self.d}) must be a multiple of heads ({self.heads})")
        if self.selection == "gated" and not self.gate:
            raise ValueError("selection 'gated' needs gate: true (the gate picks the tokens); "
                             "use selection 'random' or 'all' without a gate")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.explore < 1:
            raise ValueError(f"explore must be in [0, 1), got {self.explore}")
        if self.conv_kernel % 2 == 0:  # padding kernel // 2 keeps the length (the residual's shape) only if odd
            raise ValueError(f"conv_kernel must be odd (an even kernel changes the sequence length and breaks "
                             f"the residual connection), got {self.conv_kernel}")


@dataclass
class TrainConfig(Settings):
    what = "dynsan training"
    schema = (SchemaSection(("$defs", "dynsan_train"), schema_only_bounds={
        f"{k} maximum": SCHEMA_CAP for k in ("lr", "beta", "grad_clip")}),)

    steps: int = 20000
    batch_size: int = 32
    eval_batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 500
    ema_decay: float = 0.9999
    beta: float = 1e-5           # weight of the gate's L1 term
    grad_clip: float = 5.0
    eval_every: int = 1000
    checkpoint_every: int = 500
    max_answer_length: int = 8   # decoding: end <= start + max_answer_length - 1
    eval_max: int = 0            # dev questions scored during training (0 = all)

    def check(self) -> None:
        for name in ("steps", "batch_size", "eval_batch_size", "eval_every", "checkpoint_every", "max_answer_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        self.at_least(0, "beta", "warmup_steps", "eval_max")
        self.above(0, "lr", "grad_clip")


# variant keys that are model switches, and the ones that change the data or the loss
VARIANT_MODEL_KEYS = ("selection", "gate", "conv", "cross_passage", "self_attention", "match_bias", "explore", "k")
VARIANT_KEYS = VARIANT_MODEL_KEYS + ("beta", "passages")


def resolve_variant(model: dict, train: dict, variant: dict, passages: int) -> tuple[dict, dict, int]:
    """(model settings, train settings, passages kept) of one variant: the section's settings with the
    variant's overrides; ``gate: false`` also removes the gate's L1 term."""
    unknown = set(variant) - set(VARIANT_KEYS)
    if unknown:
        raise ValueError(f"unknown variant key(s) {sorted(unknown)}; known: {list(VARIANT_KEYS)}")
    m = dict(model, **{k: v for k, v in variant.items() if k in VARIANT_MODEL_KEYS})
    t = dict(train)
    if "beta" in variant:
        t["beta"] = variant["beta"]
    if not m.get("gate", True):
        t["beta"] = 0.0
    ModelConfig.from_dict(m)
    TrainConfig.from_dict(t)
    return m, t, int(variant.get("passages", passages))


# --- cross-checks of the config section (run by checks.check_references) ---------------------

def check_config(cfg: dict, origin: str = "config") -> None:
    """Cross-checks of the ``dynsan:`` section: listed tasks and variants exist, every listed variant
    resolves to valid settings, sources fit the task kind, local files exist."""
    sec = cfg["dynsan"]
    run = sec["run"]
    for kind, pool in (("tasks", sec["tasks"]), ("variants", sec["variants"])):
        for name in run[kind]:
            if name not in pool:
                raise unknown_name(f"{origin}: key 'dynsan.run.{kind}'", kind[:-1], name, pool)
    # the section's own settings, whether or not a task runs (the shape rules live in ModelConfig.check)
    for key, cls in (("model", ModelConfig), ("train", TrainConfig)):
        try:
            cls.from_dict(sec[key])
        except (ValueError, TypeError) as e:
            raise UserError(f"{origin}: key 'dynsan.{key}': {e}") from None
    for name in run["variants"]:
        for task in run["tasks"] or [None]:
            try:
                dynsan_settings(cfg, task, name)
            except (ValueError, TypeError) as e:
                on = f" (task '{task}')" if task else ""
                raise UserError(f"{origin}: key 'dynsan.variants.{name}'{on}: {e}") from None
    eff = sec["efficiency"]
    try:  # the sweep builds blocks of this width and these heads, with a gated selection of k tokens
        ModelConfig.from_dict({"d": eff["d"], "heads": eff["heads"], "k": eff["k"], "blocks": eff["blocks"]})
    except (ValueError, TypeError) as e:
        raise UserError(f"{origin}: key 'dynsan.efficiency': {e}") from None
    for name, task in sec["tasks"].items():
        key = f"{origin}: key 'dynsan.tasks.{name}"
        src = task["source"]
        given = [k for k in ("demo", "hub", "path") if k in src]
        if len(given) != 1:
            raise UserError(f"{key}.source': give exactly one of demo, hub or path; got {sorted(src)}")
        if "demo" in src:
            want = "candidates" if src["demo"].endswith("_candidates") else "span"
            if task["kind"] != want:
                raise UserError(f"{key}.kind': demo '{src['demo']}' is a {want} task, not {task['kind']}")
        haystack = [k for k in ("passages", "filler", "candidates") if k in src]
        if haystack and src.get("demo") not in ("haystack", "haystack_candidates"):
            raise UserError(f"{key}.source': {haystack} apply to the haystack demos only")
        if "candidates" in src and src["candidates"] > src.get("passages", 24) // 2:
            raise UserError(f"{key}.source.candidates': {src['candidates']} candidates need at least "
                            f"{2 * src['candidates']} passages (one person per two passages), got {src.get('passages', 24)}")
        if "hub" in src and not (src.get("format") or src.get("fields")):
            raise UserError(f"{key}.source': a hub source needs format (searchqa, quasar, qangaroo) or fields")
        if src.get("format") == "qangaroo" and task["kind"] != "candidates":
            raise UserError(f"{key}.kind': qangaroo (WikiHop) data is a candidates task")
        if "path" in src and name in run["tasks"]:
            paths = src["path"] if isinstance(src["path"], dict) else {"all": src["path"]}
            for split, path in paths.items():
                if not Path(path).exists():
                    raise UserError(f"{key}.source.path': data file '{path}' does not exist "
                                    f"(relative paths are read from {Path.cwd()})")
        unknown = set(task.get("train") or {}) - set(sec["train"])
        if unknown:
            raise UserError(f"{key}.train': unknown training setting(s) {sorted(unknown)}")
    emb = sec["embeddings"]["source"]
    if emb != "embedded:minilm-l6" and run["tasks"] and not Path(emb).expanduser().exists():
        raise UserError(f"{origin}: key 'dynsan.embeddings.source': '{emb}' is neither embedded:minilm-l6 nor an "
                        f"existing word-vector file or model folder")


def dynsan_settings(cfg: dict, task: str, variant: str) -> tuple[dict, dict, int]:
    """(model settings, train settings, passages) of one DynSAN run: the section's settings, the
    task's overrides, then the variant's."""
    sec = cfg["dynsan"]
    spec = sec["tasks"][task] if task is not None else {}  # None: the section's settings alone
    train = dict(sec["train"], **(spec.get("train") or {}))
    passages = dict(sec["limits"], **(spec.get("limits") or {}))["passages"]
    return resolve_variant(sec["model"], train, sec["variants"][variant], passages)


def question_tokens_kept(cfg: dict, task: str, passages: int, cross_passage: bool = True) -> int:
    """The most positions one attention of the final blocks sees for ``task``: all kept passages'
    tokens (``passages`` x ``passage_tokens``, at most ``total_tokens``), or one passage's without
    cross-passage attention."""
    sec = cfg["dynsan"]
    limits = dict(sec["limits"], **(sec["tasks"][task].get("limits") or {}))
    per_passage = min(limits["passage_tokens"], limits["total_tokens"])
    if not cross_passage:
        return per_passage
    return min(min(passages, limits["passages"]) * limits["passage_tokens"], limits["total_tokens"])


def config_warnings(cfg: dict, origin: str = "config") -> list[str]:
    """Settings that are valid but make the run mean less than it seems (printed at start, not
    refused): a DynSAN variant whose token budget k covers every token (it then computes full
    attention: the same model as selection 'all'), a sweep length at or below its k, a variant asking
    for more passages than the data keeps. Call after ``validate``."""
    out = []
    sec = cfg["dynsan"]
    run = sec["run"]
    for task in run["tasks"]:
        for name in run["variants"]:
            model, _, passages = dynsan_settings(cfg, task, name)
            kept = dict(sec["limits"], **(sec["tasks"][task].get("limits") or {}))["passages"]
            if passages > kept:
                out.append(f"{origin}: key 'dynsan.variants.{name}.passages': {passages} passages asked, but "
                           f"task '{task}' keeps {kept} (dynsan.limits.passages); the run uses {kept}")
            if model["selection"] == "all" or not model.get("self_attention", True):
                continue
            tokens = question_tokens_kept(cfg, task, passages, model.get("cross_passage", True))
            if model["k"] >= tokens:
                scope = "a question keeps" if model.get("cross_passage", True) else "a passage keeps (no cross_passage)"
                out.append(f"{origin}: key 'dynsan.variants.{name}' (task '{task}'): k {model['k']} >= the {tokens} "
                           f"tokens {scope}, so selection '{model['selection']}' keeps every token: this "
                           f"variant computes full attention, the same model as selection 'all'; lower k "
                           f"(dynsan.model.k or the variant's k) below {tokens}")
    if run["tasks"]:
        eff = sec["efficiency"]
        covered = [n for n in eff["lengths"] if n <= eff["k"]]
        if covered and any(v != "all" for v in eff["variants"]):
            out.append(f"{origin}: key 'dynsan.efficiency.k': k {eff['k']} >= the sweep lengths {covered}: there "
                       f"the gated and random selections keep every token and time full attention")
    return out


def dynsan_task_spec(cfg: dict, task: str) -> dict:
    """What the data job of a DynSAN task depends on: source, kind, splits, caps, limits, embeddings."""
    sec = cfg["dynsan"]
    spec = copy.deepcopy(sec["tasks"][task])
    spec.pop("train", None)
    limits = dict(sec["limits"], **(spec.pop("limits", None) or {}))
    spec["name"] = task
    return {"task": spec, "limits": limits, "embeddings": sec["embeddings"], "max_chars": sec["model"]["max_chars"]}
