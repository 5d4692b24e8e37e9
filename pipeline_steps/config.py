"""Load, validate and query the workflow config.

One schema (``workflow/schemas/config.schema.yaml``) is the single source of
truth for keys, types and defaults. ``load_config`` validates, fills defaults
and runs the cross-reference checks that JSON schema cannot express; every
error is a :class:`UserError` naming the key and the bad value.
"""
from __future__ import annotations

import copy
import functools
import math
import os
import re
import string
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .errors import UserError
from .io import read_text, stable_hash
from .models.registry import BUILTIN_SOURCES, built_dir, is_local_path, mpnet_pieces

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
TEMPLATE_FIELDS = {"text_a", "text_b", "mask"}
MAX_INT = 2**53 - 1  # larger integers are not exact in JSON/float tools and mean a typo, not a setting
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?$")
# defaults are not filled below these: overrides of the one prompt_tuning block must stay sparse (a filled
# default would replace the task's or the global setting when merged)
_NO_DEFAULTS = (("tasks", "*", "prompt_tuning"), ("fpt", "prompt_tuning"), ("lpt", "prompt_tuning"),
                ("kpt", "prompt_tuning"))
# Registries of named entries where ``NAME: null`` removes the entry. Snakemake deep-merges a
# ``--configfile`` overlay into config.yaml (mappings key by key, lists and scalars replaced), so
# without this an overlay could add and change entries but never drop one (docs/configuration.md).
REMOVABLE = (("models",), ("tasks",), ("kpt", "tasks"), ("kpt", "knowledge_bases"), ("dynsan", "tasks"),
             ("dynsan", "variants"))
# Registries whose schema default (the shipped entries) is merged with the config's own entries
# instead of being replaced by them: a config that defines one DynSAN variant adds it to the paper's.
MERGED_DEFAULTS = (("dynsan", "variants"),)


def load_schema() -> dict:
    """The parsed schema (read once per process; treat it as read-only)."""
    return _load_schema(SCHEMA_PATH)


@functools.lru_cache(maxsize=2)
def _load_schema(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    text = read_text(path, "config file")  # UTF-8, or one line naming the file and line
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UserError(f"{path}: malformed YAML: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: the config must be a mapping of keys to values, got {type(data).__name__}")
    return data


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _resolve(node: dict, schema: dict) -> dict:
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        node = schema
        for part in ref[2:].split("/"):
            node = node[part]
    return node


def _matches(path: tuple, pattern: tuple) -> bool:
    return len(path) == len(pattern) and all(p == "*" or p == q for p, q in zip(pattern, path))


def _fill_defaults(instance: Any, node: dict, schema: dict, path: tuple = ()) -> None:
    if any(_matches(path, p) for p in _NO_DEFAULTS) or not isinstance(instance, dict):
        return
    node = _resolve(node, schema)
    for key, sub in node.get("properties", {}).items():
        sub_r = _resolve(sub, schema)
        default = sub.get("default", sub_r.get("default"))  # a default beside a $ref wins
        if key not in instance and (default is not None or "default" in sub_r):
            instance[key] = copy.deepcopy(default)
        if key in instance:
            _fill_defaults(instance[key], sub_r, schema, path + (key,))
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        for key, value in instance.items():
            if key not in node.get("properties", {}):
                _fill_defaults(value, extra, schema, path + (key,))


def _schema_error(err: jsonschema.ValidationError, origin: str) -> UserError:
    err = jsonschema.exceptions.best_match([err])
    key = _key(err.absolute_path)
    msg = err.message
    if len(msg) > 300:  # jsonschema quotes the whole value: keep the line readable
        msg = f"{_shown(err.instance)} is invalid ({err.validator}: {_shown(err.validator_value)})"
    if err.validator == "pattern" and err.schema.get("description"):
        msg += f" ({err.schema['description']})"
    if err.validator == "not" and err.validator_value == {}:  # a key the section refuses (a shared block's key)
        msg = "cannot be set here" + (f": {err.schema['description']}" if err.schema.get("description") else "")
    if err.validator == "oneOf" and isinstance(err.instance, dict):
        msg = (f"a task source needs exactly one of 'demo', 'hub' or 'path' with their own keys; "
               f"got keys {sorted(err.instance)}")
    return UserError(f"{origin}: key '{key}': {msg}")


def _shown(value: Any, limit: int = 60) -> str:
    """A value for a one-line message: repr, newlines escaped, long values cut."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def check_plain_values(node: Any, origin: str = "config", path: tuple = ()) -> None:
    """One walk over the whole config (every section, present and future): numbers finite and of
    sane size, mapping keys text, strings without NUL characters. JSON-schema bounds cannot do the
    first: every comparison with NaN is false, so ``lr: .nan`` passes ``exclusiveMinimum: 0``."""
    if isinstance(node, bool):
        return
    if isinstance(node, float) and not math.isfinite(node):
        raise UserError(f"{origin}: key '{_key(path)}': {node} is not a finite number; give a plain number")
    if isinstance(node, int) and abs(node) > MAX_INT:
        raise UserError(f"{origin}: key '{_key(path)}': {_shown(node)} is too large (limit {MAX_INT})")
    if isinstance(node, str) and "\x00" in node:
        raise UserError(f"{origin}: key '{_key(path)}': {_shown(node)} contains a NUL character")
    if isinstance(node, dict):
        for key, value in node.items():
            if not isinstance(key, str):
                raise UserError(f"{origin}: key '{_key(path + (key,))}': keys must be text, got "
                                f"{type(key).__name__} {_shown(key)} (quote it in YAML)")
            check_plain_values(value, origin, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            check_plain_values(value, origin, path + (i,))


def _is_int(checker, instance) -> bool:
    """JSON schema's integer, minus integral floats (``steps: 2.0`` or ``1e30`` is not a count)."""
    return isinstance(instance, int) and not isinstance(instance, bool)


_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_int))


