# Two commands do all the set-up: `make demo` and `make test`. Both create the virtual
# environment and install what is missing, so they work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup agents demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# Agents are rebuilt only when their source or the WIT contract changed.
agents: setup
	$(BIN)/agora agents build

demo: agents
	$(BIN)/agora demo

test: agents
	$(BIN)/pytest

# mypy does not follow setuptools' editable import hook, so lint sees the package
# through a folder of links laid out as it is installed: agora/{core,cli,host,bridge}.
lint: setup
	$(BIN)/python tools/link_package.py .lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	MYPYPATH=.lint $(BIN)/mypy -p agora

bench: agents
	$(BIN)/python bench/bench_core.py
	$(BIN)/python bench/bench_host.py
	$(BIN)/python bench/bench_publish.py
	$(BIN)/python bench/bench_bridge.py

clean:
	rm -rf $(VENV) .lint build *.egg-info .pytest_cache .mypy_cache .ruff_cache
