#!/usr/bin/env bash
# The device check (issue 27, item 4): one call on a GPU machine without network, under 5 minutes.
#
# Prepare here:  make device-wheels      (wheels of what the GPU image lacks; Debian's wrk in .whl/bin)
# Run there:     bash scripts/device_check.sh        (carry .whl; results land in $OUT, else device_out/)
#
# 1. installs the carried wheels beside the image's own PyTorch;
# 2. runs the CUDA tests and every test of the GPU's code path (tests.log);
# 3. times nvJPEG alone (decode and encode, one picture and batches of 16: jpeg_codec.log), and host → GPU
#    copies, pinned against pageable (transfer.log: field notes 2 (a) say never pin per request);
# 4. measures the service from outside with scripts/gpu_probe.py, for the default layout (a device
#    process on a GPU host, nvJPEG on where torchvision is), the same with Pillow's JPEG, and a model per
#    worker under CUDA MPS (the no-MPS layout was measured on 2026-12-04: ../shared/gpu): one ×3
#    640×360 JPEG→JPEG request (nvJPEG where torchvision is there: SR_DEVICE_JPEG=auto), 16 clients of
#    such frames, 64 clients of 96² PNGs, with GPU busy,
#    CPU busy and the server's core-ms per request beside each (probe/probe.json, the table last);
#    in the default layout only, a 10-s 640×360 clip as a ×3 video job: output frames/s of 1080p
#    (issue 28's ≥ 60) and the encoder it used (NVENC where it opens, else libx264 and why).
# Training on the GPU is scripts/gpu_train.sh, a call of its own.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-device_out}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:${PWD}"
fi
if [[ -x .whl/bin/wrk ]]; then
    export WRK="$PWD/.whl/bin/wrk" LD_LIBRARY_PATH="$PWD/.whl/lib:${LD_LIBRARY_PATH:-}"
fi
export PYTHONUNBUFFERED=1
date -u +"device check %Y-%m-%d %H:%M UTC, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
python3 -c "from app.engine import jpeg; import torch; print('device JPEG (torchvision nvJPEG):', jpeg.available(torch.device('cuda')))"

timeout "${TEST_TIMEOUT:-150}" python3 -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py tests/test_device_paths.py \
    tests/test_device_process.py tests/test_planes.py tests/test_device_jpeg.py \
    tests/test_video_encoders.py::test_with_nvenc_a_job_encodes_h264_on_the_gpu \
    tests/test_video_encoders.py::test_without_nvenc_the_fallback_is_libx264_probed_once_and_said 2>&1 | tee "$out/tests.log" | tail -15

# nvJPEG alone, one picture and batches of 16: whether batching the encode across requests would pay too
timeout 45 python3 scripts/jpeg_codec_probe.py --repeat 20 --batch 16 2>&1 | tee "$out/jpeg_codec.log" | tail -16

# host → GPU copies: transfer()'s pinned non_blocking copy against plain .to(), alone and behind queued work
timeout 30 python3 scripts/transfer_probe.py --repeat 30 2>&1 | tee "$out/transfer.log" | tail -11

timeout "${PROBE_TIMEOUT:-220}" python3 scripts/gpu_probe.py --layouts "${LAYOUTS:-default,default+cpujpeg,off+mps}" \
    --load-s "${LOAD_S:-6}" --video-s "${VIDEO_S:-10}" --video-layouts default --out "$out/probe" 2>&1 | tee "$out/probe.log" | tail -12
