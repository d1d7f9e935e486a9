"""Dilated kernel windows: every method against torch's dilated max pooling, a float64 unfold reference and
explicitly gathered dilated windows, in 1d/2d/3d, with stride, padding and ceil_mode."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import poolcore
from poolcore.nn import GeMPool2d, LPPool2d, MixedPool2d, StochasticPool2d, replace_pooling

# (spatial, kernel, stride, padding, dilation, ceil_mode): windows whose positions step by the dilation.
CASES = [
    ((11,), (3,), (1,), (0,), (2,), False),
    ((12,), (2,), (3,), (1,), (3,), True),
    ((9, 10), (3, 3), (2, 2), (0, 0), (2, 2), False),
    ((9, 10), (3, 2), (2, 3), (1, 1), (2, 3), True),
    ((10, 11), (2, 3), (3, 2), (1, 1), (4, 2), True),
    ((8, 9), (3, 3), (1, 1), (1, 0), (3, 1), False),
    ((7, 6, 8), (2, 3, 2), (2, 1, 3), (1, 1, 0), (2, 2, 3), True),
    ((6, 7, 6), (3, 2, 2), (1, 2, 2), (0, 1, 1), (2, 3, 2), False),
]


def _kwargs(k: tuple, s: tuple, p: tuple, d: tuple, ceil: bool) -> dict[str, Any]:
    return {"kernel_size": k, "stride": s, "padding": p, "dilation": d, "ceil_mode": ceil}


def _out_len(length: int, k: int, s: int, p: int, d: int, ceil: bool) -> int:
    """torch's ``pooling_output_shape``, written out (aten/src/ATen/native/Pool.h)."""
    top = length + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil else 0)
    out = top // s + 1
    if ceil and (out - 1) * s >= length + p:
        out -= 1
    return out


def _positions(length: int, k: int, s: int, p: int, d: int, ceil: bool) -> list[list[int]]:
    """Each window's real positions along one dim: start + j*d for j < k, inside [0, length)."""
    starts = [i * s - p for i in range(_out_len(length, k, s, p, d, ceil))]
    return [[a + j * d for j in range(k) if 0 <= a + j * d < length] for a in starts]


def _padded_counts(length: int, k: int, s: int, p: int, d: int, ceil: bool) -> list[int]:
    """Positions of each window inside the zero-padded input [-p, length + p) (count_include_pad)."""
    starts = [i * s - p for i in range(_out_len(length, k, s, p, d, ceil))]
    return [sum(1 for j in range(k) if a + j * d < length + p) for a in starts]


def gathered(x: Tensor, reduce: Any, k: tuple, s: tuple, p: tuple, d: tuple, ceil: bool) -> Tensor:
    """Reference: ``reduce`` of each window's explicitly gathered real values, ``(B, C, n)`` in float64,
    one output at a time; ``reduce(values, index)`` also gets the output's index."""
    spatial = x.shape[2:]
    per_dim = [_positions(n, kd, sd, pd, dd, ceil) for n, kd, sd, pd, dd in zip(spatial, k, s, p, d)]
    xd = x.double()
    out = torch.empty(*x.shape[:2], *(len(w) for w in per_dim), dtype=torch.float64)
    for index in itertools.product(*(range(len(w)) for w in per_dim)):
        cells: list[tuple[Any, ...]] = list(
            itertools.product(*(per_dim[dim][i] for dim, i in enumerate(index)))
        )
        at: tuple[Any, ...] = (Ellipsis, *index)
        values = torch.stack([xd[(Ellipsis, *cell)] for cell in cells], -1)
        out[at] = reduce(values, index)
    return out


def _batched(spatial: tuple, seed: int, positive: bool = False) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, *spatial, generator=g, dtype=torch.float64)
    return x.abs() + 0.1 if positive else x


