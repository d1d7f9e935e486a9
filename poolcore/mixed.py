"""Mixed pooling (Yu, Wang, Chen, Wei, *Mixed Pooling for Convolutional Neural Networks*, RSKT 2014).

Training draws ``λ ∈ {0, 1}`` with ``P(λ = 1) = p_max`` and outputs ``λ·max + (1 − λ)·avg``; the
gradient follows the branch that was drawn. Outside training every entry point (the functional, the
modules, ``poolcore.pool``, the service) applies the same ``eval_rule``:

- ``"expectation"`` (the default): ``p_max·max + (1 − p_max)·avg``, the mean of what training outputs,
  so eval sees activations of the scale training produced on average;
- ``"frequent"``: Yu et al.'s test-time rule, the branch training draws more often. A module that has
  trained counts its draws in buffers and uses the counts (the expectation on a tie). Where there is no
  training history (the functional, an untrained module, the service) it follows from p_max: max above
  0.5, avg below it, the expectation at exactly 0.5.

λ comes from torch's default generator (or ``generator=``), also under ``torch.compile`` on CPU, so a
compiled module draws the same λ as the eager one for a seed; under export (and compiled on CUDA) it is
``torch.rand`` in the graph.

The average is over the window's **real** positions (``count_include_pad=False``): the paper has no
padding, and the max branch ignores padding too, so both branches see the same positions. With
``padding=0`` and ``ceil_mode=False`` this is exactly ``F.avg_pool2d``.
"""

from __future__ import annotations

import math
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from ._module import DOC_SHAPES, PoolNd, keep_memory_format
from .params import WindowParams
from .windows import IntTuple, OptIntTuple, Window, check_float, is_traced, window_call

__all__ = ["MixedParams", "MixedPool1d", "MixedPool2d", "MixedPool3d", "eval_weight", "mixed_pool"]

Scope = Literal["region", "channel", "layer"]
EvalRule = Literal["expectation", "frequent"]
_SCOPES = ("region", "channel", "layer")
_EVAL_RULES = ("frequent", "expectation")


class MixedParams(WindowParams):
    p_max: float = Field(0.5, ge=0.0, le=1.0, description="Probability of drawing the max branch (λ = 1).")
    scope: Scope = Field(
        "region",
        description="One λ per output element (region), per channel (channel) or per sample (layer).",
    )
    eval_rule: EvalRule = Field(
        "expectation",
        description="Eval output: the expectation p_max·max + (1 − p_max)·avg, or the frequent branch "
        "(Yu et al.'s rule; from p_max without training history: max above 0.5, avg below).",
    )


def _check_eval_rule(eval_rule: str) -> EvalRule:
    if eval_rule not in _EVAL_RULES:
        known = ", ".join(map(repr, _EVAL_RULES))
        raise ValueError(f"eval_rule must be one of {known} (got {eval_rule!r})")
    return cast(EvalRule, eval_rule)


def eval_weight(p_max: float, eval_rule: EvalRule = "expectation") -> float:
    """The weight of the max branch outside training where there is no training history:
    ``p_max`` for ``"expectation"``; for ``"frequent"`` the branch drawn more often with probability
    ``p_max``: 1 (max) above 0.5, 0 (avg) below, and the expectation (0.5) at exactly 0.5."""
    p_max = _check_mixed(p_max, "region")
    if _check_eval_rule(eval_rule) == "expectation" or p_max == 0.5:
        return p_max
    return 1.0 if p_max > 0.5 else 0.0


def _check_mixed(p_max: float, scope: str) -> float:
    if isinstance(p_max, bool) or not isinstance(p_max, (int, float)):
        raise TypeError(f"p_max must be a float (got {p_max!r})")
    if not 0.0 <= p_max <= 1.0:  # also rejects NaN
        raise ValueError(f"p_max must be a probability in [0, 1] (got {p_max!r})")
    if scope not in _SCOPES:
        raise ValueError(f"scope must be one of {', '.join(map(repr, _SCOPES))} (got {scope!r})")
    return float(p_max)


