"""poolcore: pooling operators for PyTorch, in every window form, 1d/2d/3d, on CPU or CUDA."""

from . import nn
from .basic import avg_pool, max_pool
from .generic import GlobalPool, Pool
from .lp import gem_pool, lp_pool
from .mixed import mixed_pool
from .registry import REGISTRY, MethodSpec, UnknownMethodError, get_spec, methods, pool
from .windows import Window

__all__ = [
    "REGISTRY",
    "MethodSpec",
    "UnknownMethodError",
    "Window",
    "avg_pool",
    "get_spec",
    "max_pool",
    "methods",
    "nn",
    "pool",
]
__all__ += ["GlobalPool", "Pool", "gem_pool", "lp_pool", "mixed_pool"]
__version__ = "0.1.0"
