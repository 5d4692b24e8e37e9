"""Settings of KPT runs, the verbalizer variants (the rows of one table) and the format of the published
KPT word-list files (read at config validation, so a bad line fails before any job). No torch import."""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError, unknown_name
from ..io import parse_json, read_text
from ..settings import SchemaSection, Settings

# variant -> which parts are on: knowledge-base words, frequency, relevance, calibration, learnable weights
VARIANTS = {
    "manual": dict(knowledge=False, frequency=False, relevance=False, calibration=False, learnable=False),
    "manual+calibration": dict(knowledge=False, frequency=False, relevance=False, calibration=True, learnable=False),
    "kpt": dict(knowledge=True, frequency=True, relevance=True, calibration=True, learnable=True),
    "kpt-no-frequency": dict(knowledge=True, frequency=False, relevance=True, calibration=True, learnable=True),
    "kpt-no-relevance": dict(knowledge=True, frequency=True, relevance=False, calibration=True, learnable=True),
    "kpt-no-calibration": dict(knowledge=True, frequency=True, relevance=True, calibration=False, learnable=True),
    "kpt-no-learnable": dict(knowledge=True, frequency=True, relevance=True, calibration=True, learnable=False),
}
MODES = ("prompt", "model")
MULTI_TOKEN = ("mean", "first")  # a multi-token word's logit


def switches(variant: str, shots: int, relevance_few_shot: bool = False) -> dict[str, bool]:
    """The parts a variant uses in a setting: relevance refinement is zero-shot only (the paper's
    few-shot KPT replaces it by the learnable weights) unless ``relevance_few_shot``; the
    learnable weights need training, so they are off in zero-shot."""
    s = dict(VARIANTS[variant])
    if shots > 0 and not relevance_few_shot:
        s["relevance"] = False
    if shots == 0:
        s["learnable"] = False
    return s


def variants_for(variants: list[str], shots: int, relevance_few_shot: bool = False) -> list[str]:
    """The variants that differ in this setting (an ablation equal to ``kpt`` there is left out)."""
    out, seen = [], set()
    for v in variants:
        key = tuple(sorted(switches(v, shots, relevance_few_shot).items()))
        if v != "kpt" and v.startswith("kpt-") and key == tuple(sorted(switches("kpt", shots, relevance_few_shot).items())):
            continue
        if key in seen:
            continue
        seen.add(key)
        out.append(v)
    return out


@dataclass
class KPTConfig(Settings):
    what = "kpt"
    schema = (SchemaSection(("properties", "kpt", "properties", "settings")),)

    support_size: int = 200          # unlabeled training inputs behind the frequency/relevance/calibration statistics
    candidate_frac: float = 0.5      # frequency refinement: drop words whose prior is in this lowest fraction
    max_words: int | None = 50       # cap on a class's candidate words after expansion
    multi_token: str = "mean"        # mean | first: a multi-token word's logit
    max_subtokens: int | None = None  # drop words of more sub-tokens (None: no limit)
    relevance_few_shot: bool = False  # also apply relevance refinement in few-shot runs
    weight_lr: float = 0.06          # AdamW lr of the learnable label-word weights
    model_lr: float = 3e-5           # training mode `model`: lr of the whole PLM
    model_epochs: int = 5            # training mode `model`: epochs (best epoch by dev score)
    batch_size: int = 8              # few-shot training batch (both modes)

    def check(self) -> None:
        if not 0 <= self.candidate_frac < 1:
            raise ValueError(f"candidate_frac must be in [0, 1), got {self.candidate_frac}")
        if self.multi_token not in MULTI_TOKEN:
            raise ValueError(f"multi_token must be {' or '.join(MULTI_TOKEN)}, not '{self.multi_token}'")
        self.at_least(2, "support_size")
        self.at_least(1, "max_words", "max_subtokens", "model_epochs", "batch_size")
        self.above(0, "weight_lr", "model_lr")


# --- the published KPT word-list files ----------------------------------------------------------

