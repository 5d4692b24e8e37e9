"""Shared fixtures: tiny random-init models (built once per session) and small demo data."""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

from pipeline_steps.config import load_config
from pipeline_steps.runtime import setup_logging

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow"))  # planning/: the stages' DAG planning, as the Snakefile imports it
setup_logging()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    from pipeline_steps.models.build import build_tiny

    root = tmp_path_factory.mktemp("tiny-models")
    for kind in ("bert", "roberta", "t5"):
        build_tiny(kind, root / kind)
    return root


@pytest.fixture(scope="session")
def tiny_spec(tiny_dir):
    def make(kind: str, **extra) -> dict:
        return {"name": f"tiny-{kind}", "source": str(tiny_dir / kind), "verbalizer": "auto", "pooling": "mask",
                "embedding_scale": 20.0, "device": "cpu", "dtype": "float32", "trust_remote_code": False,
                "revision": None, **extra}
    return make


@pytest.fixture(scope="session")
def repo_config() -> dict:
    return load_config(REPO / "config.yaml")


@pytest.fixture
def minimal_config() -> dict:
    """A small valid raw config (before defaults) that tests mutate."""
    return copy.deepcopy({
        "models": {"m": {"source": "embedded:minilm-l6"}},
        "tasks": {"t": {"source": {"demo": "movie_reviews", "size": 60}, "text_fields": ["text"],
                        "label_names": ["negative", "positive"], "template": "{text_a} It was {mask}.",
                        "label_words": {"negative": ["bad"], "positive": ["good"]}}},
        "experiment": {"tasks": ["t"], "models": ["m"], "seeds": [1]},
    })


# --- hypothesis profiles of the robustness fuzz tests (docs/robustness.md) ----------------------
# ci (default): derandomised (a fixed seed per test), a few hundred examples, under a minute;
# large: HYPOTHESIS_PROFILE=large, a fresh random run with thousands of examples, by hand.
try:
    import os as _os

    from hypothesis import HealthCheck, settings as _hsettings

    _common = dict(deadline=None, database=None, print_blob=True,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                          HealthCheck.function_scoped_fixture])
    _hsettings.register_profile("ci", max_examples=150, derandomize=True, **_common)
    _hsettings.register_profile("large", max_examples=2500, derandomize=False, **_common)
    _hsettings.load_profile(_os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # the fuzz tests skip themselves (pytest.importorskip)
    pass
