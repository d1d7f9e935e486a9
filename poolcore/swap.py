"""Swap the pooling layers of an existing model for poolcore's, keeping every layer's window.

``replace_pooling(model, {nn.MaxPool2d: "gem"}, p=3.0)`` replaces each ``nn.MaxPool2d`` (nested ones
included) by a :class:`poolcore.nn.GeMPool2d` with the same kernel, stride, padding, dilation and
ceil_mode, so every output shape stays what it was. A layer that has no exact poolcore counterpart is
refused by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from ._module import PoolNd
from .generic import Pool
from .registry import get_spec

__all__ = ["replace_pooling"]

# torch.nn's pooling layers poolcore can stand in for, with their spatial rank.
_KERNEL: dict[type[nn.Module], int] = {
    nn.MaxPool1d: 1,
    nn.MaxPool2d: 2,
    nn.MaxPool3d: 3,
    nn.AvgPool1d: 1,
    nn.AvgPool2d: 2,
    nn.AvgPool3d: 3,
}
_ADAPTIVE: dict[type[nn.Module], int] = {
    nn.AdaptiveAvgPool1d: 1,
    nn.AdaptiveAvgPool2d: 2,
    nn.AdaptiveAvgPool3d: 3,
    nn.AdaptiveMaxPool1d: 1,
    nn.AdaptiveMaxPool2d: 2,
    nn.AdaptiveMaxPool3d: 3,
}
_LAYERS = {**_KERNEL, **_ADAPTIVE}

Target = str | type[nn.Module]


def _ones(value: Any) -> bool:
    return all(v == 1 for v in value) if isinstance(value, (tuple, list)) else value == 1


def _zeros(value: Any) -> bool:
    return all(v == 0 for v in value) if isinstance(value, (tuple, list)) else value == 0


def _window(name: str, layer: nn.Module, method: str | None) -> dict[str, Any]:
    """The layer's window as poolcore arguments, or a ValueError naming the layer and what can't map."""
    where = f"layer {name or '<model>'} ({layer!r})"
    if getattr(layer, "return_indices", False):
        raise ValueError(f"{where}: return_indices=True has no poolcore counterpart (it returns two tensors)")
    if type(layer) in _ADAPTIVE or isinstance(layer, tuple(_ADAPTIVE)):
        return {"output_size": layer.output_size}
    if getattr(layer, "divisor_override", None) is not None:
        raise ValueError(f"{where}: divisor_override={layer.divisor_override} has no poolcore counterpart")
    window: dict[str, Any] = {
        "kernel_size": layer.kernel_size,
        "stride": layer.stride,
        "padding": layer.padding,
        "ceil_mode": layer.ceil_mode,
    }
    if not _ones(getattr(layer, "dilation", 1)):  # only max pools have one; left out when 1
        window["dilation"] = layer.dilation
    if isinstance(layer, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
        include = bool(layer.count_include_pad)
        if method == "avg":
            window["count_include_pad"] = include
        elif include and method != "max" and not _zeros(layer.padding):
            raise ValueError(
                f"{where}: count_include_pad=True with padding counts the zero padding in each mean, "
                f"which poolcore's {method or 'module'} does not (it uses the real positions only); "
                "build the layer with count_include_pad=False, or map it to 'avg'"
            )
    return window


def _build(name: str, layer: nn.Module, target: Target, params: Mapping[str, Any]) -> nn.Module:
    dims = next(d for cls, d in _LAYERS.items() if isinstance(layer, cls))
    if isinstance(target, str):
        spec = get_spec(target)
        window = _window(name, layer, spec.base or spec.name)
        module_cls = spec.modules.get(dims)
        try:
            if module_cls is not None:
                return module_cls(**window, **params)
            if "output_size" in spec.fixed:  # a global preset: only for a layer that pools globally
                if not _ones(window.get("output_size", 0)):
                    raise ValueError(f"{spec.name!r} pools globally, so it only replaces output_size=1")
                window = {}
            # avg, max and the other presets: the generic module, its rank pinned
            return Pool(spec.name, **window, dims=dims, **params)
        except ValueError as error:
            raise ValueError(f"layer {name} ({layer!r}) -> {target!r}: {error}") from None
    if isinstance(target, type) and issubclass(target, PoolNd):
        if target.dims != dims:
            raise ValueError(
                f"layer {name} ({layer!r}) pools {dims}d, but {target.__name__} pools {target.dims}d"
            )
        return target(**_window(name, layer, None), **params)
    raise TypeError(
        f"a replacement must be a poolcore method name or a poolcore.nn module class such as GeMPool2d "
        f"(got {target!r})"
    )


def replace_pooling(model: nn.Module, mapping: Mapping[type[nn.Module], Target], **params: Any) -> nn.Module:
    """Replace, in place, every pooling layer of ``model`` whose class is a key of ``mapping``.

    Args:
        model: any module; nested layers are found too. A model that is itself a pooling layer is
            replaced and returned.
        mapping: torch.nn pooling classes (``nn.MaxPool2d``, ``nn.AvgPool1d``, ``nn.AdaptiveAvgPool2d``,
            ``nn.AdaptiveMaxPool3d``, ...) to a poolcore method name (``"gem"``, ``"mixed"``, ``"lp"``...)
            or a poolcore.nn module class (``GeMPool2d``).
        **params: the method's own parameters for every replacement (``p=3.0``, ``learn_p=True``,
            ``p_max=0.5``...).

    Each replacement keeps the layer's window (kernel_size, stride, padding, dilation, ceil_mode; or
    output_size), so output shapes are unchanged, and its train/eval mode and device. Layers with
    ``return_indices=True``, ``divisor_override``, or ``count_include_pad=True`` with padding mapped to
    a method that averages real positions only are refused with a ``ValueError`` naming the layer.

    Returns:
        ``model`` (or the replacement, when ``model`` itself was one of the layers).

    Example::

        >>> import torch, poolcore
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1))
        >>> net = poolcore.nn.replace_pooling(net, {nn.AdaptiveAvgPool2d: "gem"}, p=3.0, learn_p=True)
        >>> net(torch.rand(1, 3, 16, 16)).shape
        torch.Size([1, 8, 1, 1])
    """
    for key in mapping:
        if key not in _LAYERS:
            known = ", ".join(cls.__name__ for cls in _LAYERS)
            raise ValueError(f"replace_pooling maps torch.nn pooling classes ({known}); got {key!r}")

    def target_of(layer: nn.Module) -> Target | None:
        if type(layer) in mapping:
            return mapping[type(layer)]
        return next((t for cls, t in mapping.items() if isinstance(layer, cls)), None)

    def rebuilt(name: str, layer: nn.Module, target: Target) -> nn.Module:
        new = _build(name, layer, target, params)
        new.train(layer.training)
        device = next((t.device for t in model.parameters()), None) or next(
            (t.device for t in model.buffers()), None
        )
        return new.to(device) if device is not None else new

    top = target_of(model)
    if top is not None:
        return rebuilt("", model, top)
    # Collect first: swapping while named_modules() walks the tree would visit the new modules.
    found = [(name, layer, target_of(layer)) for name, layer in model.named_modules() if name]
    for name, layer, target in found:
        if target is None:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, rebuilt(name, layer, target))
    return model
