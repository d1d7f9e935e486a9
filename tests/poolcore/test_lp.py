"""Power-average pooling: lp (sum form, alias power) and gem (mean form)."""

from __future__ import annotations

import io
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import poolcore
from poolcore.nn import (
    GeMPool1d,
    GeMPool2d,
    GeMPool3d,
    LPPool1d,
    LPPool2d,
    LPPool3d,
    gem_pool,
    lp_pool,
)
from tests.conftest import tolerance
from tests.poolcore import reference as ref

TORCH_LP = {1: F.lp_pool1d, 2: F.lp_pool2d, 3: F.lp_pool3d}
LP_MODULES = {1: LPPool1d, 2: LPPool2d, 3: LPPool3d}
GEM_MODULES = {1: GeMPool1d, 2: GeMPool2d, 3: GeMPool3d}

WINDOWS = [
    # batched input shape, window kwargs (tuple form, so the reference reads them directly)
    ((2, 3, 9, 10), {"kernel_size": (3, 3), "stride": (2, 2), "padding": (1, 1), "ceil_mode": True}),
    ((2, 3, 7, 8), {"kernel_size": (2, 3), "stride": (2, 2)}),
    ((2, 3, 8, 9), {"output_size": (5, 7)}),
    ((2, 3, 10, 9), {"output_size": (None, 7)}),
    ((2, 3, 6, 5), {"output_size": (1, 1)}),
    (
        (2, 2, 5, 6, 7),
        {"kernel_size": (3, 2, 3), "stride": (2, 2, 2), "padding": (1, 1, 0), "ceil_mode": True},
    ),
    ((2, 2, 5, 6, 7), {"output_size": (2, 3, 4)}),
]


def _grad(t: torch.Tensor) -> torch.Tensor:
    """``t.grad``, which ``backward()`` must have filled in."""
    if t.grad is None:
        raise AssertionError("backward() left no gradient")
    return t.grad


