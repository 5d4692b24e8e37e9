"""Settings of KPT runs and the verbalizer variants (the rows of one table). No torch import."""
from __future__ import annotations

from dataclasses import dataclass

from ..settings import Settings

# variant -> which parts are on: knowledge-base words, frequency, relevance, calibration, learnable weights
VARIANTS = {
    "manual": dict(knowledge=False, frequency=False, relevance=False, calibration=False, learnable=False),
    "manual+calibration": dict(knowledge=False, frequency=False, relevance=False, calibration=True, learnable=False),
    "kpt": dict(knowledge=True, frequency=True, relevance=True, calibration=True, learnable=True),
    "kpt-no-frequency": dict(knowledge=True, frequency=False, relevance=True, calibration=True, learnable=True),
    "kpt-no-relevance": dict(knowledge=True, frequency=True, relevance=False, calibration=True, learnable=True),
    "kpt-no-calibration": dict(knowledge=True, frequency=True, relevance=True, calibration=False, learnable=True),
    "kpt-no-learnable": dict(knowledge=True, frequency=True, relevance=True, calibration=True, learnable=False),
}
MODES = ("prompt", "model")


def switches(variant: str, shots: int, relevance_few_shot: bool = False) -> dict[str, bool]:
    """The parts a variant uses in a setting: relevance refinement is zero-shot only (the paper's
    few-shot KPT replaces it by the learnable weights) unless ``relevance_few_shot``; the
    learnable weights need training, so they are off in zero-shot."""
    s = dict(VARIANTS[variant])
    if shots > 0 and not relevance_few_shot:
        s["relevance"] = False
    if shots == 0:
        s["learnable"] = False
    return s


def variants_for(variants: list[str], shots: int, relevance_few_shot: bool = False) -> list[str]:
    """The variants that differ in this setting (an ablation equal to ``kpt`` there is left out)."""
    out, seen = [], set()
    for v in variants:
        key = tuple(sorted(switches(v, shots, relevance_few_shot).items()))
        if v != "kpt" and v.startswith("kpt-") and key == tuple(sorted(switches("kpt", shots, relevance_few_shot).items())):
            continue
        if key in seen:
            continue
        seen.add(key)
        out.append(v)
    return out


@dataclass
class KPTConfig(Settings):
    what = "kpt"

    support_size: int = 200          # unlabeled training inputs behind the frequency/relevance/calibration statistics
    candidate_frac: float = 0.5      # frequency refinement: drop words whose prior is in this lowest fraction
    max_words: int | None = 50       # cap on a class's candidate words after expansion
    multi_token: str = "mean"        # mean | first: a multi-token word's logit
    max_subtokens: int | None = None  # drop words of more sub-tokens (None: no limit)
    relevance_few_shot: bool = False  # also apply relevance refinement in few-shot runs
    weight_lr: float = 0.06          # AdamW lr of the learnable label-word weights
    model_lr: float = 3e-5           # training mode `model`: lr of the whole PLM
    model_epochs: int = 5            # training mode `model`: epochs (best epoch by dev score)
    batch_size: int = 8              # few-shot training batch (both modes)

    def check(self) -> None:
        if not 0 <= self.candidate_frac < 1:
            raise ValueError(f"candidate_frac must be in [0, 1), got {self.candidate_frac}")
        if self.multi_token not in ("mean", "first"):
            raise ValueError(f"multi_token must be mean or first, not '{self.multi_token}'")
        if self.support_size < 2:
            raise ValueError("support_size must be at least 2")
