"""Settings of soft prompt tuning (one run)."""
from __future__ import annotations

from dataclasses import dataclass

from ..settings import Settings


@dataclass
class PromptTuningConfig(Settings):
    what = "prompt-tuning"

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
    bucket_batches: int = 0  # >0: length-bucketed batches, sorted within windows of this many batches
    # fixed: dev evaluation every eval_every steps and at the end; log: also at steps 1, 2, 4, 8, ...
    # below eval_every (recorded in the curve only: the kept prompt is chosen on the fixed cadence)
    eval_schedule: str = "fixed"

    def check(self) -> None:
        if self.eval_schedule not in ("fixed", "log"):
            raise ValueError(f"eval_schedule must be 'fixed' or 'log', not '{self.eval_schedule}'")
