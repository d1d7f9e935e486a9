"""The one registry of pooling methods.

HTTP routes, parameter validation, OpenAPI docs, the Gradio controls and the inference-protocol models
are all derived from :data:`REGISTRY`. Adding a method is one operator file plus one entry below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from pydantic import BaseModel, ValidationError
from torch import Tensor, nn

from . import lp, mixed, stochastic
from .basic import AvgParams, MaxParams, avg_pool, max_pool
from .params import AdaptiveParams, GlobalParams, format_validation_error

__all__ = ["REGISTRY", "MethodSpec", "UnknownMethodError", "get_spec", "methods", "pool"]


class UnknownMethodError(ValueError):
    """A method name that is not in the registry (the service answers 404)."""


@dataclass(frozen=True)
class MethodSpec:
    """Everything the library, service and UI need to know about one method.

    ``fixed`` holds arguments a preset pins (``global_avg`` pins ``output_size=1``); ``random`` says that
    the functional takes ``training`` and ``generator`` and draws random numbers when training.
    """

    name: str
    description: str
    functional: Callable[..., Tensor]
    params: type[BaseModel]
    modules: Mapping[int, type[nn.Module]] = field(default_factory=dict)
    random: bool = False
    takes_training: bool = False
    fixed: Mapping[str, Any] = field(default_factory=dict)
    base: str | None = None  # the method a preset is built on
    # Pooling inputs stacked along the channel dimension gives each exactly the bytes it gets alone: the
    # method only adds, multiplies, divides, compares and takes square roots (correctly rounded, so an
    # element's place in a vectorised loop can't change it). A general power (lp, gem) is not: torch's
    # vectorised pow and its scalar tail differ in the last bit. The service batches only stackable ones.
    stackable: bool = True

    def parse(self, params: Mapping[str, Any] | None = None) -> BaseModel:
        """Validate parameters; ``ValueError`` names each offending one."""
        try:
            return self.params.model_validate(dict(params or {}))
        except ValidationError as error:
            raise ValueError(format_validation_error(self.name, error)) from None

    def resolve(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The full argument set the functional is called with: defaults filled in, presets applied."""
        return {**self.parse(params).model_dump(), **self.fixed}

    def __call__(
        self,
        x: Tensor,
        params: Mapping[str, Any] | None = None,
        *,
        training: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        return self.run(x, self.resolve(params), training=training, generator=generator)

    def run(
        self,
        x: Tensor,
        resolved: Mapping[str, Any],
        *,
        training: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Call the functional with arguments already checked by :meth:`resolve` (validated once)."""
        kwargs = dict(resolved)
        if self.takes_training:
            kwargs["training"] = training
        if self.random:
            kwargs["generator"] = generator
        return self.functional(x, **kwargs)


def _preset(
    name: str, base: MethodSpec, description: str, params: type[BaseModel], **fixed: Any
) -> MethodSpec:
    return MethodSpec(
        name=name,
        description=description,
        functional=base.functional,
        params=params,
        random=base.random,
        takes_training=base.takes_training,
        fixed=MappingProxyType(fixed),
        base=base.name,
        stackable=base.stackable,
    )


def _build() -> dict[str, MethodSpec]:
    avg = MethodSpec("avg", "Average pooling (torch's avg_pool / adaptive_avg_pool).", avg_pool, AvgParams)
    maxp = MethodSpec("max", "Max pooling (torch's max_pool / adaptive_max_pool).", max_pool, MaxParams)
    specs = [
        avg,
        maxp,
        MethodSpec(
            "mixed",
            "Mixed pooling (Yu et al. 2014): max with probability p_max, else average; eval: expectation.",
            mixed.mixed_pool,
            mixed.MixedParams,
            modules={1: mixed.MixedPool1d, 2: mixed.MixedPool2d, 3: mixed.MixedPool3d},
            random=True,
            takes_training=True,
        ),
        MethodSpec(
            "stochastic",
            "Stochastic pooling (Zeiler & Fergus 2013): training samples a_i / sum(a), "
            "eval gives sum(a^2) / sum(a).",
            stochastic.stochastic_pool,
            stochastic.StochasticParams,
            modules={
                1: stochastic.StochasticPool1d,
                2: stochastic.StochasticPool2d,
                3: stochastic.StochasticPool3d,
            },
            random=True,
            takes_training=True,
        ),
        MethodSpec(
            "lp",
            "Power-average (Lp) pooling, sum form (sum |x|^p)^(1/p): p=1 sum, p=inf max of |x|.",
            lp.lp_pool,
            lp.LPParams,
            modules={1: lp.LPPool1d, 2: lp.LPPool2d, 3: lp.LPPool3d},
            stackable=False,
        ),
        MethodSpec(
            "gem",
            "Generalised-mean (GeM) pooling (mean max(x, eps)^p)^(1/p): p=1 average, p=inf max.",
            lp.gem_pool,
            lp.GeMParams,
            modules={1: lp.GeMPool1d, 2: lp.GeMPool2d, 3: lp.GeMPool3d},
            stackable=False,
        ),
        _preset(
            "global_avg",
            avg,
            "Global average pooling (Network in Network): one mean per channel.",
            GlobalParams,
            output_size=1,
        ),
        _preset(
            "global_max", maxp, "Global max pooling: one maximum per channel.", GlobalParams, output_size=1
        ),
        _preset(
            "adaptive_avg",
            avg,
            "Adaptive average pooling: give output_size, windows are derived.",
            AdaptiveParams,
        ),
        _preset(
            "adaptive_max",
            maxp,
            "Adaptive max pooling: give output_size, windows are derived.",
            AdaptiveParams,
        ),
    ]
    return {spec.name: spec for spec in specs}


REGISTRY: Mapping[str, MethodSpec] = MappingProxyType(_build())
ALIASES: Mapping[str, str] = MappingProxyType({"power": "lp"})


def methods() -> list[str]:
    """Names of every registered method and preset."""
    return list(REGISTRY)


def get_spec(name: str) -> MethodSpec:
    """Look up a method by name or alias; an unknown name is a ``ValueError`` listing the known ones."""
    spec = REGISTRY.get(ALIASES.get(name, name)) if isinstance(name, str) else None
    if spec is None:
        known = ", ".join([*REGISTRY, *ALIASES])
        shown = repr(name)
        if len(shown) > 64:  # a client's name is echoed in the service's 404: never a long one
            shown = shown[:64] + "…"
        raise UnknownMethodError(f"unknown pooling method {shown}; known methods: {known}")
    return spec


def pool(
    x: Tensor,
    method: str,
    *,
    training: bool = False,
    generator: torch.Generator | None = None,
    **params: Any,
) -> Tensor:
    """Pool ``x`` with any registered method: ``pool(x, "stochastic", kernel_size=3, stride=2)``."""
    return get_spec(method)(x, params, training=training, generator=generator)
