#!/usr/bin/env bash
# Create the project's virtual environment in .venv (or $VENV):
# torch 2.13.0 first (the CPU wheel on a CPU machine, so no CUDA wheels are pulled), then the package.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e ".[test]"
"$VENV/bin/python" -c "import torch, transformers, snakemake, pipeline_steps; print('environment ready: torch', torch.__version__, '| transformers', transformers.__version__, '| snakemake', snakemake.__version__)"
