"""Command line: ``python -m pipeline_steps STEP --args JSON [--files JSON]``.

Every Snakemake rule calls exactly one step through this entry point. ``--args`` holds the step
function's settings (what Snakemake compares to decide on re-runs), ``--files`` its path arguments,
taken from the rule's own input and output (``files()`` in workflow/rules/common.smk); the step gets
both as keyword arguments (a name in both is an error; by hand, ``--args`` alone may hold everything).
A :class:`UserError` prints one line, with no traceback, and exits with status 2.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import sys
import time


from .papers import all_steps

# step name -> "module:function" (imported on use, so light steps don't load torch): pipeline_steps/papers.py
STEPS = all_steps()


def resolve_step(name: str):
    module, func = STEPS[name].split(":")
    return getattr(importlib.import_module(f"pipeline_steps.{module}"), func)


_SIMPLE = {"str": str, "int": int, "float": (int, float), "bool": bool, "dict": dict, "list": list}


def _matches_annotation(value, annotation: str) -> bool:
    """``value`` against a step's (string) annotation such as ``int``, ``str | None``, ``list[dict]``;
    annotations it does not know (``os.PathLike``, ...) accept anything."""
    for alt in (a.strip() for a in annotation.split("|")):
        if alt == "None":
            if value is None:
                return True
            continue
        base, _, inner = alt.partition("[")
        want = _SIMPLE.get(base)
        if want is None:
            return True
        if isinstance(value, bool) and base in ("int", "float"):
            continue
        if isinstance(value, want):
            if base == "list" and inner and inner[:-1] in _SIMPLE:  # list[str], list[dict], list[int]
                return all(_matches_annotation(v, inner[:-1]) for v in value)
            return True
    return False


def check_args(name: str, fn, kwargs) -> None:
    """The step's argument check, before it runs: every required argument given, none unknown, each
    of its annotated type, no empty text, numbers finite, task/model specs shaped like the config's.
    A mistake is a UserError naming the step and the argument."""
    from .config import check_plain_values, check_spec
    from .errors import UserError

    where = f"step {name}"
    if not isinstance(kwargs, dict):
        raise UserError(f"{where}: --args must be a JSON object of keyword arguments, got {type(kwargs).__name__}")
    params = inspect.signature(fn).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise UserError(f"{where}: unknown argument(s) {unknown}; it takes {', '.join(params)}")
    missing = [p for p, par in params.items() if par.default is inspect.Parameter.empty
               and par.kind in (par.KEYWORD_ONLY, par.POSITIONAL_OR_KEYWORD) and p not in kwargs]
    if missing:
        raise UserError(f"{where}: missing argument(s) {missing}")
    for arg, value in kwargs.items():
        at = f"{where}: argument '{arg}'"
        annotation = params[arg].annotation
        if isinstance(annotation, str) and not _matches_annotation(value, annotation):
            shown = json.dumps(value, default=str)
            shown = shown if len(shown) <= 60 else shown[:60] + "..."
            raise UserError(f"{at} must be {annotation}, got {type(value).__name__} {shown}")
        check_plain_values(value, at)
        for text in ([value] if isinstance(value, str) else value if isinstance(value, list) else []):
            if isinstance(text, str) and not text.strip():
                raise UserError(f"{at}: empty text")
        if arg == "spec" or arg.endswith(("_spec", "_specs")):
            for i, spec in enumerate(value if isinstance(value, list) else [value]):
                kind = "task" if isinstance(spec, dict) and ("template" in spec or "label_names" in spec) else "model"
                check_spec(spec, kind, at + (f"[{i}]" if isinstance(value, list) else ""))


def main(argv: list[str] | None = None) -> int:
    from .warm import run_in_worker  # a run's warm worker runs the step without paying the imports

    code = run_in_worker(sys.argv[1:] if argv is None else argv)
    if code is not None:
        return code
    from .errors import UserError
    from .logsetup import setup_logging  # not runtime: that imports torch

    parser = argparse.ArgumentParser(prog="python -m pipeline_steps", description=__doc__.splitlines()[0])
    parser.add_argument("step", help="one of: " + ", ".join(sorted(STEPS)))
    parser.add_argument("--args", default="{}", help="JSON object of keyword arguments for the step (settings)")
    parser.add_argument("--files", default="{}", help="JSON object of the step's path arguments (a rule passes "
                                                      "its own input and output here); merged with --args")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (passed to steps that take it)")
    ns = parser.parse_args(argv)
    setup_logging()
    if ns.step not in STEPS:
        print(f"error: unknown step '{ns.step}'; known: {', '.join(sorted(STEPS))}", file=sys.stderr)
        return 2
    parsed = {}
    for flag in ("args", "files"):
        try:
            parsed[flag] = json.loads(getattr(ns, flag))
        except json.JSONDecodeError as e:
            print(f"error: --{flag} is not valid JSON: {e}", file=sys.stderr)
            return 2
    kwargs, paths = parsed["args"], parsed["files"]
    if paths:
        if not isinstance(paths, dict) or not isinstance(kwargs, dict):
            print("error: --args and --files must be JSON objects", file=sys.stderr)
            return 2
        both = sorted(set(kwargs) & set(paths))
        if both:
            print(f"error: {both} given in both --args and --files", file=sys.stderr)
            return 2
        kwargs = {**kwargs, **paths}
    fn = resolve_step(ns.step)
    if ns.threads is not None and isinstance(kwargs, dict) and "threads" in inspect.signature(fn).parameters:
        kwargs["threads"] = ns.threads
    start = time.perf_counter()
    try:
        check_args(ns.step, fn, kwargs)
        fn(**kwargs)
    except UserError as e:
        # one line, whatever the message quotes (a value with a newline must not split it)
        print("error: " + str(e).replace("\r", "\\r").replace("\n", "\\n"), file=sys.stderr)
        return 2
    logging.getLogger("pipeline_steps").info("%s done in %.1f s", ns.step, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
