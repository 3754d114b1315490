#!/usr/bin/env bash
# One-shot check of the CUDA path on a GPU machine that has CUDA PyTorch but no network
# (the device machines lent to some sessions). Prepare here with `make device-wheels`, then run it
# there with `.whl` carried:   bash scripts/device_check.sh
# It installs the carried wheels (what that image lacks), prints the GPU, runs the CUDA tests and the
# engine/API tests on the GPU's machine, then the model-only benchmark on CUDA into $OUT (or bench_gpu/).
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:${PWD}"
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, onnxruntime; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_engine.py tests/test_api.py
python3 -m app.cli.bench --device cuda --sizes 640x360 1920x1080 --no-compile --skip-http --out "${OUT:-bench_gpu}"
