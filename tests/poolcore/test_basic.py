"""avg and max pooling: every window form and rank against torch's own ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from poolcore import avg_pool, max_pool, pool
from tests.conftest import tolerance

TORCH_AVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
TORCH_MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
TORCH_ADAPTIVE_AVG = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}
TORCH_ADAPTIVE_MAX = {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d}

KERNEL_CASES = [
    # dims, shape, kernel, stride, padding, ceil_mode
    (1, (2, 3, 11), 3, 2, 1, False),
    (1, (3, 10), 4, 3, 2, True),
    (2, (2, 3, 9, 10), 3, 2, 1, True),
    (2, (3, 7, 7), (2, 3), (2, 1), (1, 0), False),
    (2, (1, 2, 1, 3), (1, 2), None, 0, True),
    (3, (2, 2, 5, 6, 7), 3, 2, 1, True),
    (3, (2, 5, 6, 4), (2, 3, 2), (1, 2, 2), 0, False),
]


class TestAvgMax:
    @pytest.mark.parametrize("dims, shape, k, s, p, ceil", KERNEL_CASES)
    @pytest.mark.parametrize("count_include_pad", [True, False])
    def test_kernel_matches_torch(self, dims, shape, k, s, p, ceil, count_include_pad, device) -> None:
        torch.manual_seed(0)
        x = torch.randn(*shape, dtype=torch.float64, device=device)
        expected_avg = TORCH_AVG[dims](x, k, s, p, ceil, count_include_pad)
        got_avg = avg_pool(x, k, s, p, ceil, count_include_pad, dims=dims)
        torch.testing.assert_close(got_avg, expected_avg)
        expected_max = TORCH_MAX[dims](x, k, s, p, 1, ceil)
        torch.testing.assert_close(max_pool(x, k, s, p, ceil, dims=dims), expected_max)

    @pytest.mark.parametrize(
        "shape, out, dims, expected",
        [
            ((1, 64, 8), 5, 1, (1, 64, 5)),  # the seed's nn.AdaptiveAvgPool1d(5)
            ((1, 64, 8), (5,), None, (1, 64, 5)),  # a 1-tuple says 1d
            ((1, 64, 8, 9), (5, 7), None, (1, 64, 5, 7)),  # nn.AdaptiveAvgPool2d((5, 7))
            ((1, 64, 10, 9), 7, None, (1, 64, 7, 7)),  # nn.AdaptiveAvgPool2d(7)
            ((1, 64, 10, 9), (None, 7), None, (1, 64, 10, 7)),  # None keeps that input size
            ((2, 4, 5, 6, 7), (2, None, 3), None, (2, 4, 2, 6, 3)),
            ((4, 6, 7), (3, 5), None, (4, 3, 5)),  # unbatched 2d
        ],
    )
    def test_adaptive_matches_torch_with_seed_shapes(self, shape, out, dims, expected, device) -> None:
        torch.manual_seed(1)
        x = torch.randn(*shape, device=device)
        y = avg_pool(x, output_size=out, dims=dims)
        dims = dims or (len(out) if isinstance(out, tuple) else 2)
        assert tuple(y.shape) == expected
        torch.testing.assert_close(y, TORCH_ADAPTIVE_AVG[dims](x, out))
        torch.testing.assert_close(max_pool(x, output_size=out, dims=dims), TORCH_ADAPTIVE_MAX[dims](x, out))

    @pytest.mark.parametrize(
        "shape, dims", [((2, 3, 9), 1), ((2, 3, 5, 6), 2), ((3, 5, 6), 2), ((5, 6), 2), ((2, 3, 4, 5, 6), 3)]
    )
    def test_global_equals_mean_and_amax(self, shape, dims) -> None:
        x = torch.randn(*shape)
        axes = tuple(range(-dims, 0))
        torch.testing.assert_close(pool(x, "global_avg", dims=dims), x.mean(axes, keepdim=True))
        torch.testing.assert_close(pool(x, "global_max", dims=dims), x.amax(axes, keepdim=True))

    def test_non_contiguous_input(self) -> None:
        x = torch.randn(2, 3, 12, 10).transpose(-1, -2)
        assert not x.is_contiguous()
        torch.testing.assert_close(avg_pool(x, 3, 2, 1), F.avg_pool2d(x.contiguous(), 3, 2, 1))
        expected = F.adaptive_max_pool2d(x.contiguous(), (4, 5))
        torch.testing.assert_close(max_pool(x, output_size=(4, 5)), expected)

    def test_dtypes(self, any_dtype, device) -> None:
        x64 = torch.randn(2, 3, 9, 9, dtype=torch.float64, device=device)
        x = x64.to(any_dtype)
        y = avg_pool(x, 3, 2, 1)
        assert y.dtype == any_dtype and y.device == x.device
        torch.testing.assert_close(y.double(), F.avg_pool2d(x.double(), 3, 2, 1), **tolerance(any_dtype))
        torch.testing.assert_close(max_pool(x, 3, 2).double(), F.max_pool2d(x.double(), 3, 2))

    def test_integer_input_raises(self) -> None:
        with pytest.raises(ValueError, match="avg pooling needs a floating-point tensor"):
            avg_pool(torch.zeros(1, 4, 4, dtype=torch.int32), 2)
        with pytest.raises(ValueError, match="max pooling needs a floating-point tensor"):
            max_pool(torch.zeros(1, 4, 4, dtype=torch.uint8), 2)

    def test_gradcheck(self) -> None:
        x = torch.randn(1, 2, 6, 7, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: avg_pool(t, 3, 2, 1, True), (x,))
        assert torch.autograd.gradcheck(lambda t: max_pool(t, output_size=(3, 4)), (x,))
