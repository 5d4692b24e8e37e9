"""FPT settings: a schedule of stages, each a partial-model size and a number of steps (no torch here)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UserError, unknown_name
from ..settings import SchemaSection, Settings

SELECTIONS = ("evenly", "first")  # how a depth-reduced stage picks its layers
CLASS_VECTORS = ("full", "partial")  # embedding verbalizer of a partial stage
METHODS = {"fpt_depth": ("layers",), "fpt_width": ("ffn",), "fpt_compound": ("layers", "ffn")}


@dataclass
class FPTStage(Settings):
    what = "FPT stage"
    schema = (SchemaSection(
        ("properties", "fpt", "properties", "schedules", "patternProperties", "^fpt_(depth|width|compound)$", "items"),
        defaults={"layers": "absent in the config = None (all layers)", "ffn": "absent in the config = None (full width)"}),)

    steps: int
    layers: float | int | None = None   # None: all layers
    ffn: float | int | None = None      # None: full FFN width

    def check(self) -> None:
        self.at_least(1, "steps")
        self.above(0, "layers", "ffn")  # a fraction in (0, 1) of the model's or a count

    @property
    def is_full(self) -> bool:
        return self.layers is None and self.ffn is None


@dataclass
class FPTConfig(Settings):
    what = "FPT"
    schema = (SchemaSection(
        ("properties", "fpt"),
        renamed={"selection": "layer_selection", "stages": "schedules"},
        keys_only={"models": "the grid", "tasks": "the grid", "seeds": "the grid", "methods": "the schedules run",
                   "score_samples": "the FFN scoring step's own", "pt_steps": "the PT baseline's steps",
                   "prompt_tuning": "overrides of the shared block"},
        defaults={"stages": "the config holds one schedule per method (fpt.schedules); FPTConfig one method's stages"}),)

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
        if self.class_vectors not in CLASS_VECTORS:
            raise ValueError(f"class_vectors must be {' or '.join(CLASS_VECTORS)}, not '{self.class_vectors}'")

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)


# --- cross-checks of the config section (run by checks.check_references) ---------------------

def check_names(cfg: dict, section: str, origin: str) -> None:
    """The models and tasks a method section lists are defined in ``models:`` and ``tasks:``."""
    for kind in ("models", "tasks"):
        for name in cfg[section][kind]:
            if name not in cfg[kind]:
                raise unknown_name(f"{origin}: key '{section}.{kind}'", kind[:-1], name, cfg[kind])


def check_config(cfg: dict, origin: str = "config") -> None:
    """Cross-checks of the ``fpt:`` section that the schema cannot express."""
    check_names(cfg, "fpt", origin)

    fpt = cfg["fpt"]
    totals = {}
    for method in fpt["methods"]:
        if method not in fpt["schedules"]:
            raise UserError(f"{origin}: key 'fpt.schedules': no schedule for method '{method}' (listed in "
                            f"fpt.methods); add one or remove the method")
        stages = fpt["schedules"][method]
        try:
            FPTConfig.from_dict({"stages": stages, "selection": fpt["layer_selection"],
                                 "class_vectors": fpt["class_vectors"]})
        except (ValueError, TypeError) as e:
            raise UserError(f"{origin}: key 'fpt.schedules.{method}': {e}") from None
        for i, stage in enumerate(stages):
            need = METHODS[method]
            given = tuple(k for k in ("layers", "ffn") if stage.get(k) is not None)
            if i < len(stages) - 1 and given != need:
                raise UserError(f"{origin}: key 'fpt.schedules.{method}[{i}]': a {method} stage sets "
                                f"{' and '.join(need)} (and steps), got {stage}")
        totals[method] = sum(s["steps"] for s in stages)
    if fpt.get("pt_steps") is None and len(set(totals.values())) > 1:
        raise UserError(f"{origin}: key 'fpt.schedules': the methods' total steps differ ({totals}); make them "
                        f"equal or set fpt.pt_steps, the steps of the PT baseline they are compared with")
    if fpt["models"] and fpt["tasks"] and not fpt["methods"]:
        raise UserError(f"{origin}: key 'fpt.methods': give at least one FPT method")
