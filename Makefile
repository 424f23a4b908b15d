# sftscope: `make demo` builds everything on the trained demo pair; `make test` tests it.
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

.PHONY: all demo demo-patch demo-trajectory test test-families test-fast test-pure-python ext mutate app bench bench-gpu lint browser-deps cluster-deps clean dbt
all: demo

$(VENV)/.installed: pyproject.toml ingest/_sefast.c compute/linalg/_kernels.c
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=25.1"
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e . --group dev
	@touch $@

venv: $(VENV)/.installed

# make demo's quick LoRA recovery (the Perplexity page's "Is SFT a LoRA?" curve): a few
# ranks on the posts of the pair's behaviour run, in its own setting (window, dtype,
# batches), each rank with the base's 1-D tensors and with the SFT's ("plus norms");
# r = full is the SFT model itself (100% by construction) and is not scored
DEMO_LORA_RANKS ?= 1,4,16,64
demo: venv
	$(PY) -m ingest.demo_site data/demo-site
	$(PY) -m ingest.stackexchange data/demo-site --site physics.demo
	$(PY) -m ingest.training_log models/demo --pair demo
	cd dbt_project && $(DBT) build --quiet --select +prompts
	$(PY) -m compute.run --pair demo --traps
	$(PY) -m compute.lora_recovery --pair demo --ranks $(DEMO_LORA_RANKS)
	$(PY) -m compute.run --base models/demo/base --sft models/demo-seed29/sft --name demo-seed29
	$(PY) -m compute.seed_floor --pair demo --other demo-seed29
	$(PY) -m compute.run --base models/demo/sft --sft models/demo-seed29/sft --name demo-seeds --vectors 0
	$(PY) -m compute.run --base models/demo/base --trajectory models/demo-steps/steps.toml --name demo-steps --skip-behaviour
	cd dbt_project && $(DBT) build --quiet
	$(PY) -m compute.summary
	@echo
	@echo "Warehouse: $(SFTSCOPE_DB)"
	@echo "Open the app:   make app      (or: $(VENV)/bin/streamlit run app.py)"
	@echo "Ad-hoc SQL:     $(PY) -c \"import duckdb; print(duckdb.connect('$(DB).snapshots/current/$(notdir $(DB))', read_only=True).sql('from marts.fct_pair_summary'))\""

# make demo runs the shipped series models/demo-steps (the demo SFT's checkpoints,
# spectra only). This one, after make demo: a quick retraining (not the shipped pair)
# that saves the SFT every 7 steps, its series with behaviour, then the marts.
demo-trajectory: venv
	$(PY) -m compute.train_demo --quick --save-every 7 --out data/models/demo-quick-steps --no-progress
	$(PY) -m compute.run --base data/models/demo-quick-steps/base --trajectory data/models/demo-quick-steps/checkpoints --name demo-quick-steps
	$(PY) -m ingest.training_log data/models/demo-quick-steps --pair demo-quick-steps
	cd dbt_project && $(DBT) build --quiet

# Weight patching on the demo pair (docs/patch.md), after make demo: which layers
# carry the fine-tuning (--by layer: 13 models, each about one behaviour run; not in
# make demo, whose behaviour run it repeats per model), then the Attribution page's
# marts. DEMO_PATCH_BY=layer_module: every block's module types (61 models).
DEMO_PATCH_BY ?= layer
demo-patch: venv
	$(PY) -m compute.patch --pair demo --by $(DEMO_PATCH_BY)
	cd dbt_project && $(DBT) build --quiet --select +fct_patch_vs_weights +fct_patch_ranking

dbt: venv
	cd dbt_project && $(DBT) build

# Ray, the optional extra of compute.run --ray (tests/test_cluster.py)
cluster-deps: venv
	@$(PY) -c "import ray" 2>/dev/null || $(PY) -m pip install -q -e ".[cluster]"

browser-deps:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

# the C extensions, rebuilt if an import fails (the tests fail, not skip, without them)
ext: venv
	@$(PY) -c "import ingest._sefast, compute.linalg._kernels" 2>/dev/null \
		|| $(PY) -m pip install -q --no-deps -e .

# one worker a core (TEST_WORKERS: at least 2, at most 8), each a test file at a time,
# in the collected order: the modules that read the demo warehouse come last, built
# meanwhile (tests/conftest.py)
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); echo $$(( n < 2 ? 2 : n > 8 ? 8 : n )))
test: venv ext browser-deps cluster-deps
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# every causal-LM family transformers ships beyond the quick ones make test runs
# (tests/test_families.py; a few minutes)
test-families: venv ext
	$(PY) -m pytest -q --family-tail -m family_tail tests/test_families.py

test-fast: venv ext
	$(PY) -m pytest -q -m "not slow and not browser"

# the fallbacks of a checkout without a C compiler: lxml ingest, NumPy block pass
test-pure-python: venv
	$(PY) -m pytest -q -p tests.pure_python -m "not c_extension and not browser" \
		tests/test_ingest_*.py tests/test_spectra_*.py

# mutation testing (a developer tool, minutes to an hour): SQL/macro mutants of the
# dbt models, then cosmic-ray on the Python statistics code; prints the survivors
mutate: venv ext
	$(PY) tools/mutate.py $(MUTATE_ARGS)

app: venv
	$(VENV)/bin/streamlit run app.py

bench: venv
	$(PY) -m pip install -q -e ".[bench]" "$(TORCH_SPEC)"
	$(PY) bench/spectra.py
	$(PY) bench/ingest.py
	$(PY) bench/app_load.py --json data/bench/app-load.json
	$(PY) bench/behaviour.py --json data/bench/behaviour.json
	$(PY) bench/incremental.py --json data/bench/incremental.json
	$(PY) bench/esd.py --json data/bench/esd.json
	$(PY) bench/lora_recovery.py --json data/bench/lora-recovery.json
	$(PY) bench/patch.py --json data/bench/patch.json

# the GPU target: a 7B-shaped pair on one CUDA device (needs ~35 GB of disk)
bench-gpu: venv
	$(PY) bench/spectra_gpu.py --json data/bench/spectra-gpu.json
	$(PY) bench/behaviour.py --device cuda --shape 0.5B --posts 256 --batch-size 32 \
		--json data/bench/behaviour-gpu.json

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf data dbt_project/target dbt_project/logs
