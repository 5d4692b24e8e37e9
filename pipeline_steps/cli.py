"""Command line: ``python -m pipeline_steps STEP --args JSON``.

Every Snakemake rule calls exactly one step through this entry point; the JSON
holds the step function's keyword arguments (paths and settings). A
:class:`UserError` prints one line, with no traceback, and exits with status 2.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import sys
import time


# step name -> "module:function" (imported on use, so light steps don't load torch)
STEPS = {
    "prepare-data": "data.prepare:run",
    "tokenize": "data.tokenize:run",
    "build-model": "models.build:build",
    "train-prompt": "prompt_tuning.steps:train",
    "evaluate-prompt": "prompt_tuning.steps:evaluate",
    "summarise-prompts": "prompt_tuning.report:summarise_prompt_tuning",
    "export-peft": "peft_export:export",
    "zero-shot": "transfer:zero_shot",
    "zero-shot-table": "transfer:zero_shot_table",
    "transfer-init-table": "transfer:init_table",
    "indicator-activations": "indicators:compute_activations",
    "indicator-table": "indicators:build_table",
    "indicator-correlation": "indicators:correlation",
    "train-projector": "projection:train",
    "evaluate-projection": "projection:evaluate",
    "summarise-projection": "projection:table",
    "fpt-scores": "efficient:fpt_scores",
    "fpt-stage": "efficient:fpt_stage",
    "summarise-fpt": "efficient:summarise_fpt",
    "lpt-run": "efficient:lpt_run",
    "summarise-lpt": "efficient:summarise_lpt",
    "dynsan-prepare": "dynsan.steps:prepare",
    "dynsan-train": "dynsan.steps:train",
    "dynsan-evaluate": "dynsan.steps:evaluate",
    "dynsan-efficiency": "dynsan.steps:efficiency",
    "dynsan-summarise": "dynsan.report:summarise",
}


def resolve_step(name: str):
    module, func = STEPS[name].split(":")
    return getattr(importlib.import_module(f"pipeline_steps.{module}"), func)


def main(argv: list[str] | None = None) -> int:
    from .errors import UserError
    from .runtime import setup_logging

    parser = argparse.ArgumentParser(prog="python -m pipeline_steps", description=__doc__.splitlines()[0])
    parser.add_argument("step", help="one of: " + ", ".join(sorted(STEPS)))
    parser.add_argument("--args", default="{}", help="JSON object of keyword arguments for the step")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (passed to steps that take it)")
    ns = parser.parse_args(argv)
    setup_logging()
    if ns.step not in STEPS:
        print(f"error: unknown step '{ns.step}'; known: {', '.join(sorted(STEPS))}", file=sys.stderr)
        return 2
    try:
        kwargs = json.loads(ns.args)
    except json.JSONDecodeError as e:
        print(f"error: --args is not valid JSON: {e}", file=sys.stderr)
        return 2
    fn = resolve_step(ns.step)
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
