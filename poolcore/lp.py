"""Power-average pooling: the sum form ``lp`` (alias ``power``) and the mean form ``gem``.

- ``lp``: ``(Σ |x|^p)^(1/p)`` over each window; p=1 is sum pooling of ``|x|``, p=inf max pooling of
  ``|x|``. On non-negative input this is ``F.lp_pool2d``, except that ours uses the true window sums
  under ``ceil_mode`` (torch rescales a mean by the full kernel area, which overcounts clipped windows).
  Zero padding adds ``|0|^p = 0``, so padding never changes a result.
- ``gem`` (Radenović et al., generalised mean): ``(mean max(x, eps)^p)^(1/p)``; p=1 is average pooling
  of the clamped input, p=inf max pooling. The mean is over each window's **real** positions: padding
  and ceil-mode overhang are neither clamped to eps nor counted.

``p >= 1``. Taking ``|x|`` (lp) or clamping at ``eps >= 0`` (gem) before the power means non-integer p
never meets a negative base, so there is no NaN. The root uses ``where(S > 0, S, 1)`` inside and
``where(S > 0, ·, 0)`` outside, so gradients with respect to x and p stay finite on all-zero windows.
float16/bfloat16 inputs are computed in float32 (powers overflow half precision quickly) and cast back.

Where ``x^p`` or a window's sum leaves the dtype's range (``gem`` with p=1e308, ``lp`` with p=40 on
float32 values of 1e3, or p=2 on values of 1e-25), a stable form gives the same value, which overflows
only if the true result does (see ``_scaled``): the window max when p is so large that nothing else
shows; else float64 on the input scaled by a power of two; else ``m · (Σ (x/m)^p)^(1/p)`` with ``m``
each window's maximum, which costs one pass per window offset. A tensor p (a learnable one) keeps the
plain form.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from ._module import DOC_SHAPES, PoolNd
from .params import WindowParams
from .windows import IntTuple, OptIntTuple, Window, check_float, is_traced, window_call

__all__ = [
    "GeMParams",
    "GeMPool1d",
    "GeMPool2d",
    "GeMPool3d",
    "LPParams",
    "LPPool1d",
    "LPPool2d",
    "LPPool3d",
    "gem_pool",
    "lp_pool",
]

Power = float | Tensor


class LPParams(WindowParams):
    p: float = Field(2.0, ge=1.0, description="Power p >= 1; inf gives max pooling of |x|.")


class GeMParams(WindowParams):
    p: float = Field(3.0, ge=1.0, description="Power p >= 1; 1 gives average pooling, inf max pooling.")
    eps: float = Field(1e-6, ge=0.0, description="Inputs are clamped to at least eps before the power.")


def _check_p(p: Power, method: str) -> Power:
    """A float p must be >= 1 (inf allowed). A tensor p (a learnable parameter) is taken as is: checking
    its value would cost a host sync, and the modules keep it >= 1 by construction."""
    if isinstance(p, Tensor):
        if p.numel() != 1:
            raise ValueError(f"{method} pooling takes a scalar p (got a tensor of shape {tuple(p.shape)})")
        if not p.is_floating_point():
            raise ValueError(f"{method} pooling needs a floating-point p (got dtype {p.dtype})")
        return p.reshape(())
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"p must be a float or a scalar tensor (got {p!r})")
    if not p >= 1:  # also rejects NaN
        raise ValueError(f"{method} pooling needs p >= 1 (got {p!r})")
    return float(p)


def _needs_grad(x: Tensor, p: Power) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or (isinstance(p, Tensor) and p.requires_grad))


def _power(t: Tensor, p: Power, inplace: bool) -> Tensor:
    """``t^p`` for ``t >= 0``; in place when ``t`` is a temporary and no gradient is needed."""
    if isinstance(p, Tensor):
        return t.pow(p.to(t.dtype))
    if p == 1:
        return t
    if p == 2:
        return t.mul_(t) if inplace else t * t
    return t.pow_(p) if inplace else t.pow(p)


def _root(s: Tensor, p: Power, grad: bool) -> Tensor:
    """``s^(1/p)`` for ``s >= 0``, with finite gradients at ``s = 0`` (double-where)."""
    square = not isinstance(p, Tensor) and p == 2
    if not isinstance(p, Tensor) and p == 1:
        return s
    inv = 1.0 / p.to(s.dtype) if isinstance(p, Tensor) else 1.0 / p
    if not grad:  # s is a temporary here: root it in place
        return s.sqrt_() if square else s.pow_(inv)
    positive = s > 0
    safe = torch.where(positive, s, torch.ones_like(s))
    root = safe.sqrt() if square else safe.pow(inv)
    return torch.where(positive, root, torch.zeros_like(root))


Core = Callable[[Tensor, bool, "Tensor | None"], Tensor]


def _by_planes(b: Tensor, w: Window, p: Power, core: Core) -> Tensor:
    """Run ``core(x, grad, out)`` in the compute dtype; on CPU without autograd, in plane groups."""
    grad = _needs_grad(b, p)
    low = b.dtype in (torch.float16, torch.bfloat16)  # computed in float32: x^p overflows half quickly
    # Plane groups pay off where ops are memory-bound round trips: CPU eager without autograd.
    if grad or b.device.type != "cpu" or is_traced():
        return core(b.float(), grad, None).to(b.dtype) if low else core(b, grad, None)

    def run(chunk: Tensor, planes: slice, out: Tensor) -> None:
        if low:
            out.copy_(core(chunk.float(), False, None))
        else:
            core(chunk, False, out)

    return w.map_planes(b, run)


def _out_of_range(s: Tensor, p: Power, window_max: Callable[[], Tensor]) -> bool:
    """Whether a window's power sum ``s`` (``Σ t^p`` or its mean) overflowed to inf, or underflowed below
    the dtype's smallest normal number in a window that is not all zero: then :func:`_scaled` gives the
    answer. One pass over the (small) output; skipped for a tensor p (training) and under compile, where
    a host sync would break the graph, and for p = 1, where there is no power to leave the range."""
    if is_traced() or isinstance(p, Tensor) or p == 1 or s.numel() == 0:
        return False
    low, high = (float(v) for v in torch.aminmax(s.detach()))
    if math.isinf(high):
        return True
    tiny = torch.finfo(s.dtype).tiny
    return low < tiny and bool(((s.detach() < tiny) & (window_max() > 0)).any())


def _scaled_sums(t: Tensor, w: Window, scale: Tensor, p: float, grad: bool) -> Tensor:
    """``Σ (t / scale)^p`` over each window, ``scale`` being output-shaped (one value per window), so
    each window's values are divided by that window's own scale. Loops over window offsets (each step an
    output-sized op) or, when there are fewer windows than offsets (large adaptive bins), over windows."""
    if w.is_global:
        return (t / scale).pow(p).sum(dim=w.spatial_dims, keepdim=True)
    n = len(w.in_size)
    if math.prod(w.max_extent(d) for d in range(n)) <= math.prod(w.out_size):
        total = torch.zeros_like(scale)
        term = torch.empty_like(scale)
        for value in w.offsets(t):  # positions outside the input read 0, which adds 0
            if grad:
                total = total + (value / scale).pow(p)
            else:
                total.add_(torch.div(value, scale, out=term).pow_(p))
        return total
    bounds = [w.bounds(d) for d in range(n)]
    sums = []
    for index in itertools.product(*(range(o) for o in w.out_size)):
        region: tuple[Any, ...] = (
            ...,
            *(slice(bounds[d][0][i], bounds[d][1][i], w.step(d)) for d, i in enumerate(index)),
        )
        at: tuple[Any, ...] = (..., *(slice(i, i + 1) for i in index))
        sums.append((t[region] / scale[at]).pow(p).sum(dim=w.spatial_dims, keepdim=True).flatten(2))
    return torch.cat(sums, dim=2).reshape(scale.shape)


def _window_scaled(t: Tensor, w: Window, p: float, mean: bool, grad: bool) -> Tensor:
    """``m · (Σ (t/m)^p)^(1/p)`` (``mean`` in place of Σ for GeM) with ``m`` each window's maximum.
    Every term is at most 1 and the largest is 1, so nothing overflows unless the result itself does,
    and a window's largest values never underflow. All-zero windows give 0."""
    m = w.max(t)
    scale = torch.where(m > 0, m, torch.ones_like(m))
    s = _scaled_sums(t, w, scale, p, grad)
    if mean:
        s = s / w.valid_count(t.device, t.dtype)
    y = scale * _root(s, p, grad)
    return torch.where(torch.isinf(m), m, y)  # an infinite input stays infinite, not inf/inf = NaN


