"""Pool and GlobalPool (any registered method), and torch.compile of the deterministic methods."""

from __future__ import annotations

import doctest
import importlib
import shutil

import pytest
import torch
import torch.nn.functional as F

import poolcore
from poolcore.nn import GlobalPool, Pool


class TestPool:
    def test_equals_the_functional(self) -> None:
        x = torch.rand(2, 3, 9, 9)
        torch.testing.assert_close(Pool("avg", kernel_size=3, stride=2)(x), F.avg_pool2d(x, 3, 2))
        torch.testing.assert_close(Pool("power", kernel_size=2, p=3.0)(x), poolcore.lp_pool(x, 2, p=3.0))
        torch.testing.assert_close(
            Pool("gem", output_size=(2, None))(x), poolcore.gem_pool(x, output_size=(2, None))
        )

    def test_follows_training_flag(self) -> None:
        torch.manual_seed(0)
        x = torch.randn(4, 3, 8, 8)
        m = Pool("mixed", kernel_size=2)
        mx, av = F.max_pool2d(x, 2), F.avg_pool2d(x, 2)
        y = m.train()(x)
        assert ((y == mx) | torch.isclose(y, av)).all()
        assert (y == mx).any() and (y != mx).any()
        torch.testing.assert_close(m.eval()(x), 0.5 * mx + 0.5 * av)

    def test_validates_at_construction(self) -> None:
        with pytest.raises(ValueError, match="unknown pooling method 'median'; known methods: avg, max"):
            Pool("median")
        with pytest.raises(ValueError, match="p: unknown parameter"):
            Pool("mixed", kernel_size=2, p=3)
        with pytest.raises(ValueError, match="exactly one of kernel_size"):
            Pool("avg")

    def test_extra_repr(self) -> None:
        assert repr(Pool("power", kernel_size=2, p=3.0)) == "Pool('lp', kernel_size=2, p=3.0)"


@pytest.mark.parametrize("method", ["global_avg", "gem", "mixed"])
def test_modules_pickle_and_deepcopy(method: str) -> None:
    """torch.save of a whole model pickles its modules; Pool keeps its spec out of the pickle."""
    import copy
    import io

    m = GlobalPool(method)
    x = torch.rand(2, 3, 5, 5)
    buffer = io.BytesIO()
    torch.save(m, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    torch.testing.assert_close(loaded.eval()(x), m.eval()(x))
    torch.testing.assert_close(copy.deepcopy(m)(x), m(x))


class TestGlobalPool:
    @pytest.mark.parametrize(
        "shape, dims", [((2, 3, 9), 1), ((2, 3, 5, 6), 2), ((3, 5, 6), 2), ((2, 3, 4, 5, 6), 3)]
    )
    def test_default_is_global_average(self, shape, dims) -> None:
        x = torch.randn(*shape)
        axes = tuple(range(-dims, 0))
        torch.testing.assert_close(GlobalPool(dims=dims)(x), x.mean(axes, keepdim=True))
        torch.testing.assert_close(GlobalPool("global_max", dims=dims)(x), x.amax(axes, keepdim=True))
        torch.testing.assert_close(GlobalPool("adaptive_max", dims=dims)(x), x.amax(axes, keepdim=True))

    def test_any_method(self) -> None:
        x = torch.rand(2, 4, 6, 5, dtype=torch.float64)
        gem = x.clamp_min(1e-6).pow(3).mean((-2, -1), keepdim=True).pow(1 / 3)
        torch.testing.assert_close(GlobalPool("gem", p=3.0)(x), gem)
        torch.testing.assert_close(GlobalPool("lp", p=1.0)(x), x.sum((-2, -1), keepdim=True))
        mixed = GlobalPool("mixed", p_max=0.25).eval()(x)
        expected = 0.25 * x.amax((-2, -1), keepdim=True) + 0.75 * x.mean((-2, -1), keepdim=True)
        torch.testing.assert_close(mixed, expected)

    def test_stochastic_when_registered(self) -> None:
        if "stochastic" not in poolcore.methods():
            pytest.skip("stochastic pooling is not registered on this branch yet")
        x = torch.rand(2, 3, 5, 5, dtype=torch.float64)
        expected = (x * x).sum((-2, -1), keepdim=True) / x.sum((-2, -1), keepdim=True)  # Σa²/Σa
        torch.testing.assert_close(GlobalPool("stochastic").eval()(x), expected)

    @pytest.mark.parametrize("shape", [(2, 3, 9), (2, 3, 5, 6), (2, 3, 4, 5, 6)])
    def test_reads_n_c_spatial_at_every_rank(self, shape) -> None:
        """(N, C, L) used to be read as an unbatched image: (2, 3, 9) gave (2, 1, 1)."""
        x = torch.randn(*shape)
        axes = tuple(range(2, len(shape)))
        torch.testing.assert_close(GlobalPool()(x), x.mean(axes, keepdim=True))
        torch.testing.assert_close(
            GlobalPool("gem", p=1.0, eps=0.0, flatten=True)(x.abs()), x.abs().mean(axes)
        )

    def test_rank_below_3_is_refused_without_dims(self) -> None:
        with pytest.raises(ValueError, match=r"rank 3 or more \(got shape \(3, 9\)\); pass dims="):
            GlobalPool()(torch.randn(3, 9))
        assert GlobalPool(dims=1)(torch.randn(3, 9)).shape == (3, 1)

    def test_forward_does_not_validate_again(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Parameters are validated once, at construction: pydantic in forward broke torch.compile."""
        pool, head = Pool("gem", kernel_size=2, p=3.0), GlobalPool("mixed", p_max=0.5)

        def fail(*args: object, **kwargs: object) -> None:
            raise AssertionError("validated in forward")

        monkeypatch.setattr(poolcore.MethodSpec, "parse", fail)
        monkeypatch.setattr(poolcore.MethodSpec, "resolve", fail)
        x = torch.rand(2, 3, 6, 6)
        assert pool(x).shape == (2, 3, 3, 3) and head(x).shape == (2, 3, 1, 1)

    def test_window_arguments_are_refused(self) -> None:
        with pytest.raises(ValueError, match="GlobalPool sets the window itself: drop kernel_size"):
            GlobalPool("avg", kernel_size=2)
        with pytest.raises(ValueError, match="drop output_size"):
            GlobalPool("gem", output_size=3)


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("gcc") is None and shutil.which("cc") is None, reason="CPU inductor needs a C compiler"
)
def test_compile_matches_eager_for_deterministic_methods() -> None:
    """One compiled graph covering avg, max, lp, gem and mixed in eval (one compile keeps this quick)."""

    def all_methods(x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                poolcore.avg_pool(x, 3, 2, 1),
                poolcore.max_pool(x, 3, 2, 1),
                poolcore.lp_pool(x, 3, 2, 1, p=3.0),
                poolcore.gem_pool(x, 3, 2, 1),
                poolcore.mixed_pool(x, 3, 2, 1, p_max=0.3),
            ],
            dim=1,
        )

    torch._dynamo.reset()
    x = torch.rand(2, 3, 9, 10)
    compiled = torch.compile(all_methods)
    torch.testing.assert_close(compiled(x), all_methods(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("module", ["poolcore.mixed", "poolcore.lp", "poolcore.generic"])
def test_docstring_examples_run(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
