# sftscope: `make demo` builds everything on the embedded demo pair; `make test` tests it.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DBT := $(abspath $(VENV))/bin/dbt
# A CPU build of torch; on a GPU machine set TORCH_SPEC to the build you want.
TORCH_SPEC ?= torch==2.13.0
DB ?= data/warehouse.duckdb
export SFTSCOPE_DB ?= $(abspath $(DB))
export DBT_SEND_ANONYMOUS_USAGE_STATS := false
export PYTHONUNBUFFERED := 1

.PHONY: all demo test test-fast app bench bench-gpu lint browser-deps clean dbt
all: demo

$(VENV)/.installed: pyproject.toml ingest/_sefast.c compute/_kernels.c
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=25.1"
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e . --group dev
	@touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m ingest.demo_site data/demo-site
	$(PY) -m ingest.stackexchange data/demo-site --site physics.demo
	cd dbt_project && $(DBT) build --quiet
	$(PY) -m compute.run --pair demo
	cd dbt_project && $(DBT) build --quiet
	$(PY) -m compute.summary
	@echo
	@echo "Warehouse: $(SFTSCOPE_DB)"
	@echo "Open the app:   make app      (or: $(VENV)/bin/streamlit run app.py)"
	@echo "Ad-hoc SQL:     $(PY) -c \"import duckdb; print(duckdb.connect('$(DB)', read_only=True).sql('from marts.fct_pair_summary'))\""

dbt: venv
	cd dbt_project && $(DBT) build

browser-deps:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

test: venv browser-deps
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not slow and not browser"

app: venv
	$(VENV)/bin/streamlit run app.py

bench: venv
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) bench/spectra.py
	$(PY) bench/ingest.py

# the GPU target: a 7B-shaped pair on one CUDA device (needs ~35 GB of disk)
bench-gpu: venv
	$(PY) bench/spectra_gpu.py --json data/bench/spectra-gpu.json

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf data dbt_project/target dbt_project/logs
