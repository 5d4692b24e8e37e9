"""The hand-written config schema against the Python settings (issue 20, "each setting defined once").

Every ``Settings`` dataclass names its schema section(s) in its ``schema`` attribute
(``pipeline_steps.settings.SchemaSection``, with each intended difference and its reason). ``compare``
checks, section by section: the same names, equal defaults, the same JSON types, and, for every enum
and numeric bound of the schema, that ``check()`` accepts the values inside and refuses the value just
outside (or the bound is listed as schema-only). Choice lists the schema repeats from a Python constant,
and the schema's own copies of a section's keys, are compared in the tables below.
"""
from __future__ import annotations

import copy
import importlib
import re
from dataclasses import MISSING, fields

import pytest

from pipeline_steps.config import load_schema
from pipeline_steps.settings import Settings

from pipeline_steps.papers import PAPERS  # noqa: E402

CONFIG_MODULES = [f"pipeline_steps.{p.name}.config" for p in PAPERS]
for _m in CONFIG_MODULES:
    importlib.import_module(_m)

from pipeline_steps.data import prepare  # noqa: E402
from pipeline_steps.dynsan import config as dynsan  # noqa: E402
from pipeline_steps.fpt import config as fpt  # noqa: E402
from pipeline_steps.kpt import config as kpt  # noqa: E402
from pipeline_steps.lpt import config as lpt  # noqa: E402
from pipeline_steps.prompt_tuning import config as pt  # noqa: E402
from pipeline_steps.transferability import config as tr  # noqa: E402


def all_settings() -> list[type]:
    out, todo = [], list(Settings.__subclasses__())
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted((c for c in out if c.__module__.startswith("pipeline_steps.")), key=lambda c: c.__qualname__)


# values that make a probe of one field valid apart from that field (other fields' cross-rules)
PROBE_BASE = {"ModelConfig": {"heads": 1}, "FPTConfig": {"stages": [{"steps": 1}]}, "FPTStage": {"steps": 1}}
# settings classes that no config key sets (built by code): the reason
NOT_CONFIGURABLE: dict[str, str] = {}


def node_at(schema: dict, path) -> dict:
    """The schema node at ``path`` (keys from the root), following ``$ref`` at every step."""
    node = schema
    for part in path:
        node = resolve(node, schema)[part]
    return resolve(node, schema)


def resolve(node, schema: dict):
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        target = schema
        for part in ref[2:].split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}  # siblings of a $ref win
    return node


def py_default(f):
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


_TYPES = {"int": {"integer"}, "float": {"number"}, "bool": {"boolean"}, "str": {"string"},
          "int | None": {"integer", "null"}, "float | None": {"number", "null"},
          "float | int | None": {"number", "null"}}


def json_types(node: dict) -> set[str]:
    if "type" in node:
        t = node["type"]
        return set(t) if isinstance(t, list) else {t}
    if "enum" in node:
        kinds = {type(v) for v in node["enum"]}
        return {{str: "string", int: "integer", bool: "boolean", float: "number"}[k] for k in kinds}
    return set()