# Whether torch was built with oneDNN: a property of the build (dynamo cannot trace the query itself).
_HAS_MKLDNN = torch.backends.mkldnn.is_available()


def _use_onednn(x: Tensor, window: Window) -> bool:
    """oneDNN pools without computing argmax indices, which is what makes max the slow half of the
    pair on CPU; it has no autograd, so it is only used when no gradient is needed."""
    return (
        window.kernel_size is not None
        and not window.dilated
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not (torch.is_grad_enabled() and x.requires_grad)
        and not is_traced()
        and torch.backends.mkldnn.is_available()
    )


def _onednn_max_avg(x: Tensor, window: Window) -> tuple[Tensor, Tensor]:
    """Max and real-position mean of each kernel-form window through oneDNN: torch's values, except
    that oneDNN's max skips NaN (the mean does not, see below)."""
    k, s, p = list(window.kernel_size or ()), list(window.stride), list(window.padding)
    return _onednn_pools(x, k, s, p, window.ceil_mode)


def _onednn_pools(
    x: Tensor, k: list[int], s: list[int], p: list[int], ceil_mode: bool
) -> tuple[Tensor, Tensor]:
    xm = x.contiguous().to_mkldnn()
    if len(k) == 2:
        mx = torch.mkldnn_max_pool2d(xm, k, s, p, [1, 1], ceil_mode)
        av = F.avg_pool2d(xm, k, s, p, ceil_mode, False)
    else:
        mx = torch.mkldnn_max_pool3d(xm, k, s, p, [1, 1, 1], ceil_mode)
        av = F.avg_pool3d(xm, k, s, p, ceil_mode, False)
    mx, av = mx.to_dense(), av.to_dense()
    # oneDNN starts its max at the lowest finite float, so an all −inf window comes back as that; its
    # mean is −inf exactly when the window holds −inf and no +inf or NaN.
    mx.masked_fill_((mx == torch.finfo(mx.dtype).min) & (av == -math.inf), -math.inf)
    return mx, av


# The two ops torch.compile calls rather than traces. Defined through torch.library.Library: its dispatch
# costs about 10 us a call, where torch.library.custom_op's Python wrapping cost 40-100 us (a tenth of a
# small call).
_LIB = torch.library.Library("poolcore", "FRAGMENT")
_LIB.define(
    "onednn_max_avg(Tensor x, int[] kernel_size, int[] stride, int[] padding, bool ceil_mode) "
    "-> (Tensor, Tensor)"
)
_LIB.define("rand(SymInt[] shape, Device device) -> Tensor", tags=(torch.Tag.nondeterministic_seeded,))


