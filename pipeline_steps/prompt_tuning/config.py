"""Settings of soft prompt tuning (one run)."""
from __future__ import annotations

from dataclasses import dataclass

from ..settings import SCHEMA_CAP, SchemaSection, Settings

INITS = ("random", "vocab")  # random | vocab (embeddings of sampled vocabulary tokens)
EVAL_SCHEDULES = ("fixed", "log")


@dataclass
class PromptTuningConfig(Settings):
    what = "prompt-tuning"
    schema = (SchemaSection(
        ("$defs", "prompt_tuning"),
        schema_only_bounds={f"{k} maximum": SCHEMA_CAP
                            for k in ("prompt_length", "lr", "weight_decay", "max_length", "bucket_batches")}),)

    prompt_length: int = 10
    init: str = "vocab"  # random | vocab
    lr: float = 0.03
    weight_decay: float = 0.0
    steps: int = 150
    batch_size: int = 16
    eval_batch_size: int = 64
    eval_every: int = 50
    max_length: int = 64
    warmup_steps: int = 0
    grad_clip: float = 1.0
    checkpoint_every: int = 50
    bucket_batches: int = 16  # >0: length-bucketed batches, sorted within windows of this many batches; 0: random
    # fixed: dev evaluation every eval_every steps and at the end; log: also at steps 1, 2, 4, 8, ...
    # below eval_every (recorded in the curve only: the kept prompt is chosen on the fixed cadence)
    eval_schedule: str = "fixed"

    def check(self) -> None:
        self.at_least(1, "prompt_length", "steps", "batch_size", "eval_batch_size", "eval_every", "checkpoint_every")
        self.at_least(8, "max_length")
        self.at_least(0, "weight_decay", "warmup_steps", "bucket_batches")
        self.above(0, "lr", "grad_clip")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {list(INITS)}, not '{self.init}'")
        if self.eval_schedule not in EVAL_SCHEDULES:
            raise ValueError(f"eval_schedule must be one of {list(EVAL_SCHEDULES)}, not '{self.eval_schedule}'")
