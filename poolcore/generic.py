"""Modules for any registered method: :class:`Pool` and :class:`GlobalPool`.

Both validate their parameters against the method's pydantic model at construction, then call the
registry on every forward, following ``self.training``. Random methods draw from torch's global RNG
(seed it with ``torch.manual_seed``). ``Pool("mixed")`` in eval mode applies its ``eval_rule``
parameter as the functional does (the expectation by default; ``"frequent"`` decided by ``p_max``);
:class:`poolcore.nn.MixedPool2d` also counts its training draws for ``"frequent"``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .registry import get_spec

__all__ = ["GlobalPool", "Pool"]

_WINDOW_ARGS = ("kernel_size", "stride", "padding", "ceil_mode", "output_size", "dilation")


class Pool(nn.Module):
    r"""Pooling with any registered method, by name.

    .. math::
        y = \mathrm{pool}_{\text{method}}(x;\ \text{params})

    Args:
        method: a name from :func:`poolcore.methods` (or an alias such as ``"power"``).
        **params: the method's parameters, validated at construction (``ValueError`` names a bad one).

    Shape:
        - Input: as the method takes it, e.g. (N, C, H_in, W_in) or (C, H_in, W_in)
        - Output: (N, C, H_out, W_out) or (C, H_out, W_out)

    Example::

        >>> import torch, poolcore
        >>> m = poolcore.nn.Pool("gem", kernel_size=2, p=3.0)
        >>> m(torch.rand(1, 4, 8, 8)).shape
        torch.Size([1, 4, 4, 4])
    """

    def __init__(self, method: str, **params: Any) -> None:
        super().__init__()
        spec = get_spec(method)
        # Validated once, here: forward calls the functional with the resolved arguments, so nothing in
        # forward (pydantic included) breaks a torch.compile graph.
        self._resolved = spec.resolve(params)
        self._spec = spec
        self.method = spec.name
        self.params = dict(params)

    def forward(self, x: Tensor) -> Tensor:
        return self._spec.run(x, self._resolved, training=self.training)

    # The spec is looked up again on load rather than pickled (a preset's spec holds a mappingproxy, which
    # neither pickle nor deepcopy can copy): torch.save of a model and copy.deepcopy keep working.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_spec", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._spec = get_spec(self.method)

    def extra_repr(self) -> str:
        args = "".join(f", {key}={value!r}" for key, value in self.params.items())
        return f"{self.method!r}{args}"


class GlobalPool(Pool):
    r"""Global pooling with any registered method: one value per sample and channel.

    .. math::
        y_{n,c} = \mathrm{pool}_{\text{method}}\big(x_{n,c,\cdot}\big)

    ``GlobalPool()`` is Network in Network's global average pooling, ``GlobalPool("gem", p=3)`` global
    GeM, ``GlobalPool("stochastic")`` global stochastic pooling.

    Args:
        method: a registered method name. Default: ``"avg"``.
        flatten: return (N, C) instead of (N, C, 1, ...), as timm's ``SelectAdaptivePool2d``.
            Default: False.
        **method_params: the method's own parameters (window arguments are not allowed).

    Shape:
        - Input: (N, C, *spatial), any rank >= 3 up to 3 spatial dims (with ``dims=`` given,
          also the unbatched (C, *spatial))
        - Output: (N, C, 1, ...) with a 1 per spatial dim, or (N, C) with ``flatten=True``

    Example::

        >>> import torch, poolcore
        >>> poolcore.nn.GlobalPool("gem", p=3.0)(torch.rand(2, 8, 7, 7)).shape
        torch.Size([2, 8, 1, 1])
        >>> poolcore.nn.GlobalPool(flatten=True)(torch.rand(2, 8, 20)).shape
        torch.Size([2, 8])
    """

    def __init__(self, method: str = "avg", *, flatten: bool = False, **method_params: Any) -> None:
        given = [key for key in _WINDOW_ARGS if key in method_params]
        if given:
            dropped = ", ".join(given)
            raise ValueError(f"GlobalPool sets the window itself: drop {dropped} (got {method_params})")
        if not isinstance(flatten, bool):
            raise TypeError(f"flatten must be a bool (got {flatten!r})")
        spec = get_spec(method)
        if spec.fixed.get("output_size") == 1:
            params = dict(method_params)  # a global preset already pins it
        elif "output_size" in spec.params.model_fields and "output_size" not in spec.fixed:
            params = {**method_params, "output_size": 1}
        else:
            raise ValueError(f"method {method!r} has no output_size, so it cannot pool globally")
        super().__init__(method, **params)
        self.flatten = flatten
        self._given_dims = method_params.get("dims") is not None

    def forward(self, x: Tensor) -> Tensor:
        if self._given_dims:
            out = self._spec.run(x, self._resolved, training=self.training)
        else:
            if x.dim() < 3:
                raise ValueError(
                    "GlobalPool takes (N, C, *spatial) input of rank 3 or more "
                    f"(got shape {tuple(x.shape)}); pass dims= for an unbatched input"
                )
            resolved = {**self._resolved, "dims": x.dim() - 2}
            out = self._spec.run(x, resolved, training=self.training)
        return out.flatten(1) if self.flatten else out

    def extra_repr(self) -> str:
        return super().extra_repr() + (", flatten=True" if self.flatten else "")