def _onednn_op(
    x: Tensor, kernel_size: list[int], stride: list[int], padding: list[int], ceil_mode: bool
) -> tuple[Tensor, Tensor]:
    """The eager path's oneDNN max and mean, group by group of planes, as one op that torch.compile
    calls rather than traces, for the windows inductor does not reduce well (:func:`_separable`; padded
    and ceil-mode ones): its own max and mean of 3/2 windows were 1.5-4x slower on CPU (measured at
    4x64x112x112, one thread). The combination with λ stays in the compiled graph."""
    b, c = x.shape[:2]
    spatial = x.shape[2:]
    flat = x.reshape(1, b * c, *spatial)
    per = max(1, (1 << 22) // max(1, math.prod(spatial)))  # the chunk size of Window.map_planes
    maxes, means = [], []
    for start in range(0, b * c, per):
        mx, av = _onednn_pools(flat[:, start : start + per], kernel_size, stride, padding, ceil_mode)
        maxes.append(mx)
        means.append(av)
    mx, av = (torch.cat(t, 1) if len(t) > 1 else t[0] for t in (maxes, means))
    return mx.reshape(b, c, *mx.shape[2:]), av.reshape(b, c, *av.shape[2:])


_LIB.impl("onednn_max_avg", _onednn_op, "CPU")


@torch.library.register_fake("poolcore::onednn_max_avg")
def _onednn_op_fake(
    x: Tensor, kernel_size: list[int], stride: list[int], padding: list[int], ceil_mode: bool
) -> tuple[Tensor, Tensor]:
    pool: Any = F.avg_pool2d if len(kernel_size) == 2 else F.avg_pool3d
    shape = pool(x, kernel_size, stride, padding, ceil_mode).shape  # torch's own output size
    return x.new_empty(shape), x.new_empty(shape)


def _onednn_compiled(x: Tensor, window: Window) -> bool:
    """Under torch.compile (not export): the oneDNN pools through ``_onednn_op``, where eager takes them."""
    return (
        torch.compiler.is_compiling()
        and not torch.compiler.is_exporting()
        and window.kernel_size is not None
        and not window.dilated
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not (torch.is_grad_enabled() and x.requires_grad)
        and _HAS_MKLDNN
    )


def _unfolds(window: Window) -> bool:
    """Under torch.compile, unpadded floor-mode windows are reduced from an unfolded view: inductor turns
    max and mean of it into one fused loop, about 3x faster than its max_pool2d lowering (which also
    computes argmax indices) on CPU. Not under export, where the two pooling ops make the smaller graph."""
    return (
        torch.compiler.is_compiling()
        and not torch.compiler.is_exporting()
        and window.kernel_size is not None
        and not window.dilated
        and not window.ceil_mode
        and all(p == 0 for p in window.padding)
    )


def _separable(window: Window) -> bool:
    """Whether inductor reduces the window fastest one dim at a time. Measured on CPU (one thread), so it
    is for every window tried (kernel 2, 5 and 7; strides 1 and 2; 3/3), often faster than oneDNN too,
    except 3 at a stride above 1: there inductor fuses the passes into one unrolled scalar loop, and
    oneDNN (or, with autograd, one joint reduction) is faster."""
    return not all(k == 3 and s > 1 for k, s in zip(window.kernel_size or (), window.stride))


def _max_avg_unfolded(x: Tensor, window: Window) -> tuple[Tensor, Tensor]:
    """Max and mean of each window from ``unfold`` views (no copy); floor mode without padding, so every
    window lies inside the input, as ``unfold`` requires.

    Max and sum are separable, so they are reduced one spatial dim at a time (``k`` loads per output and
    dim instead of ``k^d``), except where :func:`_separable` says otherwise."""
    n = len(window.in_size)
    kernel, stride = window.kernel_size or (), window.stride
    if not _separable(window):
        u = x
        for d, (k, s) in enumerate(zip(kernel, stride)):
            u = u.unfold(x.dim() - n + d, k, s)
        reduce = tuple(range(-n, 0))
        return u.amax(reduce), u.mean(reduce)
    mx = total = x
    for d, (k, s) in enumerate(zip(kernel, stride)):
        dim = x.dim() - n + d
        mx, total = mx.unfold(dim, k, s).amax(-1), total.unfold(dim, k, s).sum(-1)
    return mx, total / math.prod(kernel)


def _rand(shape: list[int], device: torch.device) -> Tensor:
    """``torch.rand(shape)`` (float32) from torch's default generator, opaque to torch.compile.

    Inductor replaces ``torch.rand`` with its own Philox stream, which on CPU costs one scalar Philox
    call per element: 5x torch's own generator, and most of a compiled mixed-pooling call. As an opaque
    op the draw runs torch's kernel, so a compiled module also draws the very λ of the eager one for a
    seed. The tag keeps it from being merged with another call or recomputed in backward."""
    return torch.rand(shape, device=device, dtype=torch.float32)


_LIB.impl("rand", _rand, "CompositeExplicitAutograd")


@torch.library.register_fake("poolcore::rand")
def _rand_fake(shape: list[int], device: torch.device) -> Tensor:
    return torch.empty(shape, device=device, dtype=torch.float32)


def _draw(
    shape: tuple[int, ...], scope: str, p_max: float, generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """λ as a bool tensor broadcastable to the ``(B, C, *spatial)`` output ``shape``: True selects max."""
    n = len(shape) - 2
    if scope == "channel":
        shape = (*shape[:2], *(1,) * n)
    elif scope == "layer":
        shape = (shape[0], *(1,) * (n + 1))
    # Uniforms in float32 whatever the input dtype, so P(λ=1) is p_max to 2**-24 and 0/1 are exact.
    if generator is None:  # torch.rand(..., generator=None) needs concrete sizes under dynamic compile
        if device.type == "cpu" and torch.compiler.is_compiling() and not torch.compiler.is_exporting():
            return torch.ops.poolcore.rand(list(shape), device) < p_max  # torch's generator: see _rand
        return torch.rand(shape, device=device, dtype=torch.float32) < p_max
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float32) < p_max


def _expectation(av: Tensor, mx: Tensor, weight: float | Tensor, out: Tensor | None = None) -> Tensor:
    """``weight·max + (1−weight)·avg``. lerp is exact at weight 0 and 1, so p_max=0/1 give avg/max bit
    for bit; but it computes ``inf − inf`` when both pools are the same infinity, so where the two pools
    agree their common value is taken whatever the weight."""
    if out is None:
        return torch.where(mx == av, mx, torch.lerp(av, mx, weight))
    torch.lerp(av, mx, weight, out=out)
    return torch.where(mx == av, mx, out, out=out)


def _combine(mx: Tensor, av: Tensor, lam: Tensor | None, p_max: float, weight: Tensor | None) -> Tensor:
    if lam is not None:
        return torch.where(lam, mx, av)  # autograd sends the gradient down the drawn branch only
    if weight is None:
        return _expectation(av, mx, p_max)
    return _expectation(av, mx, weight.to(device=mx.device, dtype=mx.dtype))


def _mixed(
    x: Tensor,
    window_kwargs: dict,
    p_max: float,
    scope: str,
    training: bool,
    generator: torch.Generator | None,
    weight: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """The output and, when training, the λ drawn (bool, broadcastable to the batched output)."""
    check_float(x, "mixed")
    drawn: list[Tensor] = []

    def fn(b: Tensor, w: Window) -> Tensor:
        out_shape = (*b.shape[:2], *w.out_size)
        lam = _draw(out_shape, scope, p_max, generator, b.device) if training else None
        if lam is not None:
            drawn.append(lam)
        if not _use_onednn(b, w):
            if _onednn_compiled(b, w) and not (_unfolds(w) and _separable(w)):
                k, s, p = list(w.kernel_size or ()), list(w.stride), list(w.padding)
                mx, av = torch.ops.poolcore.onednn_max_avg(b, k, s, p, w.ceil_mode)
                if lam is None:  # as the eager path below: lerp takes NaN from the mean
                    return _expectation(av, mx, p_max if weight is None else weight.to(mx.dtype))
                return torch.where(lam & (av == av), mx, av)
            if _unfolds(w):
                mx, av = _max_avg_unfolded(b, w)
                return _combine(mx, av, lam, p_max, weight)
            return _combine(w.max(b), w.mean(b, count_include_pad=False), lam, p_max, weight)
        # Inference path: oneDNN's pools in groups of planes (λ is drawn up front, so the draws do not
        # depend on the path taken).
        flat = None
        if lam is not None:
            planes = out_shape[0] * out_shape[1]
            flat = lam.expand(*out_shape[:2], *lam.shape[2:]).reshape(1, planes, *lam.shape[2:])

        def part(chunk: Tensor, planes: slice, out: Tensor) -> None:
            mx, av = _onednn_max_avg(chunk, w)
            if flat is None:  # lerp takes NaN from the mean, which oneDNN's max would skip
                _expectation(av, mx, p_max if weight is None else weight.to(mx.dtype), out=out)
                return
            # oneDNN's max skips NaN where torch's propagates it; a window's mean is NaN when the
            # window holds a NaN, so the mean is taken there and a NaN is never hidden. (A window with
            # both +inf and -inf and no NaN gives NaN here where torch's max gives +inf.)
            torch.where(flat[:, planes] & (av == av), mx, av, out=out)

        return w.map_planes(b, part)

    out = keep_memory_format(x, window_call(x, fn, **window_kwargs))
    return out, (drawn[0] if drawn else None)


def mixed_pool(
    x: Tensor,
    kernel_size: IntTuple | None = None,
    stride: IntTuple | None = None,
    padding: IntTuple = 0,
    ceil_mode: bool = False,
    *,
    output_size: OptIntTuple = None,
    dims: int | None = None,
    p_max: float = 0.5,
    scope: Scope = "region",
    eval_rule: EvalRule = "expectation",
    training: bool = False,
    generator: torch.Generator | None = None,
    dilation: IntTuple = 1,
) -> Tensor:
    """Mixed max/average pooling; see :class:`MixedPool2d`."""
    p_max = _check_mixed(p_max, scope)
    weight = eval_weight(p_max, eval_rule)
    window_kwargs = {
        "kernel_size": kernel_size,
        "stride": stride,
        "padding": padding,
        "ceil_mode": ceil_mode,
        "output_size": output_size,
        "dims": dims,
        "dilation": dilation,
    }
    if training:
        return _mixed(x, window_kwargs, p_max, scope, True, generator)[0]
    # Outside training p_max only weights the two branches: the rule's weight takes its place.
    return _mixed(x, window_kwargs, weight, scope, False, generator)[0]


class _MixedPoolNd(PoolNd):
    """Holds the mixed-pooling arguments and the λ counts; the public classes add docs only."""

    n_max: Tensor
    n_avg: Tensor

    def __init__(
        self,
        kernel_size: IntTuple | None = None,
        stride: IntTuple | None = None,
        padding: IntTuple = 0,
        ceil_mode: bool = False,
        *,
        output_size: OptIntTuple = None,
        p_max: float = 0.5,
        scope: Scope = "region",
        eval_rule: EvalRule = "expectation",
        dilation: IntTuple = 1,
    ) -> None:
        super().__init__(kernel_size, stride, padding, ceil_mode, output_size=output_size, dilation=dilation)
        self.p_max = _check_mixed(p_max, scope)
        self.scope = scope
        self.eval_rule = _check_eval_rule(eval_rule)
        # Buffers, so the counts are saved with the model and move with .to(device).
        self.register_buffer("n_max", torch.zeros((), dtype=torch.long))
        self.register_buffer("n_avg", torch.zeros((), dtype=torch.long))

    def eval_weight(self) -> Tensor:
        """The weight of the max branch outside training, as a 0-dim tensor (no host sync). With
        ``eval_rule="frequent"``: 1 if training drew max more often, 0 if avg, ``p_max`` on a tie; with
        no draws counted, :func:`eval_weight` of ``p_max``. With ``"expectation"``: ``p_max``."""
        device = self.n_max.device
        prior = torch.full((), eval_weight(self.p_max, self.eval_rule), device=device)
        if self.eval_rule == "expectation":
            return prior
        one, zero = torch.ones((), device=device), torch.zeros((), device=device)
        tie = torch.full((), self.p_max, device=device)
        counted = torch.where(self.n_max > self.n_avg, one, torch.where(self.n_max < self.n_avg, zero, tie))
        return torch.where(self.n_max + self.n_avg == 0, prior, counted)

    def forward(self, x: Tensor) -> Tensor:
        kwargs = self.window_kwargs()
        if self.training:
            out, lam = _mixed(x, kwargs, self.p_max, self.scope, True, None)
            if lam is not None:
                with torch.no_grad():
                    hits = lam.sum().to(self.n_max.device)
                    self.n_max.add_(hits)
                    self.n_avg.add_(lam.numel() - hits)
            return out
        if self.eval_rule == "expectation":  # a float weight: the functional's own path
            return _mixed(x, kwargs, self.p_max, self.scope, False, None)[0]
        return _mixed(x, kwargs, self.p_max, self.scope, False, None, self.eval_weight())[0]

    def extra_repr(self) -> str:
        mixed = f"p_max={self.p_max}, scope={self.scope!r}, eval_rule={self.eval_rule!r}"
        return f"{super().extra_repr()}, {mixed}"


_DOC = r"""Applies {d}d mixed pooling (Yu et al. 2014) over an input signal.

    In training each output draws :math:`\lambda \in \{{0, 1\}}` with :math:`P(\lambda = 1) = p_{{max}}`:

    .. math::
        y = \lambda \max_{{i \in R}} x_i + (1 - \lambda) \frac{{1}}{{|R|}} \sum_{{i \in R}} x_i

    where :math:`R` is the window's set of real (non-padded) positions. The gradient flows through the
    branch that was drawn. ``scope`` sets how many λ are drawn: one per output element (``"region"``),
    per sample and channel (``"channel"``) or per sample (``"layer"``). The module counts the λ it
    draws in the buffers ``n_max`` and ``n_avg`` (part of ``state_dict``).

    In eval mode the output follows ``eval_rule``, as in :func:`mixed_pool` and the service:
    ``"expectation"`` (the default) gives
    :math:`p_{{max}} \max + (1 - p_{{max}})\,\mathrm{{avg}}`, the mean of the training output;
    ``"frequent"`` (the paper's rule) the branch drawn more often in training, the expectation on a tie,
    and with no draws counted the branch ``p_max`` favours (max above 0.5, avg below, the expectation at
    0.5).

    Positional arguments: ``(kernel_size, stride=None, padding=0, ceil_mode=False)``; the rest are
    keyword-only. (torch.nn has no class of this name; ``LPPool{d}d`` takes torch's order.)

    Args:
        kernel_size: the window size; give this or ``output_size``.
        stride: the window step. Default: ``kernel_size``.
        padding: implicit padding on both sides, ignored by both branches. Default: 0.
        ceil_mode: use ceil instead of floor for the output size. Default: False.
        output_size: adaptive output size instead of ``kernel_size``; ``None`` entries keep that size.
            Default: None.
        dilation: the spacing between a kernel window's positions (keyword-only), as in torch's dilated
            pools. Default: 1.
        p_max: probability of the max branch. Default: 0.5.
        scope: ``"region"``, ``"channel"`` or ``"layer"``. Default: ``"region"``.
        eval_rule: ``"expectation"`` or ``"frequent"``. Default: ``"expectation"``.

    Shape:
        - Input: {shape_in}
        - Output: {shape_out},
{size_rule}

    Example::

        >>> import torch, poolcore
        >>> m = poolcore.nn.MixedPool{d}d({example})
        >>> y = m(torch.randn({x_shape}))
        >>> m.eval()(torch.randn({x_shape})).shape == y.shape
        True
    """


class MixedPool1d(_MixedPoolNd):
    dims = 1
    __doc__ = _DOC.format(d=1, example="3, stride=2", **DOC_SHAPES[1])


class MixedPool2d(_MixedPoolNd):
    dims = 2
    __doc__ = _DOC.format(d=2, example="3, stride=2, p_max=0.5", **DOC_SHAPES[2])


class MixedPool3d(_MixedPoolNd):
    dims = 3
    __doc__ = _DOC.format(d=3, example="2, scope='channel'", **DOC_SHAPES[3])