def _mapping_at(cfg: dict, path: tuple) -> dict | None:
    node = cfg
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def _schema_default(schema: dict, path: tuple) -> Any:
    node = schema
    for part in path:
        node = _resolve(node, schema)["properties"][part]
    return node.get("default")


def apply_overlay_rules(cfg: dict, schema: dict | None = None) -> dict:
    """What a merged config means beyond Snakemake's deep merge, applied before validation (in place):
    the shipped entries of ``MERGED_DEFAULTS`` registries are added where the config does not name
    them, then every ``NAME: null`` entry of a ``REMOVABLE`` registry is removed."""
    schema = schema or load_schema()
    for path in MERGED_DEFAULTS:
        node = _mapping_at(cfg, path)
        if node is not None:
            for name, entry in (_schema_default(schema, path) or {}).items():
                node.setdefault(name, copy.deepcopy(entry))
    for path in REMOVABLE:
        node = _mapping_at(cfg, path)
        if node is not None:
            for name in [k for k, v in node.items() if v is None]:
                del node[name]
    return cfg


def validate(cfg: dict, origin: str = "config") -> dict:
    """Validate ``cfg`` (in place: overlay rules applied, defaults filled) and return it."""
    schema = load_schema()
    if not isinstance(cfg, dict):
        raise UserError(f"{origin}: the config must be a mapping of keys to values, got {type(cfg).__name__}")
    apply_overlay_rules(cfg, schema)
    check_plain_values(cfg, origin)
    validator = _Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        raise _schema_error(errors[0], origin)
    _fill_defaults(cfg, schema, schema)
    _check_references(cfg, origin)
    return cfg


def load_config(source: str | os.PathLike | dict, origin: str | None = None) -> dict:
    """Read (if a path), validate and default-fill a config."""
    if isinstance(source, dict):
        return validate(copy.deepcopy(source), origin or "config")
    return validate(read_yaml(source), origin or str(source))