_WIDE_BITS = 1800  # of float64's 2046 binary orders of magnitude, what powers and sums may span


def _scaled(t: Tensor, w: Window, p: float, mean: bool, grad: bool) -> Tensor:
    """The result for ``t >= 0`` where the plain form left the range, by the cheapest exact route:

    1. p so large that ``K^(1/p)`` (K values per window) rounds to 1: the window max, p = inf's answer;
    2. values whose p-th powers span less than float64's range: the plain form in float64, on ``t``
       scaled by a power of two (exact), so the powers sit in the middle of the range: one pass;
    3. otherwise each window scaled by its own maximum (:func:`_window_scaled`).

    Each equals the plain form mathematically (1. to within half an ulp), so autograd gives its
    gradients."""
    count = math.prod(w.max_extent(d) for d in range(len(w.in_size)))
    if math.log(count) / p <= torch.finfo(t.dtype).eps / 2:
        return w.max(t)
    plain = t.detach()
    high = float(plain.amax())
    low = float(torch.where(plain > 0, plain, math.inf).amin())
    if math.isfinite(high) and math.isfinite(low):
        top, bottom = math.log2(high), math.log2(low)
        if p * (top - bottom) + math.log2(count) < _WIDE_BITS:
            k = round((top + bottom) / 2)
            half = k // 2  # 2^k in two factors: one could overflow float64 at the extreme exponents
            x = t.double() * 2.0 ** (-half) * 2.0 ** (half - k)
            powered = x.pow(p)
            s = w.mean(powered, count_include_pad=False) if mean else w.sum(powered)
            return (_root(s, p, grad) * 2.0**half * 2.0 ** (k - half)).to(t.dtype)
    return _window_scaled(t, w, p, mean, grad)


