"""poolcore: pooling operators for PyTorch, in every window form, 1d/2d/3d, on CPU or CUDA."""

from . import nn
from .basic import avg_pool, max_pool
from .generic import GlobalPool, Pool
from .lp import gem_pool, lp_pool
from .mixed import mixed_pool
from .registry import REGISTRY, MethodSpec, UnknownMethodError, get_spec, methods, pool
from .stochastic import stochastic_pool
from .windows import Window

__all__ = [
    "REGISTRY",
    "GlobalPool",
    "MethodSpec",
    "Pool",
    "UnknownMethodError",
    "Window",
    "avg_pool",
    "gem_pool",
    "get_spec",
    "lp_pool",
    "max_pool",
    "methods",
    "mixed_pool",
    "nn",
    "pool",
    "stochastic_pool",
]

# Every registered method's functional, so a new method's registry entry is all it takes to appear here
# (the names above are spelled out for type checkers).
for _spec in REGISTRY.values():
    if _spec.functional.__name__ not in globals():
        globals()[_spec.functional.__name__] = _spec.functional
        __all__.append(_spec.functional.__name__)
del _spec
__version__ = "0.1.0"
