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

Every p, a float or a learnable tensor, takes one max-scaled form, in eager, compile and export:
``m · (Σ (x/m)^p)^(1/p)`` with ``m`` each window's maximum. Every term is at most 1 and the largest is 1,
so nothing overflows unless the result itself does (p=40 on float32 values of 1e3, p=1e308, a learnable
p that grows in training), and a window's largest values never underflow (p=2 on values of 1e-25). No
value is read on the host. p=1 (a plain sum or mean) and p=inf (the max) need no power.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from ._module import DOC_SHAPES, PoolNd, keep_memory_format
from .params import WindowParams
from .windows import IntTuple, OptIntTuple, Window, _export_bins, check_float, is_traced, window_call

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


def _root(s: Tensor, p: Power, grad: bool) -> Tensor:
    """``s^(1/p)`` for ``s >= 0``, with finite gradients at ``s = 0`` (double-where).

    As ``exp(log(s) / p)`` (``log 0 = -inf`` gives 0) but for p=2 (``sqrt``) and a float ``1/p`` that the
    dtype rounds to 0 (``pow``): torch's pow with such an exponent runs a scalar loop on CPU, twice the
    time of log and exp together. The max-scaled sums lie in ``[1/K, K]`` (or are 0), where the log's
    rounding moves the root by about 1e-7 relative."""
    square = not isinstance(p, Tensor) and p == 2
    inv = 1.0 / p.to(s.dtype) if isinstance(p, Tensor) else 1.0 / p
    use_pow = not isinstance(inv, Tensor) and inv < torch.finfo(s.dtype).smallest_normal
    if not grad:  # s is a temporary here: root it in place
        if square or use_pow:
            return s.sqrt_() if square else s.pow_(inv)
        return s.log_().mul_(inv).exp_()
    positive = s > 0
    safe = torch.where(positive, s, torch.ones_like(s))
    if square or use_pow:
        root = safe.sqrt() if square else safe.pow(inv)
    else:
        root = torch.exp(torch.log(safe) * inv)
    return torch.where(positive, root, torch.zeros_like(root))


def _powered(z: Tensor, p: Power, inplace: bool) -> Tensor:
    """``z^p`` for ``0 <= z <= 1``; in place when ``z`` is a temporary and no gradient is needed.

    p=2 and p=3 take torch's own fast paths; every other p (a learnable one included) is
    ``exp(p * log z)``: torch's pow with any other exponent runs a scalar loop on CPU (about 10 ns an
    element, 3.5x exp and log together). The terms that count (at least ~1e-3 of a window's largest,
    which is exactly 1) have ``p * |log z| < 7``, so their relative error stays near 1e-6. ``log 0 = -inf``
    gives ``exp(-inf) = 0``; with autograd, ``log`` reads ``z`` clamped to the smallest normal number
    ``tiny``, which keeps the gradient at ``z = 0`` finite (0, the clamp's) with no ``where`` (whose
    backward fills a fresh zero tensor per call) and no mask (two more ops per offset, forward and
    backward). A zero then adds ``tiny^p <= tiny``: nothing beside a window's largest term (exactly 1),
    and an all-zero window's result ``tiny * (N tiny^p)^(1/p)`` still rounds to 0."""
    if not isinstance(p, Tensor) and (p in (2, 3) or not p < torch.finfo(z.dtype).max):
        # (A p past the dtype's range would read inf, and log 1 * inf is NaN: torch's pow gives 1.)
        if p == 2:
            return z.mul_(z) if inplace else z * z
        return z.pow_(p) if inplace else z.pow(p)
    power = p.to(z.dtype) if isinstance(p, Tensor) else p
    if inplace:
        return z.log_().mul_(power).exp_()
    tiny = torch.finfo(z.dtype).smallest_normal
    return torch.exp(torch.log(z.clamp_min(tiny)) * power)


Core = Callable[[Tensor, bool], Tensor]


class Prep:
    """The elementwise step before the power: ``|x|`` for lp, ``max(x, eps)`` for GeM."""

    def __call__(self, t: Tensor, out: Tensor | None) -> Tensor:
        """The step, into ``out`` when given."""
        raise NotImplementedError

    def grad(self, t: Tensor, g: Tensor, out: Tensor) -> Tensor:
        """``g`` times the step's derivative at ``t``, into ``out`` (as torch's own backward gives it)."""
        raise NotImplementedError


class _Abs(Prep):
    def __call__(self, t: Tensor, out: Tensor | None) -> Tensor:
        return torch.abs(t, out=out)

    def grad(self, t: Tensor, g: Tensor, out: Tensor) -> Tensor:
        return torch.mul(g, t.sgn(), out=out)


