"""The registry of paper packages: the one place that lists, per method, its CLI steps, its Snakemake
rule files and targets, and its docs page. ``cli.STEPS``, the config cross-checks
(``checks.PAPER_CHECKS``: each package's ``config.check_config``), the Snakefile's includes and its
``all`` target, and the layout tests loop over ``PAPERS``. Adding a method: docs/adding_a_method.md.

Light on purpose (no torch): the Snakefile and the config checks import it.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Paper:
    name: str                  # the package pipeline_steps/<name>/ (and, for a method, its config section)
    steps: dict[str, str]      # CLI step name -> "function" of <name>.steps or "module:function" in the package
    rules: tuple[str, ...]     # workflow/rules/*.smk, included in this order
    targets: tuple[str, ...]   # rules whose inputs ``snakemake all`` builds
    docs: str                  # the method's page

    def step_paths(self) -> dict[str, str]:
        """CLI step name -> "module:function" relative to ``pipeline_steps``."""
        return {step: f"{self.name}.{target}" if ":" in target else f"{self.name}.steps:{target}"
                for step, target in self.steps.items()}


# Steps every method builds on (data, models) and the claims judged over all tables.
CORE_STEPS = {
    "prepare-data": "data.prepare:run",
    "tokenize": "data.tokenize:run",
    "build-model": "models.build:build",
    "claims": "claims.steps:evaluate",
}
CORE_RULES = ("data.smk", "models.smk")   # before the papers' rules
FINAL_RULES = ("claims.smk",)            # after them: the claims read every paper's tables

PAPERS = (
    Paper("prompt_tuning",
          {"train-prompt": "train", "evaluate-prompt": "evaluate",
           "summarise-prompts": "report:summarise_prompt_tuning"},
          ("prompt_tuning.smk",), ("source_prompts",), "docs/prompt_tuning.md"),
    Paper("transferability",
          {"export-peft": "export_peft", "zero-shot": "zero_shot", "zero-shot-table": "report:zero_shot_table",
           "transfer-init-table": "report:init_table", "indicator-activations": "compute_activations",
           "indicator-table": "indicator_table", "indicator-correlation": "report:correlation",
           "train-projector": "train_projector", "evaluate-projection": "evaluate_projection",
           "summarise-projection": "report:projection_table"},
          ("transfer.smk", "indicators.smk", "projection.smk"), ("transfer", "indicators", "projection"),
          "docs/transferability.md"),
    Paper("fpt", {"fpt-scores": "fpt_scores", "fpt-stage": "fpt_stage", "summarise-fpt": "report:summarise_fpt"},
          ("fpt.smk",), ("fpt",), "docs/fpt.md"),
    Paper("lpt", {"lpt-run": "lpt_run", "summarise-lpt": "report:summarise_lpt"}, ("lpt.smk",), ("lpt",), "docs/lpt.md"),
    Paper("kpt", {"kpt-run": "run", "summarise-kpt": "report:summarise_kpt"}, ("kpt.smk",), ("kpt",), "docs/kpt.md"),
    Paper("dynsan",
          {"dynsan-prepare": "prepare", "dynsan-train": "train", "dynsan-evaluate": "evaluate",
           "dynsan-efficiency": "efficiency", "dynsan-summarise": "report:summarise"},
          ("dynsan.smk",), ("dynsan",), "docs/dynsan.md"),
)


def all_steps() -> dict[str, str]:
    """Every CLI step: the core ones, then each paper's (a name used twice is an error)."""
    steps = dict(CORE_STEPS)
    for paper in PAPERS:
        for step, path in paper.step_paths().items():
            if step in steps:
                raise ValueError(f"step '{step}' of paper '{paper.name}' is already defined as {steps[step]}")
            steps[step] = path
    return steps


def config_checks() -> tuple:
    """Each paper's ``config.check_config(cfg, origin)``, for the packages that define one."""
    modules = (importlib.import_module(f"pipeline_steps.{p.name}.config") for p in PAPERS)
    return tuple(m.check_config for m in modules if hasattr(m, "check_config"))