def _lp(b: Tensor, w: Window, p: Power) -> Tensor:
    def core(x: Tensor, grad: bool, out: Tensor | None) -> Tensor:
        if not isinstance(p, Tensor) and p == math.inf:
            y = w.max(x.abs())
            return y if out is None else out.copy_(y)
        # x*x needs no abs; any other p takes |x| so a non-integer power never sees a negative base.
        t = x * x if not isinstance(p, Tensor) and p == 2 else _power(x.abs(), p, inplace=not grad)
        s = w.sum(t, out=out)
        if _out_of_range(s, p, lambda: w.max(x.abs())):
            y = _scaled(x.abs(), w, float(p), mean=False, grad=grad)
            return y if out is None else out.copy_(y)
        return _root(s, p, grad)

    return _by_planes(b, w, p, core)


def _gem(b: Tensor, w: Window, p: Power, eps: float) -> Tensor:
    def core(x: Tensor, grad: bool, out: Tensor | None) -> Tensor:
        if not isinstance(p, Tensor) and p == math.inf:
            y = w.max(x).clamp_min(eps)
            return y if out is None else out.copy_(y)
        t = _power(x.clamp_min(eps), p, inplace=not grad)
        s = w.mean(t, count_include_pad=False, out=out)
        if _out_of_range(s, p, lambda: w.max(x).clamp_min(eps)):
            y = _scaled(x.clamp_min(eps), w, float(p), mean=True, grad=grad)
            return y if out is None else out.copy_(y)
        return _root(s, p, grad)

    return _by_planes(b, w, p, core)


def lp_pool(
    x: Tensor,
    kernel_size: IntTuple | None = None,
    stride: IntTuple | None = None,
    padding: IntTuple = 0,
    ceil_mode: bool = False,
    *,
    output_size: OptIntTuple = None,
    dims: int | None = None,
    p: Power = 2.0,
    dilation: IntTuple = 1,
) -> Tensor:
    """Power-average (Lp) pooling, sum form; see :class:`LPPool2d`."""
    check_float(x, "lp")
    pv = _check_p(p, "lp")
    return window_call(
        x,
        lambda b, w: _lp(b, w, pv),
        kernel_size=kernel_size,
        stride=stride,
        padding=padding,
        ceil_mode=ceil_mode,
        output_size=output_size,
        dims=dims,
        dilation=dilation,
    )


def gem_pool(
    x: Tensor,
    kernel_size: IntTuple | None = None,
    stride: IntTuple | None = None,
    padding: IntTuple = 0,
    ceil_mode: bool = False,
    *,
    output_size: OptIntTuple = None,
    dims: int | None = None,
    p: Power = 3.0,
    eps: float = 1e-6,
    dilation: IntTuple = 1,
) -> Tensor:
    """Generalised-mean (GeM) pooling, mean form; see :class:`GeMPool2d`."""
    check_float(x, "gem")
    pv = _check_p(p, "gem")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps must be a non-negative float (got {eps!r})")
    return window_call(
        x,
        lambda b, w: _gem(b, w, pv, float(eps)),
        kernel_size=kernel_size,
        stride=stride,
        padding=padding,
        ceil_mode=ceil_mode,
        output_size=output_size,
        dims=dims,
        dilation=dilation,
    )


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))  # log(exp(y) - 1), stable for large y


