"""CUDA only: the paper's headline, whole frames to a 1080p output, in batches, model only.

For each scale the LR frame is the one whose output is 1920×1080 (×2: 960×540,
×3: 640×360, ×4: 480×270). Each variant runs the unpadded network on a batch of
once-padded frames already on the GPU, channels-last, in fp32 (TF32 off, as the
service runs it), fp16 or bf16, replayed from a CUDA graph so that launch
overhead is not what is measured. Frames per second = batch × replays / time
(CUDA events). Every variant's first frame is compared with fp32 eager, in grey
levels of the 8-bit output.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor

from app.core.espcn import ESPCN, pad_for

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
OUTPUT = (1920, 1080)


@dataclass
class GpuRow:
    scale: int
    width: int  # LR input
    height: int
    dtype: str
    batch: int
    frames_per_s: float | None
    ms_per_batch: float | None
    max_abs_diff_levels: float | None  # first frame vs fp32 eager, in 8-bit grey levels
    note: str = ""


def lr_size(scale: int) -> tuple[int, int]:
    return OUTPUT[0] // scale, OUTPUT[1] // scale


def _graphed(model: ESPCN, static_in: Tensor) -> tuple[torch.cuda.CUDAGraph, Tensor]:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm up (cuDNN picks its kernels) outside the graph
            model.forward_valid(static_in)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = model.forward_valid(static_in)
    return graph, static_out


def gpu_row(model: ESPCN, x: Tensor, dtype: str, batch: int, reference: Tensor, replays: int) -> GpuRow:
    """``x``: one (1, 1, H, W) LR frame on the GPU, fp32."""
    _, _, h, w = x.shape
    row = GpuRow(model.scale, w, h, dtype, batch, None, None, None)
    try:
        with torch.inference_mode():
            m = copy.deepcopy(model).to(x.device, DTYPES[dtype]).eval().to(memory_format=torch.channels_last)
            frames = pad_for(model, x).to(DTYPES[dtype]).expand(batch, -1, -1, -1)
            static_in = frames.contiguous(memory_format=torch.channels_last)
            graph, static_out = _graphed(m, static_in)
            graph.replay()
            torch.cuda.synchronize()
            first = static_out[:1].float()
            row.max_abs_diff_levels = (first - reference).abs().max().item() * 255.0
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(replays):
                graph.replay()
            end.record()
            torch.cuda.synchronize()
            seconds = start.elapsed_time(end) / 1000.0
            row.ms_per_batch = seconds * 1000.0 / replays
            row.frames_per_s = batch * replays / seconds
            del graph, static_out, static_in, m
    except Exception as exc:  # out of memory at a large batch is a result, not a crash
        row.note = f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}"
    torch.cuda.empty_cache()
    return row


def gpu_rows(model: ESPCN, x: Tensor, batches: tuple[int, ...] = (1, 8, 32, 64), replays: int = 20) -> list[GpuRow]:
    """Every dtype × batch for one model on one frame (already on the GPU)."""
    torch.backends.cudnn.allow_tf32 = False  # the service's fp32 is true fp32 (exactness ≤ 1e-4)
    torch.backends.cudnn.benchmark = True
    with torch.inference_mode():
        m = copy.deepcopy(model).to(x.device).float().eval()
        reference = m(x).float()
    return [gpu_row(model, x, d, b, reference, replays) for d in DTYPES for b in batches]
