# The README's first two commands: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_RUN := runs/demo-$(shell date +%Y%m%d-%H%M%S)

BENCH_VENV ?= .venv-bench

.PHONY: demo test bench mutants venv demo-venv dataset browser database clean

demo: demo-venv dataset
	$(BIN)/fashionlab train --run-dir $(DEMO_RUN)
	$(BIN)/fashionlab predict $(DEMO_RUN) --index 0 1 2
	$(BIN)/fashionlab export $(DEMO_RUN)
	@echo "next: $(BIN)/fashionlab serve $(DEMO_RUN)   (a prediction page on http://127.0.0.1:8000/)"

# Test files run in parallel, a whole file per worker (its module fixtures are built once).
test: venv dataset browser database
	$(BIN)/python -m pytest -n auto --maxprocesses 4 --dist loadfile

# Side-by-side speed of the tutorial recipe. TensorFlow lives in its own venv: Keras imports
# it whenever it is installed, which would slow every fashionlab start.
bench: venv dataset $(BENCH_VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/bench.py --tf-python $(BENCH_VENV)/bin/python

# Plants each plausible bug of scripts/mutants.py in a copy of the code and runs the suite on it
# (tens of minutes; not part of `make test`).
mutants: venv dataset
	$(BIN)/python scripts/mutants.py

$(BENCH_VENV)/.installed:
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet "tensorflow-cpu==2.21.*" "keras>=3.15,<4" scikit-learn
	touch $@

# Two installs in one .venv: the demo's (fashionlab, the ONNX export and serve) and the tests' (every extra,
# the browser driver, Jupyter). pip says what it fetches as it goes; either stamp is remade when pyproject.toml
# changes, and the tests' install holds the demo's (after `make test`, `make demo` installs nothing).
venv: $(BIN)/.installed
demo-venv: $(BIN)/.demo-installed

$(BIN)/python:
	@echo "== creating $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)

$(BIN)/.demo-installed: pyproject.toml | $(BIN)/python
	@if [ -f $(BIN)/.installed ] && [ $(BIN)/.installed -nt pyproject.toml ]; then \
		echo "== $(VENV) has the tests' install, which holds the demo's"; \
	else \
		echo "== installing fashionlab for the demo: Keras, JAX, ONNX export, serve (about 1.3 GB, a few minutes)"; \
		$(BIN)/python -m pip install --progress-bar on -e '.[onnx,serve]' || exit 1; \
	fi
	@touch $@

$(BIN)/.installed: pyproject.toml | $(BIN)/python
	@echo "== installing fashionlab with the tests' extras: every extra, Playwright, Jupyter (about 1.6 GB, a few minutes)"
	$(BIN)/python -m pip install --progress-bar on -e '.[test]'
	@touch $@ $(BIN)/.demo-installed

# The official files, offline: Debian's dataset-fashion-mnist package when they are not found.
dataset: demo-venv
	@$(BIN)/fashionlab data path >/dev/null 2>&1 || \
		sh scripts/install-debian.sh dataset-fashion-mnist "the Fashion-MNIST files; or run 'fashionlab data download'"
	@echo "dataset: $$($(BIN)/fashionlab data path)"

# Debian's chromium, for the pages' browser test (tests/test_pages.py), when it is not installed.
browser:
	@command -v chromium >/dev/null 2>&1 || sh scripts/install-debian.sh chromium "the pages' browser test"

# Debian's PostgreSQL, for the sweep's two-worker test (tests/test_sweeps_claims.py starts its own server
# in a temporary folder), when its server programs are not installed.
database:
	@command -v pg_ctl >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || \
		sh scripts/install-debian.sh postgresql "the sweep's PostgreSQL test"

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache build src/*.egg-info
