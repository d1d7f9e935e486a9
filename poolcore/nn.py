"""Modules and functionals, the way ``torch.nn`` and ``torch.nn.functional`` offer them."""

from typing import Any

from .basic import avg_pool, max_pool
from .generic import GlobalPool, Pool
from .lp import GeMPool1d, GeMPool2d, GeMPool3d, LPPool1d, LPPool2d, LPPool3d, gem_pool, lp_pool
from .mixed import MixedPool1d, MixedPool2d, MixedPool3d, mixed_pool
from .registry import REGISTRY
from .stochastic import StochasticPool1d, StochasticPool2d, StochasticPool3d, stochastic_pool
from .swap import replace_pooling

__all__ = [
    "GeMPool1d",
    "GeMPool2d",
    "GeMPool3d",
    "GlobalPool",
    "LPPool1d",
    "LPPool2d",
    "LPPool3d",
    "MixedPool1d",
    "MixedPool2d",
    "MixedPool3d",
    "Pool",
    "StochasticPool1d",
    "StochasticPool2d",
    "StochasticPool3d",
    "avg_pool",
    "gem_pool",
    "lp_pool",
    "max_pool",
    "mixed_pool",
    "replace_pooling",
    "stochastic_pool",
]

# Every registered method's functional and modules, so a new method's registry entry is all it takes to
# appear here (the names above are spelled out for type checkers).
for _spec in REGISTRY.values():
    _exports: list[Any] = [_spec.functional, *_spec.modules.values()]
    for _export in _exports:
        if _export.__name__ not in globals():
            globals()[_export.__name__] = _export
            __all__.append(_export.__name__)
del _spec, _exports, _export
