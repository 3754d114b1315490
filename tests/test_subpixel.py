"""The three views of the sub-pixel convolution agree, in 1-D and 2-D, in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from app.core.shuffle import periodic_shuffle, periodic_unshuffle
from app.core.subpixel import (
    Deconv,
    SubPixelConv,
    conv_to_deconv,
    deconv_from_module,
    deconv_to_conv,
    interleave_1d,
    split_1d_filter,
)

TOL = 1e-9


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@st.composite
def subpixel_layers(draw: st.DrawFn) -> tuple[SubPixelConv, torch.Tensor]:
    d = draw(st.sampled_from([1, 2]))
    r = draw(st.integers(1, 4))
    o = draw(st.integers(1, 3))
    i = draw(st.integers(1, 3))
    k = draw(st.integers(1, 5))
    p = draw(st.integers(0, k - 1))
    sizes = [draw(st.integers(max(1, k - 2 * p), 9)) for _ in range(d)]
    with_bias = draw(st.booleans())
    g = _gen(draw(st.integers(0, 2**31)))
    weight = torch.randn(o * r**d, i, *([k] * d), generator=g, dtype=torch.float64)
    bias = torch.randn(o * r**d, generator=g, dtype=torch.float64) if with_bias else None
    x = torch.randn(2, i, *sizes, generator=g, dtype=torch.float64)
    return SubPixelConv(weight, bias, p, r), x


@settings(max_examples=150, deadline=None)
@given(subpixel_layers())
def test_three_views_agree(case: tuple[SubPixelConv, torch.Tensor]) -> None:
    layer, x = case
    deconv = conv_to_deconv(layer)
    y_conv = layer(x)
    y_deconv = deconv(x)
    y_zero = deconv.zero_insertion(x)
    h_lr = [n + 2 * layer.padding - layer.kernel_size + 1 for n in x.shape[2:]]
    assert tuple(y_conv.shape[2:]) == tuple(n * layer.scale for n in h_lr)
    assert y_deconv.shape == y_conv.shape == y_zero.shape
    assert (y_conv - y_deconv).abs().max() <= TOL
    assert (y_conv - y_zero).abs().max() <= TOL
    # the layout is torch.nn.ConvTranspose's: (i, o, k·r, …)
    r, k = layer.scale, layer.kernel_size
    assert tuple(deconv.weight.shape) == (layer.in_channels, layer.out_channels, *([k * r] * layer.ndim))
    assert deconv.output_padding == 0


@settings(max_examples=150, deadline=None)
@given(subpixel_layers())
def test_conv_deconv_conv_is_identity(case: tuple[SubPixelConv, torch.Tensor]) -> None:
    layer, _ = case
    back = deconv_to_conv(conv_to_deconv(layer))
    assert back.padding == layer.padding and back.scale == layer.scale and back.symmetric
    assert torch.equal(back.weight, layer.weight)
    assert (back.bias is None) == (layer.bias is None)
    if layer.bias is not None:
        assert torch.equal(back.bias, layer.bias)


@st.composite
def deconvs(draw: st.DrawFn) -> tuple[Deconv, torch.Tensor]:
    d = draw(st.sampled_from([1, 2]))
    r = draw(st.integers(1, 4))
    big_k = draw(st.integers(1, 9))
    big_p = draw(st.integers(0, big_k - 1))
    out_pad = draw(st.integers(0, r - 1))
    g = _gen(draw(st.integers(0, 2**31)))
    weight = torch.randn(draw(st.integers(1, 3)), draw(st.integers(1, 3)), *([big_k] * d), generator=g,
                         dtype=torch.float64)
    bias = torch.randn(weight.shape[1], *([r] * d), generator=g, dtype=torch.float64) if draw(st.booleans()) else None
    n = draw(st.integers(3, 8))
    assume((n - 1) * r - 2 * big_p + big_k + out_pad >= 1)  # a non-empty deconv output
    x = torch.randn(1, weight.shape[0], *([n] * d), generator=g, dtype=torch.float64)
    return Deconv(weight, bias, r, big_p, out_pad), x


@settings(max_examples=200, deadline=None)
@given(deconvs())
def test_any_deconv_has_a_subpixel_conv(case: tuple[Deconv, torch.Tensor]) -> None:
    """Any kernel size K (not only multiples of r), stride r, padding P, output_padding."""
    deconv, x = case
    y_deconv = deconv(x)
    assert (deconv.zero_insertion(x) - y_deconv).abs().max() <= TOL
    layer = deconv_to_conv(deconv)
    y_conv = layer(x)
    assert y_conv.shape == y_deconv.shape
    assert (y_conv - y_deconv).abs().max() <= TOL


def test_periodic_shuffle_order_matches_pixel_shuffle_contract() -> None:
    r, c = 3, 2
    x = torch.arange(c * r * r * 4 * 5, dtype=torch.float64).reshape(1, c * r * r, 4, 5)
    y = periodic_shuffle(x, r)
    for ch in range(c):
        for a in range(r):
            for b in range(r):
                assert torch.equal(y[0, ch, a::r, b::r], x[0, ch * r * r + a * r + b])
    assert torch.equal(periodic_unshuffle(y, r), x)
    # 1-D: channel c·r + a → sample l·r + a
    x1 = torch.arange(c * r * 7, dtype=torch.float64).reshape(1, c * r, 7)
    y1 = periodic_shuffle(x1, r)
    for ch in range(c):
        for a in range(r):
            assert torch.equal(y1[0, ch, a::r], x1[0, ch * r + a])
    assert torch.equal(periodic_unshuffle(y1, r), x1)


def test_note_1d_example_f_1234_splits_into_24_and_13() -> None:
    f = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    even, odd = split_1d_filter(f, 2)
    assert even.tolist() == [1.0, 3.0]  # the note's f2
    assert odd.tolist() == [2.0, 4.0]  # the note's f1
    x = torch.tensor([0.5, -1.0, 2.0, 3.0, -0.25], dtype=torch.float64)

    def true_conv(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # full convolution, like numpy.convolve
        return F.conv1d(F.pad(b.view(1, 1, -1), (a.numel() - 1,) * 2), a.flip(0).view(1, 1, -1)).view(-1)

    x_up = torch.zeros(2 * x.numel() - 1, dtype=torch.float64)
    x_up[::2] = x
    y = true_conv(f, x_up)
    y2, y1 = true_conv(even, x), true_conv(odd, x)  # y2 = f2 ∗ x, y1 = f1 ∗ x
    assert torch.allclose(interleave_1d([y2, y1])[: y.numel()], y, atol=TOL, rtol=0)
    # the same split, seen as the deconvolution ⇄ conv conversion
    deconv = Deconv(f.view(1, 1, 4), None, stride=2, padding=0)
    assert torch.allclose(deconv(x.view(1, 1, -1)).view(-1), y, atol=TOL, rtol=0)
    layer = deconv_to_conv(deconv)
    assert layer.weight.shape == (2, 1, 2)
    # cross-correlation kernels are the phase filters flipped
    assert layer.weight[0, 0].tolist() == [3.0, 1.0] and layer.weight[1, 0].tolist() == [4.0, 2.0]


def test_note_2d_example_4x4_kernel_breaks_into_four_2x2() -> None:
    """A (1, 1, 4, 4) deconv kernel with r = 2 is a (4, 1, 2, 2) sub-pixel conv kernel."""
    kernel = torch.arange(1.0, 17.0, dtype=torch.float64).view(1, 1, 4, 4)
    deconv = Deconv(kernel, None, stride=2, padding=2)
    layer = deconv_to_conv(deconv)
    assert tuple(layer.weight.shape) == (4, 1, 2, 2) and layer.padding == 0 and layer.symmetric
    # each LR kernel is the stride-2 sub-sampling of the flipped 4×4 kernel
    flipped = kernel[0, 0].flip(0, 1)
    for a in range(2):
        for b in range(2):
            assert torch.equal(layer.weight[a * 2 + b, 0], flipped[1 - a :: 2, 1 - b :: 2].contiguous().view(2, 2))
    assert torch.equal(conv_to_deconv(layer).weight, kernel)
    x = torch.randn(1, 1, 6, 7, dtype=torch.float64, generator=_gen(0))
    assert (layer(x) - deconv(x)).abs().max() <= TOL


def test_gradients_agree_across_views() -> None:
    g = _gen(1)
    r, k = 3, 3
    w = torch.randn(2 * r * r, 4, k, k, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(2 * r * r, dtype=torch.float64, generator=g, requires_grad=True)
    x = torch.randn(2, 4, 6, 5, dtype=torch.float64, generator=g, requires_grad=True)
    target = torch.randn(2, 2, 18, 15, dtype=torch.float64, generator=g)

    layer = SubPixelConv(w, b, 1, r)
    grads_conv = torch.autograd.grad(((layer(x) - target) ** 2).sum(), (x, w))

    deconv = conv_to_deconv(SubPixelConv(w.detach(), b.detach(), 1, r))
    dw = deconv.weight.clone().requires_grad_(True)
    for view in ("deconv", "zero_insertion"):
        dv = Deconv(dw, deconv.periodic_bias, deconv.stride, deconv.padding)
        out = dv(x) if view == "deconv" else dv.zero_insertion(x)
        gx, gdw = torch.autograd.grad(((out - target) ** 2).sum(), (x, dw))
        assert (gx - grads_conv[0]).abs().max() <= TOL
        # the weight gradient is the same tensor, laid out like the weights
        as_conv = deconv_to_conv(Deconv(gdw, None, r, deconv.padding)).weight
        assert (as_conv - grads_conv[1]).abs().max() <= TOL


def test_transposed_conv_is_the_backward_of_a_strided_conv() -> None:
    g = _gen(2)
    r = 3
    weight = torch.randn(4, 2, 9, 9, dtype=torch.float64, generator=g)  # (i, o, K, K) for the deconv
    y = torch.randn(1, 2, 20, 20, dtype=torch.float64, generator=g, requires_grad=True)
    z = F.conv2d(y, weight, stride=r, padding=3)  # forward: HR → LR, weight (out=i, in=o, K, K)
    seed = torch.randn_like(z)
    (grad_y,) = torch.autograd.grad(z, y, seed)
    deconv = Deconv(weight, None, stride=r, padding=3, output_padding=(20 + 6 - 9) % r)
    assert (deconv(seed) - grad_y).abs().max() <= TOL


def test_periodic_bias_uniform_folds_into_convtranspose_bias() -> None:
    g = _gen(3)
    module = torch.nn.ConvTranspose2d(3, 2, 6, stride=2, padding=2).double()
    deconv = deconv_from_module(module)
    assert deconv.bias_is_uniform
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64, generator=g)
    assert (deconv(x) - module(x)).abs().max() <= TOL
    assert torch.equal(deconv.bias, module.bias.detach())
    layer = SubPixelConv(torch.randn(8, 3, 3, 3, dtype=torch.float64, generator=g),
                         torch.randn(8, dtype=torch.float64, generator=g), 1, 2)
    converted = conv_to_deconv(layer)
    assert not converted.bias_is_uniform
    assert converted.periodic_bias.shape == (2, 2, 2)
    with pytest.raises(ValueError, match="not uniform"):
        _ = converted.bias


def test_invalid_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        periodic_shuffle(torch.zeros(1, 5, 2, 2), 2)
    with pytest.raises(ValueError):
        SubPixelConv(torch.zeros(5, 1, 3, 3), None, 1, 2)
    with pytest.raises(ValueError):
        conv_to_deconv(SubPixelConv(torch.zeros(4, 1, 3, 3), None, 3, 2))
