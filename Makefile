# SLIP-kit: the two quick-start commands (`make demo`, `make test`) and a few helpers.
# Each target sets up the virtual environment first (idempotent: a no-op when it is up to date).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= out

.PHONY: setup demo test bench-tables bench-images bench-train bench-ordering quality clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv

# Bytecode is compiled at install time (as pip does; uv does not by default): every stage and image worker is a
# fresh interpreter, and without .pyc files (or with PYTHONDONTWRITEBYTECODE set) each one recompiles its imports.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/uv pip install --python $(BIN)/python --quiet --compile-bytecode -e '.[dev,bench]'
	$(BIN)/python -m compileall -q etl trainer schemas
	touch $@

setup: $(VENV)/.installed

# Main job on the embedded sample: build a validated release, train short SLIP and CLIP runs, evaluate, compare.
demo: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" OUT=$(OUT) bash scripts/demo.sh

# Lint (pyflakes, pycodestyle errors, import order; [tool.ruff] in pyproject.toml), then the test suite.
# CI runs exactly this, so a lint error fails CI like a failing test.
test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench-tables: setup
	$(BIN)/python bench/bench_nodes.py && $(BIN)/python bench/bench_edges.py

bench-images: setup
	$(BIN)/python bench/bench_images.py

bench-train: setup
	$(BIN)/python bench/bench_train.py

bench-ordering: setup
	$(BIN)/python bench/bench_ordering.py

clean:
	rm -rf $(OUT) runs .pytest_cache
