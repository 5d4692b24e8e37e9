"""LPT settings (no torch here)."""
from __future__ import annotations

from dataclasses import dataclass

from ..settings import Settings

GENERATORS = ("naive", "npg", "appg", "mppg")
LPT_METHODS = tuple(f"lpt_{g}" for g in GENERATORS)


@dataclass
class LatePromptConfig(Settings):
    what = "late-prompt"

    generator: str = "npg"            # naive | npg | appg | mppg
    insert_layer: int | None = None   # k; None: half depth (num_layers // 2)
    prompt_length: int = 10
    bottleneck: int = 64              # r

    def check(self) -> None:
        if self.generator not in GENERATORS:
            raise ValueError(f"unknown late-prompt generator '{self.generator}' ({' | '.join(GENERATORS)})")

    def layer(self, num_layers: int) -> int:
        k = num_layers // 2 if self.insert_layer is None else self.insert_layer
        if not 0 <= k < num_layers:
            raise ValueError(f"insert_layer {k} is outside 0 .. {num_layers - 1}")
        return k
