# Two-command quick start. Each target sets up .venv (scripts/setup.sh) when it is missing or older
# than pyproject.toml / setup.sh, then runs.
#   make demo     the whole demo DAG (snakemake --cores $(CORES)) -> results/
#   make test     the test suite (what .ci/run runs)
#   make report   the Snakemake report of the demo run -> results/report.html
VENV ?= .venv
CORES ?= 2
READY := $(VENV)/.ready

.PHONY: demo test report setup
setup: $(READY)

$(READY): pyproject.toml scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh
	touch $@

demo: $(READY)
	$(VENV)/bin/snakemake --cores $(CORES)

test: $(READY)
	$(VENV)/bin/python -m pytest -q -rs

report: demo
	$(VENV)/bin/snakemake --report results/report.html
