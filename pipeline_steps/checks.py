"""The config's cross-checks that JSON schema cannot express (run by ``config.validate`` after the schema
and the defaults): the shared sections' references and files here, each paper's own in its package's
``config.check_config`` (listed in ``PAPER_CHECKS``); warnings for valid settings that mislead."""
from __future__ import annotations

import re
import string
from pathlib import Path

from .dynsan import config as dynsan_config
from .errors import UserError, shown, unknown_name
from .models.registry import BUILTIN_SOURCES, built_dir, is_local_path, mpnet_pieces
from .papers import config_checks

TEMPLATE_FIELDS = {"text_a", "text_b", "mask"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?$")
# each paper's cross-checks of its own section, ``check_config(cfg, origin)``, from the registry
PAPER_CHECKS = config_checks()


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


def check_references(cfg: dict, origin: str) -> None:
    exp = cfg["experiment"]
    for kind in ("tasks", "models"):
        for name in exp[kind]:
            if name not in cfg[kind]:
                raise unknown_name(f"{origin}: key 'experiment.{kind}'", kind[:-1], name, cfg[kind])
    init = cfg["transfer"]["init"]
    for key, pool in (("models", "models"), ("sources", "tasks"), ("targets", "tasks")):
        for name in init[key] or []:
            if name not in exp[pool]:
                raise UserError(f"{origin}: key 'transfer.init.{key}': '{name}' is not in experiment.{pool} "
                                f"{exp[pool]}")
    tasks_used, models_used = used_tasks(cfg), used_models(cfg)
    for name, task in cfg["tasks"].items():
        where = f"{origin}: key 'tasks.{name}"
        check_task_entry(task, lambda key: f"{where}.{key}'")
        src = task["source"]
        if "path" in src:
            if name in tasks_used and not _path_test(Path(src["path"]).exists, f"{where}.source.path'"):
                raise UserError(f"{where}.source.path': data file '{src['path']}' does not exist "
                                f"(used by {tasks_used[name]}; relative paths are read from {Path.cwd()})")
    for check in PAPER_CHECKS:
        check(cfg, origin)
    for name, model in cfg["models"].items():
        source = model["source"]
        local = _path_test(lambda: is_local_path(source), f"{origin}: key 'models.{name}.source'")
        if not local and not source.startswith(("embedded:", "tiny:")) and not _HUB_ID.match(source):
            raise UserError(f"{origin}: key 'models.{name}.source': {shown(source)} is neither a built-in model, "
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


def check_task_entry(task: dict, key) -> None:
    """One task entry (a config's ``tasks.<name>`` or a step's task spec): the source's defaults filled in
    place, the template (``template_problem``) and the label words' classes. ``key(name)`` names a key
    in the messages."""
    src = task["source"]
    if "demo" in src:
        src.setdefault("size", 600)
    if "path" in src:
        src.setdefault("split_field", None)
    problem = template_problem(task["template"], len(task["text_fields"]))
    if problem:
        raise UserError(f"{key('template')}: {problem}")
    if set(task["label_words"]) != set(task["label_names"]):
        raise UserError(f"{key('label_words')}: keys {sorted(task['label_words'])} must match "
                        f"label_names {task['label_names']}")


def _path_test(test, where: str) -> bool:
    """``test()`` (a file-system query) with an impossible path (too long, ...) as a UserError."""
    try:
        return bool(test())
    except (OSError, ValueError) as e:
        raise UserError(f"{where}: not a usable path ({type(e).__name__}: {shown(str(e), 120)})") from None


def template_problem(template: str, n_text_fields: int) -> str | None:
    """What is wrong with a prompt template, or None: exactly one ``{mask}``, ``{text_a}`` once,
    ``{text_b}`` once for a pair task (two text_fields) and never otherwise, nothing else in braces
    (write a literal brace as ``{{`` or ``}}``). Shared by the config check and tokenisation."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        return f"{shown(template)} is not a valid template ({e}); write a literal brace as {{{{ or }}}}"
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


def config_warnings(cfg: dict, origin: str = "config") -> list[str]:
    """Valid settings that make the run mean less than it seems (printed at start, not refused).
    Call after ``validate``."""
    return dynsan_config.config_warnings(cfg, origin)
