"""FPT settings: a schedule of stages, each a partial-model size and a number of steps (no torch here)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..settings import Settings

SELECTIONS = ("evenly", "first")  # how a depth-reduced stage picks its layers
METHODS = {"fpt_depth": ("layers",), "fpt_width": ("ffn",), "fpt_compound": ("layers", "ffn")}


@dataclass
class FPTStage(Settings):
    what = "FPT stage"

    steps: int
    layers: float | int | None = None   # None: all layers
    ffn: float | int | None = None      # None: full FFN width

    @property
    def is_full(self) -> bool:
        return self.layers is None and self.ffn is None


@dataclass
class FPTConfig(Settings):
    what = "FPT"

    stages: list[FPTStage] = field(default_factory=list)
    selection: str = "evenly"          # evenly | first
    class_vectors: str = "full"        # full | partial (embedding verbalizer)

    @classmethod
    def from_dict(cls, d: dict) -> "FPTConfig":
        stages = [s if isinstance(s, FPTStage) else FPTStage.from_dict(s) for s in d.get("stages", [])]
        return super().from_dict({**d, "stages": stages})

    def check(self) -> None:
        if not self.stages:
            raise ValueError("an FPT schedule needs at least one stage")
        if not self.stages[-1].is_full:
            raise ValueError("the last stage of an FPT schedule must be the full model (no layers/ffn)")
        if any(s.steps < 1 for s in self.stages):
            raise ValueError("every FPT stage needs at least one step")
        if self.selection not in SELECTIONS:
            raise ValueError(f"unknown layer selection '{self.selection}' ({' | '.join(SELECTIONS)})")
        if self.class_vectors not in ("full", "partial"):
            raise ValueError(f"class_vectors must be full or partial, not '{self.class_vectors}'")

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)
