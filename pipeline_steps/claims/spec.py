"""The claims file (``resources/claims.yaml``): loading and checking.

Checked against ``workflow/schemas/claims.schema.yaml``, then: ids unique, every claim's paper
declared, every measure a function of :mod:`.measures` and its params arguments of that function,
a ``within`` band with ``low < high``. Each mistake is a :class:`UserError` naming the file and the claim.
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path

import jsonschema

from ..errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "claims.schema.yaml"
DEFAULT_CLAIMS = REPO_ROOT / "resources" / "claims.yaml"


def claims_path(path: str | os.PathLike) -> Path:
    """``path`` as given when it exists (absolute, or relative to the working directory), else relative
    to the repository (where the shipped ``resources/claims.yaml`` lies, whatever the workdir)."""
    path = Path(path)
    if path.is_absolute() or path.exists() or not (REPO_ROOT / path).exists():
        return path
    return REPO_ROOT / path


def load_claims(path: str | os.PathLike = DEFAULT_CLAIMS) -> dict:
    """The parsed, checked claims file: ``{"papers": {...}, "claims": [...]}``."""
    from ..config import read_yaml
    from .measures import MEASURES

    path = claims_path(path)
    if not path.exists():
        raise UserError(f"{path}: claims file not found (config key claims.file)")
    data = read_yaml(path)
    schema = read_yaml(SCHEMA_PATH)
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = ".".join(str(p) for p in e.absolute_path) or "<top level>"
        raise UserError(f"{path}: {where}: {e.message}")
    seen = set()
    for i, claim in enumerate(data["claims"]):
        at = f"{path}: claims[{i}] ({claim['id']})"
        if claim["id"] in seen:
            raise UserError(f"{at}: duplicate claim id")
        seen.add(claim["id"])
        if claim["paper"] not in data["papers"]:
            raise UserError(f"{at}: unknown paper '{claim['paper']}'; declared: {', '.join(data['papers'])}")
        if not claim["id"].startswith(claim["paper"] + "."):
            raise UserError(f"{at}: the id must start with its paper's name, '{claim['paper']}.'")
        fn = MEASURES.get(claim["measure"])
        if fn is None:
            raise UserError(f"{at}: unknown measure '{claim['measure']}'; known: {', '.join(sorted(MEASURES))}")
        params = claim.setdefault("params", {})
        sig = inspect.signature(fn).parameters
        unknown = sorted(set(params) - set(sig) - {"ctx"})
        if unknown:
            raise UserError(f"{at}: measure '{claim['measure']}' takes no parameter(s) {unknown}; "
                            f"it takes {', '.join(p for p in sig if p != 'ctx')}")
        missing = [p for p, v in sig.items() if p != "ctx" and v.default is inspect.Parameter.empty and p not in params]
        if missing:
            raise UserError(f"{at}: measure '{claim['measure']}' needs parameter(s) {missing}")
        test = claim["test"]
        if test["side"] == "within" and not test["low"] < test["high"]:
            raise UserError(f"{at}: test: low ({test['low']}) must be below high ({test['high']})")
        claim["paper_result"].setdefault("value", None)
    return data
