"""Three views of one operator: sub-pixel conv + shuffle, deconvolution, zero-insertion conv.

Shi et al., "Is the deconvolution layer the same as a convolutional layer?":
a convolution in LR space with weight ``(o·r^d, i, k, …)`` followed by periodic
shuffling equals a transposed convolution ("deconvolution") with stride ``r``
and weight ``(i, o, k·r, …)`` (``torch.nn.ConvTranspose{1,2}d`` layout), which
in turn equals inserting ``r − 1`` zeros between LR samples and running a
stride-1 convolution with the spatially flipped kernel ("stride 1/r").

Index bookkeeping (per spatial axis, cross-correlation as in PyTorch): LR
output ``h`` with sub-pixel offset ``a`` is HR position ``Y = h·r + a``. The
conv reads ``x[h + u − p]`` with tap ``u``; the deconv reads ``x[h']`` with tap
``s`` where ``h'·r + s − P = Y``. Matching both gives

    s = (p − u)·r + a + P.

For conv → deconv we take ``P = (k − 1 − p)·r`` so that ``s = (k − 1 − u)·r + a``
covers ``0 … k·r − 1`` exactly once: the taps are flipped and interleaved, and
the output is exactly ``r·H_lr`` long (``output_padding = 0``). For
deconv → conv, any ``K`` and ``P`` are accepted: the taps that fall outside
``[0, K)`` are zero, which is the note's remark that the sub-pixel filter may
have any size.

A conv layer has ``o·r^d`` biases but a deconv only ``o``; the exact
equivalent is the deconv plus a periodic bias map of shape ``(o, r, …)``,
which folds into an ordinary deconv bias only when it is uniform.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from app.core.shuffle import periodic_shuffle

_CONV = {1: F.conv1d, 2: F.conv2d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d}


def _spatial_dims(weight: Tensor) -> int:
    d = weight.ndim - 2
    if d not in (1, 2):
        raise ValueError(f"expected a 1-D or 2-D convolution weight, got shape {tuple(weight.shape)}")
    return d


def _pad_all(x: Tensor, before: int, after: int, d: int) -> Tensor:
    """Zero-pad (negative: crop) every spatial axis of ``x``."""
    if before == 0 and after == 0:
        return x
    return F.pad(x, (before, after) * d)


def tile_periodic_bias(bias_map: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Repeat an ``(o, r, …)`` periodic bias over an HR grid of spatial ``shape``."""
    r = bias_map.shape[1]
    reps = [1] + [math.ceil(n / r) for n in shape]
    tiled = bias_map.repeat(*reps)
    index = tuple(slice(0, n) for n in shape)
    return tiled[(slice(None), *index)]


@dataclass(frozen=True)
class SubPixelConv:
    """An LR-space convolution followed by periodic shuffling (ESPCN's last layer)."""

    weight: Tensor  # (o·r^d, i, k, …)
    bias: Tensor | None  # (o·r^d,)
    padding: int
    scale: int
    padding_after: int | None = None  # trailing padding per axis when it differs from ``padding``
    trim: int = 0  # HR samples dropped at the end of each axis after shuffling

    @property
    def symmetric(self) -> bool:
        return self.padding_after in (None, self.padding) and self.trim == 0

    def __post_init__(self) -> None:
        d = _spatial_dims(self.weight)
        if self.weight.shape[0] % self.scale**d:
            raise ValueError(f"{self.weight.shape[0]} output channels not divisible by r^{d} = {self.scale**d}")
        ks = set(self.weight.shape[2:])
        if len(ks) != 1:
            raise ValueError(f"kernels must be square, got {tuple(self.weight.shape[2:])}")

    @property
    def ndim(self) -> int:
        return self.weight.ndim - 2

    @property
    def out_channels(self) -> int:
        """HR channels ``o`` (after shuffling)."""
        return self.weight.shape[0] // self.scale**self.ndim

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1]

    @property
    def kernel_size(self) -> int:
        return self.weight.shape[2]

    def lr_output(self, x: Tensor) -> Tensor:
        """The ``o·r^d`` LR feature maps before shuffling (negative padding crops)."""
        after = self.padding if self.padding_after is None else self.padding_after
        x = _pad_all(x, self.padding, after, self.ndim)
        return _CONV[self.ndim](x, self.weight, self.bias)

    def __call__(self, x: Tensor) -> Tensor:
        y = periodic_shuffle(self.lr_output(x), self.scale)
        if self.trim:
            y = y[(..., *(slice(0, n - self.trim) for n in y.shape[2:]))]
        return y


