"""Stochastic pooling battery (kornia style): shapes, errors, references, sampling statistics.

Statistical tests use a fixed seed and reject at p < 1e-3 (chi-square goodness of fit, scipy.stats.chi2).
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import chi2
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import poolcore
from poolcore import stochastic
from poolcore.nn import StochasticPool1d, StochasticPool2d, StochasticPool3d, stochastic_pool
from tests.conftest import tolerance
from tests.poolcore import export_harness as harness

ALPHA = 1e-3
SEED_WINDOW = [[0.0, 1.1, 2.5], [0.9, 2.0, 1.0], [0.0, 1.5, 1.0]]


def _gen(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _chi2_p(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """p-value of a chi-square goodness-of-fit test over the categories with non-zero probability;
    a count in a zero-probability category fails outright."""
    counts, probs = counts.double().flatten(), probs.double().flatten()
    if bool((counts[probs == 0] > 0).any()):
        return 0.0
    keep = probs > 0
    if int(keep.sum()) == 1:
        return 1.0  # one possible outcome, and every count is in it
    expected = probs[keep] * counts.sum()
    stat = float(((counts[keep] - expected) ** 2 / expected).sum())
    return float(chi2.sf(stat, int(keep.sum()) - 1))


def _value_frequency_p(values: torch.Tensor, window: torch.Tensor) -> float:
    """p-value of :func:`_chi2_p` for how often each distinct value of ``window`` was drawn among
    ``values`` (one per sampled window), against that value's share of the window's sum: a value held at
    several positions counts for all of them. Every draw must be one of the window's values."""
    distinct = window.flatten().unique()
    counts = (values.unsqueeze(1) == distinct).sum(0)
    assert counts.sum() == values.numel()
    probs = torch.stack([window[window == v].sum() for v in distinct]) / window.sum()
    return _chi2_p(counts, probs)