class _PowerPoolNd(PoolNd):
    """Holds p: a buffer when fixed, ``p = 1 + softplus(p_raw)`` (never below 1) when ``learn_p``."""

    default_p: ClassVar[float] = 2.0
    method: ClassVar[str] = "lp"

    def __init__(
        self,
        kernel_size: IntTuple | None = None,
        stride: IntTuple | None = None,
        padding: IntTuple = 0,
        ceil_mode: bool = False,
        *,
        output_size: OptIntTuple = None,
        p: float | None = None,
        learn_p: bool = False,
        dilation: IntTuple = 1,
    ) -> None:
        super().__init__(kernel_size, stride, padding, ceil_mode, output_size=output_size, dilation=dilation)
        value = _check_p(self.default_p if p is None else p, self.method)
        if isinstance(value, Tensor):
            raise TypeError(f"the module's p must be a float (got a tensor {value!r})")
        self.learn_p = bool(learn_p)
        if self.learn_p:
            if not 1.0 < value < math.inf:
                raise ValueError(f"a learnable p = 1 + softplus(raw) must start in (1, inf) (got {value!r})")
            self.p_raw = nn.Parameter(torch.tensor(_inverse_softplus(value - 1.0)))
        else:
            self.register_buffer("p", torch.tensor(value))
            # A float copy keeps the fast paths (p=2: x*x, sqrt) and avoids a host sync per call;
            # it is refreshed whenever a state_dict is loaded.
            self._p_value = value
            self.register_load_state_dict_post_hook(_refresh_p)

    def power(self) -> Power:
        """The current p: a float when fixed, a tensor carrying the gradient when learnable."""
        if self.learn_p:
            return 1.0 + F.softplus(self.p_raw)
        return self._p_value

    def extra_repr(self) -> str:
        p = self.power()
        shown = f"{float(p.detach()):.4g}" if isinstance(p, Tensor) else f"{p:g}"
        return f"{super().extra_repr()}, p={shown}, learn_p={self.learn_p}"


def _refresh_p(module: nn.Module, incompatible_keys: Any) -> None:
    if isinstance(module, _PowerPoolNd) and not module.learn_p:
        module._p_value = float(module.get_buffer("p"))


class _LPPoolNd(_PowerPoolNd):
    """torch.nn's positional order, ``(norm_type, kernel_size, stride=None, ceil_mode=False)``, so
    swapping ``torch.nn.LPPool2d`` for this one keeps every argument's meaning; the rest is keyword-only,
    and ``p=`` is a keyword alias of ``norm_type``."""

    default_p = 2.0
    method = "lp"

    def __init__(
        self,
        norm_type: float | None = None,
        kernel_size: IntTuple | None = None,
        stride: IntTuple | None = None,
        ceil_mode: bool = False,
        *,
        padding: IntTuple = 0,
        output_size: OptIntTuple = None,
        p: float | None = None,
        learn_p: bool = False,
        dilation: IntTuple = 1,
    ) -> None:
        if norm_type is not None and p is not None:
            raise ValueError(
                f"give norm_type or its alias p, not both (got norm_type={norm_type!r}, p={p!r})"
            )
        super().__init__(
            kernel_size,
            stride,
            padding,
            ceil_mode,
            output_size=output_size,
            p=p if norm_type is None else norm_type,
            learn_p=learn_p,
            dilation=dilation,
        )

    def forward(self, x: Tensor) -> Tensor:
        return lp_pool(x, **self.window_kwargs(), p=self.power())


class _GeMPoolNd(_PowerPoolNd):
    default_p = 3.0
    method = "gem"

    def __init__(
        self,
        kernel_size: IntTuple | None = None,
        stride: IntTuple | None = None,
        padding: IntTuple = 0,
        ceil_mode: bool = False,
        *,
        output_size: OptIntTuple = None,
        p: float | None = None,
        eps: float = 1e-6,
        learn_p: bool = False,
        dilation: IntTuple = 1,
    ) -> None:
        super().__init__(
            kernel_size,
            stride,
            padding,
            ceil_mode,
            output_size=output_size,
            p=p,
            learn_p=learn_p,
            dilation=dilation,
        )
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
            raise ValueError(f"eps must be a non-negative float (got {eps!r})")
        self.eps = float(eps)

    def forward(self, x: Tensor) -> Tensor:
        return gem_pool(x, **self.window_kwargs(), p=self.power(), eps=self.eps)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, eps={self.eps:g}"


