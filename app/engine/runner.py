"""Run one model on batches of fixed-size tile windows: the engine's only call into the model.

On the CPU, ``backend="auto"`` takes the fastest exact path available:

1. ONNX Runtime (:mod:`app.engine.onnx_backend`), when ``onnxruntime`` is installed;
2. else the model traced and frozen with TorchScript and passed through
   ``torch.jit.optimize_for_inference`` (oneDNN layouts, fused ops);
3. else eager PyTorch, channels-last.

(Their speeds, measured: ``docs/benchmarks.md``.)

Each fast path is checked against the eager model at start-up (≤ 1e-4) and,
like the eager one, gives bit-identical tiles whatever the batch size (tested),
so batching never changes a result. ``onnxruntime``, ``torchscript`` and
``eager`` pick a path (a missing or inexact one falls back down the list).

Precision and fall-backs follow what users of SR servers tripped on: fp32 on
the CPU in the service; fp16 on CUDA only when asked, and any non-finite output
is recomputed in fp32; a CUDA out-of-memory error halves the batch, and a single
tile that still does not fit runs on the CPU. A GPU and CPU eager share one code
path (:meth:`ModelRunner._torch`), so the CPU suite runs every line of it but the
out-of-memory clause — fp16 and its fall-back included, when a test asks for them.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable
from functools import partial
from typing import Literal

import torch
from torch import Tensor, nn

from app.config import TILE_SIZE
from app.core.espcn import ESPCN
from app.engine import onnx_backend
from app.engine.core_tokens import CoreTokens
from app.engine.device import concrete, healthy, transfer
from app.engine.observer import CUDA_OOM, HALF_NONFINITE, EngineObserver

log = logging.getLogger(__name__)

Backend = Literal["auto", "onnxruntime", "torchscript", "eager"]
EXACTNESS = 1e-4  # the fast path must match the eager model this closely


class _ValidForward(nn.Module):
    """``forward_valid`` as a plain module for tracing (pixel_shuffle without Python-side checks)."""

    def __init__(self, model: ESPCN) -> None:
        super().__init__()
        self.model = model
        self.scale = model.scale

    def forward(self, x: Tensor) -> Tensor:
        return torch.pixel_shuffle(self.model.forward_lr(x), self.scale)


def torchscript_cpu(model: ESPCN, example: Tensor) -> torch.jit.ScriptModule:
    """A frozen, inference-optimised trace of ``model.forward_valid``."""
    # torch.jit is deprecated in favour of torch.compile, which compiles each input shape for tens of
    # seconds on a CPU (docs/benchmarks.md); TorchScript traces in well under a second, so we keep it.
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(_ValidForward(model).eval(), example, check_trace=False)
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced))


def exact_or_none(
    name: str, build: Callable[[], Callable[[Tensor], Tensor]], model: ESPCN, example: Tensor
) -> Callable[[Tensor], Tensor] | None:
    """``build()``, kept only if it builds and matches ``model.forward_valid`` within :data:`EXACTNESS`."""
    try:
        fast = build()
        probe = torch.rand((3, *example.shape[1:]), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            diff = float((fast(probe) - model.forward_valid(probe)).abs().max())
    except Exception:  # a tracing failure, a broken install, an unsupported layer: fall back
        log.exception("%s backend failed to build; falling back", name)
        return None
    if diff > EXACTNESS:
        log.warning("%s output differs from eager by %.2e; falling back", name, diff)
        return None
    return fast


# How a library under PyTorch reports a GPU out of memory when the allocator's own error is not what surfaces
_OUT_OF_MEMORY = ("out of memory", "ALLOC_FAILED", "unable to find an engine")


class ModelRunner:
    """Owns the device copies of one :class:`ESPCN` and runs ``forward_valid`` on window batches."""

    def __init__(
        self,
        model: ESPCN,
        device: torch.device,
        *,
        half: bool = False,
        backend: Backend = "auto",
        tile: int = TILE_SIZE,
        observer: EngineObserver | None = None,
        cores: CoreTokens | None = None,
    ) -> None:
        self.scale = model.scale
        self.cores = cores  # shared with the host's other worker processes: whole-image calls borrow idle ones
        self.radius = model.radius
        self.device = concrete(device)
        self.half = half  # the caller decides (SR_HALF applies on CUDA only); any device runs it, so CPU tests can
        self.observer = observer or EngineObserver()
        self._cpu = copy.deepcopy(model).float().eval().requires_grad_(False)
        if self.device.type == "cuda":
            # cuDNN convolutions default to TF32 on Ampere and later (10-bit mantissa): the fp32 path is
            # the exact one here, SR_HALF the fast one, so keep fp32 convolutions in full precision.
            torch.backends.cudnn.allow_tf32 = False
        # The PyTorch path (a GPU, or CPU eager): fp32 copies on the device (the fall-back) and the fast one.
        self._fp32 = self._cpu if self.device.type == "cpu" else copy.deepcopy(self._cpu).to(self.device)
        fast = copy.deepcopy(self._fp32)  # a copy: channels_last converts a module's weights in place
        self._main = (fast.half() if self.half else fast).to(memory_format=torch.channels_last)
        self._cpu_fast: Callable[[Tensor], Tensor] | None = None
        self.backend = "eager"
        if self.device.type == "cpu" and backend != "eager" and not self.half:
            side = tile + 2 * self.radius
            example = torch.zeros(1, self._cpu.channels, side, side)
            candidates: list[tuple[str, Callable[[], Callable[[Tensor], Tensor]]]] = []
            if backend in ("auto", "onnxruntime") and onnx_backend.available():
                candidates.append(("onnxruntime", partial(onnx_backend.OrtModel, self._cpu, torch.get_num_threads(),
                                                                 cores.cores if cores is not None else 0)))
            candidates.append(("torchscript", partial(torchscript_cpu, self._cpu, example)))
            for name, build in candidates:  # the first exact one wins; eager if none
                self._cpu_fast = exact_or_none(name, build, self._cpu, example)
                if self._cpu_fast is not None:
                    self.backend = name
                    break
            if backend == "onnxruntime" and self.backend != "onnxruntime":
                log.warning("SR_BACKEND=onnxruntime but ONNX Runtime is not usable here; using %s", self.backend)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self.half else torch.float32

    @torch.inference_mode()
    def __call__(self, windows: Tensor, *, borrow: bool = False) -> Tensor:
        """(N, c, t + 2R, t + 2R) float32 → (N, c, r·t, r·t) float32 in [0, 1], on the device the windows are on.

        Windows already on the model's GPU (the pipeline's tensor path) stay there; CPU windows make one
        round trip. ``borrow`` (a whole-image call): run on every core of the host if no other worker
        process is computing (:mod:`app.engine.core_tokens`); any other call holds one core's token meanwhile.
        """
        if self.cores is None or self.device.type != "cpu":  # cores are lent between CPU workers only
            return self._run(windows).clamp_(0.0, 1.0)
        with self.cores.take(None if borrow else 1) as taken:
            return self._run(windows, wide=borrow and taken == self.cores.cores).clamp_(0.0, 1.0)

    def _run(self, windows: Tensor, wide: bool = False) -> Tensor:
        if isinstance(self._cpu_fast, onnx_backend.OrtModel):
            return self._cpu_fast(windows, wide)
        if self._cpu_fast is not None:
            return self._cpu_fast(windows)
        return self._torch(windows)

    def _torch(self, windows: Tensor) -> Tensor:
        """The PyTorch path, the same lines on a GPU and on the CPU (eager): only the out-of-memory recovery is CUDA's.

        The recovery runs after the ``except`` block, not in it: while the exception is being
        handled its traceback keeps the failed attempt's frames, and with them the activations
        it did allocate, so halves retried inside the block would meet a GPU still that full.
        """
        try:
            return self._forward(windows)
        except torch.cuda.OutOfMemoryError:
            pass
        except RuntimeError as e:  # cuDNN and cuBLAS say "out of memory" their own way (pytorch/pytorch#108645)
            if self.device.type != "cuda" or not any(sign in str(e) for sign in _OUT_OF_MEMORY):
                raise
        self.observer.fallback(CUDA_OOM)
        torch.cuda.empty_cache()
        if len(windows) == 1:
            log.warning("CUDA out of memory on a single tile; running it on the CPU")
            return transfer(self._cpu.forward_valid(windows.cpu()), windows.device)
        half = len(windows) // 2
        return torch.cat([self._torch(windows[:half]), self._torch(windows[half:])])

    def _forward(self, windows: Tensor) -> Tensor:
        """One model call on the device (fp16 recomputed in fp32 if it overflowed), the answer where ``windows`` are."""
        x = transfer(windows, self.device)
        y = self._main.forward_valid(x.to(self.dtype, memory_format=torch.channels_last))
        if self.half and not torch.isfinite(y).all():
            self.observer.fallback(HALF_NONFINITE)
            y = self._fp32.forward_valid(x)
        return transfer(y.float(), windows.device)

    def healthy(self) -> bool:
        """Whether the model's device still computes (after a failure; see :func:`app.engine.device.healthy`)."""
        return healthy(self.device)

    def warm_up(self, tile: int, max_batch: int = 1) -> None:
        """Calls at the serving shape, alone and in a full batch, so the first requests do not pay for allocation.

        ONNX Runtime's memory arena grows to the largest activations it has seen and keeps them;
        a full batch of tiles is what small-image traffic reaches, so growing it here puts that
        in the start-up footprint, where a soak's warm baseline sees it. (Whole-image calls, up to
        ``SR_WHOLE_IMAGE_MAX_PIXELS``, grow it further, once, when such images come — not paid up
        front for scales that may never see one.)
        """
        side = tile + 2 * self.radius
        self(torch.zeros(1, self._cpu.channels, side, side))
        if max_batch > 1:
            self(torch.zeros(max_batch, self._cpu.channels, side, side))
