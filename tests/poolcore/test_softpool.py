"""SoftPool against an independent float64 reference: each window cut out with ``Tensor.unfold`` (padding
as -inf, so it weighs e^-inf = 0), torch's own max pooling for the output size, ``torch.softmax`` for the
weights; adaptive bins from torch's formula (aten/src/ATen/native/AdaptivePooling.h) written out here."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import poolcore
from poolcore.nn import replace_pooling
from poolcore.softpool import SoftPool1d, SoftPool2d, SoftPool3d, soft_pool

_MAX_POOL: dict[int, Any] = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


def _softmax_average(windows: torch.Tensor) -> torch.Tensor:
    """Over the last dim: Σ softmax(a)·a, where -inf entries (padding) weigh 0."""
    weights = torch.softmax(windows, dim=-1)
    return torch.where(weights > 0, weights * windows, 0.0).sum(-1)


def reference_kernel(
    x: torch.Tensor, k: tuple[int, ...], s: tuple[int, ...], p: tuple[int, ...], ceil: bool
) -> torch.Tensor:
    n = len(k)
    t = x.double()
    out = _MAX_POOL[n](t, k, s, p, ceil_mode=ceil).shape[2:]  # torch's own output size
    pads: list[int] = []
    for d in reversed(range(n)):
        pads += [p[d], max(0, (out[d] - 1) * s[d] + k[d] - t.shape[2 + d] - p[d])]
    t = F.pad(t, pads, value=-math.inf)
    for d in range(n):
        t = t.unfold(2 + d, k[d], s[d])
    cut: tuple[Any, ...] = (..., *(slice(0, o) for o in out), *(slice(None),) * n)
    t = t[cut]
    return _softmax_average(t.flatten(2 + n))


def reference_adaptive(x: torch.Tensor, out: tuple[int, ...]) -> torch.Tensor:
    t = x.double()
    sizes = t.shape[2:]
    result = torch.empty(*t.shape[:2], *out, dtype=torch.float64)
    for index in itertools.product(*(range(o) for o in out)):
        where: tuple[Any, ...] = (
            ...,
            *(
                slice((i * size) // o, -(-((i + 1) * size) // o))
                for i, size, o in zip(index, sizes, out, strict=True)
            ),
        )
        region = t[where]
        at: tuple[Any, ...] = (..., *index)
        result[at] = _softmax_average(region.flatten(2))
    return result


def _x(
    shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float64, scale: float = 3.0
) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * scale


KERNEL_CASES = [
    # (spatial, kernel, stride, padding, ceil_mode)
    ((17,), (3,), (2,), (1,), False),
    ((16,), (4,), (3,), (2,), True),
    ((9, 11), (2, 2), (2, 2), (0, 0), False),
    ((9, 11), (3, 3), (2, 2), (1, 1), False),
    ((10, 7), (3, 2), (2, 2), (1, 0), True),
    ((8, 9), (3, 3), (1, 1), (1, 1), False),
    ((5, 6, 7), (2, 3, 2), (2, 2, 1), (1, 1, 0), False),
    ((5, 6, 7), (3, 3, 3), (2, 2, 2), (1, 0, 1), True),
]


@pytest.mark.parametrize(("spatial", "k", "s", "p", "ceil"), KERNEL_CASES)
def test_kernel_windows_match_the_unfold_reference(
    spatial: tuple[int, ...], k: tuple[int, ...], s: tuple[int, ...], p: tuple[int, ...], ceil: bool
) -> None:
    x = _x((2, 3, *spatial), seed=len(spatial) * 10 + k[0])
    y = soft_pool(x, k, s, p, ceil)
    torch.testing.assert_close(y, reference_kernel(x, k, s, p, ceil), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("spatial", "out"),
    [
        ((13,), (4,)),  # offsets path: windows outnumber the offsets in one
        ((40,), (3,)),  # window-by-window path: large bins
        ((9, 11), (4, 5)),
        ((16, 16), (2, 3)),
        ((7, 8, 9), (3, 2, 4)),
        ((6, 6, 6), (1, 2, 1)),
    ],
)
def test_adaptive_bins_match_the_reference(spatial: tuple[int, ...], out: tuple[int, ...]) -> None:
    x = _x((2, 3, *spatial), seed=sum(spatial))
    y = soft_pool(x, output_size=out)
    torch.testing.assert_close(y, reference_adaptive(x, out), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spatial", [(19,), (7, 9), (3, 4, 5)])
def test_global_is_the_softmax_average_of_each_plane(spatial: tuple[int, ...]) -> None:
    x = _x((2, 3, *spatial), seed=5)
    y = soft_pool(x, output_size=1, dims=len(spatial))
    expected = _softmax_average(x.flatten(2)).view(2, 3, *(1,) * len(spatial))
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)


def test_padding_is_excluded_not_read_as_zeros() -> None:
    """An all-negative input: a padded zero would weigh the most and pull every border output up."""
    x = torch.full((1, 1, 6, 6), -5.0, dtype=torch.float64)
    assert torch.equal(soft_pool(x, 3, 1, 1), torch.full((1, 1, 6, 6), -5.0, dtype=torch.float64))


def test_a_closed_form_window() -> None:
    """[0, ln 3]: weights 1/4 and 3/4, so y = 3/4·ln 3."""
    x = torch.tensor([[[0.0, math.log(3.0)]]], dtype=torch.float64)
    assert soft_pool(x, 2, dims=1).item() == pytest.approx(0.75 * math.log(3.0), rel=1e-15)


@pytest.mark.parametrize(
    "window",
    [
        {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True},
        {"kernel_size": 2},
        {"output_size": (3, 2)},
        {"output_size": (1, 2)},  # window-by-window path
        {"output_size": 1},
    ],
)
def test_gradcheck_float64(window: dict[str, Any]) -> None:
    x = _x((1, 2, 5, 6), seed=11, scale=1.0).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: soft_pool(t, **window), (x,))


def test_gradcheck_1d_and_3d() -> None:
    x1 = _x((1, 2, 7), seed=1, scale=1.0).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: soft_pool(t, 3, 2, 1, dims=1), (x1,))
    x3 = _x((1, 1, 3, 4, 3), seed=2, scale=1.0).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: soft_pool(t, 2, 1), (x3,))


@pytest.mark.parametrize(
    "window", [{"kernel_size": 3, "stride": 1, "padding": 1}, {"output_size": (2, 3)}, {"output_size": 1}]
)
def test_inputs_up_to_1e4_in_float32_are_finite_and_correct(window: dict[str, Any]) -> None:
    """exp(1e4) overflows float32 (and float64); so would a window 1e4 below its plane's maximum
    underflow to 0/0 if the shift were per plane."""
    x = (torch.rand(2, 3, 8, 9, generator=torch.Generator().manual_seed(3)) * 2 - 1) * 1e4
    x[0, 0] = -1e4 + torch.rand(8, 9, generator=torch.Generator().manual_seed(4))  # far below the rest
    x[0, 1, 0, 0] = 1e4
    y = soft_pool(x, **window)
    assert y.dtype == torch.float32 and bool(torch.isfinite(y).all())
    expected = soft_pool(x.double(), **window)
    reference = (
        reference_kernel(x, (3, 3), (1, 1), (1, 1), False)
        if "kernel_size" in window
        else reference_adaptive(x, y.shape[2:])
    )
    torch.testing.assert_close(expected, reference, rtol=1e-12, atol=1e-9)
    # float32's own rounding of values up to 1e4: a few ulps of 1e4 (1e-3) at most
    torch.testing.assert_close(y.double(), reference, rtol=1e-5, atol=2e-3)


def test_an_infinite_input_wins_its_window() -> None:
    """inf − inf is never formed: the window holding +inf gives +inf; the next, (2 + 3e) / (1 + e)."""
    y = soft_pool(torch.tensor([[[1.0, math.inf, 2.0, 3.0]]], dtype=torch.float64), 2, dims=1)
    assert y[0, 0, 0].item() == math.inf
    assert y[0, 0, 1].item() == pytest.approx((2 + 3 * math.e) / (1 + math.e), rel=1e-14)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_weighted_in_float32(dtype: torch.dtype) -> None:
    x = _x((1, 2, 8, 8), seed=9, dtype=torch.float32)
    y = soft_pool(x.to(dtype), 2)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), soft_pool(x.to(dtype).float(), 2), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize(
    ("module", "shape"), [(SoftPool1d, (2, 3, 12)), (SoftPool2d, (2, 3, 8, 8)), (SoftPool3d, (1, 2, 4, 6, 6))]
)
def test_modules_equal_the_functional(module: type[nn.Module], shape: tuple[int, ...]) -> None:
    x = _x(shape, seed=4)
    m = module(3, 2, 1, True)
    torch.testing.assert_close(m(x), soft_pool(x, 3, 2, 1, True, dims=len(shape) - 2), rtol=0, atol=0)
    assert "kernel_size=3, stride=2, padding=1, ceil_mode=True" in repr(m)
    adaptive = module(output_size=2)
    assert adaptive(x).shape[2:] == (2,) * (len(shape) - 2)
    assert "output_size=2" in repr(adaptive)


def test_unbatched_and_non_contiguous_inputs() -> None:
    x = _x((3, 8, 10), seed=6)
    torch.testing.assert_close(soft_pool(x, (2, 2)), soft_pool(x.unsqueeze(0), 2)[0], rtol=0, atol=0)
    t = x.transpose(-1, -2)
    torch.testing.assert_close(soft_pool(t, (2, 2)), soft_pool(t.contiguous(), (2, 2)), rtol=0, atol=0)


def test_bad_input_is_a_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match="softpool pooling needs a floating-point tensor"):
        soft_pool(torch.ones(1, 1, 4, 4, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="padding must be at most half of kernel_size"):
        soft_pool(torch.ones(1, 1, 4, 4), 2, padding=2)
    with pytest.raises(ValueError, match="give exactly one of kernel_size"):
        SoftPool2d()


def test_the_registry_and_packages_offer_it() -> None:
    spec = poolcore.get_spec("softpool")
    assert spec.functional is soft_pool and spec.modules == {1: SoftPool1d, 2: SoftPool2d, 3: SoftPool3d}
    # Re-exported from the registry entry, so a type checker does not see the names.
    assert vars(poolcore.nn)["SoftPool2d"] is SoftPool2d and "SoftPool3d" in poolcore.nn.__all__
    assert vars(poolcore)["soft_pool"] is soft_pool and "soft_pool" in poolcore.__all__
    x = _x((1, 2, 6, 6), seed=8)
    torch.testing.assert_close(poolcore.pool(x, "softpool", kernel_size=2), soft_pool(x, 2), rtol=0, atol=0)
    torch.testing.assert_close(poolcore.Pool("softpool", kernel_size=2)(x), soft_pool(x, 2), rtol=0, atol=0)


def test_replace_pooling_swaps_max_pooling_for_softpool() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(3, 2, 1, ceil_mode=True), nn.ReLU())
    x = _x((1, 1, 11, 11), seed=10, dtype=torch.float32)
    shape = model(x).shape
    replace_pooling(model, {nn.MaxPool2d: "softpool"})
    assert isinstance(model[1], SoftPool2d)
    assert model(x).shape == shape
    torch.testing.assert_close(model[1](model[0](x)), soft_pool(model[0](x), 3, 2, 1, True), rtol=0, atol=0)


def test_dilated_windows_weigh_their_own_positions() -> None:
    """A dilated window (registry-wide ``dilation``) is the softmax-weighted average of the positions it
    spans d apart: against the float64 formula over F.unfold's dilated columns."""
    import torch.nn.functional as F

    from poolcore.softpool import soft_pool

    x = torch.randn(2, 3, 11, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 4
    y = soft_pool(x, 3, stride=2, dilation=2)
    cols = F.unfold(x, 3, dilation=2, stride=2).reshape(2, 3, 9, -1)
    weights = (cols - cols.amax(dim=2, keepdim=True)).exp()
    expected = ((weights * cols).sum(2) / weights.sum(2)).reshape(y.shape)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
