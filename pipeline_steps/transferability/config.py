"""Settings of the transferability suite: the projector's training settings, the projector
objectives and the indicators' names and table columns (no torch here)."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError, unknown_name
from ..settings import SCHEMA_CAP, SchemaSection, Settings
from ..specs import pt_settings

OBJECTIVES = ("distance", "task")


EMBEDDING_INDICATORS = ("cosine_flat", "cosine_tokens", "euclidean_flat", "euclidean_tokens")
INDICATORS = EMBEDDING_INDICATORS + ("on",)
INPUT_LAYERS = "input"  # the `layers` value of the embedding indicators
ALL_LAYERS = "all"
TABLE_COLUMNS = ["model", "seed", "source_task", "target_task", "indicator", "layers", "value"]
TRANSFER_COLUMNS = ["model", "source_task", "target_task", "seed", "score", "relative_score"]
PERFORMANCE = ("relative_score", "score", "transfer_gain")  # transfer_gain: used when the table has it
CORRELATION_COLUMNS = ["model", "indicator", "layers", "performance", "spearman", "p_value", "n_pairs",
                       "ci_low", "ci_high", "n_seeds"]
BOOTSTRAP_RESAMPLES = 1000  # resamples of the Spearman interval (seeds, then pairs within seeds)

_CAPS = {"lr maximum": SCHEMA_CAP, "weight_decay maximum": SCHEMA_CAP}
_SHARED = {"hidden": "projector.hidden, shared by both objectives (the third section)"}


@dataclass
class ProjectorConfig(Settings):
    """Settings of one projector training run (one objective)."""

    what = "projector"
    schema = (
        SchemaSection(("properties", "projector", "properties", "distance"),
                      fields_only={**_SHARED, "batch_size": "the distance objective takes all prompt pairs per step",
                                   "eval_batch_size": "the distance objective has no dev evaluation"},
                      schema_only_bounds=_CAPS),
        SchemaSection(("properties", "projector", "properties", "task"), fields_only=_SHARED,
                      defaults={"steps": "the task objective's own (100 steps through the frozen target model)",
                                "eval_every": "the task objective's own (dev evaluation every 25 steps)"},
                      schema_only_bounds=_CAPS),
        SchemaSection(("properties", "projector"),
                      fields_only={k: "per objective (projector.distance, projector.task)"
                                   for k in ("lr", "weight_decay", "steps", "batch_size", "eval_batch_size",
                                             "eval_every", "warmup_steps", "grad_clip")},
                      keys_only={"pairs": "which projectors", "objectives": "which objectives",
                                 "distance": "that objective's settings", "task": "that objective's settings"}),
    )

    hidden: int = 256            # width of the perceptron's hidden layer
    lr: float = 1e-3
    weight_decay: float = 0.0
    steps: int = 300
    batch_size: int = 16         # task objective: examples per step (distance: all prompts per step)
    eval_batch_size: int = 64
    eval_every: int = 50         # task objective: dev evaluation; distance: curve resolution
    warmup_steps: int = 0
    grad_clip: float = 1.0

    def check(self) -> None:
        self.at_least(1, "hidden", "steps", "batch_size", "eval_batch_size", "eval_every")
        self.at_least(0, "weight_decay", "warmup_steps")
        self.above(0, "lr", "grad_clip")


# --- cross-checks of the config section (run by checks.check_references) ---------------------

def pair_name(pair: dict) -> str:
    return pair.get("name") or f"{pair['source']}-to-{pair['target']}"


def check_config(cfg: dict, origin: str = "config") -> None:
    """Cross-references of the ``projector:`` section (after schema validation and defaults)."""
    section = cfg.get("projector") or {}
    seen = {}
    for i, pair in enumerate(section.get("pairs", [])):
        key = f"{origin}: key 'projector.pairs.{i}"
        for role in ("source", "target"):
            if pair[role] not in cfg["models"]:
                raise unknown_name(f"{key}.{role}'", "model", pair[role], cfg["models"])
        if pair["source"] == pair["target"]:
            raise UserError(f"{key}': source and target are the same model '{pair['source']}'")
        for field in ("train_tasks", "eval_tasks"):
            for task in pair[field]:
                if task not in cfg["tasks"]:
                    raise unknown_name(f"{key}.{field}'", "task", task, cfg["tasks"])
        tasks = list(dict.fromkeys(pair["train_tasks"] + pair["eval_tasks"]))
        lengths = {t: pt_settings(cfg, t)["prompt_length"] for t in tasks}
        if len(set(lengths.values())) > 1:
            raise UserError(f"{key}': the projector maps prompts of one length L, but the pair's tasks have "
                            f"prompt lengths {lengths} (prompt_tuning.prompt_length and per-task overrides)")
        name = pair_name(pair)
        if name in seen:
            raise UserError(f"{key}.name': pair name '{name}' is also used by projector.pairs.{seen[name]}; "
                            f"give one of them a distinct 'name'")
        seen[name] = i