class TestMax:
    @pytest.mark.parametrize("case", CASES)
    def test_matches_torch_dilated_max_pool(self, case) -> None:
        spatial, k, s, p, d, ceil = case
        x = _batched(spatial, 0).float()
        torch_pool: Any = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[len(spatial) - 1]
        want, want_index = torch_pool(x, k, s, p, d, ceil, return_indices=True)
        got = poolcore.pool(x, "max", **_kwargs(k, s, p, d, ceil))
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        # the geometry itself, written out independently
        assert tuple(got.shape[2:]) == tuple(_out_len(*a, ceil) for a in zip(spatial, k, s, p, d))
        if len(spatial) == 2:  # the stochastic eval index is torch's max-pool index
            _, index = poolcore.stochastic_pool(x.abs(), **_kwargs(k, s, p, d, ceil), return_indices=True)
            torch.testing.assert_close(index, torch_pool(x.abs(), k, s, p, d, ceil, return_indices=True)[1])
        del want_index

    @pytest.mark.parametrize("length", range(5, 14))
    @pytest.mark.parametrize(
        "k, s, p, d", [(2, 1, 1, 2), (3, 2, 1, 2), (3, 3, 1, 3), (2, 2, 0, 4), (4, 3, 2, 2)]
    )
    @pytest.mark.parametrize("ceil", [False, True])
    def test_output_length_and_errors_follow_torch(self, length, k, s, p, d, ceil) -> None:
        x = torch.rand(1, 2, length, generator=torch.Generator().manual_seed(length))
        try:
            want = F.max_pool1d(x, k, s, p, d, ceil)
        except RuntimeError:
            with pytest.raises(ValueError, match=r"larger than the padded input"):
                poolcore.pool(
                    x, "max", kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=ceil, dims=1
                )
            return
        if bool(want.isinf().any()):  # torch's -inf for a window that holds only padding: refused here
            with pytest.raises(ValueError, match=r"holds only padding"):
                poolcore.pool(
                    x, "max", kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=ceil, dims=1
                )
            return
        got = poolcore.pool(x, "max", kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=ceil, dims=1)
        torch.testing.assert_close(got, want, rtol=0, atol=0)


class TestAvg:
    @pytest.mark.parametrize(
        "k, s, p, d", [((3, 3), (1, 1), (0, 0), (2, 2)), ((3, 2), (2, 1), (1, 1), (2, 3))]
    )
    @pytest.mark.parametrize("include_pad", [True, False])
    def test_matches_an_unfold_reference(self, k, s, p, d, include_pad) -> None:
        x = _batched((9, 10), 1)
        got = poolcore.pool(
            x, "avg", kernel_size=k, stride=s, padding=p, dilation=d, count_include_pad=include_pad
        )
        # F.unfold pads with zeros and gathers each dilated window; an unfolded plane of ones counts the
        # window's real positions.
        cols = F.unfold(x.reshape(6, 1, 9, 10), k, dilation=d, padding=p, stride=s)  # (6, K, L)
        ones = F.unfold(torch.ones(1, 1, 9, 10, dtype=torch.float64), k, dilation=d, padding=p, stride=s)
        divisor = math.prod(k) if include_pad else ones.sum(1)
        want = (cols.sum(1) / divisor).reshape(2, 3, *got.shape[2:])
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)

    @pytest.mark.parametrize("case", CASES)
    @pytest.mark.parametrize("include_pad", [True, False])
    def test_matches_gathered_windows(self, case, include_pad) -> None:
        spatial, k, s, p, d, ceil = case
        x = _batched(spatial, 2)
        got = poolcore.pool(x, "avg", **_kwargs(k, s, p, d, ceil), count_include_pad=include_pad)
        counts = [_padded_counts(*a, ceil) for a in zip(spatial, k, s, p, d)]

        def mean(values: Tensor, index: tuple) -> Tensor:
            if not include_pad:
                return values.mean(-1)
            return values.sum(-1) / math.prod(c[i] for c, i in zip(counts, index))

        torch.testing.assert_close(got, gathered(x, mean, k, s, p, d, ceil), rtol=1e-12, atol=1e-12)


