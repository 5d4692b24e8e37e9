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
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .checks import check_references, check_task_entry
from .errors import UserError, shown
from .io import read_text

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
MAX_INT = 2**53 - 1  # larger integers are not exact in JSON/float tools and mean a typo, not a setting
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
        msg = f"{shown(err.instance)} is invalid ({err.validator}: {shown(err.validator_value)})"
    if err.validator == "pattern" and err.schema.get("description"):
        msg += f" ({err.schema['description']})"
    if err.validator == "not" and err.validator_value == {}:  # a key the section refuses (a shared block's key)
        msg = "cannot be set here" + (f": {err.schema['description']}" if err.schema.get("description") else "")
    if err.validator == "oneOf" and isinstance(err.instance, dict):
        msg = (f"a task source needs exactly one of 'demo', 'hub' or 'path' with their own keys; "
               f"got keys {sorted(err.instance)}")
    return UserError(f"{origin}: key '{key}': {msg}")


def check_plain_values(node: Any, origin: str = "config", path: tuple = ()) -> None:
    """One walk over the whole config (every section, present and future): numbers finite and of
    sane size, mapping keys text, strings without NUL characters. JSON-schema bounds cannot do the
    first: every comparison with NaN is false, so ``lr: .nan`` passes ``exclusiveMinimum: 0``."""
    if isinstance(node, bool):
        return
    if isinstance(node, float) and not math.isfinite(node):
        raise UserError(f"{origin}: key '{_key(path)}': {node} is not a finite number; give a plain number")
    if isinstance(node, int) and abs(node) > MAX_INT:
        raise UserError(f"{origin}: key '{_key(path)}': {shown(node)} is too large (limit {MAX_INT})")
    if isinstance(node, str) and "\x00" in node:
        raise UserError(f"{origin}: key '{_key(path)}': {shown(node)} contains a NUL character")
    if isinstance(node, dict):
        for key, value in node.items():
            if not isinstance(key, str):
                raise UserError(f"{origin}: key '{_key(path + (key,))}': keys must be text, got "
                                f"{type(key).__name__} {shown(key)} (quote it in YAML)")
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
    check_references(cfg, origin)
    return cfg


def load_config(source: str | os.PathLike | dict, origin: str | None = None) -> dict:
    """Read (if a path), validate and default-fill a config."""
    if isinstance(source, dict):
        return validate(copy.deepcopy(source), origin or "config")
    return validate(read_yaml(source), origin or str(source))


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
    if kind == "task":
        check_task_entry(value, lambda key: f"{where}: key '{key}'")