@dataclass(frozen=True)
class Deconv:
    """A transposed convolution (stride ``r``) plus an optional periodic bias map."""

    weight: Tensor  # (i, o, K, …) — torch.nn.ConvTranspose{1,2}d layout
    periodic_bias: Tensor | None  # (o, r, …)
    stride: int
    padding: int
    output_padding: int = 0

    @property
    def ndim(self) -> int:
        return _spatial_dims(self.weight)

    @property
    def bias_is_uniform(self) -> bool:
        """True when the periodic bias folds into one bias per output channel."""
        if self.periodic_bias is None:
            return True
        flat = self.periodic_bias.reshape(self.periodic_bias.shape[0], -1)
        return bool((flat == flat[:, :1]).all())

    @property
    def bias(self) -> Tensor | None:
        """The ordinary ConvTranspose bias ``(o,)``; only defined when the map is uniform."""
        if self.periodic_bias is None:
            return None
        if not self.bias_is_uniform:
            raise ValueError("periodic bias is not uniform: it does not fold into a ConvTranspose bias")
        return self.periodic_bias.reshape(self.periodic_bias.shape[0], -1)[:, 0]

    def _add_bias(self, y: Tensor) -> Tensor:
        if self.periodic_bias is None:
            return y
        return y + tile_periodic_bias(self.periodic_bias.to(y.dtype), tuple(y.shape[2:]))

    def __call__(self, x: Tensor) -> Tensor:
        """Run as ``torch.nn.functional.conv_transpose{1,2}d`` (+ periodic bias)."""
        y = _CONV_T[self.ndim](
            x, self.weight, None, stride=self.stride, padding=self.padding, output_padding=self.output_padding
        )
        return self._add_bias(y)

    def zero_insertion(self, x: Tensor) -> Tensor:
        """The third view: insert ``r − 1`` zeros between samples, then a stride-1 conv.

        The conv kernel is the deconv kernel flipped in space with in/out swapped;
        the upsampled signal is padded by ``K − 1 − P`` before and
        ``K − 1 − P + output_padding`` after (negative values crop).
        """
        d, r = self.ndim, self.stride
        n, c = x.shape[:2]
        up_shape = tuple((s - 1) * r + 1 for s in x.shape[2:])
        up = x.new_zeros((n, c, *up_shape))
        up[(slice(None), slice(None), *(slice(None, None, r),) * d)] = x
        k = self.weight.shape[2]
        before = k - 1 - self.padding
        up = _pad_all(up, before, before + self.output_padding, d)
        kernel = self.weight.transpose(0, 1).flip(list(range(2, 2 + d)))
        return self._add_bias(_CONV[d](up, kernel))


def conv_to_deconv(layer: SubPixelConv) -> Deconv:
    """The exact transposed-convolution equivalent of a sub-pixel conv layer.

    Weight ``D[j, c, (k−1−u)·r + a, …] = W[c·r^d + a·r^(d−1) + …, j, u, …]``:
    every LR kernel is flipped and the ``r^d`` kernels of one HR channel are
    interleaved into one ``k·r`` kernel. Requires ``padding ≤ k − 1`` so that
    the deconv padding ``(k − 1 − p)·r`` is non-negative.
    """
    w, r, d, k, p = layer.weight, layer.scale, layer.ndim, layer.kernel_size, layer.padding
    if not layer.symmetric:
        raise ValueError("only symmetric, untrimmed sub-pixel layers map to a ConvTranspose")
    if not 0 <= p <= k - 1:
        raise ValueError(f"conv padding must be in [0, k-1] = [0, {k - 1}], got {p}")
    o, i = layer.out_channels, layer.in_channels
    # (o, a1, …, ad, i, u1, …, ud), flipped in u
    grouped = w.reshape(o, *([r] * d), i, *([k] * d)).flip(list(range(d + 2, 2 * d + 2)))
    # → (i, o, u1, a1, …, ud, ad), so that (u, a) flatten to u·r + a
    order = [d + 1, 0]
    for axis in range(d):
        order += [d + 2 + axis, 1 + axis]
    weight = grouped.permute(order).reshape(i, o, *([k * r] * d))
    bias_map = None if layer.bias is None else layer.bias.reshape(o, *([r] * d))
    return Deconv(weight=weight, periodic_bias=bias_map, stride=r, padding=(k - 1 - p) * r, output_padding=0)


