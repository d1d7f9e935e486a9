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

from . import hooks, lp, mixed, softpool, stochastic
from .basic import AvgParams, MaxParams, avg_pool, max_pool
from .hooks import Explanation, WindowCase
from .params import AdaptiveParams, GlobalParams, format_validation_error
from .windows import Window

__all__ = ["REGISTRY", "Guide", "MethodSpec", "UnknownMethodError", "get_spec", "methods", "pool"]


class UnknownMethodError(ValueError):
    """A method name that is not in the registry (the service answers 404)."""


@dataclass(frozen=True)
class Guide:
    """What a user needs to choose a method: shown beside the page's method picker and in ``/methods``.

    ``formula`` is LaTeX (no delimiters) for one output element ``y`` over its window ``R`` of inputs
    ``a_i``; ``paper`` cites where the method comes from ("" for the textbook ones); ``use`` says what it
    is for and when to pick it; ``training`` what train mode does differently from eval.
    """

    formula: str = ""
    paper: str = ""
    use: str = ""
    training: str = "Train and eval give the same result: the method draws nothing."


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
    guide: Guide = field(default_factory=Guide)
    # Hooks for the service and the page (poolcore/hooks.py), so nothing outside poolcore names a method.
    # visit_cost: what one window visit costs in the service's work limit, in plain reads (lp and gem may
    # rescale every window when the plain form overflows: about 20 times). scratch(planes, window, dtype,
    # training): working memory beyond input and output in 4-byte units, or None for none worth counting.
    # explain: the walk-through of one output element; None shows just its value. draws_positions:
    # training outputs one drawn input per window, marked by the gradient (the page's sampling panel
    # counts the draws). display_scale(resolved): what the page divides a result by to show it in range.
    visit_cost: int = 1
    scratch: Callable[[int, Window, torch.dtype, bool], int] | None = None
    explain: Callable[[WindowCase], Explanation] | None = None
    draws_positions: bool = False
    display_scale: Callable[[Mapping[str, Any]], float] | None = None

    def parse(self, params: Mapping[str, Any] | None = None) -> BaseModel:
        """Validate parameters; ``ValueError`` names each offending one."""
        try:
            return self.params.model_validate(dict(params or {}))
        except ValidationError as error:
            raise ValueError(
                format_validation_error(self.name, error, list(self.params.model_fields))
            ) from None

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
    name: str, base: MethodSpec, description: str, params: type[BaseModel], guide: Guide, **fixed: Any
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
        guide=guide,
        visit_cost=base.visit_cost,
        scratch=base.scratch,
        explain=base.explain,
        draws_positions=base.draws_positions,
        display_scale=base.display_scale,
    )


