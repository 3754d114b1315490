"""The CUDA path, on a machine with a GPU (skipped elsewhere): exact in fp32, one grey level in fp16.

Batched and alone may pick different cuDNN algorithms, so the GPU promise is the issue's
"at most 1 grey level apart" rather than the CPU's bit-exactness.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from app.core.espcn import ESPCN
from app.engine.batcher import Engine
from app.engine.runner import ModelRunner
from app.main import create_app
from tests.conftest import encoded, make_settings, natural, open_bytes

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
GREY_LEVEL = 1 / 255
CUDA = torch.device("cuda")


def model(scale: int = 3) -> ESPCN:
    torch.manual_seed(scale)
    return ESPCN(scale).eval()


def test_fp32_matches_the_cpu_model_and_ignores_batch_mates() -> None:
    m = model()
    runner = ModelRunner(m, CUDA, tile=32)
    windows = torch.rand(12, 1, 40, 40)
    together = runner(windows)
    alone = torch.cat([runner(w[None]) for w in windows])
    with torch.no_grad():
        expected = m.forward_valid(windows).clamp(0, 1)
    assert together.device.type == "cpu" and together.dtype == torch.float32
    assert (together - expected).abs().max() <= 1e-4
    assert (together - alone).abs().max() <= 1e-5


def test_half_precision_stays_within_one_grey_level() -> None:
    m = model(4)
    windows = torch.rand(8, 1, 40, 40)
    fp32 = ModelRunner(m, CUDA, tile=32)(windows)
    fp16 = ModelRunner(m, CUDA, half=True, tile=32)(windows)
    assert torch.isfinite(fp16).all()
    assert (fp16 - fp32).abs().max() <= GREY_LEVEL


def test_engine_on_cuda_equals_whole_image_inference() -> None:
    models = {r: model(r) for r in (2, 3)}
    images = [torch.rand(1, h, w, generator=torch.Generator().manual_seed(h)) for h, w in [(50, 70), (17, 99)]]

    async def run() -> list[torch.Tensor]:
        eng = Engine({r: ModelRunner(m, CUDA, tile=32) for r, m in models.items()}, tile=32, max_batch=64,
                     max_delay_s=0.01)
        await eng.start()
        try:
            return list(await asyncio.gather(*(eng.upscale(x, r) for x, r in zip(images, (2, 3), strict=True))))
        finally:
            await eng.close()

    for out, x, r in zip(asyncio.run(run()), images, (2, 3), strict=True):
        with torch.no_grad():
            assert (out - models[r](x[None])[0].clamp(0, 1)).abs().max() <= 1e-4


def test_service_on_cuda(seeded_store: Path) -> None:
    with TestClient(create_app(make_settings(seeded_store, device="cuda", half=True))) as c:
        info = c.get("/models").json()["models"]
        assert all(m["device"].startswith("cuda") for m in info)
        r = c.post("/upscale", params={"scale": 2}, files={"file": ("x.png", encoded(natural()), "image/png")})
        assert r.status_code == 200
        assert np.asarray(open_bytes(r.content)).shape == (80, 96, 3)


def test_gpu_benchmark_rows_are_exact_in_fp32_and_close_in_half() -> None:
    from app.cli.benchlib.gpu import gpu_rows

    x = torch.rand(1, 1, 45, 80, device=CUDA)
    rows = gpu_rows(model(3), x, batches=(1, 4), replays=3)
    assert {(r.dtype, r.batch) for r in rows} == {(d, b) for d in ("fp32", "fp16", "bf16") for b in (1, 4)}
    for r in rows:
        assert r.frames_per_s and r.frames_per_s > 0, r.note
        limit = {"fp32": 1e-4 * 255, "fp16": 1.0, "bf16": 8.0}[r.dtype]
        assert r.max_abs_diff_levels is not None and r.max_abs_diff_levels <= limit, r
