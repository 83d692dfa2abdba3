# One environment per clone, in .venv. On the project's machines pip takes the CPU
# wheel of torch that lies on disk; elsewhere override it, e.g. `make test TORCH=torch`.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN     = $(VENV)/bin

.PHONY: install demo test lint bench clean

PBMC := $(wildcard ../shared/data/pbmc3k.h5ad)

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/ensemblevi run --force --out results

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

# The benchmark suite (about an hour on 2 cores); rewrites its sections of docs/benchmarks.md
bench: $(BIN)/.installed
	$(BIN)/ensemblevi benchmark --suite all --out bench_results $(if $(PBMC),--pbmc $(PBMC)) \
		--docs docs/benchmarks.md --figures docs/figures

clean:
	rm -rf $(VENV) results .pytest_cache .ruff_cache
