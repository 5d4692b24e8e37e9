"""Security: no pickle anywhere, safe YAML, remote code off by default, names that cannot escape results/."""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import pytest
import torch

from pipeline_steps.config import load_config
from pipeline_steps.errors import UserError
from pipeline_steps.io import load_tensors, save_tensors
from pipeline_steps.models.registry import _hub_kwargs
from helpers import snakemake_cli

REPO = Path(__file__).resolve().parent.parent
SOURCES = sorted([*(REPO / "pipeline_steps").rglob("*.py"), *(REPO / "workflow").rglob("*.smk"),
                  REPO / "workflow" / "Snakefile", *(REPO / "scripts").rglob("*.py")])

# (what, pattern, allowed when the line also matches)
RULES = [
    ("torch.load without weights_only=True", r"\btorch\.load\(", r"weights_only\s*=\s*True"),
    ("pickle", r"\bimport pickle\b|\bfrom pickle\b|\bpickle\.|read_pickle|to_pickle|allow_pickle\s*=\s*True", None),
    ("tensors saved with torch.save (use safetensors)", r"\btorch\.save\(", None),
    ("YAML loaded without safe_load", r"\byaml\.(load|unsafe_load|full_load)\(|yaml\.(Unsafe|Full)?Loader\b", None),
    ("remote code switched on in code", r"trust_remote_code\s*=\s*True", None),
]


def test_sources_avoid_unsafe_loading():
    assert len(SOURCES) > 15
    hits = []
    for path in SOURCES:
        for no, line in enumerate(path.read_text().splitlines(), 1):
            for what, pattern, allowed in RULES:
                if re.search(pattern, line) and not (allowed and re.search(allowed, line)):
                    hits.append(f"{path.relative_to(REPO)}:{no}: {what}: {line.strip()}")
    assert not hits, "\n".join(hits)


def test_scan_rules_catch_what_they_are_for():
    bad = ["x = torch.load(p)", "import pickle", "df = pd.read_pickle(p)", "torch.save(t, p)",
           "yaml.load(text, Loader=yaml.Loader)", "AutoModel.from_pretrained(p, trust_remote_code=True)"]
    ok = ["x = torch.load(p, weights_only=True)", "yaml.safe_load(text)", "kw = {'trust_remote_code': False}"]
    caught = lambda line: any(re.search(p, line) and not (a and re.search(a, line)) for _, p, a in RULES)  # noqa: E731
    assert all(caught(line) for line in bad) and not any(caught(line) for line in ok)


def test_a_pickle_disguised_as_an_artifact_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    fake = tmp_path / "prompt.safetensors"
    fake.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(UserError, match="not a readable safetensors file"):
        load_tensors(fake)
    assert not marker.exists()
    real = tmp_path / "real.safetensors"
    save_tensors({"prompt": torch.ones(2, 3)}, real, metadata={"seed": 1})
    tensors, meta = load_tensors(real)
    assert torch.equal(tensors["prompt"], torch.ones(2, 3)) and meta == {"seed": 1}


def test_remote_code_is_off_unless_the_config_says_so(minimal_config):
    cfg = load_config(minimal_config)
    assert cfg["models"]["m"]["trust_remote_code"] is False
    assert _hub_kwargs(cfg["models"]["m"])["trust_remote_code"] is False
    minimal_config["models"]["m"]["trust_remote_code"] = True
    assert _hub_kwargs(load_config(minimal_config)["models"]["m"])["trust_remote_code"] is True


@pytest.mark.parametrize("target", [
    "results/data/../../escaped/data.parquet",
    "results/data/a..b/data.parquet",
    "results/prompts/tiny-bert/x/y/seed1/prompt.safetensors",
    "results/data/.hidden/data.parquet",
])
def test_targets_outside_the_name_pattern_match_no_rule(tmp_path, target):
    """Wildcards only match names of letters, digits, '_' and '-': no path can leave results/."""
    (tmp_path / "config.yaml").write_text(
        "models: {tiny-bert: {source: 'tiny:bert'}}\n"
        "experiment: {tasks: [movies], models: [tiny-bert]}\n"
        "tasks: {movies: {source: {demo: movie_reviews, size: 40}, text_fields: [text], "
        "label_names: [negative, positive], template: '{text_a} It was {mask}.', "
        "label_words: {negative: [bad], positive: [good]}}}\n")
    res = snakemake_cli(tmp_path, "-n", target, cores=None)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "MissingRuleException" in out and "Traceback" not in out, out[-2000:]
    assert not (tmp_path / "results").exists() and not (tmp_path.parent / "escaped").exists()
