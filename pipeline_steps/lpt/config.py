"""LPT settings (no torch here)."""
from __future__ import annotations

from dataclasses import dataclass

from ..settings import SCHEMA_CAP, SchemaSection, Settings

GENERATORS = ("naive", "npg", "appg", "mppg")
LPT_METHODS = tuple(f"lpt_{g}" for g in GENERATORS)


@dataclass
class LatePromptConfig(Settings):
    what = "late-prompt"
    schema = (SchemaSection(
        ("properties", "lpt"),
        fields_only={"generator": "one per run: lpt.methods lists lpt_<generator> (LPT_METHODS)"},
        keys_only={"models": "the grid", "tasks": "the grid", "seeds": "the grid", "methods": "the generators run",
                   "lr": "the generators' learning rate, a prompt-tuning setting of the run",
                   "profile_steps": "the profiling step's own", "prompt_tuning": "overrides of the shared block"},
        defaults={"prompt_length": "null in the config = prompt_tuning.prompt_length (filled by the planner); "
                                   "10 is that key's default"},
        schema_only_bounds={"prompt_length maximum": SCHEMA_CAP}),)

    generator: str = "npg"            # naive | npg | appg | mppg
    insert_layer: int | None = None   # k; None: half depth (num_layers // 2)
    prompt_length: int = 10
    bottleneck: int = 64              # r

    def check(self) -> None:
        if self.generator not in GENERATORS:
            raise ValueError(f"unknown late-prompt generator '{self.generator}' ({' | '.join(GENERATORS)})")
        self.at_least(0, "insert_layer")
        self.at_least(1, "prompt_length", "bottleneck")

    def layer(self, num_layers: int) -> int:
        k = num_layers // 2 if self.insert_layer is None else self.insert_layer
        if not 0 <= k < num_layers:
            raise ValueError(f"insert_layer {k} is outside 0 .. {num_layers - 1}")
        return k


# --- cross-checks of the config section (run by checks.check_references) ---------------------

def check_config(cfg: dict, origin: str = "config") -> None:
    """Cross-checks of the ``lpt:`` section that the schema cannot express."""
    from ..fpt.config import check_names

    check_names(cfg, "lpt", origin)