def used_tasks(cfg: dict) -> dict[str, str]:
    """Every task some stage of the DAG runs, with the first key that uses it: the experiment grid,
    the projector's pairs, and the FPT, LPT and KPT grids where they run (models and tasks given)."""
    used: dict[str, str] = {}
    for name in cfg["experiment"]["tasks"]:
        used.setdefault(name, "experiment.tasks")
    for i, pair in enumerate(cfg["projector"]["pairs"]):
        for field in ("train_tasks", "eval_tasks"):
            for name in pair[field]:
                used.setdefault(name, f"projector.pairs.{i}.{field}")
    for section in ("fpt", "lpt"):
        if cfg[section]["models"]:
            for name in cfg[section]["tasks"]:
                used.setdefault(name, f"{section}.tasks")
    if cfg["kpt"]["models"]:
        for name in cfg["kpt"]["tasks"]:
            used.setdefault(name, f"kpt.tasks.{name}")
    return used


def used_models(cfg: dict) -> dict[str, str]:
    """Every model some stage of the DAG runs, with the first key that uses it (as ``used_tasks``)."""
    used: dict[str, str] = {}
    for name in cfg["experiment"]["models"]:
        used.setdefault(name, "experiment.models")
    for i, pair in enumerate(cfg["projector"]["pairs"]):
        for role in ("source", "target"):
            used.setdefault(pair[role], f"projector.pairs.{i}.{role}")
    for section in ("fpt", "lpt", "kpt"):
        if cfg[section]["tasks"]:
            for name in cfg[section]["models"]:
                used.setdefault(name, f"{section}.models")
    return used


def _check_references(cfg: dict, origin: str) -> None:
    exp = cfg["experiment"]
    for kind in ("tasks", "models"):
        for name in exp[kind]:
            if name not in cfg[kind]:
                raise UserError(
                    f"{origin}: key 'experiment.{kind}': unknown {kind[:-1]} '{name}'; "
                    f"defined {kind}: {', '.join(sorted(cfg[kind]))}")
    init = cfg["transfer"]["init"]
    for key, pool in (("models", "models"), ("sources", "tasks"), ("targets", "tasks")):
        for name in init[key] or []:
            if name not in exp[pool]:
                raise UserError(f"{origin}: key 'transfer.init.{key}': '{name}' is not in experiment.{pool} "
                                f"{exp[pool]}")
    tasks_used, models_used = used_tasks(cfg), used_models(cfg)
    for name, task in cfg["tasks"].items():
        where = f"{origin}: key 'tasks.{name}"
        problem = template_problem(task["template"], len(task["text_fields"]))
        if problem:
            raise UserError(f"{where}.template': {problem}")
        if set(task["label_words"]) != set(task["label_names"]):
            raise UserError(
                f"{where}.label_words': keys {sorted(task['label_words'])} must match "
                f"label_names {task['label_names']}")
        src = task["source"]
        if "demo" in src:
            src.setdefault("size", 600)
        if "path" in src:
            src.setdefault("split_field", None)
            if name in tasks_used and not _path_test(Path(src["path"]).exists, f"{where}.source.path'"):
                raise UserError(f"{where}.source.path': data file '{src['path']}' does not exist "
                                f"(used by {tasks_used[name]}; relative paths are read from {Path.cwd()})")
    check_projector(cfg, origin)
    check_efficient(cfg, origin)
    check_kpt(cfg, origin)
    check_dynsan(cfg, origin)
    for name, model in cfg["models"].items():
        source = model["source"]
        local = _path_test(lambda: is_local_path(source), f"{origin}: key 'models.{name}.source'")
        if not local and not source.startswith(("embedded:", "tiny:")) and not _HUB_ID.match(source):
            raise UserError(f"{origin}: key 'models.{name}.source': {_shown(source)} is neither a built-in model, "
                            f"a local directory (start it with ./ or /) nor a hub id (owner/name)")
        if local and name in models_used and not _path_test(Path(source).expanduser().is_dir,
                                                            f"{origin}: key 'models.{name}.source'"):
            raise UserError(f"{origin}: key 'models.{name}.source': local model directory '{source}' does not exist "
                            f"(used by {models_used[name]})")
        if source.startswith(("embedded:", "tiny:")) and source not in BUILTIN_SOURCES:
            raise UserError(f"{origin}: key 'models.{name}.source': unknown built-in model '{source}'; "
                            f"known: {', '.join(sorted(BUILTIN_SOURCES))}")
        if source == "embedded:mpnet-base" and name in models_used \
                and not (built_dir(source) / "provenance.json").exists():
            try:
                mpnet_pieces()
            except UserError as e:
                raise UserError(f"{origin}: key 'models.{name}.source': {e}") from None