class _AtLeast(Prep):
    def __init__(self, eps: float) -> None:
        self.eps = eps

    def __call__(self, t: Tensor, out: Tensor | None) -> Tensor:
        return torch.clamp_min(t, self.eps, out=out)

    def grad(self, t: Tensor, g: Tensor, out: Tensor) -> Tensor:
        return torch.mul(g, t >= self.eps, out=out)


def _by_planes(b: Tensor, w: Window, p: Power, core: Core) -> Tensor:
    """Run ``core(x, grad)`` in the compute dtype; on CPU without autograd, in plane groups."""
    grad = _needs_grad(b, p)
    low = b.dtype in (torch.float16, torch.bfloat16)  # computed in float32: x^p overflows half quickly
    # Plane groups pay off where ops are memory-bound round trips: CPU eager without autograd.
    if grad or b.device.type != "cpu" or is_traced():
        return core(b.float(), grad).to(b.dtype) if low else core(b, grad)

    def run(chunk: Tensor, planes: slice, out: Tensor) -> None:
        out.copy_(core(chunk.float() if low else chunk, False))

    return w.map_planes(b, run)


def _padded(t: Tensor, w: Window) -> Tensor:
    """``t`` with the kernel form's zero padding on both sides and, on the right, the most a ceil-mode
    window can overhang. Every pad depends on the window arguments only, never on the input size, so
    nothing specialises under export."""
    pads = _pads(w)
    return F.pad(t, pads) if any(pads) else t


def _pads(w: Window) -> list[int]:
    """:func:`_padded`'s pads, in ``F.pad``'s order."""
    k, s, p = w.kernel_size or (), w.stride, w.padding
    pads: list[int] = []
    for d in reversed(range(len(k))):
        # The ceil-mode count (windows.py's _kernel_out) is the floor-mode count after this many zeros.
        extra = (s[d] - 1 if s[d] + p[d] <= k[d] else k[d] - p[d] - 1) if w.ceil_mode else 0
        pads += [p[d], p[d] + extra]
    return pads


def _windows(padded: Tensor, w: Window) -> Tensor:
    """The kernel-form windows of a :func:`_padded` tensor as a ``(B, C, *out_size, *kernel_size)``
    view."""
    k, s = w.kernel_size or (), w.stride
    first = padded.dim() - len(k)
    for d in range(len(k)):  # each unfold appends its window dim; the spatial dims keep their place
        padded = padded.unfold(first + d, k[d], s[d])
    return padded


def _kernel_count(t: Tensor, w: Window) -> Tensor:
    """The number of real positions in each kernel-form window, shaped ``out_size``: the window sums
    of ones, each window lying inside the :func:`_padded` tensor (so torch's divisor is the kernel)."""
    k, s = list(w.kernel_size or ()), list(w.stride)
    ones = _padded(torch.ones((1, 1, *t.shape[2:]), dtype=t.dtype, device=t.device), w)
    pool: Any = F.avg_pool2d if len(k) == 2 else F.avg_pool3d
    return (pool(ones, k, s) * math.prod(k))[0, 0]


def _im2col(padded: Tensor, w: Window) -> Tensor:
    """The kernel-form windows of a :func:`_padded` tensor as ``(B, C, K, *out_size)``, K the kernel's
    positions, through a convolution with one-hot kernels: for export, where slicing and ``unfold``
    add size guards that dynamic shapes cannot satisfy."""
    k, s = w.kernel_size or (), w.stride
    count = math.prod(k)
    b, c = padded.shape[:2]
    onehot = torch.eye(count, dtype=padded.dtype, device=padded.device).view(count, 1, *k)
    conv: Any = F.conv2d if len(k) == 2 else F.conv3d
    cols = conv(padded.reshape(b * c, 1, *padded.shape[2:]), onehot, stride=s)
    return cols.reshape(b, c, count, *cols.shape[2:])


def _offset_views(padded: Tensor, w: Window, out_size: Sequence[Any]) -> Iterator[Tensor]:
    """For each offset inside a kernel, the ``(B, C, *out_size)`` strided view of a :func:`_padded`
    tensor at that offset of every window."""
    for offset in itertools.product(*(range(k) for k in w.kernel_size or ())):
        index: tuple[Any, ...] = (...,)
        for d, o in enumerate(offset):
            index += (slice(o, o + w.stride[d] * (out_size[d] - 1) + 1, w.stride[d]),)
        yield padded[index]


