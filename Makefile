# Two commands do all the set-up (see README): `make serve` and `make test` (`make test-fast` leaves out the slow tier).
# TORCH picks the PyTorch build: the default is the CPU wheel these machines carry;
# GPU users run e.g. `make serve TORCH="torch torchvision --index-url https://download.pytorch.org/whl/cu128"`
# (torchvision: JPEG on the GPU, SR_DEVICE_JPEG).
VENV   ?= .venv
PYTHON ?= python3
TORCH  ?= torch==2.13.0
HOST   ?= 127.0.0.1
PORT   ?= 8000
PY      = $(VENV)/bin/python

.PHONY: serve test test-fast test-device-jpeg lint settings-doc bench install install-dev clean device-wheels

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
	$(PY) -m app.cli.settings_doc --check

# docs/settings.md is generated from app/config.py (a test fails when it is stale).
settings-doc: $(VENV)/.runtime
	$(PY) -m app.cli.settings_doc

# Every test (what .ci/run runs), skip reasons shown (-rs).
test: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -rs

# The quick tier while editing: leaves out the tests marked slow (real servers, browsers, soaks; see pyproject.toml).
test-fast: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -rs -m "not slow"

# The device JPEG path with torchvision (the gpu extra), which `make test` covers only as its fallback.
# PyPI's torchvision needs its own build of torch (a CUDA one, which runs on the CPU): a second environment,
# about 7 GB. .ci/run runs it after `make test`; there torchvision's CPU codec stands in for nvJPEG.
TV_VENV ?= .venv-tv
TV_TORCH ?= torch==2.14.1 torchvision==0.29.1
$(TV_VENV)/.dev: pyproject.toml
	$(PYTHON) -m venv $(TV_VENV)
	$(TV_VENV)/bin/python -m pip install -q --upgrade pip
	$(TV_VENV)/bin/python -m pip install -q $(TV_TORCH)
	$(TV_VENV)/bin/python -m pip install -q -e ".[dev,gpu]"
	touch $@

test-device-jpeg: $(TV_VENV)/.dev
	$(TV_VENV)/bin/python -m pytest -rs tests/test_device_jpeg.py

# Benchmarks beside the OpenCV peers (needs ../shared/peers/opencv; installs the bench extra).
bench: $(VENV)/.dev
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) -m app.cli.bench --opencv ../shared/peers/opencv --out bench_results

# What a GPU device image lacks, for scripts/device_check.sh (carry .whl): wheels (Python 3.12, x86-64; the
# image has its own torch, numpy, numba, httpx, scikit-image) and Debian's wrk with its LuaJIT, as the load client.
DEVICE_WHEELS = fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic-core==2.50.5 \
	pydantic-settings==2.16.3 python-dotenv==1.2.4 python-multipart==0.0.34 uvicorn==0.54.0 \
	isal==1.9.1 av==18.1.0 tqdm==4.70.1 annotated-types==0.8.0 typing-inspection==0.4.5 httptools==0.9.0 opentelemetry-api==1.45.2
device-wheels: $(VENV)/.runtime
	rm -rf .whl && mkdir -p .whl/bin .whl/lib
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .whl $(DEVICE_WHEELS)
	cd .whl && apt-get download wrk libluajit-5.1-2 && for deb in *.deb; do dpkg-deb -x $$deb deb; done && \
		cp deb/usr/bin/wrk bin/ && cp -L deb/usr/lib/x86_64-linux-gnu/libluajit-5.1.so.2 lib/ && rm -rf deb *.deb

clean:
	rm -rf $(VENV) $(TV_VENV) .pytest_cache .ruff_cache .hypothesis
