#!/usr/bin/env bash
# One-shot session on a GPU machine that has CUDA PyTorch but no network (the device machines lent to
# some sessions). Prepare here with `make device-wheels` (and, to train, copy the training folders into
# an ignored folder), then run it there with `.whl` (and that folder) carried:
#
#   bash scripts/device_check.sh                       # CUDA tests, then the GPU benchmark
#   TRAIN_DATA=.devdata TRAIN_BUDGET=330 bash scripts/device_check.sh
#
# With TRAIN_DATA (holding t91/, bsd200/ and set5/), ×2/×3/×4 train side by side on the GPU first
# (scripts/gpu_train.sh), the CUDA tests running meanwhile; the benchmark runs once the GPU is free.
# Everything lands in $OUT (or device_out/): test log, train.tgz (checkpoints, stores, logs), bench/.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-device_out}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:${PWD}"
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

train_pid=""
if [[ -n "${TRAIN_DATA:-}" ]]; then
    bash scripts/gpu_train.sh "$TRAIN_DATA" /tmp/gpu_train "${TRAIN_BUDGET:-300}" &
    train_pid=$!
    # the run may be cut off: keep a fresh archive of the checkpoints in $OUT all along
    ( while sleep 30; do tar czf "$out/train.tgz.part" -C /tmp gpu_train 2>/dev/null && mv "$out/train.tgz.part" "$out/train.tgz"; done ) &
    tar_loop=$!
fi

python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_engine.py tests/test_api.py tests/test_pipeline.py tests/test_planes.py 2>&1 | tee "$out/tests.log" | tail -25

if [[ -n "$train_pid" ]]; then
    wait "$train_pid"
    kill "$tar_loop" 2>/dev/null
    tar czf "$out/train.tgz" -C /tmp gpu_train
    grep -h "published\|val \|Error" /tmp/gpu_train/*.log | tail -30
fi

# Issue 13's GPU figures: the service end to end for SR_WORKERS 1, 2, 4, 8 (single 640x360 JPEG request,
# 16 clients of 640x360 JPEG frames, 32 and 64 clients of 96² PNGs), GPU busy beside each.
timeout "${BENCH_TIMEOUT:-420}" python3 -m app.cli.bench --device cuda --scales 2 3 4 --sizes 640x360 --repeats 5 \
    --no-compile --duration 6 --workers 1 2 4 8 --out "$out/bench" 2>&1 | tail -80