def _phase_offset_views(
    padded: Tensor, w: Window, out_size: Sequence[Any], prep: Prep | None = None
) -> Iterator[Tensor]:
    """:func:`_offset_views` in eager code, where a strided window first splits its input into stride
    phases (``padded[..., a::s, b::s]``): every offset is then a unit-stride view of a phase, and the
    per-offset ops read it at contiguous speed (a strided read cost several times more, once per
    offset). ``prep`` (strided windows, without autograd) is applied in the copy into phases."""
    k, s = w.kernel_size or (), w.stride
    if all(sd == 1 for sd in s):
        yield from _offset_views(padded, w, out_size)
        return
    n = len(k)
    phases: dict[tuple[int, ...], Tensor] = {}
    spatial = padded.shape[-n:]
    lengths = [od + (kd - 1) // sd for kd, sd, od in zip(k, s, out_size, strict=True)]
    if all(kd >= sd and sd * ln <= xd for kd, sd, ln, xd in zip(k, s, lengths, spatial, strict=True)):
        # Every phase in one permuted copy ((L, s) -> (s, L) per dim, L the longest phase's length): one
        # pass over the input, where a strided copy per phase re-reads every cache line s times.
        lead = padded.dim() - n
        cut: tuple[Any, ...] = (..., *(slice(0, ln * sd) for ln, sd in zip(lengths, s, strict=True)))
        sliced = padded[cut]
        for d in range(n):
            sliced = sliced.unflatten(lead + 2 * d, (lengths[d], s[d]))
        order = [*range(lead), *(lead + 2 * d + 1 for d in range(n)), *(lead + 2 * d for d in range(n))]
        view = sliced.permute(order)  # (..., *s, *lengths)
        if prep is None:
            both = view.contiguous()
        else:  # into a contiguous buffer (out of place, the result would keep the permuted layout)
            both = prep(view, torch.empty(view.shape, dtype=view.dtype, device=view.device))
        # unbind, not indexing: its backward stacks the phases' gradients in one op, where each index's
        # backward filled a zero tensor of the whole input.
        split = both.flatten(lead, lead + n - 1).unbind(lead)
        for phase, part in zip(itertools.product(*(range(sd) for sd in s)), split, strict=True):
            phases[phase] = part
    for offset in itertools.product(*(range(kd) for kd in k)):
        phase = tuple(o % sd for o, sd in zip(offset, s, strict=True))
        if phase not in phases:
            index: tuple[Any, ...] = (..., *(slice(ph, None, sd) for ph, sd in zip(phase, s, strict=True)))
            phases[phase] = padded[index].contiguous() if prep is None else prep(padded[index], None)
        start = [o // sd for o, sd in zip(offset, s, strict=True)]
        window: tuple[Any, ...] = (..., *(slice(start[d], start[d] + out_size[d]) for d in range(n)))
        yield phases[phase][window]


def _sum_scaled(values: Iterable[Tensor], scale: Tensor, p: Power, grad: bool) -> Tensor:
    """``Σ (v / scale)^p`` over output-shaped ``values``, one output-sized step each (without autograd in
    eager code, through one reused buffer: a fresh output per step cost page faults)."""
    total: Tensor | None = None
    reuse = not grad and not is_traced()
    buf: Tensor | None = None
    if reuse and not isinstance(p, Tensor) and p == 2:
        for value in values:  # two steps per offset: the quotient, then total += quotient^2 in one op
            buf = torch.div(value, scale, out=buf) if buf is not None else value / scale
            total = buf * buf if total is None else total.addcmul_(buf, buf)
        if total is None:
            raise RuntimeError("a window without positions")
        return total
    for value in values:
        if reuse and total is not None:
            buf = torch.div(value, scale, out=buf) if buf is not None else value / scale
            term = _powered(buf, p, inplace=True)
        else:
            term = _powered(value / scale, p, inplace=not grad)
        total = term if total is None else (total + term if grad else total.add_(term))
    if total is None:  # a window has at least one position
        raise RuntimeError("a window without positions")
    return total


def _scale(m: Tensor) -> Tensor:
    """The divisor of each window's values: its maximum ``m``, clamped into the normal range. An all-zero
    window divides by the smallest normal number (its terms stay 0), an infinite maximum by the largest
    finite one (its infinite terms stay inf, so the result is inf, not inf/inf = NaN), and NaN stays
    NaN. One vectorised pass, where two ``where`` calls cost several times more on the CPU."""
    info = torch.finfo(m.dtype)
    return m.clamp(info.smallest_normal, info.max)


def _window_power_sums(
    t: Tensor, w: Window, p: Power, mean: bool, grad: bool, prep: Prep | None = None
) -> tuple[Tensor, Tensor]:
    """Each window's scale (its maximum, see :func:`_scale`; no gradient) and ``Σ (t / scale)^p`` over
    the window (its mean over the real positions when ``mean``). ``prep``: see :func:`_fuses_prep`."""
    n = len(w.in_size)
    spatial = tuple(range(-n, 0))
    # Dense sliding windows take the fast path; dilated ones, like adaptive bins, the offsets' walk below.
    if w.kernel_size is not None and not w.is_global and not w.dilated:
        padded = _padded(t, w)
        if torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export():
            # Sliced views add guards that export cannot prove for every size; a convolution does not.
            cols = _im2col(padded, w)
            scale = _scale(cols.detach().amax(dim=2))  # the padding's zeros never exceed t >= 0
            s = _powered(cols / scale.unsqueeze(2), p, inplace=False).sum(dim=2)
            return scale, (s / _kernel_count(t, w) if mean else s)
        if is_traced():
            m = _windows(padded, w).detach().amax(dim=spatial)  # the padding's zeros never exceed t >= 0
            views = list(_offset_views(padded, w, m.shape[-n:]))
        else:  # the offsets' unit-stride views give the maximum too: K - 1 fast steps
            views = list(_phase_offset_views(padded, w, tuple(w.out_size), prep))
            m = torch.maximum(views[0].detach(), views[-1].detach()) if len(views) > 1 else views[0].detach()
            for v in views[1:-1]:
                torch.maximum(m, v.detach(), out=m)
        scale = _scale(m)
        # One output-sized step per window offset, on views of the input, so each value is divided by
        # the maximum of each window that holds it. (Dividing the unfolded view at once made inductor's
        # backward write out of bounds.)
        s = _sum_scaled(views, scale, p, grad)
        return scale, (s / _kernel_count(t, w) if mean else s)
    scale = _scale(w.max(t.detach()))
    if w.is_global:
        z = _powered(t / scale, p, inplace=not grad)
        return scale, (z.mean(dim=spatial, keepdim=True) if mean else z.sum(dim=spatial, keepdim=True))
    s = _sum_scaled(w.offsets(t), scale, p, grad)  # adaptive bins (eager): positions past a bin read 0
    return scale, (s / w.valid_count(t.device, t.dtype) if mean else s)


def _phase_lengths(w: Window) -> list[int]:
    """Each stride phase's length per spatial dim: enough for every window's offsets."""
    k, s, out = w.kernel_size or (), w.stride, w.out_size
    return [od + (kd - 1) // sd for kd, sd, od in zip(k, s, out, strict=True)]


def _phase_layout(a: Tensor, w: Window, prep: Prep | None) -> tuple[Tensor, list[tuple[Any, ...]]]:
    """The stride phases of a :func:`_padded` tensor, ``prep`` applied, in one contiguous ``(B, C, P, *L)``
    copy (P the product of the strides, L :func:`_phase_lengths`; the input cropped, or zero-extended on
    the right, to ``L * s``), and for each offset inside a kernel the index into that copy of its
    phase's unit-stride slices that hold the offset of every window. With unit strides and no ``prep``,
    the copy is ``a`` itself when ``a`` is contiguous.

    The backward needs one buffer of that shape to lay its gradient back out, hence the crop or
    extension. The inference path keeps :func:`_phase_offset_views`, which copies only the phases it
    reads, strided, where they do not fit one permuted copy: at odd sizes (113²) and with gaps
    (kernel 2, stride 3), routing it through this function cost 1.3-2.0x (measured old beside new)."""
    k, s, out = w.kernel_size or (), w.stride, w.out_size
    n = len(k)
    lengths = _phase_lengths(w)
    fit: list[int] = []  # F.pad's order
    for d in reversed(range(n)):
        fit += [0, lengths[d] * s[d] - a.shape[d - n]]
    fitted = F.pad(a, fit) if any(fit) else a
    lead = a.dim() - n
    for d in range(n):
        fitted = fitted.unflatten(lead + 2 * d, (lengths[d], s[d]))
    order = [*range(lead), *(lead + 2 * d + 1 for d in range(n)), *(lead + 2 * d for d in range(n))]
    view = fitted.permute(order)  # (..., *s, *L)
    both = (
        view.contiguous()
        if prep is None
        else prep(view, torch.empty(view.shape, dtype=a.dtype, device=a.device))
    )
    indices: list[tuple[Any, ...]] = []
    for offset in itertools.product(*(range(kd) for kd in k)):
        index = 0
        for o, sd in zip(offset, s, strict=True):
            index = index * sd + o % sd
        starts = [o // sd for o, sd in zip(offset, s, strict=True)]
        indices.append((..., index, *(slice(b, b + od) for b, od in zip(starts, out, strict=True))))
    return both.flatten(lead, lead + n - 1), indices


def _unphase(g: Tensor, w: Window, a: Tensor, prep: Prep | None) -> Tensor:
    """The gradient with respect to :func:`_phase_layout`'s ``a`` from the gradient ``g`` of its copy
    (positions past the phases, which no window reads, get 0), times ``prep``'s derivative: in one pass
    from the phases where ``a`` is contiguous and its sizes are the phases' (no crop or extension)."""
    s = w.stride
    n = len(s)
    lead = g.dim() - 1 - n
    lengths = g.shape[lead + 1 :]
    g = g.unflatten(lead, tuple(s))  # (..., *s, *L)
    order = [*range(lead)]
    for d in range(n):
        order += [lead + n + d, lead + d]  # (L_d, s_d) pairs
    pairs = g.permute(order)
    merged = [ln * sd for ln, sd in zip(lengths, s, strict=True)]
    if prep is not None and a.is_contiguous() and list(a.shape[lead:]) == merged:
        out = torch.empty_like(a)
        prep.grad(a.view(pairs.shape), pairs, out.view(pairs.shape))
        return out
    full = pairs.reshape(*pairs.shape[:lead], *merged)
    fit: list[int] = []
    for d in reversed(range(n)):
        fit += [0, a.shape[d - n] - merged[d]]
    full = F.pad(full, fit) if any(fit) else full
    return full if prep is None else prep.grad(a, full, torch.empty_like(full))


def _offsets_power_mean(a: Tensor, w: Window, p: Power, count: Tensor | None) -> Tensor:
    """:class:`_KernelPowerMean`'s forward in differentiable ops, on strided views of ``a``: what its
    second derivative differentiates."""
    views = list(_offset_views(a, w, w.out_size))
    m = views[0].detach()
    for v in views[1:]:
        m = torch.maximum(m, v.detach())
    scale = _scale(m)
    s = _sum_scaled(views, scale, p, grad=True)
    return scale * _root(s if count is None else s / count, p, True)


class _KernelPowerMean(torch.autograd.Function):
    """``m · (S/N)^(1/p)``, ``S = Σ z^p`` and ``z = a/m``, over the kernel windows of a :func:`_padded`
    tensor ``a >= 0``, ``m`` each window's maximum and ``N`` its real count (GeM's mean; ``count``) or 1
    (the sum), with a hand-written backward, for eager training.

    Autograd through the offset steps kept several output-sized tensors per offset, and its backward
    took a log, a division and a zero-filled slice per offset. The closed form needs only ``log z`` per
    offset, kept from the forward (``K`` output-sized tensors, K the kernel's positions), and the window
    sums. With ``y`` the result and ``r = a/y = z · (S/N)^(-1/p)``:

    - ``dy/da = r^(p-1) / N = z^(p-1) · (S/N)^(-(p-1)/p) / N``, summed over the windows that hold a
      position: one ``exp`` per offset;
    - ``dy/dp = y/(p N) · Σ r^p log r = (y/p) · (T/S - log(S/N)/p)``, ``T = Σ z^p log z`` summed in the
      forward: output-sized work only.

    ``z <= 1`` and ``S/N`` lies in ``[1/N, K/N]``, so no factor overflows. ``log z`` reads ``z`` clamped to
    the smallest normal number, which keeps ``p = 1`` (a learnable p's floor) from ``0 · log 0``; an
    all-zero window (``S = 0`` above p = 1) gets gradient 0, ``S`` read as 1. p = 2 and 3 (floats) keep ``z``
    itself and torch's fast powers. A second derivative (``create_graph=True``) recomputes the forward
    through autograd and differentiates that."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, p: Power, w: Window, count: Tensor | None, prep: Prep | None) -> Tensor:
        phases, indices = _phase_layout(a, w, prep)
        views = [phases[index] for index in indices]
        m = torch.maximum(views[0], views[-1]) if len(views) > 1 else views[0].clone()
        for v in views[1:-1]:
            torch.maximum(m, v, out=m)
        scale = _scale(m)
        need_a, need_p = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        fast = not isinstance(p, Tensor) and p in (2, 3)
        power = p.to(a.dtype) if isinstance(p, Tensor) else p
        tiny = torch.finfo(a.dtype).smallest_normal
        # log z (z itself for a fast p) of every offset, for the backward; one scratch buffer without it
        # (one tensor per offset: a single K-fold block would be mapped fresh, page by page, every call)
        kept = [torch.empty_like(scale) for _ in range(len(views) if need_a else 1)]
        s = torch.zeros_like(scale)
        t = torch.zeros_like(scale) if need_p else None
        term = torch.empty_like(scale)
        for i, v in enumerate(views):
            z = torch.div(v, scale, out=kept[i if need_a else 0])
            if fast:
                s.add_(torch.mul(z, z, out=term) if p == 2 else torch.pow(z, 3, out=term))
                continue
            log_z = z.clamp_min_(tiny).log_()
            torch.mul(log_z, power, out=term).exp_()
            s.add_(term)
            if t is not None:
                t.addcmul_(term, log_z)
        ctx.phase_shape = phases.shape
        del phases, views
        mean_s = s if count is None else s / count
        y = scale * _root(mean_s.clone(), p, grad=False)
        ctx.w, ctx.p_value, ctx.indices, ctx.fast, ctx.prep = w, p, indices, fast, prep
        p_saved = p if isinstance(p, Tensor) else None
        ctx.save_for_backward(a, y, s, t, count, p_saved, *(kept if need_a else ()))
        return y

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None]:
        a, y, s, t, count, p_saved, *kept = ctx.saved_tensors
        w: Window = ctx.w
        p: Power = ctx.p_value if p_saved is None else p_saved
        need_a, need_p = ctx.needs_input_grad[0], ctx.needs_input_grad[1] and p_saved is not None
        if torch.is_grad_enabled():  # create_graph: differentiate a recomputation from the saved inputs
            wanted = [x for x, need in ((a, need_a), (p_saved, need_p)) if need]
            again = _offsets_power_mean(a if ctx.prep is None else ctx.prep(a, None), w, p, count)
            found = iter(torch.autograd.grad(again, wanted, gy, create_graph=True))
            return (next(found) if need_a else None), (next(found) if need_p else None), None, None, None
        power = p.to(y.dtype) if isinstance(p, Tensor) else p
        s_safe = torch.where(s > 0, s, torch.ones_like(s))  # an all-zero window: gradient 0
        ratio = s_safe if count is None else s_safe / count  # S/N
        grad_a = grad_p = None
        if need_a:
            # per window: gy / N · (S/N)^(-(p-1)/p), as exp(log(S/N) · (1-p)/p)
            coef = torch.exp(torch.log(ratio) * ((1 - power) / power)) * gy
            if count is not None:
                coef = coef / count
            grad_phases = torch.zeros(ctx.phase_shape, dtype=y.dtype, device=y.device)
            term = torch.empty_like(y)
            for i, index in enumerate(ctx.indices):
                if ctx.fast:  # z^(p-1): z for p = 2, z*z for p = 3
                    z = kept[i]
                    grad_phases[index].addcmul_(coef, z if ctx.p_value == 2 else torch.mul(z, z, out=term))
                else:
                    torch.mul(kept[i], power - 1, out=term).exp_()
                    grad_phases[index].addcmul_(coef, term)
            grad_a = _unphase(grad_phases, w, a, ctx.prep)
        if need_p and t is not None and isinstance(p, Tensor):
            dy_dp = y / power * (t / s_safe - torch.log(ratio) / power)
            grad_p = (gy * dy_dp).sum().to(p.dtype).reshape(p.shape)
        return grad_a, grad_p, None, None, None


def _binned_scaled(t: Tensor, w: Window, p: Power, mean: bool, grad: bool) -> Tensor:
    """The max-scaled form for adaptive bins under export (see windows.py's ``_export_bins``), one
    spatial dim at a time through bin masks built from the input's own sizes.

    A window's power sum is carried as ``r^p · c``, ``r`` the largest value reduced so far and
    ``c = Σ (v / r)^p`` (a term per reduced position): reducing the next dim over a bin takes
    ``m = max r`` and ``c' = Σ (r / m)^p c``. Every term stays at most 1, as in the one-step form."""
    n = len(w.in_size)
    r, c = t, torch.ones_like(t)
    for d in range(n):
        length, out = w.in_size[d], w.out_size[d]
        if out is length:  # an output_size entry of None: that dim is kept
            continue
        a = t.dim() - n + d
        trail = [1] * (t.dim() - a - 1)
        i = torch.arange(out, device=t.device)
        j = torch.arange(length, device=t.device)
        start = (i * length) // out
        end = ((i + 1) * length + out - 1) // out
        mask = ((j >= start[:, None]) & (j < end[:, None])).view(out, length, *trail)
        zero = torch.zeros((), dtype=t.dtype, device=t.device)
        re, ce = r.unsqueeze(a), c.unsqueeze(a)
        m = torch.where(mask, re, zero).amax(a + 1, keepdim=True).detach()
        scale = torch.where(m > 0, m, torch.ones_like(m))
        terms = torch.where(mask, _powered(re / scale, p, inplace=False) * ce, zero)
        c = terms.sum(a + 1)
        if mean:
            c = c / (end - start).to(t.dtype).view(out, *trail)
        r = scale.squeeze(a + 1)
    return r * _root(c, p, grad)


def _plane_scaled(t: Tensor, w: Window, p: Power, mean: bool, grad: bool) -> Tensor:
    """For the legacy TorchScript tracer only (``torch.onnx.export(..., dynamo=False)``), which records
    the sizes behind :func:`_windows` as constants: the same form with one scale per plane, through the
    window's own average pool. Nothing overflows; a window whose values are all far below its plane's
    largest (``p·log2`` of the ratio past the dtype's exponent range) reads 0."""
    m = t.detach().amax(dim=w.spatial_dims, keepdim=True)
    scale = torch.where(m > 0, m, torch.ones_like(m))
    z = _powered(t / scale, p, inplace=False)
    s = w.mean(z, count_include_pad=False) if mean else w.sum(z)
    return scale * _root(s, p, grad)


def _power_mean(t: Tensor, w: Window, p: Power, mean: bool, grad: bool, prep: Prep) -> Tensor:
    """``(Σ a^p)^(1/p)`` over each window (``mean`` in place of Σ for GeM) of ``a = prep(t) >= 0``, as
    ``m · (Σ (a/m)^p)^(1/p)`` with ``m`` each window's maximum.

    Every term is at most 1 and the largest is exactly 1, so nothing overflows unless the result itself
    does, and a window's largest values never underflow, whatever p (float or a learnable tensor). ``m``
    carries no gradient: the form is the same function for any positive ``m``, so autograd through the
    terms gives the true gradient. All-zero windows give 0 (see :func:`_scale`). No value is read on the
    host."""
    if not isinstance(p, Tensor) and p == math.inf:
        return w.max(prep(t, None))
    if not isinstance(p, Tensor) and p == 1:  # no power: the sum or mean itself is as safe as its result
        return w.mean(prep(t, None), count_include_pad=False) if mean else w.sum(prep(t, None))
    if torch.jit.is_tracing():
        return _plane_scaled(prep(t, None), w, p, mean, grad)
    if w.adaptive and not w.is_global and _export_bins(w):
        return _binned_scaled(prep(t, None), w, p, mean, grad)
    if grad and _hand_backward(t, p, w):
        # Eager training on kernel windows: the hand-written backward, with the step before the power
        # done in its copy into phases unless there is padding (which GeM's clamp must not reach).
        count = _kernel_count(t, w) if mean else None
        if any(_pads(w)):
            return _KernelPowerMean.apply(_padded(prep(t, None), w), p, w, count, None)
        return _KernelPowerMean.apply(t, p, w, count, prep)
    if _fuses_prep(w, grad):
        scale, s = _window_power_sums(t, w, p, mean, grad, prep)
    else:
        scale, s = _window_power_sums(prep(t, None), w, p, mean, grad)
    return scale * _root(s, p, grad)


def _hand_backward(t: Tensor, p: Power, w: Window) -> bool:
    """Whether training takes :class:`_KernelPowerMean`: eager kernel windows, dense, outside torch.func's
    transforms (``grad``, ``vmap``, ...), whose tensors it cannot take (its forward keeps what the backward
    needs on ``ctx``); those, like compile and export, differentiate the offset steps themselves."""
    if is_traced() or w.kernel_size is None or w.is_global or w.dilated:
        return False
    wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    if wrapped is None:  # the check is gone (a contract test says so): the differentiable form is safe
        return False
    return not (wrapped(t) or (isinstance(p, Tensor) and wrapped(p)))


def _fuses_prep(w: Window, grad: bool) -> bool:
    """Whether the step before the power runs in the copy into stride phases (one pass over the input
    and one buffer less): eager strided kernel windows without autograd and without padding (GeM's
    clamp must not reach the padding's zeros)."""
    if grad or is_traced() or w.kernel_size is None or w.is_global or w.dilated:
        return False
    return any(sd > 1 for sd in w.stride) and not any(_pads(w))


def _lp(b: Tensor, w: Window, p: Power) -> Tensor:
    def core(x: Tensor, grad: bool) -> Tensor:
        return _power_mean(x, w, p, mean=False, grad=grad, prep=_Abs())

    return _by_planes(b, w, p, core)


def _gem(b: Tensor, w: Window, p: Power, eps: float) -> Tensor:
    def core(x: Tensor, grad: bool) -> Tensor:
        return _power_mean(x, w, p, mean=True, grad=grad, prep=_AtLeast(eps))

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
    out = window_call(
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
    return keep_memory_format(x, out)


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
    out = window_call(
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
    return keep_memory_format(x, out)


class _PowerPoolNd(PoolNd):
    """Holds p: a buffer when fixed; when ``learn_p``, the parameter ``p_raw`` with ``p = max(p_raw, 1)``.

    The clamp is straight-through: its value is ``max(p_raw, 1)`` and its gradient the identity, so the
    gradient with respect to p is the same at p = 1 as above it, and p leaves 1 as soon as the loss wants
    a larger p. (``p = 1 + softplus(raw)``, version 1, could not start at 1, and its gradient vanished
    there: 3.5e-12 was measured.) While the loss wants p below 1, ``p_raw`` may drift under 1 with p
    reading 1; its distance below 1 is what the loss must first undo."""

    default_p: ClassVar[float] = 2.0
    method: ClassVar[str] = "lp"
    # Version 1 stored a learnable p as p = 1 + softplus(p_raw): _load_from_state_dict converts it.
    _version: int = 2

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
            if not value < math.inf:
                raise ValueError(f"a learnable p must start finite, in [1, inf) (got {value!r})")
            self.p_raw = nn.Parameter(torch.tensor(value))
        else:
            self.register_buffer("p", torch.tensor(value))
            # A float copy keeps the fast paths (p=2: x*x, sqrt) and avoids a host sync per call;
            # it is refreshed whenever a state_dict is loaded.
            self._p_value = value
            self.register_load_state_dict_post_hook(_refresh_p)

    def power(self) -> Power:
        """The current p: a float when fixed, a tensor carrying the gradient when learnable."""
        if self.learn_p:
            raw = self.p_raw
            return raw.detach().clamp_min(1.0) + (raw - raw.detach())  # value max(raw, 1), gradient 1
        return self._p_value

    @property
    def p(self) -> Tensor:
        """The current p as a tensor: the buffer when fixed; ``max(p_raw, 1)`` when learnable."""
        if self.learn_p:
            power = self.power()
            if isinstance(power, Tensor):
                return power
        buffer = self._buffers.get("p")
        if buffer is None:
            raise AttributeError("p")  # during __init__, before the buffer exists
        return buffer

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        version = local_metadata.get("version")
        key = prefix + "p_raw"
        # Only a state dict that says it is version 1: one saved without metadata (safetensors keeps
        # none) is taken as current, since every state dict saved from now on is.
        if self.learn_p and version is not None and version < 2 and key in state_dict:
            state_dict[key] = 1.0 + F.softplus(state_dict[key])  # version 1: p = 1 + softplus(p_raw)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

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
        ceil_mode: use ceil instead of floor for the output size. Default: False.
        padding: implicit zero padding on both sides (keyword-only). Default: 0.
        output_size: adaptive output size instead of ``kernel_size`` (keyword-only); ``None`` entries
            keep that size. Default: None.
        dilation: the spacing between a kernel window's positions (keyword-only), as in torch's dilated
            pools. Default: 1.
        learn_p: make p learnable: the ``nn.Parameter`` ``p_raw``, with ``p = max(p_raw, 1)`` and a
            straight-through gradient, so p may start at 1 and leave it. Otherwise p is a buffer.
            Default: False.

    Shape:
        - Input: {shape_in}
        - Output: {shape_out},
{size_rule}

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
        padding: implicit padding on both sides, excluded from the mean. Default: 0.
        ceil_mode: use ceil instead of floor for the output size. Default: False.
        output_size: adaptive output size instead of ``kernel_size``; ``None`` entries keep that size.
            Default: None.
        dilation: the spacing between a kernel window's positions (keyword-only), as in torch's dilated
            pools. Default: 1.
        p: the power, >= 1. Default: 3.
        eps: inputs are clamped to at least eps. Default: 1e-6.
        learn_p: make p learnable: the ``nn.Parameter`` ``p_raw``, with ``p = max(p_raw, 1)`` and a
            straight-through gradient, so p may start at 1 and leave it. Otherwise p is a buffer.
            Default: False.

    Shape:
        - Input: {shape_in}
        - Output: {shape_out},
{size_rule}

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
