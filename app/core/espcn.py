"""ESPCN (Shi et al., CVPR 2016): every convolution in LR space, then periodic shuffling.

Border handling — chosen for tiled, batched serving. All convolutions are
*unpadded* ("valid"); :meth:`ESPCN.forward` pads the whole image once, by the
receptive-field radius ``R = Σ (kₗ − 1)/2`` (4 for the 5-3-3 network), with
edge replication, then runs :meth:`ESPCN.forward_valid`. Because nothing inside
the network looks at an image border, an output pixel depends only on the
``(2R + 1)²`` LR window around it. A tile cut from the once-padded image with a
halo of ``R`` therefore produces exactly the pixels that whole-image inference
produces, whichever batch it rides in and whatever its neighbours are.
Replication (rather than reflection or zeros) works for images of any size,
even 1×1, and does not darken borders.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.core.shuffle import periodic_shuffle
from app.core.subpixel import Deconv, SubPixelConv, conv_to_deconv

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "prelu": nn.PReLU}


class ConvStack(nn.Module):
    """What ESPCN and its HR-space twin (:mod:`app.experiments.hr_space`) share: the hyper-parameters, checked,
    and the hidden layers, an unpadded conv + activation each (``features``); a subclass adds its last layer."""

    def __init__(self, scale: int, channels: int, widths: Sequence[int], kernel_sizes: Sequence[int],
                 activation: str, *, last_layer: str) -> None:
        super().__init__()
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}")
        if len(kernel_sizes) != len(widths) + 1:
            raise ValueError(f"need one kernel size per hidden layer plus one for the {last_layer}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.scale = scale
        self.channels = channels
        self.widths = tuple(widths)
        self.kernel_sizes = tuple(kernel_sizes)
        self.activation = activation
        layers: list[nn.Module] = []
        in_ch = channels
        for width, k in zip(widths, kernel_sizes[:-1], strict=True):
            layers += [nn.Conv2d(in_ch, width, k), ACTIVATIONS[activation]()]
            in_ch = width
        self.features = nn.Sequential(*layers)

    @property
    def last_width(self) -> int:
        """Maps into the last layer: the last hidden width (``channels`` with no hidden layer)."""
        return self.widths[-1] if self.widths else self.channels


class ESPCN(ConvStack):
    """Feature extraction in LR space, then a sub-pixel convolution layer.

    Args:
        scale: upscale factor ``r``.
        channels: image channels ``c`` in and out (1: the Y channel).
        widths: feature maps of the hidden layers (paper: 64, 32).
        kernel_sizes: one odd kernel size per layer, the last one being the
            sub-pixel layer (paper: 5, 3, 3).
        activation: ``tanh`` (paper), ``relu`` or ``prelu``.
    """

    def __init__(
        self,
        scale: int,
        *,
        channels: int = 1,
        widths: Sequence[int] = (64, 32),
        kernel_sizes: Sequence[int] = (5, 3, 3),
        activation: str = "tanh",
    ) -> None:
        if any(k % 2 == 0 for k in kernel_sizes):
            raise ValueError(f"kernel sizes must be odd, got {tuple(kernel_sizes)}")
        super().__init__(scale, channels, widths, kernel_sizes, activation, last_layer="sub-pixel layer")
        self.subpixel = nn.Conv2d(self.last_width, channels * scale**2, kernel_sizes[-1])

    @property
    def radius(self) -> int:
        """Receptive-field radius in LR pixels: the padding/halo that makes tiling exact."""
        return sum((k - 1) // 2 for k in self.kernel_sizes)

    def forward_lr(self, x_padded: Tensor) -> Tensor:
        """The ``c·r²`` LR maps before shuffling; input already padded by :attr:`radius`."""
        return self.subpixel(self.features(x_padded))

    def forward_valid(self, x_padded: Tensor) -> Tensor:
        """(N, c, H + 2R, W + 2R) → (N, c, r·H, r·W): no border handling of its own."""
        return periodic_shuffle(self.forward_lr(x_padded), self.scale)

    def forward(self, x: Tensor) -> Tensor:
        """(N, c, H, W) → (N, c, r·H, r·W), borders by edge replication."""
        return self.forward_valid(pad_for(self, x))

    def subpixel_layer(self) -> SubPixelConv:
        """The last layer as a :class:`SubPixelConv` (on its own, unpadded)."""
        return SubPixelConv(
            weight=self.subpixel.weight.detach(), bias=self.subpixel.bias.detach(), padding=0, scale=self.scale
        )

    def last_layer_deconv(self) -> Deconv:
        """The equivalent deconvolution of the sub-pixel layer: weight (32, c, k·r, k·r)."""
        return conv_to_deconv(self.subpixel_layer())

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def macs_per_lr_pixel(self) -> int:
        """Multiply-adds per LR input pixel (interior; borders add the padding ring)."""
        total = 0
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                total += module.in_channels * module.out_channels * module.kernel_size[0] * module.kernel_size[1]
        return total

    def architecture(self) -> dict[str, object]:
        """Hyper-parameters as stored in a manifest; ``ESPCN(**arch)`` rebuilds the module."""
        return {
            "scale": self.scale,
            "channels": self.channels,
            "widths": list(self.widths),
            "kernel_sizes": list(self.kernel_sizes),
            "activation": self.activation,
        }


def pad_for(model: ESPCN, x: Tensor) -> Tensor:
    """Pad an LR batch once by the model's receptive-field radius (edge replication)."""
    r = model.radius
    return F.pad(x, (r, r, r, r), mode="replicate") if r else x


@torch.no_grad()
def upscale(model: ESPCN, x: Tensor) -> Tensor:
    """Whole-image inference, clamped to the valid [0, 1] range."""
    return model(x).clamp_(0.0, 1.0)
