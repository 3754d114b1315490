"""The branches a GPU takes, run on the CPU: device resolution, the PyTorch runner path, fp16 and its fall-back.

The CUDA tests (``tests/test_cuda.py``) add only what needs a GPU's own kernels; every
other line of the GPU path runs here, in every CI run.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.core import planes
from app.core.espcn import ESPCN
from app.engine.device import concrete, resolve_device, transfer
from app.engine.observer import EngineObserver
from app.engine.runner import ModelRunner
from app.observability import metrics
from app.observability.adapters import PrometheusObserver

CPU = torch.device("cpu")


class Fallbacks(EngineObserver):
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def fallback(self, reason: str) -> None:
        self.reasons.append(reason)


def model(scale: int = 3, seed: int = 0) -> ESPCN:
    torch.manual_seed(seed)
    return ESPCN(scale).eval()


def test_devices_resolve_to_the_form_tensors_report() -> None:
    """A tensor on the first GPU says ``cuda:0``; a device held as ``cuda`` would never equal it."""
    assert resolve_device("cpu") == torch.zeros(1).device
    assert concrete("cpu") == CPU and concrete(torch.device("cpu")) == CPU
    if not torch.cuda.is_available():
        assert resolve_device("auto") == CPU
        with pytest.raises(RuntimeError, match="no CUDA device"):
            resolve_device("cuda")
    else:
        gpu = resolve_device("cuda")
        assert gpu.index is not None and torch.zeros(1, device=gpu).device == gpu


def test_transfer_to_the_same_device_is_no_copy() -> None:
    t = torch.rand(2, 3)
    assert transfer(t, concrete("cpu")) is t


def test_runner_holds_a_concrete_device_and_its_torch_path_is_exact_and_batch_blind() -> None:
    """The eager path is the GPU's code path: the same model call, batch-independent results."""
    m = model()
    runner = ModelRunner(m, torch.device("cpu"), backend="eager", tile=32)
    assert runner.device == torch.zeros(1).device and runner.backend == "eager"
    windows = torch.rand(6, 1, 40, 40, generator=torch.Generator().manual_seed(1))
    together = runner(windows)
    alone = torch.cat([runner(w[None]) for w in windows])
    with torch.no_grad():
        expected = m.forward_valid(windows).clamp(0, 1)
    assert (together - expected).abs().max() <= 1e-5
    assert torch.equal(together, alone)


def test_half_precision_path_stays_within_one_grey_level() -> None:
    m = model(4)
    windows = torch.rand(4, 1, 40, 40, generator=torch.Generator().manual_seed(2))
    fp32 = ModelRunner(m, CPU, backend="eager", tile=32)(windows)
    fp16 = ModelRunner(m, CPU, half=True, tile=32)(windows)  # half always takes the PyTorch path
    assert fp16.dtype == torch.float32 and torch.isfinite(fp16).all()
    assert (fp16 - fp32).abs().max() <= 1 / 255


def test_half_overflow_is_recomputed_in_fp32() -> None:
    """Weights that overflow fp16 (max 65504): the runner notices the infinities and answers in fp32."""
    m = model(2)
    with torch.no_grad():
        m.subpixel.weight.mul_(1e6)  # the sub-pixel layer's outputs pass fp16's range
    windows = torch.rand(2, 1, 40, 40, generator=torch.Generator().manual_seed(3))
    seen = Fallbacks()
    fp16 = ModelRunner(m, CPU, half=True, tile=32, observer=seen)(windows)
    fp32 = ModelRunner(m, CPU, backend="eager", tile=32)(windows)
    assert seen.reasons == ["half_nonfinite"]
    assert torch.equal(fp16, fp32)

    counted = metrics.MODEL_FALLBACKS.labels("half_nonfinite")  # what the service's observer makes of it
    before = counted._value.get()
    ModelRunner(m, CPU, half=True, tile=32, observer=PrometheusObserver())(windows)
    assert counted._value.get() == before + 1


def test_luma_divides_by_a_tensor_on_its_own_device() -> None:
    """The model input is the correctly rounded ``Y / 255`` (CUDA turns a host scalar divisor into a reciprocal)."""
    rgb = torch.randint(0, 256, (3, 31, 29), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    y = planes.luma(rgb)
    from app.core.color import rgb_to_y

    exact = (rgb_to_y(rgb.double()) / 255.0).float()  # float64 then one rounding
    as_reciprocal = rgb_to_y(rgb.float()) * np.float32(1 / 255)
    assert (y - exact).abs().max() <= 2e-7
    assert torch.equal(y, rgb_to_y(rgb.float()) / 255.0)
    assert not torch.equal(y, as_reciprocal)  # the GPU's old rounding differs on this image


def test_answers_composed_together_are_each_composed_alone_and_a_bad_one_fails_alone() -> None:
    """PixelEngine._compose_into, the batch the device process runs for answers back from the model together:
    same-size opaque answers stack, one with alpha does not, and one that cannot compose fails on its own."""
    from app.engine.pixels import PixelEngine, output_shape

    gen = torch.Generator().manual_seed(3)
    colour = [torch.randint(0, 256, (3, 24, 32), dtype=torch.uint8, generator=gen) for _ in range(3)]
    alpha = torch.randint(0, 256, (24, 32), dtype=torch.uint8, generator=gen)
    items = [(c, None, torch.rand((1, 72, 96), generator=gen), 3) for c in colour]
    items.append((colour[0], alpha, torch.rand((1, 72, 96), generator=gen), 3))
    bad = (colour[1], None, torch.rand((1, 96, 72), generator=gen), 3)  # the model's luma the wrong way round

    def outs(batch: list) -> list[np.ndarray]:
        return [np.zeros(output_shape(24, 32, 3, a is not None, 3), np.uint8) for _, a, _, _ in batch]

    expected = [planes.compose(c, a, sr, scale).permute(1, 2, 0).numpy() for c, a, sr, scale in items]
    together = [(*item, out) for item, out in zip(items, outs(items), strict=True)]
    assert PixelEngine._compose_into(together) == [None] * len(items)
    for (*_, out), want in zip(together, expected, strict=True):
        assert np.array_equal(out, want)
    with_bad = [(*item, out) for item, out in zip([*items, bad], outs([*items, bad]), strict=True)]
    results = PixelEngine._compose_into(with_bad)
    assert results[:-1] == [None] * len(items) and isinstance(results[-1], ValueError)
    for (*_, out), want in zip(with_bad[:-1], expected, strict=True):
        assert np.array_equal(out, want)
