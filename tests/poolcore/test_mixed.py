"""Mixed pooling: closed forms, exact limits, seeded frequency tests per scope, branch gradients, modules."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import binomtest

import poolcore
from poolcore.nn import MixedPool1d, MixedPool2d, MixedPool3d, mixed_pool
from tests.conftest import tolerance
from tests.poolcore import reference as ref

ALPHA = 1e-3  # significance of each seeded binomial test

WINDOWS = [
    ((2, 3, 9, 10), {"kernel_size": (3, 3), "stride": (2, 2), "padding": (1, 1), "ceil_mode": True}),
    ((2, 3, 7, 8), {"kernel_size": (2, 3), "stride": (2, 2)}),
    ((2, 3, 10, 9), {"output_size": (None, 7)}),
    ((2, 3, 6, 5), {"output_size": (1, 1)}),
    (
        (2, 2, 5, 6, 7),
        {"kernel_size": (3, 2, 3), "stride": (2, 2, 2), "padding": (1, 1, 0), "ceil_mode": True},
    ),
]


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class TestMixedFunctional:
    def test_smoke_and_registry(self) -> None:
        x = torch.randn(2, 3, 8, 8)
        assert mixed_pool(x, 2, training=True).shape == (2, 3, 4, 4)
        y = poolcore.pool(x, "mixed", kernel_size=2, training=True, generator=_seeded(0))
        torch.testing.assert_close(y, mixed_pool(x, 2, training=True, generator=_seeded(0)))

    @pytest.mark.parametrize("shape, kw", WINDOWS)
    @pytest.mark.parametrize("p_max", [0.0, 0.3, 1.0])
    def test_eval_is_the_expectation(self, shape, kw, p_max) -> None:
        x = torch.randn(*shape, dtype=torch.float64)
        expected = p_max * ref.pooled(x, ref.vmax, **kw) + (1 - p_max) * ref.pooled(x, ref.mean, **kw)
        torch.testing.assert_close(mixed_pool(x, **kw, p_max=p_max), expected)

    @pytest.mark.parametrize("grad", [False, True], ids=["inference", "autograd"])
    @pytest.mark.parametrize(
        "dims, shape, k, s", [(1, (2, 3, 12), 3, 2), (2, (2, 3, 9, 9), 3, 2), (3, (2, 2, 6, 6, 6), 2, 2)]
    )
    def test_train_limits_are_exact(self, grad, dims, shape, k, s) -> None:
        x = torch.randn(*shape, requires_grad=grad)
        avg = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[dims]
        mx = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[dims]
        with torch.no_grad():
            expected_avg, expected_max = avg(x, k, s), mx(x, k, s)
        y0 = mixed_pool(x, k, s, dims=dims, p_max=0.0, training=True)
        y1 = mixed_pool(x, k, s, dims=dims, p_max=1.0, training=True)
        torch.testing.assert_close(y0, expected_avg, rtol=1e-6, atol=1e-7)  # oneDNN sums in its own order
        assert torch.equal(y1, expected_max)

    def test_inference_and_autograd_paths_agree(self) -> None:
        x = torch.randn(2, 4, 9, 11)
        fast = mixed_pool(x, 3, 2, 1, True, training=True, generator=_seeded(7))
        slow = mixed_pool(x.requires_grad_(True), 3, 2, 1, True, training=True, generator=_seeded(7))
        torch.testing.assert_close(fast, slow.detach())

    @pytest.mark.parametrize("p_max", [0.2, 0.5, 0.9])
    def test_region_frequency_matches_p_max(self, p_max) -> None:
        x = torch.randn(16, 32, 8, 8)
        y = mixed_pool(x, 2, p_max=p_max, training=True, generator=_seeded(11))
        chose_max = y == F.max_pool2d(x, 2)  # max > avg almost surely on continuous input
        result = binomtest(int(chose_max.sum()), chose_max.numel(), p_max)
        assert result.pvalue > ALPHA, result

    @pytest.mark.parametrize("p_max", [0.25, 0.7])
    def test_channel_scope_draws_one_lambda_per_channel(self, p_max) -> None:
        x = torch.randn(64, 64, 4, 4)
        y = mixed_pool(x, 2, p_max=p_max, scope="channel", training=True, generator=_seeded(12))
        chose_max = (y == F.max_pool2d(x, 2)).flatten(2)
        per_channel = chose_max[..., 0]
        assert (chose_max == per_channel[..., None]).all()  # one λ for every output of a channel
        assert not (per_channel == per_channel[:, :1]).all()  # ... but not one per sample
        result = binomtest(int(per_channel.sum()), per_channel.numel(), p_max)
        assert result.pvalue > ALPHA, result

    @pytest.mark.parametrize("p_max", [0.4])
    def test_layer_scope_draws_one_lambda_per_sample(self, p_max) -> None:
        x = torch.randn(2000, 3, 4, 4)
        y = mixed_pool(x, 2, p_max=p_max, scope="layer", training=True, generator=_seeded(13))
        chose_max = (y == F.max_pool2d(x, 2)).flatten(1)
        per_sample = chose_max[:, 0]
        assert (chose_max == per_sample[:, None]).all()
        result = binomtest(int(per_sample.sum()), per_sample.numel(), p_max)
        assert result.pvalue > ALPHA, result

    def test_unbatched_layer_scope_is_one_draw(self) -> None:
        x = torch.randn(8, 6, 6)
        y = mixed_pool(x, 2, scope="layer", training=True, generator=_seeded(3), dims=2)
        chose_max = y == F.max_pool2d(x, 2)
        assert chose_max.all() or not chose_max.any()

    def test_generator_makes_calls_reproducible(self) -> None:
        x = torch.randn(2, 3, 8, 8)
        a = mixed_pool(x, 2, training=True, generator=_seeded(5))
        b = mixed_pool(x, 2, training=True, generator=_seeded(5))
        c = mixed_pool(x, 2, training=True, generator=_seeded(6))
        assert torch.equal(a, b) and not torch.equal(a, c)

    def test_gradient_follows_the_drawn_branch(self) -> None:
        torch.manual_seed(8)
        x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
        y = mixed_pool(x, 2, training=True, generator=_seeded(9))
        y.sum().backward()
        with torch.no_grad():
            mx, idx = F.max_pool2d(x, 2, return_indices=True)
            chose_max = y == mx
        assert 0 < int(chose_max.sum()) < chose_max.numel()
        expected = torch.zeros(2, 3, 64, dtype=torch.float64)
        expected.scatter_add_(-1, idx.flatten(2), chose_max.flatten(2).double())  # 1 at the argmax
        avg_share = (~chose_max).double().repeat_interleave(2, -1).repeat_interleave(2, -2) / 4
        torch.testing.assert_close(x.grad, expected.view(2, 3, 8, 8) + avg_share)

    def test_gradcheck(self) -> None:
        x = torch.randn(1, 2, 7, 6, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(
            lambda t: mixed_pool(t, 3, 2, 1, True, training=True, generator=_seeded(1)), (x,)
        )
        assert torch.autograd.gradcheck(lambda t: mixed_pool(t, output_size=(3, 2), p_max=0.3), (x,))

    def test_errors(self) -> None:
        x = torch.randn(1, 4, 4)
        with pytest.raises(ValueError, match=r"p_max must be a probability in \[0, 1\] \(got 1.5\)"):
            mixed_pool(x, 2, p_max=1.5)
        with pytest.raises(
            ValueError, match="scope must be one of 'region', 'channel', 'layer' \\(got 'pixel'\\)"
        ):
            mixed_pool(x, 2, scope="pixel")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="mixed pooling needs a floating-point tensor"):
            mixed_pool(torch.ones(1, 4, 4, dtype=torch.int32), 2)
        with pytest.raises(ValueError, match="exactly one of kernel_size"):
            mixed_pool(x)

    def test_non_contiguous_input(self) -> None:
        x = torch.randn(2, 3, 10, 12).transpose(-1, -2)
        expected = 0.5 * F.max_pool2d(x.contiguous(), 3, 2) + 0.5 * F.avg_pool2d(x.contiguous(), 3, 2)
        torch.testing.assert_close(mixed_pool(x, 3, 2), expected)
        assert torch.equal(mixed_pool(x, 3, 2, p_max=1.0, training=True), F.max_pool2d(x.contiguous(), 3, 2))

    def test_dtypes(self, any_dtype, device) -> None:
        x = torch.randn(2, 3, 9, 9, device=device).to(any_dtype)
        y = mixed_pool(x, 3, 2, p_max=0.25)
        assert y.dtype == any_dtype and y.device == x.device
        expected = 0.25 * F.max_pool2d(x.double(), 3, 2) + 0.75 * F.avg_pool2d(x.double(), 3, 2)
        torch.testing.assert_close(y.double(), expected, **tolerance(any_dtype))
        g = torch.Generator(device=device).manual_seed(0)
        y1 = mixed_pool(x, 3, 2, p_max=1.0, training=True, generator=g)
        assert torch.equal(y1, F.max_pool2d(x, 3, 2))

    def test_nan_propagates_like_torch_on_every_path(self) -> None:
        x = torch.randn(1, 2, 6, 6)
        x[0, 0, 0, 0] = float("nan")
        x[0, 1, :2, :2] = float("nan")  # a window of NaN only
        x[0, 1, 4, 4], x[0, 0, 4, 5] = float("inf"), float("-inf")  # infinities: max +inf or finite
        expected = F.max_pool2d(x, 2)
        assert expected.isnan().sum() == 2 and expected.isinf().sum() == 1
        for grad in (False, True):
            y = mixed_pool(x.clone().requires_grad_(grad), 2, p_max=1.0, training=True)
            torch.testing.assert_close(y.detach(), expected, equal_nan=True)


class TestMixedModule:
    @pytest.mark.parametrize("dims, module_cls", [(1, MixedPool1d), (2, MixedPool2d), (3, MixedPool3d)])
    def test_module_equals_functional(self, dims, module_cls) -> None:
        x = torch.randn(2, 3, *(6,) * dims)
        m = module_cls(2, p_max=0.3, eval_rule="expectation")
        torch.manual_seed(4)
        y_train = m(x)
        torch.manual_seed(4)
        torch.testing.assert_close(y_train, mixed_pool(x, 2, dims=dims, p_max=0.3, training=True))
        m.eval()
        torch.testing.assert_close(m(x), mixed_pool(x, 2, dims=dims, p_max=0.3))

    def test_buffers_count_draws(self) -> None:
        torch.manual_seed(0)
        m = MixedPool2d(2, p_max=0.5)
        x = torch.randn(4, 8, 6, 6)
        y = m(x)
        drawn_max = int((y == F.max_pool2d(x, 2)).sum())
        assert int(m.n_max) == drawn_max and int(m.n_max + m.n_avg) == y.numel()
        channel = MixedPool2d(2, scope="channel")
        for _ in range(3):
            channel(x)
        assert int(channel.n_max + channel.n_avg) == 3 * 4 * 8
        assert m.n_max.dtype == torch.long and set(m.state_dict()) == {"n_max", "n_avg"}

    def test_counts_survive_save_and_load(self) -> None:
        torch.manual_seed(1)
        m = MixedPool2d(3, 2, p_max=0.9, eval_rule="frequent")
        for _ in range(3):
            m(torch.randn(2, 4, 9, 9))
        buffer = io.BytesIO()
        torch.save(m.state_dict(), buffer)
        buffer.seek(0)
        fresh = MixedPool2d(3, 2, p_max=0.9, eval_rule="frequent")
        fresh.load_state_dict(torch.load(buffer))
        assert int(fresh.n_max) == int(m.n_max) and int(fresh.n_avg) == int(m.n_avg)
        assert int(fresh.n_max) > int(fresh.n_avg)  # p_max=0.9: max won
        x = torch.randn(2, 4, 9, 9)
        assert torch.equal(fresh.eval()(x), F.max_pool2d(x, 3, 2))

    @pytest.mark.parametrize(
        "n_max, n_avg, rule, expected_weight",
        [
            (5, 3, "frequent", 1.0),
            (3, 5, "frequent", 0.0),
            (4, 4, "frequent", 0.3),  # tie: the expectation
            (0, 0, "frequent", 0.0),  # no training history: p_max = 0.3 < 0.5 favours avg
            (5, 3, "expectation", 0.3),
        ],
    )
    def test_eval_rule(self, n_max, n_avg, rule, expected_weight) -> None:
        m = MixedPool2d(2, p_max=0.3, eval_rule=rule).eval()
        m.n_max.fill_(n_max)
        m.n_avg.fill_(n_avg)
        x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
        expected = expected_weight * F.max_pool2d(x, 2) + (1 - expected_weight) * F.avg_pool2d(x, 2)
        torch.testing.assert_close(m(x), expected)

    def test_extra_repr_and_bad_arguments(self) -> None:
        text = repr(MixedPool2d(3, 2, p_max=0.7, scope="channel", eval_rule="frequent"))
        assert "p_max=0.7" in text and "scope='channel'" in text and "eval_rule='frequent'" in text
        with pytest.raises(ValueError, match="eval_rule must be one of 'frequent', 'expectation'"):
            MixedPool2d(2, eval_rule="vote")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"p_max must be a probability"):
            MixedPool2d(2, p_max=-0.1)

    def test_cuda_counts_stay_on_device(self, device) -> None:
        m = MixedPool2d(2).to(device)
        m(torch.randn(2, 3, 8, 8, device=device))
        assert m.n_max.device.type == device.type and int(m.n_max + m.n_avg) == 2 * 3 * 16


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32-onednn", "fp64-generic"])
@pytest.mark.parametrize("p_max", [0.0, 0.3, 1.0])
def test_infinite_windows_keep_their_value(dtype: torch.dtype, p_max: float) -> None:
    """Where max and avg are the same infinity, p·max + (1−p)·avg is that infinity, not inf − inf."""
    x = torch.zeros(1, 2, 4, 4, dtype=dtype)
    x[0, 0, :2, :2] = float("inf")
    x[0, 1, :2, :2] = -float("inf")
    out = mixed_pool(x, 2, p_max=p_max)
    expected = p_max * F.max_pool2d(x, 2) + (1 - p_max) * F.avg_pool2d(x, 2)
    expected[0, 0, 0, 0], expected[0, 1, 0, 0] = float("inf"), -float("inf")
    torch.testing.assert_close(out, expected)


def _weighted(x: torch.Tensor, weight: float) -> torch.Tensor:
    return weight * F.max_pool2d(x, 2) + (1 - weight) * F.avg_pool2d(x, 2)


# "frequent" without training history follows from p_max: max above 0.5, avg below, the expectation at 0.5.
RULE_WEIGHTS = [
    ("expectation", 0.3, 0.3),
    ("expectation", 0.7, 0.7),
    ("frequent", 0.3, 0.0),
    ("frequent", 0.5, 0.5),
    ("frequent", 0.7, 1.0),
]


class TestOneEvalRule:
    """Mixed eval meant the expectation in the functional, the registry and the service, but the more
    frequent branch in the module (issue 19, item 2): one rule, chosen by eval_rule, everywhere."""

    @pytest.mark.parametrize("rule, p_max, weight", RULE_WEIGHTS)
    def test_every_entry_point_applies_the_rule(self, rule, p_max, weight) -> None:
        x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
        expected = _weighted(x, weight)
        outputs = {
            "functional": mixed_pool(x, 2, p_max=p_max, eval_rule=rule),
            "registry": poolcore.pool(x, "mixed", kernel_size=2, p_max=p_max, eval_rule=rule),
            "Pool": poolcore.nn.Pool("mixed", kernel_size=2, p_max=p_max, eval_rule=rule).eval()(x),
            "untrained module": MixedPool2d(2, p_max=p_max, eval_rule=rule).eval()(x),
        }
        for name, y in outputs.items():
            assert torch.allclose(y, expected, rtol=1e-10, atol=1e-12), name
        assert poolcore.nn.MixedPool2d(2, p_max=p_max, eval_rule=rule).eval_weight().item() == pytest.approx(
            weight
        )

    def test_the_default_is_the_expectation_everywhere(self) -> None:
        """Measured before: p_max=0.3, after any training, module eval equalled avg_pool exactly."""
        torch.manual_seed(3)
        m = MixedPool2d(2, p_max=0.3)
        for _ in range(3):
            m(torch.randn(2, 3, 8, 8))
        assert int(m.n_avg) > int(m.n_max)  # avg was drawn more often
        x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
        expected = _weighted(x, 0.3)
        torch.testing.assert_close(m.eval()(x), expected)
        torch.testing.assert_close(mixed_pool(x, 2, p_max=0.3), expected)
        torch.testing.assert_close(poolcore.pool(x, "mixed", kernel_size=2, p_max=0.3), expected)
        assert poolcore.get_spec("mixed").resolve({"kernel_size": 2})["eval_rule"] == "expectation"
        assert "eval_rule='expectation'" in repr(MixedPool2d(2))

    def test_a_trained_module_uses_its_counts(self) -> None:
        torch.manual_seed(4)
        m = MixedPool2d(2, p_max=0.45, eval_rule="frequent")
        x = torch.randn(2, 3, 8, 8)
        assert torch.equal(m.eval()(x), F.avg_pool2d(x, 2))  # no history: p_max < 0.5 favours avg
        m.n_max.fill_(7)
        m.n_avg.fill_(3)  # as if training had drawn max more often
        assert torch.equal(m(x), F.max_pool2d(x, 2))

    def test_training_ignores_the_rule_and_a_bad_rule_is_refused(self) -> None:
        x = torch.randn(2, 3, 8, 8)
        draws = [
            mixed_pool(x, 2, p_max=0.3, eval_rule=rule, training=True, generator=_seeded(5))
            for rule in ("expectation", "frequent")
        ]
        assert torch.equal(draws[0], draws[1])
        with pytest.raises(
            ValueError, match=r"eval_rule must be one of 'frequent', 'expectation' \(got 'vote'\)"
        ):
            mixed_pool(x, 2, eval_rule="vote")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="eval_rule"):
            poolcore.pool(x, "mixed", kernel_size=2, eval_rule="vote")

    def test_the_guide_says_which_rule_and_why(self) -> None:
        training = poolcore.get_spec("mixed").guide.training
        assert "eval_rule" in training and "expectation" in training and "frequent" in training
        assert "default" in training