class TestLP:
    def test_smoke_and_alias(self) -> None:
        x = torch.randn(2, 3, 8, 8)
        y = lp_pool(x, 2)
        assert y.shape == (2, 3, 4, 4)
        torch.testing.assert_close(poolcore.pool(x, "power", kernel_size=2), y)
        torch.testing.assert_close(poolcore.pool(x, "lp", kernel_size=2), y)

    @pytest.mark.parametrize("shape, kw", WINDOWS)
    @pytest.mark.parametrize("p", [1.0, 2.0, 3.0, 2.5, math.inf])
    def test_matches_reference_on_signed_input(self, shape, kw, p) -> None:
        torch.manual_seed(0)
        x = torch.randn(*shape, dtype=torch.float64)
        torch.testing.assert_close(lp_pool(x, **kw, p=p), ref.pooled(x, ref.lp(p), **kw))

    @pytest.mark.parametrize(
        "dims, shape, k, s",
        [
            (1, (2, 3, 11), 3, 2),
            (2, (2, 3, 9, 10), 3, 2),
            (2, (3, 8, 8), 2, None),
            (3, (2, 2, 6, 7, 5), 2, 2),
        ],
    )
    @pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
    def test_matches_torch_lp_pool_on_nonnegative_input(self, dims, shape, k, s, p, device) -> None:
        torch.manual_seed(1)
        x = torch.rand(*shape, dtype=torch.float64, device=device)
        torch.testing.assert_close(lp_pool(x, k, s, dims=dims, p=p), TORCH_LP[dims](x, p, k, s))

    def test_ceil_mode_uses_true_window_sums(self) -> None:
        x = torch.ones(1, 1, 1, 3)
        assert F.lp_pool2d(x, 1, (1, 2), ceil_mode=True).flatten().tolist() == [2.0, 2.0]  # torch overcounts
        assert lp_pool(x, (1, 2), ceil_mode=True, p=1).flatten().tolist() == [2.0, 1.0]
        # p=2 on ones: sqrt of the number of covered positions.
        torch.testing.assert_close(lp_pool(x, (1, 2), ceil_mode=True), torch.tensor([[[[2**0.5, 1.0]]]]))

    def test_p_inf_is_max_abs_and_p1_is_sum_abs(self) -> None:
        x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
        torch.testing.assert_close(lp_pool(x, 3, 2, p=math.inf), F.max_pool2d(x.abs(), 3, 2))
        torch.testing.assert_close(lp_pool(x, 3, 2, p=1), F.avg_pool2d(x.abs(), 3, 2) * 9)

    def test_non_integer_p_on_signed_input_has_no_nan(self) -> None:
        x = torch.randn(2, 3, 8, 8, requires_grad=True)
        p = torch.tensor(2.7, requires_grad=True)
        y = lp_pool(x, 2, p=p)
        y.sum().backward()
        assert torch.isfinite(y).all() and torch.isfinite(_grad(x)).all() and torch.isfinite(_grad(p))

    def test_shapes_batched_unbatched(self) -> None:
        assert lp_pool(torch.randn(3, 10), 2, dims=1).shape == (3, 5)
        assert lp_pool(torch.randn(2, 3, 10), (2,)).shape == (2, 3, 5)
        assert lp_pool(torch.randn(3, 8, 8), 2, dims=2).shape == (3, 4, 4)
        assert lp_pool(torch.randn(8, 8), output_size=(None, 2)).shape == (8, 2)
        assert lp_pool(torch.randn(2, 3, 4, 6, 8), 2).shape == (2, 3, 2, 3, 4)
        assert lp_pool(torch.randn(3, 4, 6, 8), output_size=(1, 2, None)).shape == (3, 1, 2, 8)

    def test_non_contiguous_input(self) -> None:
        x = torch.rand(2, 3, 10, 12).transpose(-1, -2)
        torch.testing.assert_close(lp_pool(x, 3, 2), F.lp_pool2d(x.contiguous(), 2, 3, 2))

    @pytest.mark.parametrize(
        "p, exc, message",
        [
            (0.5, ValueError, r"needs p >= 1 \(got 0.5\)"),
            (math.nan, ValueError, "needs p >= 1"),
            (-2, ValueError, r"got -2"),
            ("2", TypeError, "p must be a float"),
        ],
    )
    def test_bad_p(self, p, exc, message) -> None:
        with pytest.raises(exc, match=message):
            lp_pool(torch.rand(1, 4, 4), 2, p=p)

    def test_errors(self) -> None:
        with pytest.raises(ValueError, match="lp pooling needs a floating-point tensor"):
            lp_pool(torch.ones(1, 4, 4, dtype=torch.int64), 2)
        with pytest.raises(ValueError, match="exactly one of kernel_size"):
            lp_pool(torch.ones(1, 4, 4), 2, output_size=2)
        with pytest.raises(ValueError, match="larger than the padded input"):
            lp_pool(torch.ones(1, 4, 4), 5, dims=2)
        with pytest.raises(ValueError, match="scalar p"):
            lp_pool(torch.ones(1, 4, 4), 2, p=torch.ones(2))

    def test_dtypes(self, any_dtype, device) -> None:
        x = torch.randn(2, 3, 9, 9, device=device).to(any_dtype)
        for p in (2.0, 3.0):
            y = lp_pool(x, 3, 2, 1, p=p)
            assert y.dtype == any_dtype and y.device == x.device
            expected = ref.pooled(x.double().cpu(), ref.lp(p), (3, 3), (2, 2), (1, 1))
            torch.testing.assert_close(y.double().cpu(), expected, **tolerance(any_dtype))

    def test_gradcheck_x_and_p(self) -> None:
        torch.manual_seed(2)
        x = torch.randn(1, 2, 6, 7, dtype=torch.float64, requires_grad=True)
        p = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t, q: lp_pool(t, 3, 2, 1, True, p=q), (x, p))
        assert torch.autograd.gradcheck(lambda t: lp_pool(t, output_size=(3, 2), p=2), (x,))
        assert torch.autograd.gradcheck(lambda t: lp_pool(t, 2, p=math.inf), (x,))

    @pytest.mark.parametrize("p", [1.0, 2.0, 3.5])
    def test_finite_gradients_on_all_zero_windows(self, p) -> None:
        x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
        x[..., :2, :2] = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
        x.requires_grad_(True)
        q = torch.tensor(p, dtype=torch.float64, requires_grad=True)
        for power in (p, q):
            x.grad, q.grad = None, None
            y = lp_pool(x, 2, p=power)
            y.sum().backward()
            assert torch.isfinite(_grad(x)).all()
            assert (_grad(x)[..., 2:, :] == 0).all()  # zero windows pass no gradient
            if power is q:
                assert torch.isfinite(_grad(q))


