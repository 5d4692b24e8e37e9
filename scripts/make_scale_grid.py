#!/usr/bin/env python
"""Write the DAG-scale config: 20 tasks x 5 models x 5 seeds with every stage switched on.

    python scripts/make_scale_grid.py [resources/configs/scale_grid.yaml]
    time snakemake --configfile resources/configs/scale_grid.yaml -n --quiet rules   # target: < 30 s

Merged on top of config.yaml (which defines the 17 named tasks and the 5 models); three more demo
tasks (generated data, different sizes) make 20. Only for planning: a real run needs the hub.
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def grid() -> dict:
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    extra = {}
    for i, kind in enumerate(["movie_reviews", "product_reviews", "topics"], start=2):
        name = f"{kind.split('_')[0]}{i}"
        src = base["tasks"]["topics" if kind == "topics" else ("movies" if kind == "movie_reviews" else "products")]
        extra[name] = {**src, "source": {"demo": kind, "size": 400 + 100 * i}}
    tasks = list(base["tasks"]) + list(extra)
    assert len(tasks) == 20, tasks
    models = list(base["models"])
    assert len(models) == 5, models
    return {
        "tasks": extra,
        "experiment": {"tasks": tasks, "models": models, "seeds": [1, 2, 3, 4, 5]},
        "transfer": {"init": {"models": None, "sources": tasks[:3], "targets": None}},
        "projector": {"pairs": [
            {"source": "roberta-base", "target": "roberta-large", "train_tasks": ["sst2", "mnli"],
             "eval_tasks": ["imdb", "snli"]},
            {"source": "minilm-l6", "target": "minilm-l3", "train_tasks": ["movies", "nli"],
             "eval_tasks": ["products", "topics"]}]},
        "fpt": {"models": [m for m in models if not m.startswith("t5")], "tasks": tasks},
        "lpt": {"models": [m for m in models if not m.startswith("t5")], "tasks": tasks},
    }


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "resources/configs/scale_grid.yaml"
    header = ("# DAG-scale check (scripts/make_scale_grid.py wrote this): 20 tasks x 5 models x 5 seeds, every\n"
              "# stage on. Planning only:  time snakemake --configfile resources/configs/scale_grid.yaml -n\n")
    out.write_text(header + yaml.safe_dump(grid(), sort_keys=False, width=110))
    print(out)
