# The README's first two commands: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_RUN := runs/demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: demo test venv dataset clean

demo: venv dataset
	$(BIN)/fashionlab train --run-dir $(DEMO_RUN)
	$(BIN)/fashionlab predict $(DEMO_RUN) --index 0 1 2

test: venv dataset
	$(BIN)/python -m pytest

venv: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# The official files, offline: Debian's dataset-fashion-mnist package when they are not found.
dataset: venv
	@$(BIN)/fashionlab data path >/dev/null 2>&1 || sh scripts/install-dataset.sh
	@echo "dataset: $$($(BIN)/fashionlab data path)"

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
