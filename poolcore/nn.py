"""Modules and functionals, the way ``torch.nn`` and ``torch.nn.functional`` offer them."""

from .basic import avg_pool, max_pool

__all__ = ["avg_pool", "max_pool"]

from .stochastic import StochasticPool1d, StochasticPool2d, StochasticPool3d, stochastic_pool

__all__ += ["StochasticPool1d", "StochasticPool2d", "StochasticPool3d", "stochastic_pool"]