# The guides (see :class:`Guide`). Formulas: one output y over its window R of inputs a_i, |R| its size.
_AVG = Guide(
    formula=r"y = \frac{1}{|R|} \sum_{i \in R} a_i",
    use="The smooth, unbiased summary of a window: every input counts the same. Pick it to downsample "
    "without aliasing spikes, or when the whole window's evidence matters more than its strongest part.",
)
_MAX = Guide(
    formula=r"y = \max_{i \in R} a_i",
    use="Keeps the strongest response in each window and ignores the rest: the CNN default for detecting "
    "whether a feature occurs anywhere in the window. Pick it when presence matters more than extent.",
)
_MIXED = Guide(
    formula=r"y = \lambda \max_{i \in R} a_i + (1 - \lambda) \frac{1}{|R|} \sum_{i \in R} a_i,"
    r"\quad \lambda \sim \mathrm{Bernoulli}(p_{\max})",
    paper="Yu, Wang, Chen & Wei 2014, “Mixed Pooling for Convolutional Neural Networks” (RSKT).",
    use="A regulariser between max and average: training switches at random between the two, so the "
    "network cannot rely on either alone. Pick it to reduce over-fitting where max pooling alone over-fits.",
    training="Train draws λ ∈ {0, 1} with P(λ = 1) = p_max, per window, channel or sample (scope); the same "
    "seed gives the same draws. Eval follows eval_rule, the same in the library, the API and this page. "
    "The default, expectation, returns p_max·max + (1 − p_max)·avg: the mean of what training outputs, so "
    "eval sees activations of the scale training produced. frequent is Yu et al.'s test-time rule, the "
    "branch training draws more often: from p_max here (max above 0.5, avg below, the expectation at 0.5), "
    "from its counted draws in a trained poolcore.nn.MixedPool module.",
)
_STOCHASTIC = Guide(
    formula=r"\text{train: } y = a_k,\ k \sim p_i = \frac{a_i}{\sum_{j \in R} a_j}"
    r"\qquad \text{eval: } y = \sum_{i \in R} p_i a_i = \frac{\sum_{i \in R} a_i^2}{\sum_{i \in R} a_i}",
    paper="Zeiler & Fergus 2013, “Stochastic Pooling for Regularization of Deep Convolutional Neural "
    "Networks” (ICLR).",
    use="A regulariser for non-negative activations (after ReLU): strong inputs are picked often, weak ones "
    "sometimes, like dropout inside the pooling. Pick it to train a CNN that over-fits with max pooling.",
    training="Train samples one position per window with probability a_i / Σa (the seed fixes the draw). "
    "Eval returns the probability-weighted average Σa² / Σa, the expectation of the draw.",
)
_LP = Guide(
    formula=r"y = \Big( \sum_{i \in R} |a_i|^p \Big)^{1/p}",
    paper="Gulcehre, Cho, Pascanu & Bengio 2014, “Learned-Norm Pooling for Deep Feedforward and Recurrent "
    "Neural Networks” (ECML PKDD).",
    use="A norm of the window that moves from sum (p = 1) through energy (p = 2) to max (p = ∞); as the "
    "sum form it grows with the window size, so outputs can exceed the input range. Pick it for "
    "energy-like features or, with p learned, to let training choose between average-like and max-like.",
)
_GEM = Guide(
    formula=r"y = \Big( \frac{1}{|R|} \sum_{i \in R} \max(a_i, \varepsilon)^p \Big)^{1/p}",
    paper="Radenović, Tolias & Chum 2018, “Fine-tuning CNN Image Retrieval with No Human Annotation” "
    "(TPAMI).",
    use="A mean that leans towards the maximum as p grows (p = 1 average, p = ∞ max) and stays in the "
    "input range. Pick it for global descriptors in image retrieval, usually with p around 3.",
)
_GLOBAL_AVG = Guide(
    formula=r"y_c = \frac{1}{HW} \sum_{h,w} a_{c,h,w}",
    paper="Lin, Chen & Yan 2013, “Network In Network” (arXiv:1312.4400; ICLR 2014).",
    use="One mean per channel: replaces the fully connected head of a classifier (one channel per class "
    "or feature) and makes the network take any input size. The result is one number per channel.",
)
_GLOBAL_MAX = Guide(
    formula=r"y_c = \max_{h,w} a_{c,h,w}",
    use="One maximum per channel: whether a feature fires anywhere in the input, wherever it is. "
    "The result is one number per channel.",
)
_ADAPTIVE = (
    r"\quad R_i = \Big[ \Big\lfloor \frac{i\,H}{H_{out}} \Big\rfloor,"
    r" \Big\lceil \frac{(i+1)\,H}{H_{out}} \Big\rceil \Big)"
)
_ADAPTIVE_AVG = Guide(
    formula=r"y_i = \frac{1}{|R_i|} \sum_{j \in R_i} a_j," + _ADAPTIVE,
    use="Average pooling to a fixed output size whatever the input size: the windows are derived. Pick it "
    "to feed inputs of any size into a head that expects one size.",
)
_ADAPTIVE_MAX = Guide(
    formula=r"y_i = \max_{j \in R_i} a_j," + _ADAPTIVE,
    use="Max pooling to a fixed output size whatever the input size: the windows are derived. Pick it "
    "to feed inputs of any size into a head that expects one size.",
)


