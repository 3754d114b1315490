"""Our model, six ways, on one whole frame; each checked against eager whole-image inference.

- ``eager``: ``model.forward_valid(pad_for(model, x))``, the reference output.
- ``channels_last``: the same with weights and input in channels-last memory format.
- ``torchscript``: traced at the frame's shape, frozen, ``torch.jit.optimize_for_inference``
  (``torch.jit.script`` cannot compile :mod:`app.core.shuffle`'s f-string checks).
- ``onnxruntime``: the ONNX graph of :mod:`app.engine.onnx_backend` in an ONNX Runtime session, on
  the once-padded frame (``n/a`` when onnxruntime is not installed).
- ``compile``: ``torch.compile(dynamic=False)``, compiled afresh for each shape (the first call,
  which compiles, is not timed); failures are reported as ``n/a``.
- ``tiled``: what the service runs, timed through the service's own :class:`~app.engine.batcher.Engine`
  (not a copy of it): admission, the batching worker, the once-padded image cut into ``tile``²
  windows with their halo (or one whole-image call up to ``SR_WHOLE_IMAGE_MAX_PIXELS``), the
  runner on batches of ``max_batch``, tiles stitched back. The runner clamps to [0, 1], so it is
  compared with the clamped eager output.

All run under ``torch.inference_mode()``, fp32, on the Y channel (1, 1, H, W).
"""

from __future__ import annotations

import asyncio
import copy
import math
import threading
import warnings
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from app.cli.benchlib.common import measure, synchronizer
from app.cli.benchlib.rows import NOT_AVAILABLE, OK, SKIPPED, FrameRow
from app.config import Settings
from app.core.espcn import ESPCN, pad_for
from app.engine.batcher import Engine
from app.engine.onnx_backend import OrtModel
from app.engine.runner import ModelRunner

T = TypeVar("T")

PATHS = ("eager", "channels_last", "torchscript", "onnxruntime", "compile", "tiled")


@dataclass(frozen=True)
class PathConfig:
    device: torch.device
    tile: int
    max_batch: int
    repeats: int
    warmup: int
    compile: bool


class WholeImage(nn.Module):
    """Pad once, then the unpadded network: ``ESPCN.forward`` spelled out, so it traces and compiles as one graph."""

    def __init__(self, model: ESPCN) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.forward_valid(pad_for(self.model, x))


def _on(model: ESPCN, device: torch.device) -> ESPCN:
    return copy.deepcopy(model).float().eval().requires_grad_(False).to(device)


def build_eager(model: ESPCN, x: Tensor, cfg: PathConfig) -> Callable[[], Tensor]:
    m, xd = _on(model, cfg.device), x.to(cfg.device)
    return lambda: m.forward_valid(pad_for(m, xd))


def build_channels_last(model: ESPCN, x: Tensor, cfg: PathConfig) -> Callable[[], Tensor]:
    m = _on(model, cfg.device).to(memory_format=torch.channels_last)
    xd = x.to(cfg.device).contiguous(memory_format=torch.channels_last)
    return lambda: m.forward_valid(pad_for(m, xd))


def build_torchscript(model: ESPCN, x: Tensor, cfg: PathConfig) -> Callable[[], Tensor]:
    xd = x.to(cfg.device)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # torch ≥ 2.10 deprecates TorchScript; it still runs
        traced = torch.jit.trace(WholeImage(_on(model, cfg.device)).eval(), xd)
        scripted = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
    return lambda: scripted(xd)


def build_onnxruntime(model: ESPCN, x: Tensor, cfg: PathConfig) -> Callable[[], Tensor]:
    if cfg.device.type != "cpu":
        raise RuntimeError("the ONNX Runtime path is CPU-only here")
    session = OrtModel(model, torch.get_num_threads())
    return lambda: session(pad_for(model, x))


def build_compile(model: ESPCN, x: Tensor, cfg: PathConfig) -> Callable[[], Tensor]:
    torch._dynamo.reset()  # a fresh cache: shapes of earlier frames must not push this one back to eager
    compiled = torch.compile(WholeImage(_on(model, cfg.device)), dynamic=False)
    xd = x.to(cfg.device)
    return lambda: compiled(xd)


def service_runner(model: ESPCN, device: torch.device, tile: int) -> ModelRunner:
    """A :class:`ModelRunner` built as ``app.main`` builds it (backend from the settings, the tile shape)."""
    return ModelRunner(model, device, backend=Settings().backend, tile=tile)