class TestGeM:
    def test_smoke(self) -> None:
        x = torch.rand(2, 3, 8, 8)
        assert gem_pool(x, 2).shape == (2, 3, 4, 4)
        torch.testing.assert_close(poolcore.pool(x, "gem", kernel_size=2, p=3.0), gem_pool(x, 2))

    @pytest.mark.parametrize("shape, kw", WINDOWS)
    @pytest.mark.parametrize("p, eps", [(1.0, 1e-6), (3.0, 1e-6), (2.5, 0.1), (math.inf, 1e-6)])
    def test_matches_reference_over_real_positions(self, shape, kw, p, eps) -> None:
        torch.manual_seed(3)
        x = torch.randn(*shape, dtype=torch.float64)
        torch.testing.assert_close(gem_pool(x, **kw, p=p, eps=eps), ref.pooled(x, ref.gem(p, eps), **kw))

    @pytest.mark.parametrize("dims, shape", [(1, (2, 3, 11)), (2, (2, 3, 9, 10)), (3, (2, 2, 6, 7, 5))])
    def test_p1_is_avg_of_clamped_input(self, dims, shape) -> None:
        x = torch.randn(*shape, dtype=torch.float64)
        avg = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[dims]
        torch.testing.assert_close(gem_pool(x, 3, 2, dims=dims, p=1, eps=0.0), avg(x.clamp_min(0), 3, 2))

    def test_global_gem_closed_form(self) -> None:
        x = torch.rand(2, 4, 5, 6, dtype=torch.float64)
        expected = x.clamp_min(1e-6).pow(3).mean((-2, -1), keepdim=True).pow(1 / 3)
        torch.testing.assert_close(gem_pool(x, output_size=1), expected)
        torch.testing.assert_close(poolcore.nn.GlobalPool("gem", p=3.0)(x), expected)

    def test_bad_p_and_eps(self) -> None:
        with pytest.raises(ValueError, match="gem pooling needs p >= 1"):
            gem_pool(torch.rand(1, 4, 4), 2, p=0)
        with pytest.raises(ValueError, match=r"eps must be a non-negative float \(got -1\)"):
            gem_pool(torch.rand(1, 4, 4), 2, eps=-1)

    def test_dtypes(self, any_dtype, device) -> None:
        x = torch.rand(2, 3, 9, 9, device=device).to(any_dtype)
        y = gem_pool(x, 3, 2, 1)
        assert y.dtype == any_dtype
        expected = ref.pooled(x.double().cpu(), ref.gem(3.0, 1e-6), (3, 3), (2, 2), (1, 1))
        torch.testing.assert_close(y.double().cpu(), expected, **tolerance(any_dtype))

    def test_gradcheck_x_and_p(self) -> None:
        torch.manual_seed(4)
        x = torch.randn(1, 2, 6, 7, dtype=torch.float64, requires_grad=True)
        p = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t, q: gem_pool(t, 3, 2, 1, True, p=q, eps=1e-3), (x, p))
        assert torch.autograd.gradcheck(lambda t: gem_pool(t, output_size=1, p=3), (x,))

    def test_finite_gradients_on_all_zero_windows(self) -> None:
        x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
        x[..., 0, 0] = 2.0
        x.requires_grad_(True)
        p = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
        gem_pool(x, 2, p=p, eps=0.0).sum().backward()
        assert torch.isfinite(_grad(x)).all() and torch.isfinite(_grad(p))