class TestOtherMethods:
    @pytest.mark.parametrize("case", CASES)
    def test_stochastic_eval_is_the_closed_form(self, case) -> None:
        spatial, k, s, p, d, ceil = case
        x = _batched(spatial, 3, positive=True)
        got = poolcore.stochastic_pool(x, **_kwargs(k, s, p, d, ceil))
        want = gathered(x, lambda a, _: (a * a).sum(-1) / a.sum(-1), k, s, p, d, ceil)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)

    @pytest.mark.parametrize("case", CASES)
    def test_mixed_lp_gem_match_gathered_references(self, case) -> None:
        spatial, k, s, p, d, ceil = case
        x = _batched(spatial, 4, positive=True)
        kw = _kwargs(k, s, p, d, ceil)
        mixed = poolcore.mixed_pool(x, **kw, p_max=0.3)
        want = gathered(x, lambda a, _: 0.3 * a.amax(-1) + 0.7 * a.mean(-1), k, s, p, d, ceil)
        torch.testing.assert_close(mixed, want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(
            poolcore.lp_pool(x, **kw, p=3.0),
            gathered(x, lambda a, _: a.pow(3).sum(-1).pow(1 / 3), k, s, p, d, ceil),
            rtol=1e-10,
            atol=1e-12,
        )
        torch.testing.assert_close(
            poolcore.gem_pool(x, **kw, p=2.5),
            gathered(x, lambda a, _: a.clamp_min(1e-6).pow(2.5).mean(-1).pow(1 / 2.5), k, s, p, d, ceil),
            rtol=1e-10,
            atol=1e-12,
        )

    def test_lp_overflow_route_and_per_window_loop_use_dilated_windows(self) -> None:
        """p so large that the plain sum overflows takes the max-scaled form, and a kernel wider than the
        output count takes the loop over windows: both on dilated positions."""
        x = _batched((10, 10), 5, positive=True) * 50
        kw = _kwargs((4, 4), (4, 4), (1, 1), (2, 2), False)

        # float64 overflows too: the reference scales each window by its maximum
        def scaled(a: Tensor, _: tuple) -> Tensor:
            m = a.amax(-1, keepdim=True)
            return m[..., 0] * (a / m).pow(200).sum(-1).pow(1 / 200)

        want = gathered(x, scaled, *kw.values())
        assert bool(gathered(x, lambda a, _: a.pow(200).sum(-1), *kw.values()).isinf().any())
        torch.testing.assert_close(poolcore.lp_pool(x, **kw, p=200.0), want, rtol=1e-10, atol=0)

    def test_mixed_training_takes_max_or_mean_of_the_dilated_window(self) -> None:
        x = _batched((9, 10), 6).float()
        kw = _kwargs((3, 3), (2, 2), (1, 1), (2, 2), True)
        g = torch.Generator().manual_seed(0)
        got = poolcore.mixed_pool(x, **kw, p_max=0.5, training=True, generator=g)
        mx = F.max_pool2d(x, 3, 2, 1, 2, True)
        av = gathered(x, lambda a, _: a.mean(-1), *kw.values()).float()
        is_max, is_avg = torch.isclose(got, mx, rtol=0, atol=0), torch.isclose(got, av, rtol=1e-6, atol=1e-6)
        assert bool((is_max | is_avg).all())
        assert 0 < int(is_max.sum()) < got.numel()  # both branches drawn

    def test_stochastic_training_draws_the_dilated_positions_by_their_probability(self) -> None:
        """Each draw's index is one of its window's dilated positions and its value is the input there;
        over 4000 seeded draws of one window the counts pass a chi-square test at alpha = 1e-3."""
        spatial, k, s, p, d = (9, 9), (3, 3), (3, 3), (1, 1), (2, 2)
        plane = torch.rand(*spatial, generator=torch.Generator().manual_seed(7), dtype=torch.float64) + 0.05
        x = plane.expand(4000, 1, *spatial).contiguous()
        g = torch.Generator().manual_seed(8)
        out, index = poolcore.stochastic_pool(
            x, k, s, p, dilation=d, training=True, generator=g, return_indices=True
        )
        torch.testing.assert_close(out, x.flatten(2).gather(2, index.flatten(2)).view_as(out), rtol=0, atol=0)
        rows, cols = (_positions(n, kd, sd, pd, dd, False) for n, kd, sd, pd, dd in zip(spatial, k, s, p, d))
        for i, j in itertools.product(range(len(rows)), range(len(cols))):
            allowed = {r * spatial[1] + c for r in rows[i] for c in cols[j]}
            assert set(index[:, 0, i, j].tolist()) <= allowed
        # One padded corner window (1, 1) is full; (0, 0) has 2x2 real positions of its 3x3.
        for i, j in [(0, 0), (1, 1)]:
            cells = [r * spatial[1] + c for r in rows[i] for c in cols[j]]
            probs = plane.flatten()[cells] / plane.flatten()[cells].sum()
            seen = torch.tensor([(index[:, 0, i, j] == c).sum().item() for c in cells], dtype=torch.float64)
            expected = probs * 4000
            chi2 = float(((seen - expected) ** 2 / expected).sum())
            critical = {3: 16.27, 8: 26.12}[len(cells) - 1]  # chi-square quantiles at 1 - 1e-3
            assert chi2 < critical, (i, j, chi2)

    def test_modules_and_generic_pool_take_dilation(self) -> None:
        x = _batched((11, 12), 9, positive=True).float()
        kw: dict[str, Any] = {"kernel_size": 3, "stride": 2, "padding": 1, "dilation": 2}
        for module, functional in [
            (GeMPool2d(**kw, p=3.0), lambda t: poolcore.gem_pool(t, **kw, p=3.0)),
            (LPPool2d(2.0, 3, 2, padding=1, dilation=2), lambda t: poolcore.lp_pool(t, **kw, p=2.0)),
            (MixedPool2d(**kw, eval_rule="expectation").eval(), lambda t: poolcore.mixed_pool(t, **kw)),
            (StochasticPool2d(**kw).eval(), lambda t: poolcore.stochastic_pool(t, **kw)),
            (poolcore.nn.Pool("avg", **kw), lambda t: poolcore.avg_pool(t, **kw)),
        ]:
            torch.testing.assert_close(module(x), functional(x), rtol=0, atol=0)
            assert "dilation=2" in repr(module)

    def test_gradients_in_float64(self) -> None:
        x = _batched((7, 8), 10, positive=True).requires_grad_(True)
        kw = _kwargs((2, 3), (2, 1), (1, 1), (3, 2), True)
        for method, extra in [("avg", {"count_include_pad": False}), ("gem", {}), ("lp", {}), ("mixed", {})]:
            assert torch.autograd.gradcheck(lambda t, m=method, e=extra: poolcore.pool(t, m, **kw, **e), (x,))
        assert torch.autograd.gradcheck(lambda t: poolcore.stochastic_pool(t, **kw), (x,))


class TestRefusals:
    @pytest.mark.parametrize("method", ["adaptive_avg", "adaptive_max"])
    def test_adaptive_presets_take_no_dilation(self, method) -> None:
        with pytest.raises(ValueError, match=r"dilation: unknown parameter"):
            poolcore.pool(torch.rand(1, 2, 8, 8), method, output_size=2, dilation=2)

    def test_output_size_with_dilation_is_a_value_error(self) -> None:
        x = torch.rand(1, 2, 8, 8)
        with pytest.raises(ValueError, match=r"dilation .* kernel_size windows, not to output_size"):
            poolcore.pool(x, "avg", output_size=2, dilation=2)
        with pytest.raises(ValueError, match=r"dilation applies to kernel_size windows.*got dilation=2"):
            poolcore.gem_pool(x, output_size=2, dilation=2)
        with pytest.raises(ValueError, match=r"dilation applies to kernel_size windows"):
            GeMPool2d(output_size=2, dilation=(1, 3))
        poolcore.gem_pool(x, output_size=2, dilation=1)  # the default is no dilation

    def test_global_pool_takes_no_dilation(self) -> None:
        with pytest.raises(ValueError, match=r"drop dilation"):
            poolcore.nn.GlobalPool("gem", dilation=2)
        with pytest.raises(ValueError, match=r"dilation: unknown parameter"):
            poolcore.pool(torch.rand(1, 2, 8, 8), "global_max", dilation=2)

    @pytest.mark.parametrize("bad", [0, -1, (2, 0), (1, 2, 3, 4)])
    def test_bad_dilation_is_named(self, bad) -> None:
        with pytest.raises(ValueError, match=r"dilation"):
            poolcore.pool(torch.rand(1, 2, 8, 8), "max", kernel_size=2, dilation=bad)
        with pytest.raises(ValueError, match=r"dilation"):
            poolcore.max_pool(torch.rand(1, 2, 8, 8), 2, dilation=bad)

    def test_padding_rule_is_torch_s_on_the_undilated_kernel(self) -> None:
        x = torch.rand(1, 1, 20, 20)
        # kernel 3, padding 1 is allowed at any dilation; padding 2 is not, even where the span is 5
        poolcore.max_pool(x, 3, padding=1, dilation=2)
        with pytest.raises(RuntimeError):
            F.max_pool2d(x, 3, padding=2, dilation=2)
        with pytest.raises(ValueError, match=r"padding must be at most half of kernel_size"):
            poolcore.max_pool(x, 3, padding=2, dilation=2)


class TestReplacePooling:
    def test_dilated_max_pool_maps_to_every_method(self) -> None:
        layer = nn.MaxPool2d(3, 2, dilation=2)
        x = _batched((17, 15), 11, positive=True).float()
        want = layer(x)
        for method in ["max", "avg", "mixed", "stochastic", "lp", "gem"]:
            new = replace_pooling(nn.Sequential(nn.MaxPool2d(3, 2, dilation=2)), {nn.MaxPool2d: method})
            pool: Any = new.get_submodule("0")
            kept = pool.params["dilation"] if isinstance(pool, poolcore.nn.Pool) else pool.dilation
            assert kept == 2, method
            got = new.eval()(x)
            assert got.shape == want.shape, method
            if method == "max":
                torch.testing.assert_close(got, want, rtol=0, atol=0)
        new = replace_pooling(nn.Sequential(nn.MaxPool2d(3, 2, dilation=2)), {nn.MaxPool2d: GeMPool2d}, p=4.0)
        torch.testing.assert_close(new(x), poolcore.gem_pool(x, 3, 2, dilation=2, p=4.0), rtol=0, atol=0)


@pytest.mark.slow
def test_compile_fullgraph_of_a_dilated_window() -> None:
    """torch.compile(fullgraph=True, dynamic=True) on CPU: avg's dilated offsets and real-position counts,
    and stochastic eval, trace without a graph break and give eager's values at two input sizes."""
    kw: dict[str, Any] = {"kernel_size": 3, "stride": 2, "padding": 1, "dilation": 2, "ceil_mode": True}
    for module in [poolcore.nn.Pool("avg", **kw, count_include_pad=False), StochasticPool2d(**kw).eval()]:
        compiled = torch.compile(module, fullgraph=True, dynamic=True)
        # No batch of 1: dynamo specialises sizes 0 and 1, so it recompiled both graphs for one.
        for shape in [(2, 3, 13, 12), (3, 2, 17, 11)]:
            x = torch.rand(*shape, generator=torch.Generator().manual_seed(shape[-1]))
            torch.testing.assert_close(compiled(x), module(x), rtol=1e-5, atol=1e-6)


def test_export_with_dynamic_sizes_computes_the_dilated_windows_per_input() -> None:
    """torch.export with dynamic batch and spatial sizes: the padding, offsets and real-position counts of a
    dilated window follow each input's size instead of the example's."""
    from tests.poolcore import export_harness

    kw: dict[str, Any] = {"kernel_size": 3, "stride": 2, "padding": 1, "dilation": 2}
    modules = [
        poolcore.nn.Pool("avg", **kw, count_include_pad=False, ceil_mode=True),
        StochasticPool2d(**kw).eval(),
        GeMPool2d(**kw, p=3.0),
    ]
    for module in modules:
        x = torch.rand(2, 3, 13, 12, generator=torch.Generator().manual_seed(0))
        exported = export_harness.export_dynamic(module, x, min_size=8).module()
        for shape in [(1, 3, 21, 17), (3, 3, 9, 10)]:
            y = torch.rand(*shape, generator=torch.Generator().manual_seed(shape[-1]))
            torch.testing.assert_close(exported(y), module(y), rtol=1e-5, atol=1e-6)