def _unfold_windows(
    x: torch.Tensor, k: int, s: int, p: int, ceil_mode: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent reference: every 2d window as (B, C, P, K) values and the flat input index of each
    position (-1 for padding or ceil-mode overhang), via F.unfold on a zero-padded copy."""
    b, c, h, w = x.shape
    out = F.max_pool2d(x.double(), k, s, p, ceil_mode=ceil_mode).shape[-2:]  # torch's own output size
    extra = [max(0, (o - 1) * s + k - n - 2 * p) for o, n in zip(out, (h, w), strict=True)]
    pads = (p, p + extra[1], p, p + extra[0])
    xp = F.pad(x, pads)
    idx = F.pad(torch.arange(h * w, dtype=torch.float64).view(1, 1, h, w) + 1, pads) - 1
    vals = F.unfold(xp.reshape(b * c, 1, *xp.shape[-2:]).double(), k, stride=s)
    pos = F.unfold(idx, k, stride=s)
    vals = vals.view(b, c, k * k, -1).transpose(-1, -2)[..., : out[0] * out[1], :]
    return vals, pos.view(k * k, -1).t().long()


def _eval_reference(x: torch.Tensor, k: int, s: int, p: int = 0, ceil_mode: bool = False) -> torch.Tensor:
    vals, _ = _unfold_windows(x, k, s, p, ceil_mode)
    sums, squares = vals.sum(-1), (vals * vals).sum(-1)
    ref = torch.where(sums > 0, squares / sums.clamp_min(1e-300), torch.zeros_like(sums))
    return ref.view(*x.shape[:2], *F.max_pool2d(x.double(), k, s, p, ceil_mode=ceil_mode).shape[-2:])


class TestStochasticPool:
    # ---- smoke and shapes ------------------------------------------------------------------------------
    def test_smoke(self, device: torch.device, dtype: torch.dtype) -> None:
        x = torch.rand(2, 3, 9, 9, device=device, dtype=dtype)
        for training in (False, True):
            y = stochastic_pool(x, 3, 2, training=training)
            assert y.shape == (2, 3, 4, 4)
            assert y.device == x.device and y.dtype == dtype
            assert torch.isfinite(y).all()

    @pytest.mark.parametrize(
        ("shape", "kwargs", "reference"),
        [
            ((2, 3, 11), {"kernel_size": 3, "stride": 2, "dims": 1}, lambda x: F.max_pool1d(x, 3, 2)),
            ((3, 11), {"kernel_size": (3,), "stride": 2, "padding": 1}, lambda x: F.max_pool1d(x, 3, 2, 1)),
            ((2, 3, 9, 10), {"kernel_size": 3, "stride": 2}, lambda x: F.max_pool2d(x, 3, 2)),
            ((3, 9, 10), {"kernel_size": 2, "dims": 2}, lambda x: F.max_pool2d(x, 2)),
            (
                (2, 3, 9, 10),
                {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True},
                lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True),
            ),
            (
                (2, 3, 9, 10),
                {"kernel_size": (2, 3), "stride": (1, 2)},
                lambda x: F.max_pool2d(x, (2, 3), (1, 2)),
            ),
            ((1, 2, 5, 6, 7), {"kernel_size": 2}, lambda x: F.max_pool3d(x, 2)),
            (
                (2, 5, 6, 7),
                {"kernel_size": 3, "stride": 2, "padding": 1, "dims": 3},
                lambda x: F.max_pool3d(x, 3, 2, 1),
            ),
            ((2, 3, 9, 10), {"output_size": (4, 3)}, lambda x: F.adaptive_max_pool2d(x, (4, 3))),
            ((2, 3, 9, 10), {"output_size": (None, 3)}, lambda x: F.adaptive_max_pool2d(x, (None, 3))),  # type: ignore[arg-type]
            ((3, 9, 10), {"output_size": 1, "dims": 2}, lambda x: F.adaptive_max_pool2d(x, 1)),
            ((2, 3, 40), {"output_size": (5,)}, lambda x: F.adaptive_max_pool1d(x, 5)),
            ((1, 2, 5, 6, 7), {"output_size": (2, 3, 4)}, lambda x: F.adaptive_max_pool3d(x, (2, 3, 4))),
            ((2, 3, 12, 12), {"output_size": 1}, lambda x: F.adaptive_max_pool2d(x, 1)),
        ],
    )
    def test_shapes(self, shape: tuple[int, ...], kwargs: dict, reference) -> None:
        x = torch.rand(shape)
        expected = reference(x).shape
        assert stochastic_pool(x, **kwargs).shape == expected
        assert stochastic_pool(x, training=True, **kwargs).shape == expected

    def test_dims_explicit(self) -> None:
        x = torch.rand(4, 9, 10)  # rank 3 with a scalar window: dims says which reading
        assert stochastic_pool(x, 3, 2, dims=2).shape == (4, 4, 4)
        assert stochastic_pool(x, 3, 2, dims=1).shape == (4, 9, 4)

    # ---- errors ----------------------------------------------------------------------------------------
    @pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), -float("inf")])
    def test_rejects_negative_and_non_finite(self, bad: float) -> None:
        x = torch.rand(1, 2, 6, 6)
        x[0, 1, 3, 2] = bad
        for training in (False, True):
            with pytest.raises(ValueError, match=r"non-negative finite activations \(apply ReLU first\)"):
                stochastic_pool(x, 2, training=training)

    def test_rejects_integer(self) -> None:
        with pytest.raises(ValueError, match=r"floating-point.*torch\.int64"):
            stochastic_pool(torch.ones(1, 4, 4, dtype=torch.long), 2)

    def test_window_argument_errors(self) -> None:
        x = torch.rand(1, 4, 4)
        with pytest.raises(ValueError, match="exactly one of kernel_size"):
            stochastic_pool(x)
        with pytest.raises(ValueError, match="exactly one of kernel_size"):
            stochastic_pool(x, 2, output_size=2)
        with pytest.raises(ValueError, match=r"larger than the padded input"):
            stochastic_pool(x, 7, padding=1, dims=2)
        with pytest.raises(ValueError, match="kernel_size must be positive"):
            StochasticPool2d(0)

    def test_check_input_can_be_skipped(self) -> None:
        x = torch.rand(1, 4, 4)
        x[0, 0, 0] = -1.0
        y = stochastic_pool(x, 2, check_input=False, training=True, dims=2)  # garbage in, but no crash
        assert y.shape == (1, 2, 2)

    # ---- layout, module, registry ------------------------------------------------------------------------
    def test_noncontiguous(self) -> None:
        x = torch.rand(3, 2, 10, 9).transpose(0, 1)
        assert not x.is_contiguous()
        torch.testing.assert_close(stochastic_pool(x, 3, 2), stochastic_pool(x.contiguous(), 3, 2))
        a = stochastic_pool(x, 3, 2, training=True, generator=_gen(5))
        b = stochastic_pool(x.contiguous(), 3, 2, training=True, generator=_gen(5))
        assert torch.equal(a, b)

    @pytest.mark.parametrize(
        ("module", "shape", "kwargs"),
        [
            (StochasticPool1d, (2, 3, 17), {"kernel_size": 3, "stride": 2, "padding": 1}),
            (StochasticPool2d, (2, 3, 9, 10), {"kernel_size": 3, "stride": 2}),
            (StochasticPool2d, (2, 3, 9, 10), {"output_size": (4, 5)}),
            (StochasticPool3d, (1, 2, 5, 6, 7), {"kernel_size": 2, "ceil_mode": True}),
        ],
    )
    def test_module_equals_functional(self, module, shape: tuple[int, ...], kwargs: dict) -> None:
        x = torch.rand(shape)
        m = module(**kwargs)
        dims = module.dims
        torch.testing.assert_close(m.eval()(x), stochastic_pool(x, dims=dims, **kwargs))
        m.train()
        torch.manual_seed(11)
        a = m(x)
        torch.manual_seed(11)
        b = stochastic_pool(x, dims=dims, training=True, **kwargs)
        assert torch.equal(a, b)

    def test_extra_repr(self) -> None:
        assert repr(StochasticPool2d(3, 2)) == (
            "StochasticPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=False)"
        )
        assert repr(StochasticPool1d(output_size=4)) == "StochasticPool1d(output_size=4)"

    def test_registry(self) -> None:
        spec = poolcore.get_spec("stochastic")
        assert spec.random and spec.takes_training
        assert spec.modules == {1: StochasticPool1d, 2: StochasticPool2d, 3: StochasticPool3d}
        x = torch.rand(2, 3, 9, 9)
        a = poolcore.pool(x, "stochastic", kernel_size=3, stride=2, training=True, generator=_gen(3))
        b = stochastic_pool(x, 3, 2, training=True, generator=_gen(3))
        assert torch.equal(a, b)
        torch.testing.assert_close(
            poolcore.pool(x, "stochastic", output_size=2), stochastic_pool(x, output_size=2)
        )

    # ---- eval references ---------------------------------------------------------------------------------
    def test_seed_example(self) -> None:
        x = torch.tensor(SEED_WINDOW)
        assert sum(v * v for row in SEED_WINDOW for v in row) == pytest.approx(16.52)
        expected = torch.tensor(16.52 / 10)
        torch.testing.assert_close(stochastic_pool(x.unsqueeze(0), 3, dims=2).squeeze(), expected)
        torch.testing.assert_close(stochastic_pool(x.view(1, 1, 3, 3), output_size=1).squeeze(), expected)
        torch.testing.assert_close(StochasticPool2d(3).eval()(x.unsqueeze(0)).squeeze(), expected)

    @pytest.mark.parametrize(
        ("k", "s", "p", "ceil_mode"),
        [
            (3, 2, 0, False),
            (2, 2, 0, False),
            (3, 2, 1, False),
            (3, 2, 1, True),
            (2, 3, 0, True),
            (5, 1, 2, False),
            (3, 1, 0, False),
        ],
    )
    def test_eval_matches_unfold_reference(
        self, device: torch.device, any_dtype: torch.dtype, k: int, s: int, p: int, ceil_mode: bool
    ) -> None:
        x = torch.rand(2, 3, 12, 11, device=device).to(any_dtype)
        x[0, 0, :6, :6] = 0  # some all-zero windows
        ref = _eval_reference(x.cpu().double(), k, s, p, ceil_mode)
        y = stochastic_pool(x, k, s, p, ceil_mode)
        assert y.dtype == any_dtype and y.device == x.device
        torch.testing.assert_close(y.cpu().double(), ref, **tolerance(any_dtype))

    def test_eval_adaptive_and_3d_reference(self) -> None:
        x = torch.rand(2, 3, 10, 9, dtype=torch.float64)
        ref = F.adaptive_avg_pool2d(x * x, (4, 5)) / F.adaptive_avg_pool2d(x, (4, 5))
        torch.testing.assert_close(stochastic_pool(x, output_size=(4, 5)), ref)
        x3 = torch.rand(2, 6, 7, 8, dtype=torch.float64)
        ref3 = F.avg_pool3d(x3 * x3, 3, 2, 1, divisor_override=1) / F.avg_pool3d(
            x3, 3, 2, 1, divisor_override=1
        )
        torch.testing.assert_close(stochastic_pool(x3, 3, 2, 1, dims=3), ref3)

    def test_all_zero_windows(self, device: torch.device) -> None:
        x = torch.zeros(1, 2, 6, 6, device=device)
        for kwargs in (
            {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True},
            {"output_size": (4, 4)},
            {"output_size": 1},
            {"kernel_size": 6, "stride": 1},
        ):
            for training in (False, True):
                xr = x.clone().requires_grad_()
                y = stochastic_pool(xr, training=training, generator=_gen(0, device), **kwargs)
                assert torch.equal(y, torch.zeros_like(y))
                y.sum().backward()
                assert xr.grad is not None and torch.isfinite(xr.grad).all()

    # ---- gradients -------------------------------------------------------------------------------------
    @pytest.mark.parametrize(
        "kwargs",
        [
            {"kernel_size": 3, "stride": 2, "padding": 1},
            {"kernel_size": 2, "ceil_mode": True},
            {"output_size": (2, 3)},
            {"output_size": 1},
        ],
    )
    def test_gradcheck_eval(self, kwargs: dict) -> None:
        x = (torch.rand(1, 2, 5, 6, dtype=torch.float64) + 0.1).requires_grad_()
        assert torch.autograd.gradcheck(lambda t: stochastic_pool(t, **kwargs), (x,))

    @pytest.mark.parametrize("kwargs", [{"kernel_size": 3, "stride": 2, "padding": 1}, {"output_size": 1}])
    def test_gradcheck_train_fixed_generator(self, kwargs: dict) -> None:
        x = (torch.rand(1, 2, 5, 6, dtype=torch.float64) + 0.1).requires_grad_()
        fn = lambda t: stochastic_pool(t, training=True, generator=_gen(7), **kwargs)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x,))

    @pytest.mark.parametrize(
        ("k", "s", "p", "ceil_mode"), [(3, 2, 1, True), (3, 1, 0, False), (2, 2, 0, False), (7, 2, 3, True)]
    )
    def test_train_gradient_is_one_hot_at_sample(self, k: int, s: int, p: int, ceil_mode: bool) -> None:
        # Distinct positive values, so each output identifies the position it sampled.
        x = (torch.randperm(2 * 3 * 9 * 8, dtype=torch.float64) + 1).view(2, 3, 9, 8).requires_grad_()
        y = stochastic_pool(x, k, s, p, ceil_mode, training=True, generator=_gen(1))
        vals, pos = _unfold_windows(x.detach(), k, s, p, ceil_mode)
        hit = vals == y.detach().flatten(2).unsqueeze(-1)
        assert bool((hit.sum(-1) == 1).all()), "each output is exactly one value of its window"
        chosen = pos.expand_as(hit)[hit].view(2, 3, -1)
        assert bool((chosen >= 0).all()), "padding is never chosen"
        expected = torch.zeros(2, 3, 9 * 8, dtype=torch.float64)
        expected.scatter_add_(2, chosen, torch.ones_like(chosen, dtype=torch.float64))
        y.sum().backward()
        assert x.grad is not None
        torch.testing.assert_close(x.grad.view(2, 3, -1), expected)

    def test_train_3d_samples_its_own_window(self) -> None:
        x = (torch.randperm(2 * 4 * 6 * 6, dtype=torch.float64) + 1).view(1, 2, 4, 6, 6).requires_grad_()
        y = stochastic_pool(x, 2, training=True, generator=_gen(8))
        y.sum().backward()
        assert x.grad is not None
        # Non-overlapping windows: one unit of gradient per window, at a position holding the output value.
        torch.testing.assert_close(F.avg_pool3d(x.grad, 2, divisor_override=1), torch.ones_like(y))
        torch.testing.assert_close(F.max_pool3d(x.grad * x.detach(), 2), y.detach())

    def test_index_and_value_paths_agree(self) -> None:
        x = torch.rand(2, 3, 11, 10)
        for kwargs in ({"kernel_size": 3, "stride": 2, "padding": 1}, {"output_size": (3, 4)}):
            a = stochastic_pool(x, training=True, generator=_gen(9), **kwargs)
            b = stochastic_pool(x.clone().requires_grad_(), training=True, generator=_gen(9), **kwargs)
            assert torch.equal(a, b.detach())

    # ---- sampling statistics -----------------------------------------------------------------------------
    def test_seed_window_frequencies(self) -> None:
        n = 20000
        a = torch.tensor(SEED_WINDOW)
        x = a.expand(n, 3, 3).contiguous().requires_grad_()
        y = stochastic_pool(x, 3, training=True, generator=_gen(2024), dims=2)
        y.sum().backward()
        assert x.grad is not None
        counts = x.grad.sum(0)  # the gradient is one-hot per window: it counts the sampled positions
        assert counts.sum() == n and counts[a == 0].sum() == 0
        assert _chi2_p(counts, a / a.sum()) > ALPHA
        # The no-grad (value) path, on the distinct values of the window.
        values = stochastic_pool(x.detach(), 3, training=True, generator=_gen(7), dims=2).flatten()
        assert values.numel() == n
        assert _value_frequency_p(values, a) > ALPHA

    def test_padded_and_ceil_mode_windows_frequencies(self) -> None:
        n = 20000
        # 2x3 input, kernel 3, stride 2, padding 1, ceil_mode: windows overhang both into the padding and
        # past the end; zeros at the end of the real rows must never be chosen either.
        a = torch.tensor([[0.5, 2.0, 0.0], [1.5, 1.0, 0.0]])
        x = a.expand(n, 2, 3).contiguous()
        y = stochastic_pool(x, 3, 2, 1, True, training=True, generator=_gen(99), dims=2).flatten(1)
        assert y.shape == (n, 4)
        vals, pos = _unfold_windows(a.view(1, 1, 2, 3), 3, 2, 1, True)
        for o in range(4):
            real = pos[o] >= 0
            w = vals[0, 0, o][real]
            distinct = w.unique()
            counts = (y[:, o].double().unsqueeze(1) == distinct).sum(0)
            assert counts.sum() == n, "every sample is a real position's value"
            probs = torch.stack([w[w == v].sum() for v in distinct]) / w.sum()
            assert _chi2_p(counts, probs) > ALPHA

    def test_adaptive_window_frequencies(self) -> None:
        n = 20000
        # Length 5 into 3 bins: [0, 2), [1, 4), [3, 5); the short bins never pick their missing offset.
        a = torch.tensor([1.0, 3.0, 2.0, 4.0, 0.5])
        x = a.expand(n, 1, 5).contiguous().requires_grad_()
        y = stochastic_pool(x, output_size=3, dims=1, training=True, generator=_gen(5))
        for o, (lo, hi) in enumerate([(0, 2), (1, 4), (3, 5)]):
            w = a[lo:hi]
            counts = (y[:, 0, o].detach().unsqueeze(1) == w).sum(0)
            assert counts.sum() == n
            assert _chi2_p(counts, w / w.sum()) > ALPHA

    def test_large_window_frequencies(self) -> None:
        # Global (36 positions, with zeros) takes the cumsum + searchsorted path.
        n = 20000
        a = torch.rand(6, 6, generator=_gen(0)) * (torch.rand(6, 6, generator=_gen(1)) > 0.3)
        x = a.expand(n, 6, 6).contiguous().requires_grad_()
        y = stochastic_pool(x, output_size=1, training=True, generator=_gen(12), dims=2)
        y.sum().backward()
        assert x.grad is not None
        assert _chi2_p(x.grad.sum(0), a / a.sum()) > ALPHA

    def test_overlapping_windows_independent(self) -> None:
        n = 30000
        # Kernel 3, stride 2 on length 5: windows {0,1,2} and {2,3,4} share position 2.
        a = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
        y = stochastic_pool(a.expand(n, 1, 5).contiguous(), 3, 2, dims=1, training=True, generator=_gen(31))
        first = (y[:, 0, 0].unsqueeze(1) == a[:3]).float().argmax(1)
        second = (y[:, 0, 1].unsqueeze(1) == a[2:]).float().argmax(1)
        joint = torch.bincount(first * 3 + second, minlength=9).view(3, 3)
        p, q = a[:3] / a[:3].sum(), a[2:] / a[2:].sum()
        assert _chi2_p(joint, torch.outer(p, q)) > ALPHA

    def test_chi2_helper_rejects_wrong_distribution(self) -> None:
        # The statistical tests above can fail: sampling uniformly instead is rejected.
        n = 20000
        a = torch.tensor(SEED_WINDOW).flatten()
        positive = (a > 0).nonzero().flatten()
        uniform = positive[torch.randint(len(positive), (n,), generator=_gen(0))]
        assert _chi2_p(torch.bincount(uniform, minlength=9), a / a.sum()) < ALPHA

    def test_manual_seed_controls_default_generator(self) -> None:
        x = torch.rand(2, 4, 16, 16)
        torch.manual_seed(5)
        a = stochastic_pool(x, 2, training=True)
        torch.manual_seed(5)
        b = stochastic_pool(x, 2, training=True)
        c = stochastic_pool(x, 2, training=True)
        assert torch.equal(a, b) and not torch.equal(a, c)

    def test_value_check_runs_over_every_chunk(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # The training walk checks each chunk as it loads it: force many chunks, and put the bad value in
        # the last plane at a position no 2x2 window covers (odd size): it must still be rejected.
        monkeypatch.setattr(stochastic, "_CHUNK_BYTES_CPU", 64)
        monkeypatch.setattr(stochastic, "_MIN_CHUNK_BYTES", 64)
        x = torch.rand(3, 4, 5, 5)
        x[2, 3, 4, 4] = -1.0
        with pytest.raises(ValueError, match=r"non-negative finite activations.*got min -1\.0"):
            stochastic_pool(x, 2, training=True)
        assert stochastic_pool(x, 2, training=True, check_input=False).shape == (3, 4, 2, 2)

    # ---- randomness control --------------------------------------------------------------------------------
    def test_generator_reproducible(self, device: torch.device) -> None:
        x = torch.rand(2, 4, 16, 16, device=device)
        a = stochastic_pool(x, 3, 2, training=True, generator=_gen(1, device))
        b = stochastic_pool(x, 3, 2, training=True, generator=_gen(1, device))
        c = stochastic_pool(x, 3, 2, training=True, generator=_gen(2, device))
        assert torch.equal(a, b) and not torch.equal(a, c)

    def test_generator_on_wrong_device(self) -> None:
        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device to build a mismatched generator")
        with pytest.raises(ValueError, match="generator must be on the input's device"):
            stochastic_pool(torch.rand(1, 4, 4), 2, training=True, generator=_gen(0, "cuda"))

    # ---- dtypes, devices -------------------------------------------------------------------------------
    def test_train_dtypes(self, device: torch.device, any_dtype: torch.dtype) -> None:
        x = torch.rand(2, 3, 9, 8, device=device).to(any_dtype)
        y = stochastic_pool(x, 3, 2, 1, training=True, generator=_gen(4, device))
        assert y.dtype == any_dtype and y.device == x.device
        vals, pos = _unfold_windows(x.cpu().double(), 3, 2, 1, False)
        hit = (vals == y.cpu().double().flatten(2).unsqueeze(-1)) & (pos >= 0)
        assert bool(hit.any(-1).all()), "each output is a real value of its window, exactly"

    # ---- compilation ----------------------------------------------------------------------------------
    @pytest.mark.slow
    def test_compiled_kernel_matches_eager(self) -> None:
        x = torch.rand(2, 3, 13, 12)  # test_compiled_flag_same_samples' shape: its graphs are reused there
        x[0, 0, :5, :5] = 0  # all-zero windows, next to padding
        cases: list[dict[str, Any]] = [{"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}]
        for kwargs in [*cases, {"kernel_size": 2}]:
            eager = stochastic_pool(x, training=True, generator=_gen(6), **kwargs)
            fused = stochastic_pool(x, training=True, generator=_gen(6), compiled=True, **kwargs)
            assert torch.equal(eager, fused), "same draws, same samples"
            torch.testing.assert_close(
                stochastic_pool(x, compiled=True, **kwargs), stochastic_pool(x, **kwargs)
            )

    @pytest.mark.slow
    def test_compile_eval(self) -> None:
        x = torch.rand(2, 3, 9, 9)
        compiled = torch.compile(lambda t: stochastic_pool(t, 3, 2, 1, check_input=False))
        torch.testing.assert_close(compiled(x), stochastic_pool(x, 3, 2, 1))


def test_eval_bound() -> None:
    # sum(a^2) / sum(a) lies between the window mean and max (a weighted mean that favours large values).
    x = torch.rand(4, 8, 10, 10, dtype=torch.float64)
    y = stochastic_pool(x, 3, 2)
    assert bool((y >= F.avg_pool2d(x, 3, 2) - 1e-12).all() and (y <= F.max_pool2d(x, 3, 2) + 1e-12).all())


# ---- the sampling rule, against an independent reference ---------------------------------------------------
def _bins(length: int, out: int) -> list[tuple[int, int]]:
    # torch's adaptive bins (aten/src/ATen/native/AdaptivePooling.h)
    return [((i * length) // out, -(-((i + 1) * length) // out)) for i in range(out)]


def _adaptive_windows(x: torch.Tensor, out: tuple[int, int]) -> torch.Tensor:
    """(B, C, P, K) float64 values of each adaptive 2d bin in row-major order, zero-filled to the widest."""
    rows, cols = _bins(x.shape[-2], out[0]), _bins(x.shape[-1], out[1])
    windows = [x[..., r0:r1, c0:c1].reshape(*x.shape[:2], -1) for r0, r1 in rows for c0, c1 in cols]
    k = max(w_.shape[-1] for w_ in windows)
    return torch.stack([F.pad(w_, (0, k - w_.shape[-1])) for w_ in windows], dim=2).double()


def _reference_uniforms(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """The documented uniforms on the CPU. float64: ``torch.rand``'s (53 bits). float32: two per 64-bit
    draw of ``random_()``, the low 24 bits of its low 32-bit half, then of its high half, times 2^-24 (the
    24-bit grid of ``torch.rand``'s float32 uniforms), in int64 arithmetic here."""
    if dtype == torch.float64:
        return torch.rand(shape, dtype=dtype, generator=_gen(seed))
    n = math.prod(shape)
    draws = torch.empty((n + 1) // 2, dtype=torch.int64).random_(generator=_gen(seed))
    halves = torch.stack([draws & 0xFFFFFF, (draws >> 32) & 0xFFFFFF], -1).flatten()[:n]
    return (halves.double() * 2.0**-24).to(dtype).view(shape)


def _reference_samples(vals: torch.Tensor, seed: int, dtype: torch.dtype, walk: bool) -> torch.Tensor:
    """The documented rule: one uniform ``u`` per output in row-major order from the generator, in the
    compute dtype (``dtype``: float32 for float32 and half input, float64 for float64; see
    :func:`_reference_uniforms`); the first position whose inclusive prefix sum exceeds
    ``min(u * S, nextafter(S, 0))``. Windows of at most 25 positions (``walk``) add the prefixes one
    position at a time in the compute dtype; larger ones in float64."""
    u = _reference_uniforms(vals.shape[:-1], dtype, seed)
    if walk:
        terms = vals.to(dtype).unbind(-1)
        sums = [terms[0]]
        for term in terms[1:]:
            sums.append(sums[-1] + term)  # one rounding per addition, in order
        cum = torch.stack(sums, -1)
    else:
        cum, u = vals.double().cumsum(-1), u.double()
    total = cum[..., -1]
    t = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    index = (cum <= t.unsqueeze(-1)).sum(-1).clamp_max(vals.shape[-1] - 1)
    return vals.gather(-1, index.unsqueeze(-1)).squeeze(-1)


SAMPLING_CASES: list[dict[str, Any]] = [
    {"kernel_size": 3, "stride": 2, "padding": 1},
    {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True},
    {"kernel_size": 2},  # 4 positions: the walk that keeps its prefixes
    {"kernel_size": 5, "stride": 1},  # 25 positions: the two-pass running walk
    {"kernel_size": 7, "stride": 1, "padding": 3},
    {"output_size": (4, 5)},  # small adaptive bins: the walk over offsets
    {"output_size": (2, 2)},  # 6x6 (and wider) bins: the blocked gather
    {"output_size": 1},  # global
]


class TestSamplingRule:
    @pytest.mark.parametrize(
        ("grad", "small_blocks", "dtype"),
        [
            pytest.param(False, False, torch.float32, id="values-default"),
            pytest.param(True, False, torch.float32, id="autograd-default"),
            pytest.param(False, True, torch.float32, id="values-small-blocks"),
            pytest.param(True, True, torch.float32, id="autograd-small-blocks"),
            pytest.param(False, False, torch.float64, id="values-float64"),  # float64 uniforms and sums
        ],
    )
    @pytest.mark.parametrize("kwargs", SAMPLING_CASES)
    def test_samples_follow_compute_dtype_uniforms(
        self,
        monkeypatch: pytest.MonkeyPatch,
        kwargs: dict[str, Any],
        grad: bool,
        small_blocks: bool,
        dtype: torch.dtype,
    ) -> None:
        # Every path draws uniforms in the compute dtype from the generator in output order and applies
        # the same inverse CDF, however the work is split: row blocks of a plane and windows scanned in
        # several blocks (small-blocks) give the very same samples.
        if small_blocks:
            monkeypatch.setattr(stochastic, "_CHUNK_BYTES_CPU", 4096)
            monkeypatch.setattr(stochastic, "_MIN_CHUNK_BYTES", 4096)
        x = torch.rand(2, 3, 13, 12, generator=_gen(3)).to(dtype)
        x[0, 0, :6, :6] = 0  # all-zero windows
        x[1, 2] *= x[1, 2] > 0.5  # zeros inside windows
        if "kernel_size" in kwargs:
            k, s = kwargs["kernel_size"], kwargs.get("stride", kwargs["kernel_size"])
            vals, _ = _unfold_windows(x, k, s, kwargs.get("padding", 0), kwargs.get("ceil_mode", False))
        else:
            out = kwargs["output_size"]
            vals = _adaptive_windows(x, (out, out) if isinstance(out, int) else out)
        walk = "kernel_size" in kwargs or kwargs["output_size"] == (4, 5)  # bins of at most 16 positions
        expected = _reference_samples(vals, 21, dtype, walk)
        xin = x.clone().requires_grad_(grad)
        y = stochastic_pool(xin, training=True, generator=_gen(21), **kwargs)
        assert torch.equal(y.detach().double().flatten(2), expected)

    def test_compiled_flag_same_samples(self) -> None:
        x = torch.rand(2, 3, 13, 12)
        for kwargs in SAMPLING_CASES[:5]:
            eager = stochastic_pool(x, training=True, generator=_gen(4), **kwargs)
            fused = stochastic_pool(x, training=True, generator=_gen(4), compiled=True, **kwargs)
            assert torch.equal(eager, fused), kwargs

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
    def test_uniform_stream_independent_of_split(self, dtype: torch.dtype) -> None:
        # Blocks of odd and even sizes (a float32 block may end inside a 64-bit draw): the same values as
        # one draw over the whole output, and as the documented reference.
        sizes = [1, 7, 2, 5, 1, 1, 64, 3]
        whole = stochastic._Uniforms(dtype, _gen(13), torch.device("cpu"))
        expected = whole.fill(torch.empty(sum(sizes), dtype=dtype))
        stream = stochastic._Uniforms(dtype, _gen(13), torch.device("cpu"))
        parts = [stream.fill(torch.empty(n, dtype=dtype)) for n in sizes]
        assert torch.equal(torch.cat(parts), expected)
        assert torch.equal(expected, _reference_uniforms((sum(sizes),), dtype, 13))
        assert bool((expected >= 0).all() and (expected < 1).all())

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
    def test_guard_keeps_t_below_every_positive_sum(self, dtype: torch.dtype) -> None:
        # t = min(u * S, S - tiny) equals the documented min(u * S, nextafter(S, 0)) for every S > 0, and
        # stays below S for the largest u < 1: normal sums (powers of two included) and subnormal ones.
        fi = torch.finfo(dtype)
        tiny = fi.smallest_normal * fi.eps
        exponents = torch.arange(math.log2(tiny), math.log2(fi.max), 0.37, dtype=torch.float64)
        totals = torch.cat([torch.exp2(exponents), torch.exp2(exponents.floor())]).to(dtype)
        totals = torch.cat([totals, torch.tensor([tiny, 3 * tiny, fi.smallest_normal], dtype=dtype)])
        totals = totals[(totals > 0) & totals.isfinite()]
        for u in (
            torch.full_like(totals, 1 - fi.eps / 2),
            torch.rand(totals.shape, generator=_gen(8)).to(dtype),
        ):
            reference = torch.minimum(u * totals, torch.nextafter(totals, torch.zeros_like(totals)))
            t = stochastic._guarded_t(u.clone(), totals)
            assert torch.equal(t, reference)
            assert bool((t < totals).all())

    def test_tiny_probability_is_exact(self) -> None:
        # Weights 2^-33 and 1: with 24-bit uniforms (u a multiple of 2^-24) the first position was picked
        # with probability 2^-24, 2^9 times too often. The float64 rule picks it exactly when u < ~2^-33.
        views = [torch.full((3,), 2.0**-33), torch.ones(3)]
        u = torch.tensor([2.0**-40, 2.0**-34, 2.0**-32], dtype=torch.float64)
        assert stochastic._select(views, u).tolist() == [2.0**-33, 2.0**-33, 1.0]


# ---- memory ------------------------------------------------------------------------------------------------
class _PeakTensorBytes(TorchDispatchMode):
    """Peak bytes of tensor storage allocated by ops inside the mode and still referenced.

    Every op's outputs are seen here; a storage is live while any tensor on it is (views included), and
    storages that existed before (the input) and their views are not counted. Deterministic, unlike RSS.
    """

    def __init__(self) -> None:
        super().__init__()
        self.refs: dict[int, list[int]] = {}  # storage address -> [bytes, live tensors]
        self.outside: set[int] = set()
        self.live = self.peak = 0

    def _release(self, key: int) -> None:
        entry = self.refs[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self.refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for t in tree_flatten((args, kwargs or {}))[0]:
            if isinstance(t, torch.Tensor):
                key = t.untyped_storage().data_ptr()
                if key not in self.refs:
                    self.outside.add(key)
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key in self.refs:
                self.refs[key][1] += 1
            elif key in self.outside or key == 0:
                continue
            else:
                self.refs[key] = [storage.nbytes(), 1]
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._release, key)
        return out


def _peak_bytes(fn: Any) -> int:
    with _PeakTensorBytes() as mode:
        fn()
    return mode.peak


class TestMemory:
    def test_counter_sees_allocations(self) -> None:
        # The counter itself: a (P, K) gather the old large-window path made is counted in full.
        x = torch.rand(1, 1, 256, 256)
        peak = _peak_bytes(lambda: x.flatten(2).expand(1, 49, -1).contiguous().double().cumsum(-1))
        assert peak >= 2 * 49 * x.numel() * 8

    @pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
    @pytest.mark.parametrize(
        "kwargs",
        [
            {
                "kernel_size": 7,
                "stride": 1,
            },  # measured at 205x the input before (3.3 GB for one 2048^2 plane)
            {"kernel_size": 11, "stride": 1},
            {"kernel_size": 3, "stride": 1},
            {"kernel_size": 5, "stride": 1, "padding": 2},
            {"kernel_size": 2},
            {"output_size": 1},
            {"output_size": (5, 7)},
            {"output_size": (300, 200)},
        ],
    )
    def test_extra_memory_within_twice_the_input(self, kwargs: dict[str, Any], training: bool) -> None:
        # Two 2 MiB planes; the bound includes the output (about the input's size at stride 1).
        x = torch.rand(1, 2, 512, 512)
        peak = _peak_bytes(lambda: stochastic_pool(x, training=training, generator=_gen(0), **kwargs))
        assert peak <= 2 * x.numel() * x.element_size(), f"{peak / (x.numel() * 4):.2f}x the input"

    def test_extra_memory_many_planes(self) -> None:
        x = torch.rand(8, 32, 48, 48)
        for kwargs in ({"kernel_size": 3, "stride": 2}, {"kernel_size": 7, "stride": 1}, {"output_size": 1}):
            for training in (True, False):
                peak = _peak_bytes(lambda kw=kwargs, tr=training: stochastic_pool(x, training=tr, **kw))
                assert peak <= 2 * x.numel() * x.element_size(), kwargs

    def test_no_cache_grows_with_input_sizes(self) -> None:
        for size in (9, 10, 11, 12):
            stochastic_pool(torch.rand(1, 2, size, size), output_size=2, training=True)
            stochastic_pool(torch.rand(1, 2, size, size), 7, 1, padding=3, training=True)
        caches = {name: fn for name, fn in vars(stochastic).items() if hasattr(fn, "cache_info")}
        assert set(caches) <= {"_compiled"}, "only the two compiled kernels are cached"
        assert caches["_compiled"].cache_info().currsize <= 2


# ---- negative input, all-zero windows, host syncs (issue 19, items 3, 4, 6) --------------------------------
EDGE_CASES: list[dict[str, Any]] = [
    {"kernel_size": 2},
    {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True},
    {"kernel_size": 5, "stride": 1},  # the two-pass running walk
    {"output_size": (4, 5)},
    {"output_size": (2, 2)},  # the blocked gather
    {"output_size": 1},
]


class TestNegativeInput:
    """Negatives count as zero inside the operator, whether or not the value check runs: the answer is the
    one for ``x.relu()``."""

    def test_issue_windows(self) -> None:
        for window, expected in (([-1.0, 2.0, 3.0, -4.0], 13 / 5), ([-1.0, 1.0, 0.0, 0.0], 1.0)):
            x = torch.tensor(window).view(1, 1, 2, 2)
            y = stochastic_pool(x, 2, check_input=False)
            torch.testing.assert_close(y, torch.tensor(expected).view(1, 1, 1, 1))

    @pytest.mark.parametrize("grad", [False, True], ids=["values", "autograd"])
    @pytest.mark.parametrize("kwargs", EDGE_CASES)
    def test_equals_relu_input(self, kwargs: dict[str, Any], grad: bool) -> None:
        x = torch.randn(2, 3, 13, 12, generator=_gen(4))
        x[0, 0, :6, :6] = -x[0, 0, :6, :6].abs()  # windows with no positive value
        relu = x.relu()
        torch.testing.assert_close(
            stochastic_pool(x, check_input=False, **kwargs), stochastic_pool(relu, **kwargs)
        )
        xin = x.clone().requires_grad_(grad)
        a = stochastic_pool(xin, training=True, generator=_gen(8), check_input=False, **kwargs)
        b = stochastic_pool(relu, training=True, generator=_gen(8), **kwargs)
        assert torch.equal(a.detach(), b)
        if grad:
            a.sum().backward()
            assert xin.grad is not None and not bool((xin.grad[x < 0] != 0).any()), "ReLU's gradient"

    def test_compiled_flag(self) -> None:
        x = torch.randn(2, 3, 11, 10, generator=_gen(5))
        cases: tuple[dict[str, Any], ...] = (
            {"kernel_size": 2},
            {"kernel_size": 3, "stride": 2, "padding": 1},
        )
        for kwargs in cases:
            a = stochastic_pool(
                x, training=True, generator=_gen(2), compiled=True, check_input=False, **kwargs
            )
            b = stochastic_pool(x.relu(), training=True, generator=_gen(2), **kwargs)
            assert torch.equal(a, b)
            torch.testing.assert_close(
                stochastic_pool(x, compiled=True, check_input=False, **kwargs),
                stochastic_pool(x.relu(), **kwargs),
            )

    @pytest.mark.slow
    def test_compiled_and_exported(self) -> None:
        x = torch.randn(2, 3, 10, 9, generator=_gen(6))
        for module in (StochasticPool2d(3, 2, 1), StochasticPool2d(output_size=1)):
            compiled = harness.compile_full(module.eval())
            torch.testing.assert_close(compiled(x), module(x.relu()))
            exported = torch.export.export(module, (x,)).module()
            torch.testing.assert_close(exported(x), module(x.relu()))
            train = harness.compile_full(module.train())
            y = train(x)
            assert bool((y >= 0).all()) and bool(torch.isin(y, x.relu()).all())
            module.eval()


class TestAllZeroWindow:
    """An all-zero window (after ReLU) draws its training position uniformly among its real positions, from
    the same generator: chi-square goodness of fit at ALPHA."""

    @staticmethod
    def _counts(x: torch.Tensor, seed: int, **kwargs: Any) -> torch.Tensor:
        xr = x.clone().requires_grad_()
        stochastic_pool(xr, training=True, generator=_gen(seed), **kwargs).sum().backward()
        assert xr.grad is not None
        return xr.grad.sum((0, 1))

    @pytest.mark.parametrize(
        ("kwargs", "shape", "real"),
        [
            ({"kernel_size": 2}, (2, 2), [[1, 1], [1, 1]]),
            ({"kernel_size": 5, "stride": 1}, (5, 5), [[1] * 5] * 5),
            # a corner window of a padded 3x3 kernel: 4 real positions of 9
            ({"kernel_size": 3, "padding": 1}, (2, 2), [[1, 1], [1, 1]]),
            ({"output_size": (1, 1)}, (3, 4), [[1] * 4] * 3),
            ({"output_size": (1, 1)}, (7, 7), [[1] * 7] * 7),
        ],
    )
    def test_uniform_over_real_positions(
        self, kwargs: dict[str, Any], shape: tuple[int, int], real: list[list[int]]
    ) -> None:
        n = 4000
        counts = self._counts(torch.zeros(n, 1, *shape), 11, **kwargs)
        probs = torch.tensor(real, dtype=torch.float64)
        assert counts.sum() == n
        assert _chi2_p(counts, probs / probs.sum()) > ALPHA

    def test_adaptive_bins_uniform(self) -> None:
        # 5 -> 2 bins: [0, 3) and [2, 5); each column of the (1, 5) input gets the gradient of the bins
        # that drew it, uniformly within each bin.
        n = 6000
        counts = self._counts(torch.zeros(n, 1, 1, 5), 12, output_size=(1, 2))
        probs = torch.tensor([1.0, 1.0, 2.0, 1.0, 1.0]).view(1, 5) / 3
        assert counts.sum() == 2 * n
        assert _chi2_p(counts, probs / probs.sum()) > ALPHA

    def test_not_the_last_position_always(self) -> None:
        # Before: every all-zero window sent its gradient to its last position.
        counts = self._counts(torch.zeros(200, 1, 2, 2), 3, kernel_size=2)
        assert bool((counts > 0).all())

    def test_seeded_and_independent_of_split(self, monkeypatch: pytest.MonkeyPatch) -> None:
        x = torch.zeros(3, 4, 12, 12)
        a = self._counts(x, 5, kernel_size=3, stride=1)
        monkeypatch.setattr(stochastic, "_CHUNK_BYTES_CPU", 4096)
        monkeypatch.setattr(stochastic, "_MIN_CHUNK_BYTES", 4096)
        assert torch.equal(a, self._counts(x, 5, kernel_size=3, stride=1))


class _CountHostReads:
    """Counts the Python-level reads of a tensor value on the host."""

    NAMES = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)

            def counted(t: torch.Tensor, *args: Any, _name: str = name, _orig: Any = original) -> Any:
                self.calls.append(_name)
                return _orig(t, *args)

            monkeypatch.setattr(torch.Tensor, name, counted)


class TestNoHostSync:
    @pytest.mark.parametrize("grad", [False, True], ids=["values", "autograd"])
    @pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
    @pytest.mark.parametrize("kwargs", EDGE_CASES)
    def test_forward_reads_no_value(
        self, monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, Any], training: bool, grad: bool
    ) -> None:
        x = torch.rand(2, 3, 13, 12).requires_grad_(grad)
        counter = _CountHostReads(monkeypatch)
        y = stochastic_pool(x, training=training, generator=_gen(1), **kwargs)
        assert counter.calls == []
        monkeypatch.undo()
        assert y.shape[:2] == (2, 3)

    def test_counter_sees_reads(self, monkeypatch: pytest.MonkeyPatch) -> None:
        counter = _CountHostReads(monkeypatch)
        bool(torch.ones(()))
        float(torch.ones(()))
        assert counter.calls == ["__bool__", "__float__"]


# ---- return_indices (issue 19, item 7) --------------------------------------------------------------------
INDEX_CASES: list[tuple[tuple[int, ...], dict[str, Any]]] = [
    ((2, 3, 11, 10), {"kernel_size": 3, "stride": 2, "padding": 1}),
    ((2, 3, 11, 10), {"kernel_size": 2, "ceil_mode": True}),
    ((2, 3, 11, 10), {"kernel_size": 5, "stride": 1}),
    ((2, 3, 11, 10), {"output_size": (4, 3)}),
    ((2, 3, 11, 10), {"output_size": (2, 2)}),
    ((2, 3, 11, 10), {"output_size": 1}),
    ((2, 3, 17), {"kernel_size": 3, "stride": 2, "dims": 1}),
    ((1, 2, 5, 6, 7), {"kernel_size": 2}),
    ((3, 11, 10), {"kernel_size": 3, "stride": 2, "dims": 2}),  # unbatched
]


class TestReturnIndices:
    @pytest.mark.parametrize(("shape", "kwargs"), INDEX_CASES)
    def test_train_index_is_the_sampled_position(
        self, shape: tuple[int, ...], kwargs: dict[str, Any]
    ) -> None:
        # Distinct values: the gradient of one output marks the one position it sampled.
        x = (torch.randperm(math.prod(shape), dtype=torch.float64) + 1).view(shape)
        x[..., :3] = 0  # all-zero windows too
        y, index = stochastic_pool(x, training=True, generator=_gen(4), return_indices=True, **kwargs)
        assert index.dtype == torch.int64 and index.shape == y.shape
        assert torch.equal(y, stochastic_pool(x, training=True, generator=_gen(4), **kwargs)), "same draws"
        xr = x.clone().requires_grad_()
        yr = stochastic_pool(xr, training=True, generator=_gen(4), **kwargs)
        d = kwargs.get("dims", len(shape) - 2)
        spatial = shape[-d:]
        planes = yr.reshape(-1, math.prod(yr.shape[-d:]))
        flat_index = index.reshape(planes.shape)
        for p_ in range(min(planes.shape[0], 3)):
            for q in range(planes.shape[1]):
                (grad,) = torch.autograd.grad(planes[p_, q], xr, retain_graph=True)
                hot = grad.reshape(-1, math.prod(spatial))[p_].nonzero().flatten().tolist()
                assert hot == [int(flat_index[p_, q])]

    def test_train_indices_unpool(self) -> None:
        x = torch.rand(2, 3, 12, 10)
        y, index = stochastic_pool(x, 3, 3, training=True, generator=_gen(2), return_indices=True)
        back = F.max_unpool2d(y, index, (3, 3), (3, 3), output_size=x.shape[-2:])
        assert torch.equal(back.flatten(2).gather(2, index.flatten(2)), y.flatten(2))
        assert torch.equal(back, x * (back != 0))  # each sampled value goes back to where it came from
        module = StochasticPool2d(3, 3, return_indices=True).train()
        torch.manual_seed(3)
        a, ia = module(x)
        torch.manual_seed(3)
        b, ib = stochastic_pool(x, 3, 3, training=True, return_indices=True)
        assert torch.equal(a, b) and torch.equal(ia, ib)

    @pytest.mark.parametrize(
        ("shape", "kwargs", "reference"),
        [
            (
                (2, 3, 11, 10),
                {"kernel_size": 3, "stride": 2, "padding": 1},
                lambda x: F.max_pool2d(x, 3, 2, 1, return_indices=True),
            ),
            (
                (2, 3, 11, 10),
                {"kernel_size": 2, "ceil_mode": True},
                lambda x: F.max_pool2d(x, 2, ceil_mode=True, return_indices=True),
            ),
            ((2, 3, 11, 10), {"output_size": (4, 3)}, lambda x: F.adaptive_max_pool2d(x, (4, 3), True)),
            ((2, 3, 11, 10), {"output_size": 1}, lambda x: F.adaptive_max_pool2d(x, 1, True)),
            (
                (2, 3, 17),
                {"kernel_size": 3, "stride": 2, "dims": 1},
                lambda x: F.max_pool1d(x, 3, 2, return_indices=True),
            ),
            ((1, 2, 5, 6, 7), {"kernel_size": 2}, lambda x: F.max_pool3d(x, 2, return_indices=True)),
        ],
    )
    def test_eval_index_is_the_largest_activation(self, shape, kwargs, reference) -> None:
        x = torch.randperm(math.prod(shape)).view(shape).float()  # distinct: one largest per window
        y, index = stochastic_pool(x, return_indices=True, **kwargs)
        torch.testing.assert_close(y, stochastic_pool(x, **kwargs))
        assert torch.equal(index, reference(x)[1])

    def test_module_returns_pairs_in_every_rank(self) -> None:
        for module, x, unpool in (
            (StochasticPool1d(2, return_indices=True), torch.rand(2, 3, 8), nn.MaxUnpool1d(2)),
            (StochasticPool2d(2, return_indices=True), torch.rand(2, 3, 8, 8), nn.MaxUnpool2d(2)),
            (StochasticPool3d(2, return_indices=True), torch.rand(2, 3, 4, 4, 4), nn.MaxUnpool3d(2)),
        ):
            for mode in (True, False):
                y, index = module.train(mode)(x)
                back = unpool(y, index)
                assert back.shape == x.shape
                assert torch.equal(back.flatten(2).gather(2, index.flatten(2)), y.flatten(2))
        assert "return_indices=True" in repr(StochasticPool2d(2, return_indices=True))

    @pytest.mark.slow
    def test_compiled_train_indices(self) -> None:
        x = torch.rand(2, 3, 11, 10)
        for kwargs in (
            {"kernel_size": 3, "stride": 2, "padding": 1},
            {"output_size": 1},
            {"output_size": (3, 4)},
        ):
            fn = torch.compile(
                lambda t, kw=kwargs: stochastic_pool(t, training=True, return_indices=True, **kw),
                fullgraph=True,
            )
            y, index = fn(x)
            assert torch.equal(x.flatten(2).gather(2, index.flatten(2)), y.flatten(2))
            # each index lies in its output's window: max-unpool then the window max reproduces y
            _, ref = stochastic_pool(x, return_indices=True, **kwargs)
            assert index.shape == ref.shape


# ---- memory formats (issue 19, item 5) --------------------------------------------------------------------
class TestMemoryFormat:
    @pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
    @pytest.mark.parametrize(
        ("shape", "fmt", "kwargs"),
        [
            ((2, 3, 9, 8), torch.channels_last, {"kernel_size": 3, "stride": 2}),
            ((2, 3, 9, 8), torch.channels_last, {"output_size": (2, 3)}),
            ((2, 3, 5, 6, 7), torch.channels_last_3d, {"kernel_size": 2}),
        ],
    )
    def test_keeps_channels_last(self, shape, fmt, kwargs: dict[str, Any], training: bool) -> None:
        x = torch.rand(shape)
        xc = x.contiguous(memory_format=fmt)
        y = stochastic_pool(xc, training=training, generator=_gen(1), **kwargs)
        assert y.is_contiguous(memory_format=fmt)
        assert torch.equal(y, stochastic_pool(x, training=training, generator=_gen(1), **kwargs))
        y, index = stochastic_pool(xc, training=training, generator=_gen(1), return_indices=True, **kwargs)
        assert y.is_contiguous(memory_format=fmt) and index.is_contiguous(memory_format=fmt)
        # like torch's own max pool
        pool = F.max_pool2d if len(shape) == 4 else F.max_pool3d
        if "kernel_size" in kwargs:
            assert pool(xc, kwargs["kernel_size"], kwargs.get("stride")).is_contiguous(memory_format=fmt)
