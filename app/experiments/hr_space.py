"""The two network families of the note's Section 3, matched layer by layer in multiply-adds.

"Is the deconvolution layer the same as a convolutional layer?" (Shi et al.
2016), Section 3, compares a network working in LR space (``n`` maps, ``k×k``
kernels at W/r × H/r, a sub-pixel layer at the end: :class:`~app.core.espcn.ESPCN`)
with one that upsamples first and works in HR space. Seen through periodic
shuffling, ``n`` LR maps hold as many values as ``n/r²`` HR maps, and an LR
``k×k`` kernel covers the same image area as an HR ``kr×kr`` one. So an HR
hidden layer with ``n/r²`` maps and ``kr×kr`` kernels does the same
multiply-adds per output pixel, (n/r²)²(kr)² = n²k²/r², and keeps the same
activation memory, while it has r² times fewer weights (n²k² against n²k²/r²).

Matching rule used here (:func:`matched_pair`), for ``depth`` convolutions:

======================  =========================  ===================================
layer                   LR network (ESPCN)         HR network (:class:`HRSpaceNet`)
======================  =========================  ===================================
input                   LR Y                       LR Y, bicubic ×r (inside the model)
first                   1 → n, k×k                 1 → n/r², k×k (in HR pixels)
hidden (depth − 2)      n → n, k×k                 n/r² → n/r², kr×kr
last                    n → r², k×k, shuffle       n/r² → 1, kr×kr
======================  =========================  ===================================

Every layer then costs the same multiply-adds per HR output pixel: first
n·k²/r², hidden n²k²/r², last n·k². The first layer cannot keep both the
cost and the kernel footprint: its single input channel has no ``1/r²``
counterpart in HR space, so the HR network's first kernel keeps the cost and
is ``k×k`` HR pixels, i.e. ``k/r`` LR pixels wide. ``n`` must be a multiple
of r²: 32 → 8 maps at ×2 (6×6 kernels), 36 → 4 at ×3 (9×9), 32 → 2 or
48 → 3 at ×4 (12×12).

Like ESPCN, :class:`HRSpaceNet` uses unpadded convolutions and pads once: the LR
input by :attr:`HRSpaceNet.radius` (edge replication, enough for the convolutions'
HR shrink plus the bicubic filter's 2-pixel support), so that a training patch
with that halo and the same pixels of a whole image give the same output.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.core.espcn import ESPCN, ConvStack

BICUBIC_SUPPORT = 2  # LR pixels either side that torch's bicubic kernel reads


class HRSpaceNet(ConvStack):
    """Bicubic ×r, then ``depth`` unpadded convolutions in HR space (SRCNN-style, no residual).

    Args:
        scale: upscale factor ``r``.
        widths: output maps of the hidden layers (the last layer has ``channels``).
        kernel_sizes: one kernel size per layer, in HR pixels; even sizes are allowed
            (each shifts its output by half a pixel, which the learnt kernels absorb;
            with an even number of even kernels the net shift is zero).
        activation: as in :class:`~app.core.espcn.ESPCN`.
    """

    def __init__(
        self,
        scale: int,
        *,
        channels: int = 1,
        widths: tuple[int, ...] = (8,),
        kernel_sizes: tuple[int, ...] = (3, 6, 6),
        activation: str = "tanh",
    ) -> None:
        super().__init__(scale, channels, widths, kernel_sizes, activation, last_layer="output layer")
        self.output = nn.Conv2d(self.last_width, channels, kernel_sizes[-1])

    @property
    def shrink(self) -> int:
        """HR pixels the unpadded convolutions remove along each axis: Σ (kₗ − 1)."""
        return sum(k - 1 for k in self.kernel_sizes)

    @property
    def radius(self) -> int:
        """LR padding/halo: covers the convolutions' HR shrink and the bicubic support."""
        return math.ceil(self.shrink / (2 * self.scale)) + BICUBIC_SUPPORT

    def forward_valid(self, x_padded: Tensor) -> Tensor:
        """(N, c, H + 2R, W + 2R) LR → (N, c, r·H, r·W) HR: bicubic, crop to what the convs need, convs."""
        r, big = self.scale, self.scale * self.radius
        up = F.interpolate(x_padded, scale_factor=r, mode="bicubic", align_corners=False)
        top, bottom = big - self.shrink // 2, big - (self.shrink - self.shrink // 2)
        up = up[..., top : up.shape[-2] - bottom, top : up.shape[-1] - bottom]
        return self.output(self.features(up))

    def forward(self, x: Tensor) -> Tensor:
        """(N, c, H, W) LR → (N, c, r·H, r·W), borders by edge replication."""
        r = self.radius
        return self.forward_valid(F.pad(x, (r, r, r, r), mode="replicate"))

    def architecture(self) -> dict[str, object]:
        return {
            "family": "hr",
            "scale": self.scale,
            "channels": self.channels,
            "widths": list(self.widths),
            "kernel_sizes": list(self.kernel_sizes),
            "activation": self.activation,
        }


def conv_layers(model: nn.Module) -> Iterator[tuple[nn.Conv2d, int]]:
    """Each convolution of an ESPCN or HRSpaceNet with its stride relative to the HR output (r or 1)."""
    stride = model.scale if isinstance(model, ESPCN) else 1
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            yield module, stride


def layer_macs_per_output_pixel(model: nn.Module) -> list[float]:
    """Multiply-adds of each convolution per HR output pixel (interior), read off the modules' weights."""
    out = []
    for conv, stride in conv_layers(model):
        c_out, c_in, kh, kw = conv.weight.shape
        out.append(c_out * c_in * kh * kw / stride**2)
    return out


def macs_per_output_pixel(model: nn.Module) -> float:
    """Interior multiply-adds per HR output pixel (HRSpaceNet: convolutions only, bicubic excluded)."""
    return sum(layer_macs_per_output_pixel(model))


def layer_parameters(model: nn.Module) -> list[int]:
    """Weights + biases of each convolution, in order."""
    return [sum(p.numel() for p in conv.parameters()) for conv, _ in conv_layers(model)]


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def measured_macs_per_output_pixel(model: nn.Module, lr_size: tuple[int, int]) -> float:
    """Multiply-adds per output pixel counted by hooks on a real forward of one LR frame, borders included."""
    total = 0

    def hook(module: nn.Conv2d, _inp: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        total += out[0].numel() * module.in_channels * module.kernel_size[0] * module.kernel_size[1]

    handles = [conv.register_forward_hook(hook) for conv, _ in conv_layers(model)]
    try:
        y = model(torch.zeros(1, 1, *lr_size))
    finally:
        for h in handles:
            h.remove()
    return total / (y.shape[-2] * y.shape[-1])


def matched_pair(scale: int, depth: int, width: int, kernel: int = 3, activation: str = "tanh") -> tuple[ESPCN, HRSpaceNet]:
    """An LR network and the HR network with the same multiply-adds in every layer (module docstring)."""
    if depth < 2:
        raise ValueError(f"depth must be >= 2 (a first and a last layer), got {depth}")
    if width % scale**2:
        raise ValueError(f"width {width} must be a multiple of r² = {scale**2}")
    lr = ESPCN(scale, widths=(width,) * (depth - 1), kernel_sizes=(kernel,) * depth, activation=activation)
    hr = HRSpaceNet(
        scale,
        widths=(width // scale**2,) * (depth - 1),
        kernel_sizes=(kernel,) + (kernel * scale,) * (depth - 1),
        activation=activation,
    )
    return lr, hr
