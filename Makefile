# Two commands do all the set-up (see README): `make serve` and `make test`.
# TORCH picks the PyTorch build: the default is the CPU wheel these machines carry;
# GPU users run e.g. `make serve TORCH="torch --index-url https://download.pytorch.org/whl/cu124"`.
VENV   ?= .venv
PYTHON ?= python3
TORCH  ?= torch==2.13.0
HOST   ?= 127.0.0.1
PORT   ?= 8000
PY      = $(VENV)/bin/python

.PHONY: serve test lint bench install install-dev clean

$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev

serve: $(VENV)/.runtime
	SR_HOST=$(HOST) SR_PORT=$(PORT) $(PY) -m app.serve

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .

test: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

# Benchmarks beside the OpenCV peers (needs ../shared/peers/opencv; installs the bench extra).
bench: $(VENV)/.dev
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) -m app.cli.bench --opencv ../shared/peers/opencv --out bench_results

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