def read_kb_file(path: str | os.PathLike, label_names: list[str]) -> dict[str, list[str]]:
    """Words per class (label order) from a KPT word-list file (``.txt`` lines or ``.json`` object).

    Errors name the file and, for the text format, the line.
    """
    path = Path(path)
    text = read_text(path, "knowledge-base file")
    if path.suffix == ".json":
        data = parse_json(text, str(path), dict, "a JSON knowledge base must be an object mapping class name to a word list")
        unknown = [k for k in data if k not in label_names]
        if unknown:
            raise UserError(f"{path}: classes {unknown} are not among the task's label_names {label_names}")
        out = {}
        for name in label_names:
            if name not in data:
                raise UserError(f"{path}: class '{name}' is missing (the task's label_names are {label_names})")
            words = data[name]
            if isinstance(words, str):
                words = [w for w in words.split(",")]
            if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
                raise UserError(f"{path}: class '{name}': expected a list of words, got {type(words).__name__}")
            words = [w.strip() for w in words if not _SEPARATORS.match(w)]
            if not words:
                raise UserError(f"{path}: class '{name}' has no words")
            out[name] = words
        return out
    lines = text.splitlines()
    while lines and not lines[-1].strip():  # trailing blank lines are harmless
        lines.pop()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            raise UserError(f"{path}: line {i}: empty line (one line of comma-separated words per class)")
        if not _line_words(line):
            raise UserError(f"{path}: line {i}: no word, only separators ({line.strip()[:40]!r}); "
                            f"one line of comma-separated words per class")
    if len(lines) != len(label_names):
        raise UserError(f"{path}: {len(lines)} lines of words but the task has {len(label_names)} classes "
                        f"{label_names} (one line per class, in label order)")
    return {name: _line_words(line) for name, line in zip(label_names, lines)}


_SEPARATORS = re.compile(r"^[\s,;|]*$")  # a "word" of separators only is no word


def _line_words(line: str) -> list[str]:
    """The words of one line of a word-list file (comma-separated; blank entries and entries of
    separators only, e.g. ``;`` or ``|``, are not words)."""
    return [w.strip() for w in line.split(",") if not _SEPARATORS.match(w)]


# --- the blocklist of knowledge-base words -------------------------------------------------------

BLOCKLIST = Path(__file__).resolve().parent.parent.parent / "resources" / "kpt" / "blocklist.txt"
_BLOCK_ENTRY = re.compile(r"^[a-z][a-z' -]*\*?$")


@dataclass(frozen=True)
class Blocklist:
    """Words never taken from a knowledge base: exact entries and prefixes (entries ending in ``*``)."""
    words: frozenset
    prefixes: tuple
    path: str = ""
    sha256: str = ""

    def blocks(self, word: str) -> bool:
        """Whether ``word`` (or, for a phrase, one of its words) is an entry or starts with a prefix."""
        word = word.strip().lower()
        parts = [word] + [p for p in re.split(r"[\s_-]+", word) if p]
        return any(p in self.words or p.startswith(self.prefixes) for p in parts)


def read_blocklist(path: str | os.PathLike = BLOCKLIST) -> Blocklist:
    """A blocklist file: one lower-case entry per line, ``*`` at the end for a prefix, ``#`` comments.
    Errors name the file and line."""
    path = Path(path).expanduser()
    text = read_text(path, "blocklist file")
    raw = path.read_bytes()  # the hash is of the bytes
    words, prefixes = set(), []
    for i, line in enumerate(text.splitlines(), 1):
        entry = line.split("#", 1)[0].strip().lower()
        if not entry:
            continue
        if not _BLOCK_ENTRY.match(entry):
            raise UserError(f"{path}: line {i}: {entry!r} is not a word, a phrase or a prefix ending in *")
        if entry.endswith("*"):
            prefixes.append(entry[:-1])
        else:
            words.add(entry)
    return Blocklist(frozenset(words), tuple(sorted(set(prefixes))), str(path), hashlib.sha256(raw).hexdigest())


def blocklist_path(setting) -> str | None:
    """The blocklist file of a knowledge base's ``blocklist`` setting: true (default) the shipped
    ``resources/kpt/blocklist.txt``, false none, a string that file."""
    if setting is False:
        return None
    return str(BLOCKLIST) if setting in (True, None) else str(Path(setting).expanduser())


# --- cross-checks of the config section (run by checks.check_references) ---------------------

def check_config(cfg: dict, origin: str = "config") -> None:
    """Cross-checks of the ``kpt:`` section: names, per-task settings, and each knowledge-base file
    (read here, so a bad line fails before any job starts)."""
    sec = cfg["kpt"]
    for name in sec["models"]:
        if name not in cfg["models"]:
            raise unknown_name(f"{origin}: key 'kpt.models'", "model", name, cfg["models"])
    active = bool(sec["models"])
    for task, entry in sec["tasks"].items():
        key = f"{origin}: key 'kpt.tasks.{task}"
        if task not in cfg["tasks"]:
            raise unknown_name(f"{key}'", "task", task, cfg["tasks"])
        try:
            KPTConfig.from_dict({**sec["settings"], **(entry.get("settings") or {})})
        except (ValueError, TypeError) as e:
            raise UserError(f"{key}.settings': {e}") from None
        names = cfg["tasks"][task]["label_names"]
        for kb_name in entry["knowledge_bases"]:
            if kb_name not in sec["knowledge_bases"]:
                raise unknown_name(f"{key}.knowledge_bases'", "knowledge base", kb_name, sec["knowledge_bases"],
                                   hint="none (add kpt.knowledge_bases)")
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
