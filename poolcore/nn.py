"""Modules and functionals, the way ``torch.nn`` and ``torch.nn.functional`` offer them."""

from .basic import avg_pool, max_pool
from .generic import GlobalPool, Pool
from .lp import GeMPool1d, GeMPool2d, GeMPool3d, LPPool1d, LPPool2d, LPPool3d, gem_pool, lp_pool
from .mixed import MixedPool1d, MixedPool2d, MixedPool3d, mixed_pool

__all__ = ["avg_pool", "max_pool"]
__all__ += ["GlobalPool", "Pool"]
__all__ += ["GeMPool1d", "GeMPool2d", "GeMPool3d", "LPPool1d", "LPPool2d", "LPPool3d", "gem_pool", "lp_pool"]
__all__ += ["MixedPool1d", "MixedPool2d", "MixedPool3d", "mixed_pool"]
