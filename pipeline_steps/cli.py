"""Command line: ``python -m pipeline_steps STEP --args JSON``.

Every Snakemake rule calls exactly one step through this entry point; the JSON
holds the step function's keyword arguments (paths and settings). A
:class:`UserError` prints one line, with no traceback, and exits with status 2.
"""
from __future__ import annotations

import argparse
import inspect
import json
import logging
import sys
import time


def _steps() -> dict:
    from .data import prepare, tokenize
    from .models import build
    from . import reports, source_prompts

    return {
        "prepare-data": prepare.run,
        "tokenize": tokenize.run,
        "build-model": build.build,
        "train-prompt": source_prompts.train,
        "evaluate-prompt": source_prompts.evaluate,
        "summarise-prompts": reports.summarise_prompt_tuning,
        **_efficient_steps(),
    }


def _efficient_steps() -> dict:
    from . import efficient

    return {
        "fpt-scores": efficient.fpt_scores,
        "fpt-stage": efficient.fpt_stage,
        "summarise-fpt": efficient.summarise_fpt,
        "lpt-run": efficient.lpt_run,
        "summarise-lpt": efficient.summarise_lpt,
    }


def main(argv: list[str] | None = None) -> int:
    from .errors import UserError
    from .runtime import setup_logging

    parser = argparse.ArgumentParser(prog="python -m pipeline_steps", description=__doc__.splitlines()[0])
    parser.add_argument("step", help="one of: " + ", ".join(sorted(_steps())))
    parser.add_argument("--args", default="{}", help="JSON object of keyword arguments for the step")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (passed to steps that take it)")
    ns = parser.parse_args(argv)
    setup_logging()
    steps = _steps()
    if ns.step not in steps:
        print(f"error: unknown step '{ns.step}'; known: {', '.join(sorted(steps))}", file=sys.stderr)
        return 2
    try:
        kwargs = json.loads(ns.args)
    except json.JSONDecodeError as e:
        print(f"error: --args is not valid JSON: {e}", file=sys.stderr)
        return 2
    fn = steps[ns.step]
    if ns.threads is not None and "threads" in inspect.signature(fn).parameters:
        kwargs["threads"] = ns.threads
    start = time.perf_counter()
    try:
        fn(**kwargs)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.getLogger("pipeline_steps").info("%s done in %.1f s", ns.step, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