def _same_value(a, b) -> bool:
    """Equal and of the same JSON kind (``True`` is not ``1``; ``0`` and ``0.0`` are the same number)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return a == b


def _next(value, up: bool, integer: bool):
    """The value just beyond ``value`` (one for counts, a relative step for real numbers)."""
    if integer:
        return value + (1 if up else -1)
    step = max(abs(value), 1.0) * 1e-6
    return value + step if up else value - step


def probes(node: dict):
    """(keyword, value inside the bound, value outside it) for each numeric bound of a schema node."""
    integer = "integer" in json_types(node) and "number" not in json_types(node)
    for kw in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        if kw not in node:
            continue
        b = node[kw]
        up = kw in ("minimum", "exclusiveMinimum")
        if kw.startswith("exclusive"):
            yield kw, _next(b, up, integer), b
        else:
            yield kw, b, _next(b, not up, integer)


def _refused(cls, values: dict, name: str) -> str | None:
    """None when ``cls.from_dict(values)`` accepts, else the error text (a non-ValueError is a failure)."""
    try:
        cls.from_dict(values)
    except ValueError as e:
        return str(e)
    except Exception as e:  # check() must refuse with a ValueError (a UserError at the step), not crash
        raise AssertionError(f"{cls.__name__}.from_dict({values}) raised {type(e).__name__}: {e}") from e
    return None


def compare(schema: dict, cls) -> list[str]:
    """Every difference between ``cls`` and its schema sections that the sections do not list."""
    problems = []
    base = PROBE_BASE.get(cls.__name__, {})
    by_name = {f.name: f for f in fields(cls)}
    for sec in cls.schema:
        where = f"{cls.__name__} vs {'/'.join(sec.path)}"
        try:
            node = node_at(schema, sec.path)
        except (KeyError, TypeError):
            problems.append(f"{where}: no such schema section")
            continue
        props = node.get("properties", {})
        for listed in list(sec.fields_only) + list(sec.defaults) + list(sec.renamed):
            if listed not in by_name:
                problems.append(f"{where}: '{listed}' is listed but is no field")
        for name, f in by_name.items():
            if name in sec.fields_only:
                key = sec.renamed.get(name, name)
                if key in props:
                    problems.append(f"{where}: '{name}' is listed as field-only but the section has '{key}'")
                continue
            key = sec.renamed.get(name, name)
            if key not in props:
                problems.append(f"{where}: field '{name}' has no key '{key}' in the section")
                continue
            sub = resolve(props[key], schema)
            # defaults
            has = "default" in sub
            want = py_default(f)
            same = (not has) if want is MISSING else (has and _same_value(sub["default"], want))
            if name in sec.defaults:
                if same:
                    problems.append(f"{where}: '{name}' is listed as a differing default but both are {want!r}")
            elif not same:
                shown = repr(sub["default"]) if has else "no default"
                problems.append(f"{where}: default of '{key}': schema {shown}, {cls.__name__}.{name} = {want!r}")
            # types
            ann = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            schema_types = json_types(sub)
            if name in sec.defaults and ann in _TYPES and "null" not in _TYPES[ann]:
                schema_types -= {"null"}  # null in the config = "use another key" (the listed difference)
            if ann in _TYPES and schema_types and schema_types != _TYPES[ann]:
                problems.append(f"{where}: type of '{key}': schema {sorted(json_types(sub))}, Python {ann}")
            # enums: each choice accepted, one more refused
            if "enum" in sub:
                for value in sub["enum"]:
                    err = _refused(cls, {**base, name: value}, name)
                    if err:
                        problems.append(f"{where}: '{key}' = {value!r} (a schema choice) is refused: {err}")
                label = f"{name} enum"
                err = _refused(cls, {**base, name: "not-a-choice"}, name)
                if err is None and label not in sec.schema_only_bounds:
                    problems.append(f"{where}: '{key}' = 'not-a-choice' is accepted by check() (schema enum "
                                    f"{sub['enum']}); add the rule or list '{label}' as schema-only")
                if err is not None and label in sec.schema_only_bounds:
                    problems.append(f"{where}: '{label}' is listed as schema-only but check() refuses: {err}")
            # numeric bounds: inside accepted, just outside refused (naming the field) or listed
            for kw, inside, outside in probes(sub):
                label = f"{name} {kw}"
                err = _refused(cls, {**base, name: inside}, name)
                if err:
                    problems.append(f"{where}: '{key}' = {inside!r} is inside the schema's {kw} but refused: {err}")
                err = _refused(cls, {**base, name: outside}, name)
                if err is not None and not re.search(rf"\b{re.escape(name)}\b", err):
                    problems.append(f"{where}: '{key}' = {outside!r} is refused for another reason: {err}")
                if err is None and label not in sec.schema_only_bounds:
                    problems.append(f"{where}: '{key}' = {outside!r} is outside the schema's {kw} {sub[kw]} but "
                                    f"check() accepts it; add the rule or list '{label}' as schema-only")
                if err is not None and label in sec.schema_only_bounds:
                    problems.append(f"{where}: '{label}' is listed as schema-only but check() refuses: {err}")
        for label in sec.schema_only_bounds:
            name, _, kw = label.partition(" ")
            key = sec.renamed.get(name, name)
            if key not in props or (kw not in resolve(props[key], schema) and kw != "enum"):
                problems.append(f"{where}: schema-only bound '{label}' is not in the schema")
        covered = {sec.renamed.get(n, n) for n in by_name if n not in sec.fields_only}
        for key in props:
            if key not in covered and key not in sec.keys_only:
                problems.append(f"{where}: schema key '{key}' has no field in {cls.__name__} (add it or list it "
                                f"in keys_only)")
        for key in sec.keys_only:
            if key not in props:
                problems.append(f"{where}: '{key}' is listed in keys_only but is not in the section")
            elif key in covered:
                problems.append(f"{where}: '{key}' is listed in keys_only but is a field")
    return problems


# --- choice lists the schema writes out, and the Python constant each one must equal --------------

ENUMS = [  # (schema path of a node with an enum, or of an array whose items have one; the constant)
    (("$defs", "prompt_tuning", "properties", "init"), pt.INITS),
    (("$defs", "prompt_tuning", "properties", "eval_schedule"), pt.EVAL_SCHEDULES),
    (("$defs", "dynsan_model", "properties", "selection"), dynsan.SELECTIONS),
    (("properties", "dynsan", "properties", "variants", "additionalProperties", "properties", "selection"),
     dynsan.SELECTIONS),
    (("properties", "dynsan", "properties", "efficiency", "properties", "variants"), dynsan.SELECTIONS),
    (("properties", "fpt", "properties", "methods"), tuple(fpt.METHODS)),
    (("properties", "fpt", "properties", "layer_selection"), fpt.SELECTIONS),
    (("properties", "fpt", "properties", "class_vectors"), fpt.CLASS_VECTORS),
    (("properties", "lpt", "properties", "methods"), lpt.LPT_METHODS),
    (("properties", "kpt", "properties", "variants"), tuple(kpt.VARIANTS)),
    (("properties", "kpt", "properties", "modes"), kpt.MODES),
    (("properties", "kpt", "properties", "settings", "properties", "multi_token"), kpt.MULTI_TOKEN),
    (("properties", "projector", "properties", "objectives"), tr.OBJECTIVES),
]
# lists whose default is every choice, in the constant's order (the order of tables and figures)
ALL_BY_DEFAULT = [("properties", "fpt", "properties", "methods"), ("properties", "lpt", "properties", "methods"),
                  ("properties", "kpt", "properties", "variants"), ("properties", "projector", "properties", "objectives")]

# the schema's own copies of a section's keys (overrides without defaults): each copied key must carry
# the same type, enum and bounds as the original
COPIES = [  # (copy, original, keys of the copy that are not in the original)
    (("properties", "kpt", "properties", "tasks", "additionalProperties", "properties", "settings"),
     ("properties", "kpt", "properties", "settings"), ()),
    (("properties", "dynsan", "properties", "variants", "additionalProperties"), ("$defs", "dynsan_model"),
     ("beta", "passages")),
    (("properties", "dynsan", "properties", "variants", "additionalProperties"), ("$defs", "dynsan_train"),
     tuple(dynsan.VARIANT_MODEL_KEYS) + ("passages",)),
    (("properties", "dynsan", "properties", "variants", "additionalProperties"),
     ("properties", "dynsan", "properties", "limits"), tuple(dynsan.VARIANT_MODEL_KEYS) + ("beta",)),
    (("properties", "dynsan", "properties", "tasks", "additionalProperties", "properties", "limits"),
     ("properties", "dynsan", "properties", "limits"), ()),
    (("properties", "dynsan", "properties", "efficiency"), ("$defs", "dynsan_model"), ("lengths", "variants", "steps")),
]
# every place that takes prompt-tuning settings refers to the one block; the keys a stage refuses
PROMPT_TUNING_REFS = {
    ("properties", "prompt_tuning"): set(),
    ("$defs", "task", "properties", "prompt_tuning"): set(),
    ("properties", "fpt", "properties", "prompt_tuning"): {"steps", "max_length", "bucket_batches"},
    ("properties", "lpt", "properties", "prompt_tuning"): {"max_length", "bucket_batches"},
    ("properties", "kpt", "properties", "prompt_tuning"): set(),
}
_SAME = ("type", "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")

# defaults written in code for keys whose schema default is filled only where the key's section is given
CODE_DEFAULTS = [  # (schema path of the key, the constant the code falls back to)
    (("properties", "dynsan", "properties", "tasks", "additionalProperties", "properties", "split", "properties",
      "test_fraction"), dynsan.TEST_FRACTION),
    (("properties", "dynsan", "properties", "tasks", "additionalProperties", "properties", "split", "properties",
      "dev_fraction"), dynsan.DEV_FRACTION),
    (("properties", "dynsan", "properties", "tasks", "additionalProperties", "properties", "split", "properties",
      "seed"), dynsan.SPLIT_SEED),
    (("$defs", "task", "properties", "split", "properties", "test_fraction"), prepare.TEST_FRACTION),
    (("$defs", "task", "properties", "split", "properties", "dev_fraction"), prepare.DEV_FRACTION),
    (("$defs", "task", "properties", "split", "properties", "seed"), prepare.SPLIT_SEED),
]


def fact_problems(schema: dict) -> list[str]:
    problems = []
    for path, constant in ENUMS:
        node = node_at(schema, path)
        items = resolve(node.get("items", {}), schema)
        enum = node.get("enum", items.get("enum"))
        if enum != list(constant):
            problems.append(f"{'/'.join(path)}: enum {enum} != Python {list(constant)}")
    for path in ALL_BY_DEFAULT:
        node = node_at(schema, path)
        if node.get("default") != resolve(node["items"], schema)["enum"]:
            problems.append(f"{'/'.join(path)}: default {node.get('default')} is not every choice in order")
    schedules = node_at(schema, ("properties", "fpt", "properties", "schedules"))
    want = f"^fpt_({'|'.join(m.removeprefix('fpt_') for m in fpt.METHODS)})$"
    if list(schedules["patternProperties"]) != [want]:
        problems.append(f"fpt.schedules: patternProperties {list(schedules['patternProperties'])} != [{want!r}] (METHODS)")
    for copy_path, orig_path, extra in COPIES:
        cp, orig = node_at(schema, copy_path), node_at(schema, orig_path)
        for key, sub in cp.get("properties", {}).items():
            if key in extra:
                continue
            where = f"{'/'.join(copy_path)}.{key}"
            if key not in orig.get("properties", {}):
                problems.append(f"{where}: not a key of {'/'.join(orig_path)}")
                continue
            a, b = resolve(sub, schema), resolve(orig["properties"][key], schema)
            for kw in _SAME:
                if a.get(kw) != b.get(kw):
                    problems.append(f"{where}: {kw} {a.get(kw)!r}, in {'/'.join(orig_path)} {b.get(kw)!r}")
    block = set(schema["$defs"]["prompt_tuning"]["properties"])
    for path, refused in PROMPT_TUNING_REFS.items():
        node = schema
        for part in path:
            node = node[part]
        where = "/".join(path)
        if node.get("$ref") != "#/$defs/prompt_tuning":
            problems.append(f"{where}: not a $ref to the one prompt_tuning block")
        own = node.get("properties", {})
        if set(own) != refused or any(v != {"not": {}, **({"description": v["description"]} if "description" in v else {})}
                                      for v in own.values()):
            problems.append(f"{where}: its own keys {sorted(own)} should be only the refused {sorted(refused)}")
        if not refused <= block:
            problems.append(f"{where}: refuses {sorted(refused - block)}, not keys of the block")
    for path, constant in CODE_DEFAULTS:
        node = node_at(schema, path)
        if node.get("default") != constant:
            problems.append(f"{'/'.join(path)}: schema default {node.get('default')!r}, code {constant!r}")
    return problems


# --- the tests ------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", all_settings(), ids=lambda c: c.__name__)
def test_settings_match_schema(cls):
    if cls.__name__ in NOT_CONFIGURABLE:
        assert not cls.schema
        return
    assert cls.schema, f"{cls.__name__} names no schema section (set its `schema`, or list it in NOT_CONFIGURABLE)"
    assert compare(load_schema(), cls) == []


def test_choice_lists_copies_and_code_defaults_match():
    assert fact_problems(load_schema()) == []


def test_every_settings_class_is_compared():
    names = {c.__name__ for c in all_settings()}
    assert {"PromptTuningConfig", "ProjectorConfig", "FPTConfig", "FPTStage", "LatePromptConfig", "KPTConfig",
            "ModelConfig", "TrainConfig"} <= names


def _mutated(path, key, value):
    schema = copy.deepcopy(load_schema())
    node_at(schema, path)  # exists
    node = schema
    for part in path:
        node = node[part]
    node[key] = value
    return schema


def test_a_changed_default_is_reported_with_its_key():
    schema = _mutated(("$defs", "dynsan_train", "properties", "lr"), "default", 0.002)
    problems = compare(schema, dynsan.TrainConfig)
    assert len(problems) == 1 and "default of 'lr'" in problems[0] and "0.002" in problems[0], problems
    schema = _mutated(("$defs", "prompt_tuning", "properties", "steps"), "default", 151)
    assert any("default of 'steps'" in p for p in compare(schema, pt.PromptTuningConfig))


def test_a_changed_bound_or_enum_is_reported():
    # check() refuses heads < 1: a schema minimum of 2 would let check() accept what the schema refuses
    schema = _mutated(("$defs", "dynsan_model", "properties", "heads"), "minimum", 2)
    assert any("'heads' = 1 is outside the schema's minimum 2" in p for p in compare(schema, dynsan.ModelConfig))
    # a schema minimum below check()'s rule: the inside value is refused
    schema = _mutated(("$defs", "dynsan_train", "properties", "steps"), "minimum", 0)
    assert any("'steps' = 0 is inside" in p for p in compare(schema, dynsan.TrainConfig))
    schema = _mutated(("$defs", "dynsan_model", "properties", "selection"), "enum", ["gated", "random"])
    assert any("enum" in p for p in fact_problems(schema))
    schema = _mutated(("properties", "dynsan", "properties", "variants", "additionalProperties", "properties", "beta"),
                      "maximum", 5)
    assert any("variants/additionalProperties.beta: maximum 5" in p for p in fact_problems(schema))


def test_a_new_schema_key_without_field_is_reported():
    schema = copy.deepcopy(load_schema())
    schema["$defs"]["dynsan_model"]["properties"]["width_mult"] = {"type": "integer", "default": 1}
    assert any("'width_mult' has no field" in p for p in compare(schema, dynsan.ModelConfig))


def test_stage_overrides_stay_sparse_and_refuse_their_keys(minimal_config):
    from pipeline_steps.config import load_config
    from pipeline_steps.errors import UserError

    cfg = copy.deepcopy(minimal_config)
    for section in ("fpt", "lpt", "kpt"):
        cfg[section] = {"prompt_tuning": {"lr": 0.5}}
    full = load_config(cfg)
    for section in ("fpt", "lpt", "kpt"):  # no default filled in: the task's and global settings still apply
        assert full[section]["prompt_tuning"] == {"lr": 0.5}
    assert full["prompt_tuning"]["steps"] == pt.PromptTuningConfig.steps  # the global block is filled
    for section, key, value in [("fpt", "steps", 5), ("lpt", "max_length", 32), ("kpt", "lr", 0),
                                ("lpt", "eval_schedule", "sometimes")]:
        bad = copy.deepcopy(minimal_config)
        bad[section] = {"prompt_tuning": {key: value}}
        with pytest.raises(UserError, match=rf"key '{section}\.prompt_tuning\.{key}'"):
            load_config(bad)
    assert load_config({**copy.deepcopy(minimal_config), "kpt": {"prompt_tuning": {"max_length": 32,
                                                                                   "bucket_batches": 2}}})


def test_dynsan_split_defaults_are_the_code_defaults(minimal_config):
    """DynSAN holds out 0.2 for test (classification tasks 0.25): a task without ``split`` and one with the
    schema-filled defaults draw the same splits; an absent ``split`` stays absent (data specs unchanged)."""
    from pipeline_steps.config import load_config
    from pipeline_steps.dynsan.config import dynsan_task_spec
    from pipeline_steps.dynsan.data import assign_splits

    cfg = copy.deepcopy(minimal_config)
    cfg["dynsan"] = {"tasks": {"a": {"source": {"demo": "bridge"}},
                               "b": {"source": {"demo": "bridge"}, "split": {"seed": 13}}}}
    full = load_config(cfg)
    assert "split" not in dynsan_task_spec(full, "a")["task"]
    filled = dynsan_task_spec(full, "b")["task"]["split"]
    assert filled == {"seed": 13, "test_fraction": 0.2, "dev_fraction": 0.15}

    def recs():
        return [{"id": i, "split": None} for i in range(100)]

    plain, with_defaults = assign_splits(recs(), {}), assign_splits(recs(), {"split": filled})
    assert [(r["id"], r["split"]) for r in plain] == [(r["id"], r["split"]) for r in with_defaults]
    assert sum(r["split"] == "test" for r in plain) == 20
    other = assign_splits(recs(), {"split": {**filled, "test_fraction": 0.25}})
    assert sum(r["split"] == "test" for r in other) == 25
