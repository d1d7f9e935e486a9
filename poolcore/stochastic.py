"""Stochastic pooling (Zeiler & Fergus, arXiv 1301.3557), functional and modules side by side.

Training samples one position per window with probability ``a_i / sum(a)`` and outputs its value; eval
outputs the probability-weighted average ``sum(a^2) / sum(a)``. Every window form (kernel, adaptive,
global) and rank (1d/2d/3d) goes through :func:`poolcore.windows.window_call`.

How sampling works (and why it is fast): one uniform ``u`` per output, ``t = u * S`` with ``S`` the
window sum, then the first position whose inclusive prefix sum exceeds ``t`` is the sample (inverse CDF).

* Small windows (``K <= _WALK_MAX`` positions) walk the K offsets: prefix ``c_j`` per offset, then
  ``out = lerp(out, v_j, [c_{j-1} <= t])``. A zero-weight position never survives: a zero in the middle
  leaves ``c`` unchanged, so the next position overwrites it; trailing zeros (padding, ceil-mode overhang,
  short adaptive bins) could only be picked if ``t >= S``, which the guard ``t <= nextafter(S, 0)``
  excludes. ``S`` is the walk's own last prefix (same additions, same order), so the guard is exact and
  costs no bias. ``lerp`` with a 0/1 weight is exact (torch computes ``end - diff * 0`` for weight 1) and,
  unlike ``torch.where``, vectorised on CPU (about 15x faster there).
* Kernel windows with a stride are first split into stride phases (``x[..., p::s, q::s]``), so every
  offset is a unit-stride view: strided elementwise ops are several times slower than contiguous ones.
* The work runs over chunks of the flattened ``B*C`` planes, sized to stay in cache on CPU, so no
  intermediate is larger than a chunk (no k^2-times unfold of the whole input).
* Large windows (global, wide adaptive bins, big kernels) gather each chunk's windows as ``(n, P, K)``,
  then ``cumsum`` + ``searchsorted``.
* With autograd on, the walk records the chosen offset instead of the value and the output is gathered
  from ``x`` at that position, so the gradient reaches the sampled position only (summed where
  overlapping windows pick the same one).

Half precision inputs are sampled in float32.
"""

from __future__ import annotations

import itertools
import math
from functools import partial

import torch
from torch import Tensor

from ._module import PoolNd
from .params import WindowParams
from .windows import IntTuple, OptIntTuple, Window, check_float, window_call

__all__ = [
    "StochasticParams",
    "StochasticPool1d",
    "StochasticPool2d",
    "StochasticPool3d",
    "stochastic_pool",
]

# Windows with more positions than this use cumsum + searchsorted instead of one pass per offset.
_WALK_MAX = 25
# Elements of working memory per chunk: about 4 MB of float32 on CPU (cache-sized), 64 MB on CUDA.
_CHUNK_ELEMS_CPU = 1 << 20
_CHUNK_ELEMS_CUDA = 1 << 24


class StochasticParams(WindowParams):
    """Window arguments only: ``training`` and ``generator`` are call arguments, not parameters."""


