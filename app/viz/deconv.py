"""The served sub-pixel layer as the deconvolution it equals (Shi et al. 2016): the weights and the proof.

An LR convolution with kernel (o·r², i, k, k) followed by the periodic shuffle equals a
transposed convolution with kernel (o, i, k·r, k·r) and stride r. ``/kernels/deconv``
serves both sets of weights and :func:`verify`'s float64 check that they agree.
"""

from __future__ import annotations

from typing import Any

import torch

from app.core.espcn import ESPCN
from app.core.subpixel import Deconv, SubPixelConv


def verify(layer: SubPixelConv, deconv: Deconv, seed: int = 0) -> float:
    """Max |conv + shuffle − deconv (+ periodic bias)| on a random input, in float64."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, layer.in_channels, 11, 13, generator=g, dtype=torch.float64)
    as_f64 = SubPixelConv(layer.weight.double(), layer.bias.double() if layer.bias is not None else None,
                          layer.padding, layer.scale)
    d64 = Deconv(deconv.weight.double(),
                 deconv.periodic_bias.double() if deconv.periodic_bias is not None else None,
                 deconv.stride, deconv.padding, deconv.output_padding)
    return float((as_f64(x) - d64(x)).abs().max())


def kernel_tensors(layer: SubPixelConv, deconv: Deconv) -> dict[str, torch.Tensor]:
    """The layer's and its deconvolution's weights, as the npz and safetensors downloads hold them."""
    out = {"conv.weight": layer.weight, "deconv.weight": deconv.weight}
    if layer.bias is not None and deconv.periodic_bias is not None:
        out["conv.bias"] = layer.bias
        out["deconv.periodic_bias"] = deconv.periodic_bias
    # clone: the periodic bias is a view of the conv bias, and safetensors refuses shared storage
    return {k: v.detach().float().contiguous().clone() for k, v in out.items()}


def kernels_document(model: ESPCN, name: str) -> dict[str, Any]:
    """What ``/kernels/deconv`` answers in JSON: the layer, the deconvolution it equals, and the check that it does."""
    layer, deconv = model.subpixel_layer(), model.last_layer_deconv()
    uniform = deconv.bias_is_uniform
    return {
        "model": name,
        "scale": model.scale,
        "conv": {
            "shape": list(layer.weight.shape),
            "padding": layer.padding,
            "weight": layer.weight.tolist(),
            "bias": None if layer.bias is None else layer.bias.tolist(),
            "note": "applied to the 32 LR feature maps, followed by torch.nn.functional.pixel_shuffle(·, scale)",
        },
        "deconv": {
            "layout": "torch.nn.ConvTranspose2d (in_channels, out_channels, kH, kW)",
            "shape": list(deconv.weight.shape),
            "stride": deconv.stride,
            "padding": deconv.padding,
            "output_padding": deconv.output_padding,
            "weight": deconv.weight.tolist(),
            "periodic_bias": None if deconv.periodic_bias is None else deconv.periodic_bias.tolist(),
            "periodic_bias_shape": None if deconv.periodic_bias is None else list(deconv.periodic_bias.shape),
            "bias_is_uniform": uniform,
            "bias": deconv.bias.tolist() if uniform and deconv.periodic_bias is not None else None,
            "note": "y = conv_transpose2d(x, weight, stride, padding, output_padding) + periodic_bias tiled "
            "over the HR grid (position (h, w) gets periodic_bias[:, h % r, w % r])",
        },
        "verification": {
            "max_abs_diff": verify(layer, deconv),
            "dtype": "float64",
            "input": "standard normal (2, 32, 11, 13), seed 0",
        },
    }
