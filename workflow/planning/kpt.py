"""KPT's grid, artifact paths and per-job settings (plain Python, no Snakemake import).

A job is one (model, task, knowledge base, seed, setting), setting = ``zero-shot`` or ``{k}shot-{mode}``;
it runs every verbalizer variant of that setting with the model loaded once. A job's settings come
from its own task and knowledge base only, so changing one task's knowledge base reruns only that
task's KPT jobs (and the summary).
"""
from __future__ import annotations

import copy

from pipeline_steps.kpt.config import MODES

RUN = "results/kpt/{model}/{task}/{kb}/seed{seed}/{setting}"
FILES = {"words": "words.parquet", "scores": "scores.parquet", "meta": "meta.json"}
SETTING = r"zero-shot|[0-9]+shot-(" + "|".join(MODES) + ")"  # built from kpt.config.MODES
TOKENS_AT_LENGTH = "results/kpt/tokens/{task}/tokens-{model}-len{length}.parquet"  # kpt.prompt_tuning.max_length


def setting_name(shots: int, mode: str) -> str:
    return "zero-shot" if shots == 0 else f"{shots}shot-{mode}"


def parse_setting(setting: str) -> tuple[int, str]:
    if setting == "zero-shot":
        return 0, "none"
    shots, mode = setting.split("shot-")
    return int(shots), mode


def kpt_grid(cfg: dict) -> list[dict]:
    sec = cfg["kpt"]
    seeds = sec["seeds"] or cfg["experiment"]["seeds"]
    settings = [setting_name(k, m) for k in sec["shots"] for m in (sec["modes"] if k else ["none"])]
    return [{"model": m, "task": t, "kb": kb, "seed": s, "setting": st}
            for m in sec["models"] for t, entry in sec["tasks"].items() for kb in entry["knowledge_bases"]
            for s in seeds for st in settings]


def run_paths(job: dict) -> dict[str, str]:
    base = RUN.format(**job)
    return {k: f"{base}/{f}" for k, f in FILES.items()}


def kpt_settings(cfg: dict, task: str) -> dict:
    merged = copy.deepcopy(cfg["kpt"]["settings"])
    merged.update(cfg["kpt"]["tasks"][task].get("settings") or {})
    return merged


def kpt_prompt_settings(cfg: dict, task: str) -> dict:
    """prompt_tuning defaults, the task's own overrides, then kpt.prompt_tuning. The batch size is KPT's
    own: kpt.prompt_tuning.batch_size when given, else (in the step) kpt.settings.batch_size."""
    merged = copy.deepcopy(cfg["prompt_tuning"])
    merged.update(cfg["tasks"][task].get("prompt_tuning") or {})
    merged.pop("batch_size", None)
    merged.update(cfg["kpt"].get("prompt_tuning") or {})
    return merged


def kpt_tokens(cfg: dict, task: str, model: str, shared: str) -> str:
    """The tokenized inputs of a task's KPT jobs: the stage-wide ``shared`` file (TOKENS) when KPT's
    max_length is the task's own, else KPT's own tokenization at that length (TOKENS_AT_LENGTH)."""
    from pipeline_steps.specs import pt_settings

    length = kpt_prompt_settings(cfg, task)["max_length"]
    if length == pt_settings(cfg, task)["max_length"]:
        return shared.format(task=task, model=model)
    return TOKENS_AT_LENGTH.format(task=task, model=model, length=length)


def kb_spec(cfg: dict, name: str) -> dict:
    return {"name": name, **copy.deepcopy(cfg["kpt"]["knowledge_bases"][name])}


def kb_inputs(cfg: dict, name: str) -> list[str]:
    """Files a knowledge base reads, as job inputs (editing one reruns its jobs): a file KB's word list,
    the WordNet folder's files (none when it is missing: the job then fails naming the folder), and
    its blocklist."""
    from pipeline_steps.kpt.config import blocklist_path
    from pipeline_steps.kpt.knowledge import DEFAULT_WORDNET

    from .files import _folder_files

    kb = cfg["kpt"]["knowledge_bases"][name]
    files = []
    if kb["source"] == "file":
        files = [kb["path"]]
    elif kb["source"] == "wordnet":
        files = _folder_files(kb.get("path") or DEFAULT_WORDNET)
    block = blocklist_path(kb.get("blocklist", True))
    return files + ([block] if block else [])