def _build() -> dict[str, MethodSpec]:
    avg = MethodSpec(
        "avg",
        "Average pooling (torch's avg_pool / adaptive_avg_pool).",
        avg_pool,
        AvgParams,
        guide=_AVG,
        explain=hooks.avg_explain,
    )
    maxp = MethodSpec(
        "max",
        "Max pooling (torch's max_pool / adaptive_max_pool).",
        max_pool,
        MaxParams,
        guide=_MAX,
        explain=hooks.max_explain,
    )
    specs = [
        avg,
        maxp,
        MethodSpec(
            "mixed",
            "Mixed pooling (Yu et al. 2014): max with probability p_max, else average; eval: eval_rule.",
            mixed.mixed_pool,
            mixed.MixedParams,
            modules={1: mixed.MixedPool1d, 2: mixed.MixedPool2d, 3: mixed.MixedPool3d},
            random=True,
            takes_training=True,
            guide=_MIXED,
            explain=hooks.mixed_explain,
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
            guide=_STOCHASTIC,
            scratch=hooks.stochastic_scratch,
            explain=hooks.stochastic_explain,
            draws_positions=True,
        ),
        MethodSpec(
            "lp",
            "Power-average (Lp) pooling, sum form (sum |x|^p)^(1/p): p=1 sum, p=inf max of |x|.",
            lp.lp_pool,
            lp.LPParams,
            modules={1: lp.LPPool1d, 2: lp.LPPool2d, 3: lp.LPPool3d},
            stackable=False,
            guide=_LP,
            visit_cost=20,
            explain=hooks.lp_explain,
            display_scale=hooks.lp_display_scale,
        ),
        MethodSpec(
            "gem",
            "Generalised-mean (GeM) pooling (mean max(x, eps)^p)^(1/p): p=1 average, p=inf max.",
            lp.gem_pool,
            lp.GeMParams,
            modules={1: lp.GeMPool1d, 2: lp.GeMPool2d, 3: lp.GeMPool3d},
            stackable=False,
            guide=_GEM,
            visit_cost=20,
            explain=hooks.gem_explain,
        ),
        MethodSpec(
            "softpool",
            "SoftPool (Stergiou et al. 2021): each window's softmax-weighted average sum(e^x x) / sum(e^x).",
            softpool.soft_pool,
            softpool.SoftPoolParams,
            modules={1: softpool.SoftPool1d, 2: softpool.SoftPool2d, 3: softpool.SoftPool3d},
            # exp is not correctly rounded: its vectorised and scalar forms may differ in the last bit.
            stackable=False,
            guide=Guide(
                formula=r"y = \sum_{i \in R} \frac{e^{a_i}}{\sum_{j \in R} e^{a_j}} a_i",
                paper="Stergiou, Poppe & Kalliatakis 2021, “Refining activation downsampling with SoftPool” "
                "(ICCV).",
                use="An average that leans towards each window's largest values, differentiable everywhere: "
                "keeps more of the window than max pooling and more contrast than average pooling. Pick it "
                "to downsample while keeping detail, in training and inference alike.",
            ),
            # Measured: 7.4 times avg's time at kernel 8, stride 1 on 3×256² (one thread): a window
            # offset costs a subtraction, an exp, a multiply and two sums.
            visit_cost=8,
            explain=softpool.explain,
        ),
        _preset(
            "global_avg",
            avg,
            "Global average pooling (Network in Network): one mean per channel.",
            GlobalParams,
            _GLOBAL_AVG,
            output_size=1,
        ),
        _preset(
            "global_max",
            maxp,
            "Global max pooling: one maximum per channel.",
            GlobalParams,
            _GLOBAL_MAX,
            output_size=1,
        ),
        _preset(
            "adaptive_avg",
            avg,
            "Adaptive average pooling: give output_size, windows are derived.",
            AdaptiveParams,
            _ADAPTIVE_AVG,
        ),
        _preset(
            "adaptive_max",
            maxp,
            "Adaptive max pooling: give output_size, windows are derived.",
            AdaptiveParams,
            _ADAPTIVE_MAX,
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