class TestPowerModules:
    @pytest.mark.parametrize("family", ["lp", "gem"])
    @pytest.mark.parametrize("dims", [1, 2, 3])
    def test_module_equals_functional(self, family, dims) -> None:
        module_cls = (LP_MODULES if family == "lp" else GEM_MODULES)[dims]
        functional = lp_pool if family == "lp" else gem_pool
        x = torch.rand(2, 3, *(7,) * dims)
        m = module_cls(kernel_size=3, stride=2, p=2.5)
        torch.testing.assert_close(m(x), functional(x, 3, 2, dims=dims, p=2.5))
        adaptive = module_cls(output_size=2)
        torch.testing.assert_close(adaptive(x), functional(x, output_size=2, dims=dims))
        assert module_cls.__name__ in repr(m) and "p=2.5" in repr(m) and "learn_p=False" in repr(m)

    def test_fixed_p_is_a_buffer_and_survives_state_dict(self) -> None:
        m = GeMPool2d(2, p=4.0)
        assert "p" in dict(m.named_buffers()) and not list(m.parameters())
        other = GeMPool2d(2)
        other.load_state_dict(m.state_dict())
        x = torch.rand(1, 2, 6, 6)
        torch.testing.assert_close(other(x), gem_pool(x, 2, p=4.0))
        assert "p=4" in repr(other)

    @pytest.mark.parametrize("module_cls", [LPPool2d, GeMPool2d])
    def test_learnable_p_stays_above_one_and_trains(self, module_cls) -> None:
        torch.manual_seed(5)
        m = module_cls(kernel_size=2, p=3.0, learn_p=True)
        assert isinstance(m.p_raw, torch.nn.Parameter)
        torch.testing.assert_close(m.power(), torch.tensor(3.0))
        opt = torch.optim.SGD(m.parameters(), lr=50.0)
        # Push p down hard (lp's sum form shrinks as p grows, gem's mean form grows): it stays above 1.
        sign = -1.0 if module_cls is LPPool2d else 1.0
        for _ in range(5):
            opt.zero_grad()
            (sign * m(torch.rand(4, 3, 8, 8) + 0.5).sum()).backward()
            assert torch.isfinite(_grad(m.p_raw))
            opt.step()
        assert 1.0 <= float(m.power().detach()) < 1.1
        buffer = io.BytesIO()
        torch.save(m.state_dict(), buffer)
        buffer.seek(0)
        fresh = module_cls(kernel_size=2, p=2.0, learn_p=True)
        fresh.load_state_dict(torch.load(buffer))
        torch.testing.assert_close(fresh.power(), m.power())

    def test_gradcheck_through_learnable_p(self) -> None:
        m = LPPool2d(2.5, 2, learn_p=True).double()
        x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)

        def fn(t: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
            return lp_pool(t, 2, p=raw.clamp_min(1.0))

        assert torch.autograd.gradcheck(fn, (x, m.p_raw.detach().clone().requires_grad_(True)))

    def test_bad_module_arguments(self) -> None:
        with pytest.raises(ValueError, match=r"a learnable p must start finite, in \[1, inf\) \(got inf\)"):
            LPPool2d(math.inf, 2, learn_p=True)
        with pytest.raises(ValueError, match="lp pooling needs p >= 1"):
            LPPool2d(0.5, 2)
        with pytest.raises(ValueError, match="exactly one of kernel_size"):
            GeMPool2d()


RTOL32 = tolerance(torch.float32)["rtol"]  # relative only: the values are far from 1
STABLE_CASES = [
    ("normal", 1e3, 40.0),  # 1e120: overflows float32
    ("normal", 1e-3, 40.0),  # 1e-120: underflows float32 to 0
    ("normal", 1e25, 2.0),
    ("normal", 1e-25, 2.0),
    ("log-uniform", 1.0, 100.0),  # powers 1e-300..1e300: too wide for one scale: each window's own
]


def _stable_input(shape: tuple[int, ...], kind: str, scale: float) -> torch.Tensor:
    """float32 values: a normal sample times ``scale``, or ``10**u`` for u uniform in (-3, 3)
    (positive, spanning 1e-3 to 1e3) with signs drawn at random."""
    if kind == "normal":
        return (torch.randn(*shape, dtype=torch.float64) * scale).float()
    magnitude = 10 ** (torch.rand(*shape, dtype=torch.float64) * 6 - 3)
    sign = torch.where(torch.rand(*shape) < 0.5, -1.0, 1.0).double()
    return (magnitude * sign).float()


class TestStableForm:
    """Where x^p or a window's sum leaves the dtype's range, the max-scaled form answers (issue 9,
    finding 7): the float32 result equals a float64 reference that holds the powers, within float32's
    tolerance, and it never holds NaN or inf unless the true result overflows."""

    @pytest.mark.parametrize("shape, kw", [*WINDOWS, ((2, 3, 9, 10), {"output_size": (2, 1)})])
    @pytest.mark.parametrize("kind, scale, p", STABLE_CASES)
    def test_lp_matches_float64(self, shape, kw, kind, scale, p) -> None:
        torch.manual_seed(7)
        x = _stable_input(shape, kind, scale)
        y = lp_pool(x, **kw, p=p)
        assert torch.isfinite(y).all()
        expected = ref.pooled(x.double(), ref.lp(p), **kw)
        torch.testing.assert_close(y.double(), expected, rtol=RTOL32, atol=0.0)

    @pytest.mark.parametrize("shape, kw", [*WINDOWS, ((2, 3, 9, 10), {"output_size": (2, 1)})])
    @pytest.mark.parametrize("kind, scale, p", STABLE_CASES)
    def test_gem_matches_float64(self, shape, kw, kind, scale, p) -> None:
        torch.manual_seed(8)
        x = _stable_input(shape, kind, scale)
        eps = scale * 1e-3 if kind == "normal" else 1e-3
        y = gem_pool(x, **kw, p=p, eps=eps)
        assert torch.isfinite(y).all()
        expected = ref.pooled(x.double(), ref.gem(p, eps), **kw)
        torch.testing.assert_close(y.double(), expected, rtol=RTOL32, atol=0.0)

    @pytest.mark.parametrize("shape, kw", WINDOWS)
    def test_huge_p_is_the_window_max(self, shape, kw) -> None:
        """(mean x^p)^(1/p) and (Σ |x|^p)^(1/p) tend to the max as p grows; p=1e308 gave null (inf) or 0."""
        torch.manual_seed(9)
        x = torch.randn(*shape) * 100
        torch.testing.assert_close(gem_pool(x, **kw, p=1e308), gem_pool(x, **kw, p=math.inf), rtol=0, atol=0)
        torch.testing.assert_close(lp_pool(x, **kw, p=1e308), lp_pool(x, **kw, p=math.inf), rtol=0, atol=0)

    def test_zero_windows_and_true_overflow(self) -> None:
        x = torch.zeros(1, 1, 4, 4)
        x[..., 0, 0] = 1e30  # 1e90 overflows float32: the stable form runs, zero windows included
        y = lp_pool(x, 2, p=3.0)
        torch.testing.assert_close(y[0, 0, 0, 0], torch.tensor(1e30))
        assert y.flatten()[1:].eq(0).all()
        assert gem_pool(x, 2, p=3.0, eps=0.0).flatten()[1:].eq(0).all()
        # lp sums: four values of 60000 have an L2 norm of 120000, past float16's 65504. Nothing can
        # hold it, so it stays inf (the service refuses such a result with a 422).
        h = torch.full((1, 1, 2, 2), 60000.0, dtype=torch.float16)
        assert lp_pool(h, 2, p=2.0).isinf().all()
        torch.testing.assert_close(lp_pool(h.float(), 2, p=2.0), torch.full((1, 1, 1, 1), 120000.0))

    def test_gradcheck_through_the_stable_form(self) -> None:
        """The scaled form is the same function: autograd through it matches finite differences, where
        x^2000 overflows float64 (values in [1, 2]) or x^200 underflows it (values near 1e-3)."""
        torch.manual_seed(10)
        big = (torch.rand(1, 2, 5, 6, dtype=torch.float64) + 1).requires_grad_(True)
        small = (torch.rand(1, 2, 5, 6, dtype=torch.float64) * 1e-3 + 1e-4).requires_grad_(True)
        assert torch.autograd.gradcheck(lambda t: lp_pool(t, 3, 2, 1, True, p=2000.0), (big,))
        assert torch.autograd.gradcheck(lambda t: gem_pool(t, 3, 2, 1, True, p=2000.0), (big,))
        assert torch.autograd.gradcheck(lambda t: gem_pool(t, output_size=(2, 1), p=2000.0), (big,))
        assert torch.autograd.gradcheck(lambda t: lp_pool(t, output_size=1, p=2000.0), (big,))
        assert torch.autograd.gradcheck(lambda t: lp_pool(t, 3, 2, p=200.0), (small,), eps=1e-9)


class TestTorchArgumentOrder:
    """poolcore.nn.LPPool2d(2, 3) meant kernel 2, stride 3; torch.nn.LPPool2d(2, 3) means p=2, kernel 3."""

    def test_positional_arguments_mean_torchs(self) -> None:
        x = torch.rand(2, 3, 11, 10)
        cases: list[tuple[Any, ...]] = [(2, 3), (2.0, 3, 2), (3.0, (2, 3), 1)]
        for args in cases:
            torch.testing.assert_close(LPPool2d(*args)(x), torch.nn.LPPool2d(*args)(x), rtol=1e-5, atol=1e-6)
        x1 = torch.rand(2, 3, 11)
        torch.testing.assert_close(LPPool1d(2, 3)(x1), torch.nn.LPPool1d(2, 3)(x1), rtol=1e-5, atol=1e-6)
        x3 = torch.rand(1, 2, 6, 6, 6)
        torch.testing.assert_close(LPPool3d(1, 2)(x3), torch.nn.LPPool3d(1, 2)(x3), rtol=1e-5, atol=1e-6)

    def test_extras_are_keyword_only_and_p_is_an_alias(self) -> None:
        with pytest.raises(TypeError):
            LPPool2d(2.0, 3, 2, False, 1)  # type: ignore[call-arg]
        x = torch.rand(1, 2, 8, 8)
        torch.testing.assert_close(LPPool2d(p=3.0, kernel_size=2)(x), LPPool2d(3.0, 2)(x))
        assert LPPool2d(kernel_size=2).power() == 2.0
        assert LPPool2d(2.0, 3, padding=1).padding == 1
        with pytest.raises(ValueError, match="norm_type or its alias p, not both"):
            LPPool2d(2.0, 2, p=3.0)


LEARNED_WINDOWS = [
    ((2, 3, 9, 10), {"kernel_size": (3, 3), "stride": (2, 2), "padding": (1, 1), "ceil_mode": True}),
    ((2, 3, 10, 9), {"output_size": (2, 3)}),
    ((2, 3, 6, 5), {"output_size": (1, 1)}),
    ((1, 2, 5, 6, 7), {"kernel_size": (2, 2, 3), "stride": (1, 2, 2)}),
]


def _wide_input(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """float64 magnitudes ``10**u``, u uniform in (-3, 3), signs at random: values up to 1e3."""
    gen = torch.Generator().manual_seed(seed)
    magnitude = 10 ** (torch.rand(*shape, generator=gen, dtype=torch.float64) * 6 - 3)
    return torch.where(torch.rand(*shape, generator=gen) < 0.5, -magnitude, magnitude)


class TestLearnablePower:
    """A tensor p (a learnable one) takes the max-scaled form too (issue 19, item 1): p = 51 on fp32
    inputs up to 50 gave inf and NaN gradients for GeM and Lp."""

    @pytest.mark.parametrize("family", ["lp", "gem"])
    @pytest.mark.parametrize("p", [1.5, 51.0, 100.0])
    @pytest.mark.parametrize("shape, kw", LEARNED_WINDOWS)
    def test_tensor_p_matches_float64_with_finite_gradients(self, family, p, shape, kw) -> None:
        x64 = _wide_input(shape, seed=int(p))
        if family == "gem":
            x64 = x64.abs()
        x = x64.float().requires_grad_(True)
        q = torch.tensor(p, requires_grad=True)
        fn: Any = lp_pool if family == "lp" else gem_pool
        extra = {} if family == "lp" else {"eps": 1e-6}
        y = fn(x, **kw, p=q, **extra)
        y.sum().backward()
        # The float64 reference holds every power (1e3**100 = 1e300): its own autograd is the gradient.
        x_ref = x64.clone().requires_grad_(True)
        q_ref = torch.tensor(p, dtype=torch.float64, requires_grad=True)
        if family == "lp":
            expected = ref.pooled(x_ref, lambda v: v.abs().pow(q_ref).sum(-1).pow(1 / q_ref), **kw)
        else:
            expected = ref.pooled(x_ref, lambda v: v.clamp_min(1e-6).pow(q_ref).mean(-1).pow(1 / q_ref), **kw)
        expected.sum().backward()
        torch.testing.assert_close(y.double(), expected.detach(), rtol=1e-5, atol=0.0)
        assert torch.isfinite(_grad(x)).all() and torch.isfinite(_grad(q))
        # Gradients to float32's precision, amplified by p through the powers.
        torch.testing.assert_close(_grad(x).double(), _grad(x_ref), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(_grad(q).double(), _grad(q_ref), rtol=1e-3, atol=1e-6)

    @pytest.mark.parametrize("module_cls", [GeMPool2d, LPPool2d])
    def test_the_measured_overflow(self, module_cls) -> None:
        """The issue's case: output_size=1, p=51 learnable, fp32 inputs up to 50."""
        m = module_cls(output_size=1, p=51.0, learn_p=True)
        x = (torch.rand(2, 3, 7, 7) * 50).requires_grad_(True)
        y = m(x)
        y.sum().backward()
        assert torch.isfinite(y).all()
        assert torch.isfinite(_grad(x)).all() and torch.isfinite(_grad(m.p_raw))
        fixed = module_cls(output_size=1, p=51.0)
        torch.testing.assert_close(y, fixed(x), rtol=1e-6, atol=0.0)

    @pytest.mark.parametrize("module_cls, sign", [(GeMPool2d, -1.0), (LPPool2d, 1.0)])
    def test_p_leaves_one_when_the_loss_wants_it(self, module_cls, sign) -> None:
        """GeM's mean form grows with p, lp's sum form shrinks: each loss below wants a larger p. From
        p = 1 the gradient is the true dL/dp (softplus's parametrisation gave 3.5e-12 near 1)."""
        m = module_cls(kernel_size=2, p=1.0, learn_p=True)
        assert isinstance(m.p, torch.Tensor) and float(m.p) == 1.0
        x = torch.rand(2, 3, 8, 8, dtype=torch.float64) + 0.5
        fn: Any = gem_pool if module_cls is GeMPool2d else lp_pool
        # dL/dp at p = 1 by a central difference of the functional, in float64.
        h = 1e-6
        slope = (sign * fn(x, 2, p=1.0 + h).sum() - sign * fn(x, 2, p=1.0 + 3 * h).sum()) / -(
            2 * h
        )  # the one-sided slope at 1 + 2h
        (sign * m(x.float()).sum()).backward()
        torch.testing.assert_close(_grad(m.p_raw).double(), slope, rtol=1e-3, atol=0.0)
        assert slope < -0.1  # a usable gradient, of the sign that raises p
        opt = torch.optim.SGD(m.parameters(), lr=0.5 / float(-slope))
        for _ in range(5):
            opt.zero_grad()
            (sign * m(x.float()).sum()).backward()
            opt.step()
        assert float(m.p) > 1.5

    def test_below_one_reads_one_and_keeps_its_gradient(self) -> None:
        m = GeMPool2d(output_size=1, p=1.0, learn_p=True)
        with torch.no_grad():
            m.p_raw.fill_(0.25)  # where a loss that wants p < 1 pushes it
        assert float(m.p) == 1.0 and float(m.power()) == 1.0
        x = torch.rand(2, 3, 6, 6) + 0.5
        torch.testing.assert_close(m(x), gem_pool(x, output_size=1, p=1.0))
        (-m(x).sum()).backward()
        assert float(_grad(m.p_raw)) < 0  # the loss wants p larger: the gradient says so below 1 too

    def test_version_1_state_dict_loads(self) -> None:
        """Version 1 stored p = 1 + softplus(p_raw); its state dicts load to the same p."""
        m = LPPool2d(2.0, 2, learn_p=True)
        old = m.state_dict()
        old["p_raw"] = torch.tensor(math.log(math.expm1(2.0)))  # softplus(raw) = 2: p = 3
        old._metadata[""]["version"] = 1  # type: ignore[attr-defined]
        buffer = io.BytesIO()
        torch.save(old, buffer)
        buffer.seek(0)
        m.load_state_dict(torch.load(buffer))
        torch.testing.assert_close(m.p, torch.tensor(3.0))
        # Current state dicts, with or without metadata (safetensors keeps none), load as they are.
        current = LPPool2d(2.0, 2, learn_p=True)
        with torch.no_grad():
            current.p_raw.fill_(4.5)
        m.load_state_dict(current.state_dict())
        torch.testing.assert_close(m.p, torch.tensor(4.5))
        m.load_state_dict(dict(LPPool2d(2.5, 2, learn_p=True).state_dict()))
        torch.testing.assert_close(m.p, torch.tensor(2.5))

    @pytest.mark.parametrize("module_cls", [GeMPool2d, LPPool2d])
    def test_compiled_and_exported_never_overflow(self, module_cls) -> None:
        """The same form under torch.compile and torch.export: p = 100, inputs up to 1e3."""
        m = module_cls(kernel_size=3, stride=2, padding=1, p=100.0, learn_p=True)
        x64 = _wide_input((2, 3, 10, 9), seed=11).abs()
        x = x64.float()
        reduce = ref.lp(100.0) if module_cls is LPPool2d else ref.gem(100.0, 1e-6)
        expected = ref.pooled(x64, reduce, (3, 3), (2, 2), (1, 1))
        torch._dynamo.reset()
        compiled = torch.compile(m, fullgraph=True)
        y = compiled(x.clone().requires_grad_(True))
        y.sum().backward()
        torch.testing.assert_close(y.detach().double(), expected, rtol=1e-5, atol=0.0)
        assert torch.isfinite(_grad(m.p_raw))
        exported = torch.export.export(m.eval(), (x,)).module()
        torch.testing.assert_close(exported(x).double(), expected, rtol=1e-5, atol=0.0)


BACKWARD_WINDOWS = [
    # (batched input shape, window kwargs, memory format): every route of the hand-written backward
    ((1, 2, 8, 8), {"kernel_size": 3, "stride": 2}, "contiguous"),  # phases fit: one-pass un-phasing
    ((1, 2, 9, 8), {"kernel_size": 3, "stride": 2}, "contiguous"),  # phases longer than the input
    ((1, 2, 8, 8), {"kernel_size": 3, "stride": 2}, "channels_last"),
    ((1, 2, 7, 9), {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}, "contiguous"),
    ((1, 2, 5, 6), {"kernel_size": 2, "stride": 1}, "contiguous"),  # unit stride: no phase copy
    ((1, 1, 8, 7), {"kernel_size": 2, "stride": 3, "ceil_mode": True}, "contiguous"),  # gaps
    ((1, 2, 11), {"kernel_size": (3,), "stride": (2,)}, "contiguous"),
    ((1, 1, 5, 6, 7), {"kernel_size": (2, 2, 3), "stride": (1, 2, 2)}, "contiguous"),
]


def _backward_input(family: str, shape: tuple[int, ...], layout: str) -> torch.Tensor:
    """float64, away from the kinks of |x| at 0 and GeM's clamp: signed for lp, in [0.1, 1.1) for gem."""
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.rand(*shape, generator=gen, dtype=torch.float64) + 0.1
    if family == "lp":
        x = torch.where(torch.rand(*shape, generator=gen) < 0.5, -x, x)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_(True)


class TestTrainingGradients:
    """Eager training on kernel windows runs a hand-written backward (the closed-form gradient from
    ``log z`` kept by the forward), where autograd through the offset steps was 1.25-1.29x the old
    plain form's time at kernel 3, stride 2 (issue 19). Finite differences are its reference, for x and
    a tensor p, to first and second order, on every route through it."""

    @pytest.mark.parametrize("family", ["lp", "gem"])
    @pytest.mark.parametrize("shape, kw, layout", BACKWARD_WINDOWS)
    def test_gradcheck_x_and_tensor_p(self, family, shape, kw, layout) -> None:
        x = _backward_input(family, shape, layout)
        q = torch.tensor(2.7, dtype=torch.float64, requires_grad=True)
        fn: Any = (
            (lambda t, p: lp_pool(t, **kw, p=p))
            if family == "lp"
            else (lambda t, p: gem_pool(t, **kw, p=p, eps=1e-3))
        )
        assert torch.autograd.gradcheck(fn, (x, q))
        assert torch.autograd.gradgradcheck(fn, (x, q))
        # p alone (x a constant) and x alone (p a constant tensor): each input's gradient by itself.
        assert torch.autograd.gradcheck(lambda p: fn(x.detach(), p), (q,))
        assert torch.autograd.gradcheck(lambda t: fn(t, q.detach()), (x,))

    @pytest.mark.parametrize("family", ["lp", "gem"])
    @pytest.mark.parametrize("p", [2.0, 3.0, 2.5, 40.0])
    @pytest.mark.parametrize("shape, kw, layout", BACKWARD_WINDOWS[:4])
    def test_gradcheck_float_p(self, family, p, shape, kw, layout) -> None:
        """p = 2 and 3 keep ``z`` for torch's fast powers; other floats ``log z``."""
        x = _backward_input(family, shape, layout)
        fn: Any = lp_pool if family == "lp" else gem_pool
        extra = {} if family == "lp" else {"eps": 1e-3}
        assert torch.autograd.gradcheck(lambda t: fn(t, **kw, p=p, **extra), (x,))

    @pytest.mark.parametrize("family", ["lp", "gem"])
    def test_all_zero_windows_get_zero_gradient(self, family) -> None:
        """A window of zeros (S = 0): value 0 and finite gradients, no NaN; p = 1 (a learnable p's floor)
        included, where ``log 0`` would meet a zero factor. Above p = 1 the gradient there is 0; at p = 1
        it is the plain sum's or mean's: ``sgn(0) = 0`` for lp, ``1/N`` for GeM with eps = 0 (torch's
        clamp passes the gradient at the bound)."""
        x = torch.zeros(1, 1, 6, 6, dtype=torch.float64)
        x[..., :2, :2] = 0.5  # one window with values, the rest all zero
        fn: Any = lp_pool if family == "lp" else gem_pool
        extra = {} if family == "lp" else {"eps": 0.0}
        for p in (1.0, 2.7):
            leaf = x.clone().requires_grad_(True)
            q = torch.tensor(p, dtype=torch.float64, requires_grad=True)
            y = fn(leaf, 2, 2, **extra, p=q)
            y.sum().backward()
            assert torch.isfinite(_grad(leaf)).all() and torch.isfinite(_grad(q))
            assert float(y[..., 1:, :].abs().sum()) == 0.0 and float(y[..., :, 1:].abs().sum()) == 0.0
            at_zero = _grad(leaf)[..., 2:, :]
            expected_grad = 0.25 if (family == "gem" and p == 1.0) else 0.0
            torch.testing.assert_close(at_zero, torch.full_like(at_zero, expected_grad), rtol=0, atol=1e-12)
            # The one window with values: its closed form, (Σ a^p / N)^(1/p) with N = 4 (gem) or 1.
            expected = 0.5 * (4.0 if family == "lp" else 1.0) ** (1 / p)
            assert float(y[0, 0, 0, 0]) == pytest.approx(expected, rel=1e-12)

    @pytest.mark.parametrize("family", ["lp", "gem"])
    def test_torch_func_grad_equals_autograd(self, family) -> None:
        """torch.func's transforms cannot take the hand-written backward's tensors; such calls take the
        differentiable form, so ``torch.func.grad`` (per-sample gradients, meta-learning) still works and
        agrees with ``backward()``."""
        fn: Any = lp_pool if family == "lp" else gem_pool
        x = _backward_input(family, (2, 3, 9, 8), "contiguous").detach()
        q = torch.tensor(2.7, dtype=torch.float64)
        got = torch.func.grad(lambda t, p: fn(t, 3, 2, p=p).sum(), argnums=(0, 1))(x, q)
        leaf, power = x.clone().requires_grad_(True), q.clone().requires_grad_(True)
        fn(leaf, 3, 2, p=power).sum().backward()
        torch.testing.assert_close(got[0], _grad(leaf))
        torch.testing.assert_close(got[1], _grad(power))

    def test_the_transform_check_exists(self) -> None:
        """Contract: poolcore/lp.py tells torch.func's wrapped tensors apart with this private function;
        without it every call takes the slower differentiable form. If this fails after a torch upgrade,
        find its replacement."""
        check = torch._C._functorch.is_functorch_wrapped_tensor
        assert check(torch.ones(1)) is False
        seen: list[bool] = []

        def total(t: torch.Tensor) -> torch.Tensor:
            seen.append(check(t))
            return t.sum()

        torch.func.grad(total)(torch.ones(2))
        assert seen == [True]