def deconv_to_conv(deconv: Deconv) -> SubPixelConv:
    """The sub-pixel conv equivalent of any deconvolution (kernel ``K``, stride ``r``, padding ``P``).

    Each LR tap ``u`` of sub-pixel phase ``a`` reads deconv tap
    ``s = (p − u)·r + a + P``; taps with ``s`` outside ``[0, K)`` are zero.
    The conv padding ``p`` may come out negative (it then crops). The deconv
    output is ``(H − 1)·r − 2P + K + output_padding`` long, which need not be a
    multiple of ``r``: the trailing padding and ``trim`` make the conv output
    exactly as long. For kernels that came from :func:`conv_to_deconv`,
    ``deconv_to_conv(conv_to_deconv(layer)) == layer`` exactly.
    """
    dw, r, big_p, d = deconv.weight, deconv.stride, deconv.padding, deconv.ndim
    big_k = dw.shape[2]
    i, o = dw.shape[:2]
    # range of LR offsets δ = h − h' that touch the kernel, over all phases a
    d_hi = (big_k - 1 - big_p) // r
    d_lo = min(-((a + big_p) // r) for a in range(r))
    k = d_hi - d_lo + 1
    p = d_hi
    taps = torch.tensor([[(p - u) * r + a + big_p for a in range(r)] for u in range(k)])  # (k, r)
    lo = max(0, -int(taps.min()))
    hi = max(0, int(taps.max()) - big_k + 1)
    padded = _pad_all(dw, lo, hi, d)
    index = (taps + lo).reshape(-1).to(dw.device)
    for axis in range(d):
        padded = padded.index_select(2 + 2 * axis, index).unflatten(2 + 2 * axis, (k, r))
    # padded: (i, o, u1, a1, …, ud, ad) → (o, a1, …, ad, i, u1, …, ud)
    order = [1] + [3 + 2 * axis for axis in range(d)] + [0] + [2 + 2 * axis for axis in range(d)]
    weight = padded.permute(order).reshape(o * r**d, i, *([k] * d))
    bias = None
    if deconv.periodic_bias is not None:
        bias = deconv.periodic_bias.reshape(-1)
    # deconv length − r·H is independent of H: cover it with trailing padding, trim the excess
    extra = big_k + deconv.output_padding - 2 * big_p - r
    extra_lr = -(-extra // r)
    return SubPixelConv(
        weight=weight.contiguous(),
        bias=bias,
        padding=p,
        scale=r,
        padding_after=extra_lr - p + k - 1,
        trim=extra_lr * r - extra,
    )


def deconv_from_module(module: torch.nn.ConvTranspose1d | torch.nn.ConvTranspose2d) -> Deconv:
    """Wrap a ``torch.nn.ConvTranspose{1,2}d`` (square kernel, equal strides) as a :class:`Deconv`."""
    stride, padding, out_pad = module.stride[0], module.padding[0], module.output_padding[0]
    if len(set(module.stride)) != 1 or len(set(module.padding)) != 1 or module.groups != 1:
        raise ValueError("only equal strides/paddings per axis and groups=1 are supported")
    d = module.weight.ndim - 2
    bias_map = None
    if module.bias is not None:
        bias_map = module.bias.detach().reshape(-1, *([1] * d)).expand(-1, *([stride] * d)).clone()
    return Deconv(module.weight.detach(), bias_map, stride, padding, out_pad)


def split_1d_filter(f: Tensor, scale: int) -> list[Tensor]:
    """The note's 1-D example: the ``r`` LR filters hidden in one length-``k·r`` filter.

    For a true convolution of ``f`` with the zero-upsampled ``x``
    (``x_up[q·r] = x[q]``), output sample ``t·r + b`` only meets taps
    ``m ≡ b (mod r)``, so ``y[t·r + b] = (f[b::r] ∗ x)[t]``: returned in phase
    order ``b = 0 … r − 1``. With r = 2 and f = (1, 2, 3, 4) this is the note's
    f₂ = (1, 3) (even outputs) and f₁ = (2, 4) (odd outputs); interleaving
    ``y₂ = f₂ ∗ x`` and ``y₁ = f₁ ∗ x`` gives ``y``.
    """
    if f.ndim != 1 or f.numel() % scale:
        raise ValueError("expected a 1-D filter whose length is a multiple of the scale")
    return [f[b::scale] for b in range(scale)]


def interleave_1d(phases: list[Tensor]) -> Tensor:
    """``y[t·r + b] = phases[b][t]`` for equal-length 1-D phase signals."""
    return torch.stack(phases, dim=-1).reshape(*phases[0].shape[:-1], -1)