_LP_DOC = r"""Applies {d}d power-average (Lp) pooling, sum form, over an input signal.

    .. math::
        y = \Big(\sum_{{i \in R}} |x_i|^p\Big)^{{1/p}}

    over each window :math:`R`. p=1 is sum pooling of :math:`|x|`, p=inf max pooling of :math:`|x|`.
    Matches ``nn.LPPool{d}d`` on non-negative input, but sums only what each window covers under
    ``ceil_mode``. Zero padding contributes nothing.

    The positional arguments are ``torch.nn.LPPool{d}d``'s: ``(norm_type, kernel_size, stride=None,
    ceil_mode=False)``; the others are keyword-only.

    Args:
        norm_type: the power p, >= 1 (``p=`` is a keyword alias). Default: 2.
        kernel_size: the window size; give this or ``output_size``.
        stride: the window step. Default: ``kernel_size``.
        ceil_mode: use ceil instead of floor for the output size.
        padding: implicit zero padding on both sides (keyword-only).
        output_size: adaptive output size instead of ``kernel_size`` (keyword-only); ``None`` entries
            keep that size.
        learn_p: make p an ``nn.Parameter``, ``p = 1 + softplus(p_raw)``, so it stays >= 1.
            Otherwise p is a buffer. Default: False.

    Shape:
        - Input: {shape_in}
        - Output: {shape_out}

    Example::

        >>> import torch, poolcore
        >>> m = poolcore.nn.LPPool{d}d(3.0, 2, learn_p=True)
        >>> m(torch.randn({x_shape})).sum().backward()
        >>> m.p_raw.grad is not None
        True
    """

_GEM_DOC = r"""Applies {d}d generalised-mean (GeM) pooling over an input signal.

    .. math::
        y = \Big(\frac{{1}}{{|R|}} \sum_{{i \in R}} \max(x_i, \epsilon)^p\Big)^{{1/p}}

    over each window's real (non-padded) positions :math:`R`. p=1 is average pooling of the clamped
    input, p=inf max pooling; ``GeMPool{d}d(output_size=1)`` is the global GeM of Radenović et al.

    Positional arguments: ``(kernel_size, stride=None, padding=0, ceil_mode=False)``; the rest are
    keyword-only. (torch.nn has no class of this name; ``LPPool{d}d`` takes torch's order.)

    Args:
        kernel_size: the window size; give this or ``output_size``.
        stride: the window step. Default: ``kernel_size``.
        padding: implicit padding on both sides, excluded from the mean.
        ceil_mode: use ceil instead of floor for the output size.
        output_size: adaptive output size instead of ``kernel_size``; ``None`` entries keep that size.
        p: the power, >= 1. Default: 3.
        eps: inputs are clamped to at least eps. Default: 1e-6.
        learn_p: make p an ``nn.Parameter``, ``p = 1 + softplus(p_raw)``, so it stays >= 1.
            Otherwise p is a buffer. Default: False.

    Shape:
        - Input: {shape_in}
        - Output: {shape_out}

    Example::

        >>> import torch, poolcore
        >>> m = poolcore.nn.GeMPool{d}d(output_size=1, learn_p=True)
        >>> m(torch.rand({x_shape})).sum().backward()
        >>> m.p_raw.grad is not None
        True
    """


def _doc(template: str, d: int) -> str:
    return template.format(d=d, **DOC_SHAPES[d])


class LPPool1d(_LPPoolNd):
    __doc__ = _doc(_LP_DOC, 1)
    dims = 1


class LPPool2d(_LPPoolNd):
    __doc__ = _doc(_LP_DOC, 2)
    dims = 2


class LPPool3d(_LPPoolNd):
    __doc__ = _doc(_LP_DOC, 3)
    dims = 3


class GeMPool1d(_GeMPoolNd):
    __doc__ = _doc(_GEM_DOC, 1)
    dims = 1


class GeMPool2d(_GeMPoolNd):
    __doc__ = _doc(_GEM_DOC, 2)
    dims = 2


class GeMPool3d(_GeMPoolNd):
    __doc__ = _doc(_GEM_DOC, 3)
    dims = 3
