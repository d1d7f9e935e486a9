"""Window geometry: reductions against a brute-force reference and torch, ceil_mode, bins, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import poolcore
from poolcore.windows import check_float, infer_dims, make_window, window_call
from tests.poolcore import reference as ref

KERNEL_CASES = [
    # spatial, kernel, stride, padding, ceil_mode
    ((7, 8), (3, 3), (2, 2), (0, 0), False),
    ((7, 8), (3, 2), (2, 3), (1, 1), True),
    ((5, 6), (2, 3), (2, 2), (1, 0), True),
    ((1, 3), (1, 2), (1, 2), (0, 0), True),
    ((5, 4, 6), (3, 2, 3), (2, 2, 1), (1, 0, 1), True),
    ((4, 5, 3), (2, 2, 2), (2, 2, 2), (0, 0, 0), False),
]
ADAPTIVE_CASES = [
    ((8, 9), (5, 7)),
    ((10, 9), (None, 7)),
    ((7, 5), (3, 1)),
    ((5, 7, 6), (2, 3, 4)),
    ((6, 6), (1, 1)),
]


class TestWindowReductions:
    @pytest.mark.parametrize("spatial, k, s, p, ceil", KERNEL_CASES)
    def test_kernel_sum_mean_max_match_reference(self, spatial, k, s, p, ceil) -> None:
        torch.manual_seed(0)
        x = torch.randn(2, 3, *spatial, dtype=torch.float64)
        w = make_window(spatial, len(spatial), k, s, p, ceil)
        kw = {"kernel_size": k, "stride": s, "padding": p, "ceil_mode": ceil}
        torch.testing.assert_close(w.sum(x), ref.pooled(x, lambda v: v.sum(-1), **kw))
        torch.testing.assert_close(w.mean(x, count_include_pad=False), ref.pooled(x, ref.mean, **kw))
        torch.testing.assert_close(w.max(x), ref.pooled(x, ref.vmax, **kw))
        counts = ref.pooled(torch.ones_like(x), lambda v: v.sum(-1), **kw)[0, 0]
        torch.testing.assert_close(w.valid_count(x.device, x.dtype), counts)

    @pytest.mark.parametrize("spatial, out", ADAPTIVE_CASES)
    def test_adaptive_sum_mean_max_match_reference_and_torch(self, spatial, out) -> None:
        torch.manual_seed(1)
        x = torch.randn(2, 3, *spatial, dtype=torch.float64)
        w = make_window(spatial, len(spatial), output_size=out)
        torch.testing.assert_close(w.sum(x), ref.pooled(x, lambda v: v.sum(-1), output_size=out))
        torch.testing.assert_close(w.mean(x), ref.pooled(x, ref.mean, output_size=out))
        torch.testing.assert_close(w.max(x), ref.pooled(x, ref.vmax, output_size=out))
        avg = F.adaptive_avg_pool2d if len(spatial) == 2 else F.adaptive_avg_pool3d
        mx = F.adaptive_max_pool2d if len(spatial) == 2 else F.adaptive_max_pool3d
        torch.testing.assert_close(w.mean(x), avg(x, out))
        torch.testing.assert_close(w.max(x), mx(x, out))
        for d, n in enumerate(spatial):
            starts, ends = w.bounds(d)
            assert list(zip(starts, ends)) == ref.adaptive_bounds(n, n if out[d] is None else out[d])

    def test_ceil_mode_sums_are_true_window_sums_where_lp_pool2d_overcounts(self) -> None:
        x = torch.ones(1, 1, 1, 3)
        w = make_window((1, 3), 2, (1, 2), None, 0, True)
        expected = torch.tensor([[[[2.0, 1.0]]]])  # windows {0, 1} and {2}: the second is clipped
        torch.testing.assert_close(w.sum(x), expected)
        assert F.lp_pool2d(x, 1, (1, 2), ceil_mode=True).flatten().tolist() == [2.0, 2.0]  # torch's bug
        # avg and max agree with torch here, and with the closed form (mean and max of ones are 1).
        torch.testing.assert_close(w.mean(x, count_include_pad=True), F.avg_pool2d(x, (1, 2), ceil_mode=True))
        torch.testing.assert_close(w.mean(x, count_include_pad=True), torch.ones(1, 1, 1, 2))
        torch.testing.assert_close(w.max(x), F.max_pool2d(x, (1, 2), ceil_mode=True))

    @pytest.mark.parametrize("spatial, k, s, p, ceil", KERNEL_CASES)
    def test_offsets_add_up_to_window_sums(self, spatial, k, s, p, ceil) -> None:
        torch.manual_seed(2)
        x = torch.rand(2, 2, *spatial, dtype=torch.float64)
        w = make_window(spatial, len(spatial), k, s, p, ceil)
        torch.testing.assert_close(sum(w.offsets(x)), w.sum(x))

    @pytest.mark.parametrize("spatial, out", ADAPTIVE_CASES)
    def test_adaptive_offsets_read_zero_past_a_bin(self, spatial, out) -> None:
        x = torch.rand(2, 2, *spatial, dtype=torch.float64)
        w = make_window(spatial, len(spatial), output_size=out)
        torch.testing.assert_close(sum(w.offsets(x)), w.sum(x))

    @pytest.mark.parametrize("chunk_elements", [1, 50, 10**9])
    def test_map_planes_equals_whole_tensor(self, chunk_elements: int) -> None:
        x = torch.randn(3, 5, 6, 7)
        w = make_window((6, 7), 2, 3, 2)
        seen: list[slice] = []

        def fn(chunk: torch.Tensor, planes: slice, out: torch.Tensor) -> None:
            seen.append(planes)
            out.copy_(w.max(chunk))

        out = w.map_planes(x, fn, chunk_elements=chunk_elements)
        torch.testing.assert_close(out, F.max_pool2d(x, 3, 2))
        covered = [i for part in seen for i in range(part.start, part.stop)]
        assert covered == list(range(15))

    @pytest.mark.parametrize("spatial, k, s, p, ceil", KERNEL_CASES)
    def test_sum_and_mean_into_out(self, spatial, k, s, p, ceil) -> None:
        x = torch.randn(2, 3, *spatial, dtype=torch.float64)
        n = len(spatial)
        for w in (
            make_window(spatial, n, k, s, p, ceil),
            make_window(spatial, n, output_size=2),
            make_window(spatial, n, output_size=1),
        ):
            out = torch.empty(2, 3, *w.out_size, dtype=torch.float64)
            assert w.sum(x, out=out) is out
            torch.testing.assert_close(out, w.sum(x))
            for include in (True, False):
                w.mean(x, include, out=out)
                torch.testing.assert_close(out, w.mean(x, include))


class TestWindowErrors:
    def test_exactly_one_window_form(self) -> None:
        with pytest.raises(ValueError, match="exactly one of kernel_size"):
            make_window((5, 5), 2)
        with pytest.raises(ValueError, match="exactly one of kernel_size"):
            make_window((5, 5), 2, kernel_size=2, output_size=2)

    def test_window_larger_than_padded_input(self) -> None:
        with pytest.raises(ValueError, match=r"kernel_size \(8, 8\) is larger than the padded input"):
            make_window((5, 5), 2, 8, padding=1)

    @pytest.mark.parametrize(
        "kwargs, message",
        [
            ({"kernel_size": 0}, "kernel_size must be positive"),
            ({"kernel_size": 2, "stride": 0}, "stride must be positive"),
            ({"kernel_size": 2, "padding": 2}, "padding must be at most half"),
            ({"kernel_size": (2, 2, 2)}, "kernel_size must have 2 entries"),
            ({"output_size": 0}, "output_size must be positive"),
        ],
    )
    def test_bad_arguments_name_the_value(self, kwargs, message) -> None:
        with pytest.raises(ValueError, match=message):
            make_window((5, 5), 2, **kwargs)

    def test_kernel_entries_must_be_integers(self) -> None:
        with pytest.raises(TypeError, match="kernel_size entries must be integers"):
            make_window((5, 5), 2, 2.5)  # type: ignore[arg-type]

    def test_dims_inference(self) -> None:
        assert infer_dims(3) == 2 and infer_dims(2) == 1 and infer_dims(5) == 3 and infer_dims(4) == 2
        assert infer_dims(4, kernel_size=(2, 2, 2)) == 3
        assert infer_dims(3, output_size=(5,), dims=2) == 2
        with pytest.raises(ValueError, match="dims must be 1, 2 or 3"):
            infer_dims(4, dims=4)
        with pytest.raises(ValueError, match="rank 1 to 5"):
            infer_dims(6)

    def test_rank_and_empty_input(self) -> None:
        with pytest.raises(ValueError, match="takes input of rank 2 to 4"):
            window_call(torch.zeros(1, 1, 1, 4, 4), lambda b, w: b, kernel_size=2, dims=2)
        with pytest.raises(ValueError, match="empty dimension"):
            window_call(torch.zeros(0, 3, 4, 4), lambda b, w: b, kernel_size=2)

    def test_integer_input(self) -> None:
        with pytest.raises(ValueError, match="floating-point tensor"):
            check_float(torch.zeros(2, 2, dtype=torch.int64), "avg")


class TestNoRankGuessing:
    """Rank 2 and 3 have two readings each; a scalar window no longer picks one silently."""

    @pytest.mark.parametrize(
        ("shape", "readings"), [((2, 3, 17), ("(N, C, L)", "(C, H, W)")), ((3, 17), ("(C, L)", "(H, W)"))]
    )
    @pytest.mark.parametrize("window", [{"kernel_size": 2}, {"output_size": 4}])
    def test_scalar_window_on_rank_2_or_3_is_refused(self, shape, readings, window) -> None:
        name = next(iter(window))
        with pytest.raises(ValueError, match="ambiguous") as info:
            poolcore.pool(torch.rand(shape), "avg", **window)
        message = str(info.value)
        assert all(r in message for r in readings) and "dims=" in message and f"tuple {name}" in message

    def test_global_preset_on_rank_3_is_refused(self) -> None:
        with pytest.raises(ValueError, match="ambiguous"):
            poolcore.pool(torch.rand(2, 3, 17), "global_avg")

    def test_a_tuple_window_or_dims_decides(self) -> None:
        x = torch.rand(2, 3, 17)
        torch.testing.assert_close(poolcore.pool(x, "avg", kernel_size=(2,)), F.avg_pool1d(x, 2))
        torch.testing.assert_close(poolcore.pool(x, "avg", kernel_size=2, dims=1), F.avg_pool1d(x, 2))
        torch.testing.assert_close(poolcore.pool(x, "avg", kernel_size=2, dims=2), F.avg_pool2d(x, 2))
        m = torch.rand(6, 8)
        torch.testing.assert_close(poolcore.pool(m, "max", kernel_size=(2, 2)), F.max_pool2d(m[None], 2)[0])

    def test_rank_4_and_5_are_read_as_before(self) -> None:
        x = torch.rand(2, 3, 6, 8)
        torch.testing.assert_close(poolcore.pool(x, "avg", kernel_size=2), F.avg_pool2d(x, 2))
        v = torch.rand(1, 2, 4, 4, 4)
        torch.testing.assert_close(poolcore.pool(v, "max", kernel_size=2), F.max_pool3d(v, 2))


class TestDilatedWindows:
    """A dilated kernel window's offsets step by the dilation: torch's ``F.unfold`` (zero padding, dilation,
    offsets in row-major order) is the reference for the offsets and for the real-position counts."""

    @pytest.mark.parametrize(
        "k, s, p, d",
        [
            ((3, 3), (1, 1), (0, 0), (2, 2)),
            ((2, 3), (2, 1), (1, 1), (3, 2)),
            ((3, 2), (3, 2), (1, 0), (1, 4)),
        ],
    )
    def test_offsets_sum_and_counts_match_unfold(self, k, s, p, d) -> None:
        x = torch.randn(2, 1, 9, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        w = make_window((9, 10), 2, k, s, p, False, dilation=d)
        cols = F.unfold(x, k, dilation=d, padding=p, stride=s)  # (2, K, L)
        views = torch.stack([v.flatten(2)[:, 0] for v in w.offsets(x)], 1)
        torch.testing.assert_close(views, cols, rtol=0, atol=0)
        torch.testing.assert_close(w.sum(x).flatten(2)[:, 0], cols.sum(1))
        ones = F.unfold(torch.ones(1, 1, 9, 10, dtype=torch.float64), k, dilation=d, padding=p, stride=s)
        torch.testing.assert_close(w.valid_count(x.device, x.dtype).flatten(), ones.sum(1).flatten())
        starts, ends = w.bounds(1)
        for i, (a, e) in enumerate(zip(starts, ends)):  # the real positions are range(start, end, dilation)
            want = [i * s[1] - p[1] + j * d[1] for j in range(k[1])]
            assert list(range(a, e, w.step(1))) == [q for q in want if 0 <= q < 10]

    def test_output_size_uses_the_dilated_span(self) -> None:
        w = make_window((1, 9), 1, 3, 2, 1, True, dilation=3)
        assert w.out_size == (1, F.max_pool1d(torch.rand(1, 1, 9), 3, 2, 1, 3, True).shape[-1])
        with pytest.raises(RuntimeError, match=r"output size"):
            F.max_pool1d(torch.rand(1, 1, 6), 3, 1, 0, 3)
        with pytest.raises(
            ValueError, match=r"kernel_size \(3,\) \(spanning 7 with dilation \(3,\)\) is larger"
        ):
            make_window((1, 6), 1, 3, 1, 0, dilation=3)  # torch: an output size of 0

    def test_adaptive_bins_take_no_dilation(self) -> None:
        with pytest.raises(ValueError, match=r"dilation applies to kernel_size windows, not to output_size"):
            make_window((8, 8), 2, output_size=3, dilation=2)
        with pytest.raises(ValueError, match=r"dilation applies to kernel_size windows"):
            window_call(torch.rand(1, 1, 8, 8), lambda b, w: b, output_size=1, dilation=(1, 2))
        assert not make_window((8, 8), 2, output_size=3, dilation=1).dilated

    def test_a_window_of_padding_only_is_refused(self) -> None:
        """torch's max gives -inf for it (kernel 2, padding 1, dilation 4 on 3 inputs reads -1 and 3)."""
        assert F.max_pool1d(torch.rand(1, 1, 3), 2, 1, 1, 4)[0, 0, 0] == -math.inf
        with pytest.raises(ValueError, match=r"holds only padding on input size \(3,\)"):
            make_window((1, 3), 1, 2, 1, 1, dilation=4)
        make_window((1, 4), 1, 2, 1, 1, dilation=4)  # reads -1 and 3: one real position

    @pytest.mark.parametrize(
        "bad, error", [(0, ValueError), ((2, -1), ValueError), (1.5, TypeError), (True, TypeError)]
    )
    def test_bad_dilation_names_the_value(self, bad, error) -> None:
        with pytest.raises(error, match=r"dilation"):
            make_window((8, 8), 2, 2, dilation=bad)
