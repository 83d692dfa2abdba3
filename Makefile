# One environment per clone, in .venv. On the project's machines pip takes the CPU
# wheel of torch that lies on disk; elsewhere override it, e.g. `make test TORCH=torch`.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN     = $(VENV)/bin

.PHONY: install demo test lint docs tutorials dist bench clean

PBMC := $(wildcard ../shared/data/pbmc3k.h5ad)

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev,docs]"
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/ensemblevi run --force --out results

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Two pytest-xdist workers on 2 cores: most tests run one-threaded Python (Lightning's loop,
# small models) or wait on subprocesses, so one process leaves a core idle. One file per
# worker at a time (a file's module fixtures are trained once; tests/conftest.py gives each
# worker one torch thread). `make test PYTEST_WORKERS=0` runs in one process.
PYTEST_WORKERS ?= 2

test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest $(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadfile)

# The documentation site; warnings (a broken reference, a bad docstring) are errors
docs: $(BIN)/.installed
	$(BIN)/python -m sphinx -W --keep-going -b html docs docs/_build/html

# Executes every tutorial notebook in place (full settings; offline)
tutorials: $(BIN)/.installed
	$(BIN)/python docs/tutorials/run_tutorials.py

# The wheel and sdist, checked as PyPI would
dist: $(BIN)/.installed
	rm -rf dist
	$(BIN)/python -m build
	$(BIN)/python -m twine check dist/*

# The benchmark suite (about an hour on 2 cores); rewrites its sections of
# docs/benchmarks/suite.md and the figures in docs/figures
bench: $(BIN)/.installed
	$(BIN)/ensemblevi benchmark --suite all --out bench_results $(if $(PBMC),--pbmc $(PBMC)) \
		--docs docs/benchmarks/suite.md --figures docs/figures

clean:
	rm -rf $(VENV) results .pytest_cache .ruff_cache docs/_build docs/api/generated dist