# ---- input checks -----------------------------------------------------------------------------------------
def _check_input(x: Tensor, generator: torch.Generator | None, check_values: bool) -> None:
    check_float(x, "stochastic")
    if generator is not None and generator.device.type != x.device.type:
        raise ValueError(
            "generator must be on the input's device "
            f"(got generator on {generator.device}, input on {x.device})"
        )
    if not check_values or x.numel() == 0:
        return
    # One fused pass and one host sync: aminmax propagates NaN into both results.
    lo, hi = torch.aminmax(x)
    if not bool((lo >= 0) & (hi < math.inf)):
        raise ValueError(
            "stochastic pooling needs non-negative finite activations (apply ReLU first); "
            f"got min {lo.item()}, max {hi.item()}"
        )


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _chunk_planes(x: Tensor, per_plane: int) -> int:
    budget = _CHUNK_ELEMS_CUDA if x.device.type == "cuda" else _CHUNK_ELEMS_CPU
    return max(1, budget // max(1, per_plane))


# ---- window positions -------------------------------------------------------------------------------------
def _extents(w: Window) -> list[int]:
    return [w.max_extent(d) for d in range(len(w.in_size))]


def _grid(w: Window, device: torch.device) -> tuple[Tensor, Tensor | None]:
    """Flat spatial position of every window offset, ``(P, K)`` with ``P`` outputs and ``K`` offsets in
    row-major order (the order of :meth:`Window.offsets`). Offsets outside the real input are clamped
    into the window's real range (so an index is always valid) and reported False in the mask."""
    n = len(w.in_size)
    extents = _extents(w)
    # Broadcast over (o_0, ..., o_{n-1}, e_0, ..., e_{n-1}); each dim contributes position * its stride.
    flat = torch.zeros((), dtype=torch.long, device=device)
    valid = torch.ones((), dtype=torch.bool, device=device)
    stride = math.prod(w.in_size)
    for d in range(n):
        stride //= w.in_size[d]
        lo, hi = w.bounds(d)
        raw = lo if w.kernel_size is None else [i * w.stride[d] - w.padding[d] for i in range(w.out_size[d])]
        lo_t = torch.tensor(lo, device=device).unsqueeze(1)
        hi_t = torch.tensor(hi, device=device).unsqueeze(1)
        pos = torch.tensor(raw, device=device).unsqueeze(1) + torch.arange(extents[d], device=device)
        ok = (pos >= lo_t) & (pos < hi_t)
        pos = torch.minimum(torch.maximum(pos, lo_t), hi_t - 1)
        shape = [1] * (2 * n)
        shape[d], shape[n + d] = w.out_size[d], extents[d]
        flat = flat + pos.view(shape) * stride
        valid = valid & ok.view(shape)
    p, k = math.prod(w.out_size), math.prod(extents)
    grid = flat.expand(*w.out_size, *extents).reshape(p, k)
    if bool(valid.all()):
        return grid, None
    return grid, valid.expand(*w.out_size, *extents).reshape(p, k)


# ---- offset views of one chunk ----------------------------------------------------------------------------
class _Views:
    """Yields, for each chunk ``(n, *spatial)`` of planes, the K offset tensors ``(n, *out_size)`` in
    row-major offset order (the order of :meth:`Window.offsets`), in the compute dtype.

    Kernel windows are split into stride phases (``x[..., p::s, q::s]``) once per chunk, so every offset
    is a unit-stride view of a phase. With ``reuse`` the phase (and padding) buffers are allocated once
    per call and overwritten chunk after chunk: fresh large buffers per chunk cost page faults that
    showed up as a third of the time. Autograd needs ``reuse=False`` (saved views must stay intact).
    """

    def __init__(self, w: Window, chunk: int, cdt: torch.dtype, device: torch.device, reuse: bool) -> None:
        self.w, self.cdt, self.reuse = w, cdt, reuse
        self.device = device
        self.chunk = chunk
        self._buffers: dict[object, Tensor] = {}

    def _buffer(self, key: object, shape: tuple[int, ...], n: int, zero: bool = False) -> Tensor:
        if not self.reuse:
            make = torch.zeros if zero else torch.empty
            return make((n, *shape), dtype=self.cdt, device=self.device)
        buf = self._buffers.get(key)
        if buf is None:
            make = torch.zeros if zero else torch.empty
            buf = self._buffers[key] = make((self.chunk, *shape), dtype=self.cdt, device=self.device)
        return buf[:n]

    def __call__(self, xc: Tensor) -> list[Tensor]:
        w = self.w
        if w.kernel_size is None:
            return [v.squeeze(0) for v in w.offsets(xc.to(self.cdt).unsqueeze(0))]
        n, n_sp = xc.shape[0], len(w.in_size)
        k, s, p = w.kernel_size, w.stride, w.padding
        right = [max(0, (w.out_size[d] - 1) * s[d] + k[d] - w.in_size[d] - p[d]) for d in range(n_sp)]
        xp = xc
        if any(p) or any(right):
            # Zero borders are written once; each chunk only overwrites the interior.
            padded = tuple(w.in_size[d] + p[d] + right[d] for d in range(n_sp))
            xp = self._buffer("pad", padded, n, zero=True)
            inner = tuple(slice(p[d], p[d] + w.in_size[d]) for d in range(n_sp))
            xp[(slice(None), *inner)].copy_(xc)
        planes: dict[tuple[int, ...], Tensor] = {}
        if all(sd == 1 for sd in s):
            planes[(0,) * n_sp] = xp.to(self.cdt)
        else:
            for phase in itertools.product(*[range(min(k[d], s[d])) for d in range(n_sp)]):
                index, lengths = [], []
                for d, ph in enumerate(phase):
                    lengths.append(w.out_size[d] + (k[d] - 1 - ph) // s[d])
                    index.append(slice(ph, ph + s[d] * (lengths[-1] - 1) + 1, s[d]))
                plane = self._buffer(phase, tuple(lengths), n)
                planes[phase] = plane.copy_(xp[(slice(None), *index)])
        views = []
        for offset in itertools.product(*[range(kd) for kd in k]):
            plane = planes[tuple(o % sd for o, sd in zip(offset, s, strict=True))]
            index = [slice(o // sd, o // sd + od) for o, sd, od in zip(offset, s, w.out_size, strict=True)]
            views.append(plane[(slice(None), *index)])
        return views


# ---- training: sample one position per window -------------------------------------------------------------
def _uniform_t(total: Tensor, generator: torch.Generator | None, out: Tensor | None = None) -> Tensor:
    """``t = u * total`` with ``u ~ U[0, 1)``, kept strictly below ``total`` (and 0 for a zero total)."""
    t = torch.empty_like(total) if out is None else out
    t.uniform_(generator=generator).mul_(total)
    below = torch.nextafter(total, torch.zeros((), dtype=total.dtype, device=total.device))
    return torch.minimum(t, below, out=t)


def _train_walk(x: Tensor, w: Window, generator: torch.Generator | None, need_index: bool) -> Tensor:
    planes = x.reshape(-1, *w.in_size)
    n_all, k = planes.shape[0], math.prod(_extents(w))
    out_plane = math.prod(w.out_size)
    cdt = _compute_dtype(x.dtype)
    chunk = _chunk_planes(x, math.prod(w.in_size) + (k + 2) * out_plane)
    if need_index:
        choice = torch.empty((n_all, *w.out_size), dtype=torch.long, device=x.device)
    else:
        out = torch.empty((n_all, *w.out_size), dtype=x.dtype, device=x.device)
    split = _Views(w, chunk, cdt, x.device, reuse=True)
    work = torch.empty((k + 2, chunk, *w.out_size), dtype=cdt, device=x.device)
    with torch.no_grad():
        for a in range(0, n_all, chunk):
            views = split(planes[a : a + chunk])
            n = views[0].shape[0]
            # Inclusive prefix sums c_0..c_{K-1}; c_{K-1} is the window sum used for t (exact guard).
            prefix = [views[0]]
            for j in range(1, k):
                prefix.append(torch.add(prefix[j - 1], views[j], out=work[j - 1, :n]))
            t = _uniform_t(prefix[-1], generator, out=work[k - 1, :n])
            mask = work[k, :n]
            if need_index:
                count = torch.zeros_like(t)
                for j in range(1, k):
                    count.add_(torch.le(prefix[j - 1], t, out=mask))
                choice[a : a + n].copy_(count)
                continue
            res = out[a : a + n] if cdt == x.dtype else work[k + 1, :n]
            res.copy_(views[0])
            for j in range(1, k):
                res.lerp_(views[j], torch.le(prefix[j - 1], t, out=mask))
            if cdt != x.dtype:
                out[a : a + n].copy_(res)
    if not need_index:
        return out.view(*x.shape[:2], *w.out_size)
    return _gather_choice(x, w, choice.view(n_all, -1))


def _gather_choice(x: Tensor, w: Window, choice: Tensor) -> Tensor:
    """Output = ``x`` at the chosen offset of each window (``choice``: ``(B*C, P)`` offset indices); the
    gather's backward sends each output's gradient to that one position."""
    grid, _ = _grid(w, x.device)
    p, k = grid.shape
    pos = grid.reshape(-1)[choice + torch.arange(p, device=x.device) * k]
    flat = x.reshape(choice.shape[0], -1)
    return flat.gather(1, pos).view(*x.shape[:2], *w.out_size)


def _train_gather(x: Tensor, w: Window, generator: torch.Generator | None) -> Tensor:
    """Large windows: gather each chunk's windows as (n, P, K), then cumsum + searchsorted."""
    flat = x.reshape(-1, math.prod(w.in_size))
    cdt = _compute_dtype(x.dtype)
    with torch.no_grad():
        grid, valid = _grid(w, x.device)
        p, k = grid.shape
        chunk = _chunk_planes(x, p * k)
        choice = torch.empty((flat.shape[0], p), dtype=torch.long, device=x.device)
        for a in range(0, flat.shape[0], chunk):
            xc = flat[a : a + chunk].to(cdt)
            vals = xc.unsqueeze(1) if w.is_global else xc[:, grid]
            if valid is not None:
                vals = vals * valid
            cum = vals.cumsum(-1)
            t = _uniform_t(cum[..., -1], generator)
            found = torch.searchsorted(cum, t.unsqueeze(-1), right=True).squeeze(-1)
            choice[a : a + xc.shape[0]] = found.clamp_max_(k - 1)
    return _gather_choice(x, w, choice)


def _train(x: Tensor, w: Window, generator: torch.Generator | None) -> Tensor:
    need_index = torch.is_grad_enabled() and x.requires_grad
    if math.prod(_extents(w)) <= _WALK_MAX:
        return _train_walk(x, w, generator, need_index)
    return _train_gather(x, w, generator)


# ---- eval: sum(a^2) / sum(a) ------------------------------------------------------------------------------
def _safe_ratio(squares: Tensor, sums: Tensor) -> Tensor:
    # A zero sum means an all-zero window (the input is non-negative) whose squares are 0 too: divide by 1
    # there. Adding the mask (not torch.where, which is unvectorised on CPU) keeps the gradient finite.
    return squares / (sums + (sums == 0))


def _eval(x: Tensor, w: Window) -> Tensor:
    cdt = _compute_dtype(x.dtype)
    if w.kernel_size is None:
        xc = x.to(cdt)
        return _safe_ratio(w.sum(xc * xc), w.sum(xc)).to(x.dtype)
    planes = x.reshape(-1, *w.in_size)
    k, out_plane = math.prod(w.kernel_size), math.prod(w.out_size)
    chunk = _chunk_planes(x, math.prod(w.in_size) + 3 * out_plane)
    n_all = planes.shape[0]
    out = torch.empty((n_all, *w.out_size), dtype=x.dtype, device=x.device)
    split = _Views(w, chunk, cdt, x.device, reuse=not (torch.is_grad_enabled() and x.requires_grad))
    for a in range(0, n_all, chunk):
        views = split(planes[a : a + chunk])
        sums = views[0].clone()
        squares = views[0] * views[0]
        for j in range(1, k):
            sums.add_(views[j])
            squares.addcmul_(views[j], views[j])
        out[a : a + chunk].copy_(_safe_ratio(squares, sums))
    return out.view(*x.shape[:2], *w.out_size)


# ---- functional -------------------------------------------------------------------------------------------
def stochastic_pool(
    x: Tensor,
    kernel_size: IntTuple | None = None,
    stride: IntTuple | None = None,
    padding: IntTuple = 0,
    ceil_mode: bool = False,
    *,
    output_size: OptIntTuple = None,
    dims: int | None = None,
    training: bool = False,
    generator: torch.Generator | None = None,
    check_input: bool = True,
) -> Tensor:
    """Stochastic pooling (Zeiler & Fergus 2013); see :class:`StochasticPool2d` for the arguments."""
    _check_input(x, generator, check_input)
    fn = partial(_train, generator=generator) if training else _eval
    return window_call(
        x,
        fn,
        kernel_size=kernel_size,
        stride=stride,
        padding=padding,
        ceil_mode=ceil_mode,
        output_size=output_size,
        dims=dims,
    )


# ---- modules ----------------------------------------------------------------------------------------------
class _StochasticPoolNd(PoolNd):
    """Holds the window arguments; subclasses set ``dims`` and add the docstring and ``forward``."""

    def _pool(self, x: Tensor) -> Tensor:
        return stochastic_pool(x, training=self.training, **self.window_kwargs())


_DOC_ARGS = r"""
    In training mode each window samples one position with probability proportional to its activation
    and outputs that value (the gradient flows to the sampled position only); in eval mode it outputs the
    probability-weighted average:

    .. math::
        \text{train: } y = a_J,\quad P(J = i) = \frac{a_i}{\sum_j a_j} \qquad
        \text{eval: } y = \sum_i \frac{a_i}{\sum_j a_j} a_i = \frac{\sum_i a_i^2}{\sum_i a_i}

    over the real (non-padded) positions of each window. An all-zero window gives 0. The input must be
    non-negative and finite (apply ReLU first); this is checked with one host sync, which
    ``stochastic_pool(..., check_input=False)`` skips for hot loops on CUDA.

    Args:
        kernel_size: the size of the window (give this or ``output_size``).
        stride: the stride of the window. Default: ``kernel_size``.
        padding: implicit zero padding on both sides; padded positions are never sampled.
        ceil_mode: use ceil instead of floor to compute the output shape.
        output_size: adaptive output size instead of a kernel; ``None`` entries keep the input size, and
            ``1`` is global stochastic pooling.
"""


class StochasticPool1d(_StochasticPoolNd):
    __doc__ = (
        r"""Applies 1D stochastic pooling (Zeiler & Fergus, 2013) over an input signal.
"""
        + _DOC_ARGS
        + r"""
    Shape:
        - Input: :math:`(N, C, L_{in})` or :math:`(C, L_{in})`.
        - Output: :math:`(N, C, L_{out})` or :math:`(C, L_{out})`, with :math:`L_{out}` as in
          :class:`torch.nn.MaxPool1d` (or ``output_size``).

    Example::

        >>> pool = StochasticPool1d(3, stride=2)
        >>> pool(torch.rand(2, 16, 50)).shape
        torch.Size([2, 16, 24])
    """
    )

    dims = 1

    def forward(self, x: Tensor) -> Tensor:
        return self._pool(x)


class StochasticPool2d(_StochasticPoolNd):
    __doc__ = (
        r"""Applies 2D stochastic pooling (Zeiler & Fergus, 2013) over an input image.
"""
        + _DOC_ARGS
        + r"""
    Shape:
        - Input: :math:`(N, C, H_{in}, W_{in})` or :math:`(C, H_{in}, W_{in})`.
        - Output: :math:`(N, C, H_{out}, W_{out})` or :math:`(C, H_{out}, W_{out})`, with the sizes of
          :class:`torch.nn.MaxPool2d` (or ``output_size``).

    Example::

        >>> pool = StochasticPool2d(3, stride=2)
        >>> pool(torch.rand(2, 16, 32, 32)).shape
        torch.Size([2, 16, 15, 15])
        >>> x = torch.tensor([[[0.0, 1.1, 2.5], [0.9, 2.0, 1.0], [0.0, 1.5, 1.0]]])
        >>> StochasticPool2d(3).eval()(x)  # sum(a^2) / sum(a) = 16.52 / 10
        tensor([[[1.6520]]])
    """
    )

    dims = 2

    def forward(self, x: Tensor) -> Tensor:
        return self._pool(x)


class StochasticPool3d(_StochasticPoolNd):
    __doc__ = (
        r"""Applies 3D stochastic pooling (Zeiler & Fergus, 2013) over an input volume.
"""
        + _DOC_ARGS
        + r"""
    Shape:
        - Input: :math:`(N, C, D_{in}, H_{in}, W_{in})` or :math:`(C, D_{in}, H_{in}, W_{in})`.
        - Output: :math:`(N, C, D_{out}, H_{out}, W_{out})` or :math:`(C, D_{out}, H_{out}, W_{out})`,
          with the sizes of :class:`torch.nn.MaxPool3d` (or ``output_size``).

    Example::

        >>> pool = StochasticPool3d(2)
        >>> pool(torch.rand(1, 4, 8, 8, 8)).shape
        torch.Size([1, 4, 4, 4, 4])
    """
    )

    dims = 3

    def forward(self, x: Tensor) -> Tensor:
        return self._pool(x)