class EngineLoop:
    """The service's :class:`Engine` on its own event loop thread, callable from synchronous benchmark code."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="bench-engine-loop", daemon=True)
        self._thread.start()
        self.run(engine.start())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.run(self.engine.close(5.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()


class TiledPath:
    """One image through the real engine, as ``Pipeline.upscale`` hands it over (luma (c, H, W) on the CPU)."""

    def __init__(self, model: ESPCN, x: Tensor, cfg: PathConfig) -> None:
        runner = service_runner(model, cfg.device, cfg.tile)
        self.backend = runner.backend
        settings = Settings()
        self.engine = EngineLoop(Engine({model.scale: runner}, tile=cfg.tile, max_batch=cfg.max_batch,
                                        max_delay_s=0.0, whole_max_pixels=settings.whole_image_max_pixels))
        self.luma, self.scale = x[0].cpu(), model.scale
        self.whole = x.shape[2] * x.shape[3] <= settings.whole_image_max_pixels

    def __call__(self) -> Tensor:
        return self.engine.run(self.engine.engine.upscale(self.luma, self.scale))[None]

    def close(self) -> None:
        self.engine.close()


BUILDERS: dict[str, Callable[[ESPCN, Tensor, PathConfig], Callable[[], Tensor]]] = {
    "eager": build_eager,
    "channels_last": build_channels_last,
    "torchscript": build_torchscript,
    "onnxruntime": build_onnxruntime,
    "compile": build_compile,
    "tiled": TiledPath,
}


def _error(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:160]}"


def time_path(name: str, model: ESPCN, x: Tensor, cfg: PathConfig, reference: Tensor | None) -> tuple[FrameRow, Tensor]:
    """Build one path, run it once (output, and compilation where there is one), then time it.

    Returns the row and the path's output on the CPU (the reference itself for ``eager``).
    """
    _, _, h, w = x.shape
    row = FrameRow(model.scale, w, h, name, "ours", OK)
    if name == "compile" and not cfg.compile:
        row.status, row.note = SKIPPED, "torch.compile off (--quick or --no-compile)"
        return row, torch.empty(0)
    sync = synchronizer(cfg.device)
    fn: Callable[[], Tensor] | None = None
    try:
        with torch.inference_mode():
            fn = BUILDERS[name](model, x, cfg)
            out = fn().float().cpu()
            timing = measure(fn, repeats=cfg.repeats, warmup=cfg.warmup, sync=sync)
    except Exception as exc:  # a path that does not work on this machine is a result, not a crash
        row.status, row.note = NOT_AVAILABLE, _error(exc)
        return row, torch.empty(0)
    finally:
        if isinstance(fn, TiledPath):
            fn.close()
    row.median_ms, row.min_ms = timing.median_ms, timing.min_ms
    if reference is not None:
        expected = reference.clamp(0.0, 1.0) if name == "tiled" else reference
        row.max_abs_diff = (out.contiguous() - expected).abs().max().item()
        if name == "tiled":
            assert isinstance(fn, TiledPath)
            how = "one whole-image call" if fn.whole else f"tiles of {cfg.tile}, batches of {cfg.max_batch}"
            row.note = f"the service's Engine ({fn.backend}), {how}, admission+pad+cut+stitch included; vs clamped eager"
    else:
        row.max_abs_diff = 0.0
    if name != "tiled" and cfg.device.type == "cuda":
        row.note = (row.note + "; " if row.note else "") + "input already on the GPU"
    return row, out


def model_rows(model: ESPCN, x: Tensor, cfg: PathConfig) -> list[FrameRow]:
    """All six paths on one frame, eager first (it is the reference)."""
    rows: list[FrameRow] = []
    reference: Tensor | None = None
    for name in PATHS:
        row, out = time_path(name, model, x, cfg, reference)
        if name == "eager":
            if row.status != OK:
                raise RuntimeError(f"eager inference failed: {row.note}")
            reference = out
        rows.append(row)
    return rows


def exact_macs(model: ESPCN, height: int, width: int) -> int:
    """Multiply-adds the unpadded network really spends on an ``H × W`` frame, halo ring included."""
    total, left = 0, model.radius
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            left -= (module.kernel_size[0] - 1) // 2  # the radius still to be consumed after this layer
            per_pixel = module.in_channels * module.out_channels * math.prod(module.kernel_size)
            total += per_pixel * (height + 2 * left) * (width + 2 * left)
    return total