def _path_test(test, where: str) -> bool:
    """``test()`` (a file-system query) with an impossible path (too long, ...) as a UserError."""
    try:
        return bool(test())
    except (OSError, ValueError) as e:
        raise UserError(f"{where}: not a usable path ({type(e).__name__}: {_shown(str(e), 120)})") from None


def template_problem(template: str, n_text_fields: int) -> str | None:
    """What is wrong with a prompt template, or None: exactly one ``{mask}``, ``{text_a}`` once,
    ``{text_b}`` once for a pair task (two text_fields) and never otherwise, nothing else in braces
    (write a literal brace as ``{{`` or ``}}``). Shared by the config check and tokenisation."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        return f"{_shown(template)} is not a valid template ({e}); write a literal brace as {{{{ or }}}}"
    fields = [(f, spec, conv) for _, f, spec, conv in parsed if f is not None]
    names = [f for f, _, _ in fields]
    bad = sorted({f for f in names if f not in TEMPLATE_FIELDS})
    if bad:
        return f"unknown placeholder(s) {bad}; use {{text_a}}, {{text_b}} and {{mask}}"
    styled = sorted({f for f, spec, conv in fields if spec or conv})
    if styled:
        return f"placeholder(s) {styled} carry a format spec or conversion ('!' or ':'); write plain {{name}}"
    if names.count("mask") != 1:
        return (f"the template must contain {{mask}} exactly once (the one position the verbalizer reads), "
                f"found {names.count('mask')}")
    if names.count("text_a") != 1:
        return f"the template must contain {{text_a}} exactly once, found {names.count('text_a')}"
    if n_text_fields == 2 and names.count("text_b") != 1:
        return (f"a pair task (two text_fields) needs {{text_b}} exactly once in the template, "
                f"found {names.count('text_b')}")
    if n_text_fields == 1 and "text_b" in names:
        return "{text_b} needs a second entry in text_fields"
    return None


# --- cross-checks of the method sections (the schema checks their types) ---------------------

def pair_name(pair: dict) -> str:
    return pair.get("name") or f"{pair['source']}-to-{pair['target']}"


def check_projector(cfg: dict, origin: str = "config") -> None:
    """Cross-references of the ``projector:`` section (after schema validation and defaults)."""
    section = cfg.get("projector") or {}
    seen = {}
    for i, pair in enumerate(section.get("pairs", [])):
        key = f"{origin}: key 'projector.pairs.{i}"
        for role in ("source", "target"):
            if pair[role] not in cfg["models"]:
                raise UserError(f"{key}.{role}': unknown model '{pair[role]}'; "
                                f"defined models: {', '.join(sorted(cfg['models']))}")
        if pair["source"] == pair["target"]:
            raise UserError(f"{key}': source and target are the same model '{pair['source']}'")
        for field in ("train_tasks", "eval_tasks"):
            for task in pair[field]:
                if task not in cfg["tasks"]:
                    raise UserError(f"{key}.{field}': unknown task '{task}'; "
                                    f"defined tasks: {', '.join(sorted(cfg['tasks']))}")
        tasks = list(dict.fromkeys(pair["train_tasks"] + pair["eval_tasks"]))
        lengths = {t: pt_settings(cfg, t)["prompt_length"] for t in tasks}
        if len(set(lengths.values())) > 1:
            raise UserError(f"{key}': the projector maps prompts of one length L, but the pair's tasks have "
                            f"prompt lengths {lengths} (prompt_tuning.prompt_length and per-task overrides)")
        name = pair_name(pair)
        if name in seen:
            raise UserError(f"{key}.name': pair name '{name}' is also used by projector.pairs.{seen[name]}; "
                            f"give one of them a distinct 'name'")
        seen[name] = i


def check_efficient(cfg: dict, origin: str = "config") -> None:
    """Cross-checks of the ``fpt:`` and ``lpt:`` sections that the schema cannot express."""
    for section in ("fpt", "lpt"):
        sec = cfg[section]
        for kind in ("models", "tasks"):
            for name in sec[kind]:
                if name not in cfg[kind]:
                    raise UserError(f"{origin}: key '{section}.{kind}': unknown {kind[:-1]} '{name}'; "
                                    f"defined {kind}: {', '.join(sorted(cfg[kind]))}")
    from .fpt.config import METHODS as FPT_METHODS
    from .fpt.config import FPTConfig

    fpt = cfg["fpt"]
    totals = {}
    for method in fpt["methods"]:
        if method not in fpt["schedules"]:
            raise UserError(f"{origin}: key 'fpt.schedules': no schedule for method '{method}' (listed in "
                            f"fpt.methods); add one or remove the method")
        stages = fpt["schedules"][method]
        try:
            FPTConfig.from_dict({"stages": stages, "selection": fpt["layer_selection"],
                                 "class_vectors": fpt["class_vectors"]})
        except (ValueError, TypeError) as e:
            raise UserError(f"{origin}: key 'fpt.schedules.{method}': {e}") from None
        for i, stage in enumerate(stages):
            need = FPT_METHODS[method]
            given = tuple(k for k in ("layers", "ffn") if stage.get(k) is not None)
            if i < len(stages) - 1 and given != need:
                raise UserError(f"{origin}: key 'fpt.schedules.{method}[{i}]': a {method} stage sets "
                                f"{' and '.join(need)} (and steps), got {stage}")
        totals[method] = sum(s["steps"] for s in stages)
    if fpt.get("pt_steps") is None and len(set(totals.values())) > 1:
        raise UserError(f"{origin}: key 'fpt.schedules': the methods' total steps differ ({totals}); make them "
                        f"equal or set fpt.pt_steps, the steps of the PT baseline they are compared with")
    if fpt["models"] and fpt["tasks"] and not fpt["methods"]:
        raise UserError(f"{origin}: key 'fpt.methods': give at least one FPT method")


def check_kpt(cfg: dict, origin: str = "config") -> None:
    """Cross-checks of the ``kpt:`` section: names, per-task settings, and each knowledge-base file
    (read here, so a bad line fails before any job starts)."""
    from .kpt.config import KPTConfig, read_blocklist, read_kb_file

    sec = cfg["kpt"]
    for name in sec["models"]:
        if name not in cfg["models"]:
            raise UserError(f"{origin}: key 'kpt.models': unknown model '{name}'; "
                            f"defined models: {', '.join(sorted(cfg['models']))}")
    active = bool(sec["models"])
    for task, entry in sec["tasks"].items():
        key = f"{origin}: key 'kpt.tasks.{task}"
        if task not in cfg["tasks"]:
            raise UserError(f"{key}': unknown task '{task}'; defined tasks: {', '.join(sorted(cfg['tasks']))}")
        try:
            KPTConfig.from_dict({**sec["settings"], **(entry.get("settings") or {})})
        except (ValueError, TypeError) as e:
            raise UserError(f"{key}.settings': {e}") from None
        names = cfg["tasks"][task]["label_names"]
        for kb_name in entry["knowledge_bases"]:
            if kb_name not in sec["knowledge_bases"]:
                raise UserError(f"{key}.knowledge_bases': unknown knowledge base '{kb_name}'; defined: "
                                f"{', '.join(sorted(sec['knowledge_bases'])) or 'none (add kpt.knowledge_bases)'}")
            kb = sec["knowledge_bases"][kb_name]
            where = f"{origin}: key 'kpt.knowledge_bases.{kb_name}"
            if kb["source"] == "file":
                if not kb.get("path"):
                    raise UserError(f"{where}.path': a file knowledge base needs a path")
                if active:
                    read_kb_file(kb["path"], names)  # UserError naming the file (and line)
            if isinstance(kb.get("blocklist"), str) and active:
                try:
                    read_blocklist(kb["blocklist"])
                except UserError as e:
                    raise UserError(f"{where}.blocklist': {e}") from None
            if kb["source"] == "vader":
                missing = [n for n in names if n not in (kb.get("polarity") or {})]
                if missing:
                    raise UserError(f"{where}.polarity': no polarity (1, -1 or 0) for classes {missing} of task "
                                    f"'{task}' that uses it")


# --- specs handed to steps (``task_spec``/``model_spec`` as built below) ----------------------

def check_spec(value: Any, kind: str, where: str) -> None:
    """A step's ``task``/``model`` spec argument against the schema of a config entry plus its
    ``name`` (what ``task_spec``/``model_spec`` return). Absent keys with a default are filled in
    place (a no-op for the specs the workflow passes: they come filled), so a hand-written spec works."""
    schema = load_schema()
    node = copy.deepcopy(schema["$defs"][kind])
    props = node["properties"]
    props.pop("prompt_tuning" if kind == "task" else "gpu_model", None)
    props["name"] = {"$ref": "#/$defs/name"}
    node["required"] = sorted(set(node.get("required", [])) | {"name"})
    node["$defs"] = schema["$defs"]
    if not isinstance(value, dict):
        raise UserError(f"{where}: a {kind} spec must be a mapping, got {type(value).__name__}")
    check_plain_values(value, where)
    errors = sorted(_Validator(node).iter_errors(value), key=lambda e: len(e.absolute_path))
    if errors:
        raise _schema_error(errors[0], where)
    _fill_defaults(value, node, schema)
    if kind == "task" and "demo" in value["source"]:
        value["source"].setdefault("size", 600)
    if kind == "task" and "path" in value["source"]:
        value["source"].setdefault("split_field", None)
    if kind == "task":
        problem = template_problem(value["template"], len(value["text_fields"]))
        if problem:
            raise UserError(f"{where}: key 'template': {problem}")
        if set(value["label_words"]) != set(value["label_names"]):
            raise UserError(f"{where}: key 'label_words': keys {sorted(value['label_words'])} must match "
                            f"label_names {value['label_names']}")


def check_dynsan(cfg: dict, origin: str = "config") -> None:
    """Cross-checks of the ``dynsan:`` section: listed tasks and variants exist, every listed variant
    resolves to valid settings, sources fit the task kind, local files exist."""
    sec = cfg["dynsan"]
    run = sec["run"]
    for kind, pool in (("tasks", sec["tasks"]), ("variants", sec["variants"])):
        for name in run[kind]:
            if name not in pool:
                raise UserError(f"{origin}: key 'dynsan.run.{kind}': unknown {kind[:-1]} '{name}'; "
                                f"defined in dynsan.{kind}: {', '.join(sorted(pool)) or '(none)'}")
    from .dynsan.config import ModelConfig, TrainConfig

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
    from .dynsan.config import resolve_variant

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


# --- queries used by the Snakefile and the steps -------------------------------------------

def task_spec(cfg: dict, task: str) -> dict:
    """Everything the data stage of ``task`` depends on (prompt settings and the task's kind excluded)."""
    spec = copy.deepcopy(cfg["tasks"][task])
    spec.pop("prompt_tuning", None)
    spec.pop("kind", None)  # read by the claims stage only
    spec["name"] = task
    return spec


def model_spec(cfg: dict, model: str) -> dict:
    spec = copy.deepcopy(cfg["models"][model])
    spec.pop("gpu_model", None)  # where a job is scheduled, not what it computes
    spec["name"] = model
    return spec


def pt_settings(cfg: dict, task: str) -> dict:
    """Global prompt-tuning defaults overridden by the task's own ``prompt_tuning``."""
    merged = copy.deepcopy(cfg["prompt_tuning"])
    merged.update(cfg["tasks"][task].get("prompt_tuning") or {})
    return merged


def spec_hash(spec: Any) -> str:
    return stable_hash(spec)


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def check_name(value: str, what: str) -> str:
    """Names become folder names: refuse separators and '..'."""
    if not _NAME.match(value):
        raise UserError(f"invalid {what} name '{value}': use letters, digits, '_' and '-' only")
    return value
