"""The registry: specs, schemas, presets, aliases, pool() against the functionals, errors."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch

import poolcore
from poolcore.registry import ALIASES, REGISTRY, UnknownMethodError, get_spec

EXAMPLE_PARAMS: dict[str, Any] = {"kernel_size": 3, "stride": 2}


class TestRegistry:
    def test_every_spec_has_a_json_schema_and_description(self) -> None:
        for name, spec in REGISTRY.items():
            schema = spec.params.model_json_schema()
            assert schema["type"] == "object", name
            assert spec.description and spec.name == name

    # The papers the guide cites (issue 13): method → (authors, year, title).
    PAPERS: ClassVar[dict[str, tuple[str, str, str]]] = {
        "global_avg": ("Lin", "2013", "Network In Network"),
        "mixed": ("Yu", "2014", "Mixed Pooling for Convolutional Neural Networks"),
        "stochastic": ("Zeiler & Fergus", "2013", "Stochastic Pooling for Regularization"),
        "gem": ("Radenović", "2018", "Fine-tuning CNN Image Retrieval with No Human Annotation"),
        "lp": ("Gulcehre", "2014", "Learned-Norm Pooling for Deep Feedforward and Recurrent"),
    }

    def test_every_spec_has_a_guide(self) -> None:
        """Formula, purpose and train-versus-eval for every method; the five papers cited by name."""
        for name, spec in REGISTRY.items():
            guide = spec.guide
            assert guide.formula and guide.use and guide.training, name
            # The formula is LaTeX for the page's $$…$$: balanced braces, no delimiters of its own.
            assert guide.formula.count("{") == guide.formula.count("}") and "$" not in guide.formula, name
            if spec.random:
                assert "Train" in guide.training and "Eval" in guide.training, name
        for name, (authors, year, title) in self.PAPERS.items():
            paper = get_spec(name).guide.paper
            assert authors in paper and year in paper and title in paper, (name, paper)
        stochastic = get_spec("stochastic").guide.formula
        assert r"\frac{\sum_{i \in R} a_i^2}{\sum_{i \in R} a_i}" in stochastic

    def test_expected_methods_and_alias(self) -> None:
        assert {"avg", "max", "global_avg", "global_max", "adaptive_avg", "adaptive_max"} <= set(
            poolcore.methods()
        )
        assert {"mixed", "lp", "gem"} <= set(poolcore.methods())
        assert ALIASES["power"] == "lp" and get_spec("power") is REGISTRY["lp"]
        assert REGISTRY["mixed"].random and REGISTRY["mixed"].takes_training
        assert not REGISTRY["lp"].random and not REGISTRY["gem"].random

    def test_modules_are_registered_per_rank(self) -> None:
        for name, prefix in [("mixed", "MixedPool"), ("lp", "LPPool"), ("gem", "GeMPool")]:
            modules = REGISTRY[name].modules
            assert {d: cls.__name__ for d, cls in modules.items()} == {d: f"{prefix}{d}d" for d in (1, 2, 3)}
            assert all(getattr(poolcore.nn, cls.__name__) is cls for cls in modules.values())

    def test_presets_pin_their_fixed_arguments(self) -> None:
        x = torch.randn(2, 3, 7, 9)
        for name in ("global_avg", "global_max"):
            spec = REGISTRY[name]
            assert dict(spec.fixed) == {"output_size": 1} and spec.base in ("avg", "max")
            assert spec.resolve({})["output_size"] == 1
            assert poolcore.pool(x, name).shape == (2, 3, 1, 1)
            with pytest.raises(ValueError, match="output_size: unknown parameter"):
                spec.parse({"output_size": 2})
        for name in ("adaptive_avg", "adaptive_max"):
            with pytest.raises(ValueError, match="output_size"):
                REGISTRY[name].parse({})
            assert poolcore.pool(x, name, output_size=(None, 3)).shape == (2, 3, 7, 3)

    @pytest.mark.parametrize(
        "method, functional, params",
        [
            ("avg", poolcore.avg_pool, {}),
            ("max", poolcore.max_pool, {}),
            ("lp", poolcore.lp_pool, {"p": 3.0}),
            ("power", poolcore.lp_pool, {}),
            ("gem", poolcore.gem_pool, {"p": 2.0, "eps": 1e-3}),
            ("mixed", poolcore.mixed_pool, {"p_max": 0.3}),
        ],
    )
    def test_pool_equals_the_functional(self, method, functional, params) -> None:
        x = torch.rand(2, 3, 9, 9)
        torch.testing.assert_close(
            poolcore.pool(x, method, **EXAMPLE_PARAMS, **params), functional(x, **EXAMPLE_PARAMS, **params)
        )

    def test_random_method_takes_training_and_generator(self) -> None:
        x = torch.randn(2, 3, 8, 8)
        a = poolcore.pool(
            x, "mixed", kernel_size=2, training=True, generator=torch.Generator().manual_seed(3)
        )
        b = poolcore.mixed_pool(x, 2, training=True, generator=torch.Generator().manual_seed(3))
        assert torch.equal(a, b)

    def test_unknown_method_lists_the_names(self) -> None:
        with pytest.raises(UnknownMethodError, match="unknown pooling method 'median'") as info:
            poolcore.pool(torch.zeros(1, 4, 4), "median", kernel_size=2)
        assert isinstance(info.value, ValueError)
        for name in ("avg", "mixed", "lp", "gem", "power"):
            assert name in str(info.value)

    @pytest.mark.parametrize(
        "method, params, message",
        [
            ("gem", {"kernel_size": 2, "q": 3}, "q: unknown parameter"),
            (
                "lp",
                {"kernel_size": 2, "p": 0.5},
                r"p: Input should be greater than or equal to 1 \(got 0.5\)",
            ),
            ("mixed", {"kernel_size": 2, "p_max": 2}, "p_max: Input should be less than or equal to 1"),
            (
                "mixed",
                {"kernel_size": 2, "scope": "pixel"},
                "scope: Input should be 'region', 'channel' or 'layer'",
            ),
            ("avg", {}, "exactly one of kernel_size"),
            ("max", {"kernel_size": 2, "output_size": 2}, "exactly one of kernel_size"),
        ],
    )
    def test_bad_parameters_are_named(self, method, params, message) -> None:
        with pytest.raises(ValueError, match=message):
            poolcore.pool(torch.zeros(1, 4, 4), method, **params)

    def test_integer_input_through_pool(self) -> None:
        with pytest.raises(ValueError, match="floating-point tensor"):
            poolcore.pool(torch.zeros(1, 4, 4, dtype=torch.int64), "gem", kernel_size=2)


def test_unknown_method_name_is_cut_in_the_message() -> None:
    """The service puts this message in its 404: a 60 KB name must not come back."""
    with pytest.raises(UnknownMethodError) as error:
        get_spec("a" * 60_000)
    message = str(error.value)
    assert message.startswith("unknown pooling method 'aaaa") and "…" in message and len(message) < 300
