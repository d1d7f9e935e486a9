"""Stochastic pooling (Zeiler & Fergus, arXiv 1301.3557), functional and modules side by side.

Training samples one position per window with probability ``a_i / sum(a)`` and outputs its value; eval
outputs the probability-weighted average ``sum(a^2) / sum(a)``. Every window form (kernel, adaptive,
global) and rank (1d/2d/3d) goes through :func:`poolcore.windows.window_call`.

How sampling works: one uniform ``u`` per output, ``t = u * S`` with ``S`` the window sum, then the
first position whose inclusive prefix sum exceeds ``t`` is the sample (inverse CDF).

* **Randomness.** ``u`` is a float64 uniform (53 bits) from torch's own generator (``generator=``, or the
  default one that ``torch.manual_seed`` sets), one per output in row-major output order. Prefix sums,
  ``S`` and ``t`` are float64 for every input dtype, so a position of weight ``a_i`` is chosen with
  probability ``a_i / S`` up to float64 rounding (about 2^-50 relative), far below 2^-32. torch's CPU
  generator is serial (mt19937), so drawing the uniforms chunk by chunk gives the same values as one
  draw over the whole output: samples do not depend on chunking, window size or path.
* **Kernel windows, and adaptive bins of ``K <= _WALK_MAX`` positions,** walk the K offsets: prefix
  ``c_j`` per offset (all kept for ``K <= _KEEP_PREFIXES``, else one running prefix over two passes), then
  ``out = lerp(out, v_j, [c_{j-1} <= t])``. A zero-weight position never survives: a zero in the middle
  leaves ``c`` unchanged, so the next position overwrites it; trailing zeros (padding, ceil-mode overhang,
  short adaptive bins) could only be picked if ``t >= S``, which the guard ``t <= nextafter(S, 0)``
  excludes. ``S`` is the walk's own last prefix (same additions, same order), so the guard is exact.
  ``lerp`` with a 0/1 weight is exact and, unlike ``torch.where``, vectorised on CPU.
* Kernel windows with a stride are first split into stride phases (``x[..., p::s, q::s]``), so every
  offset is a unit-stride view.
* **Bounded memory.** Work runs over blocks of the flattened ``B*C`` planes, and for a plane too large
  for one block, over blocks of its output rows (a kernel window over a row block is again a kernel
  window, with its own padding). A block's scratch is at most a third of what twice the input leaves
  beside the output (at least 1 MiB, at most 16 MiB on CPU), so the extra memory of a call, output
  included, stays within 2x the input for inputs of a few MiB and more, whatever the window.
* **Large adaptive windows** (global, bins of more than ``_WALK_MAX`` positions) gather a
  block of windows' values as ``(n, P_block, K_block)`` from index arithmetic (nothing cached), then
  ``cumsum`` and ``searchsorted``. A window larger than a block is scanned in two passes with a running
  carry (the same additions both times, so the guard stays exact).
* With autograd on, the chosen position is recorded and the output gathered from ``x`` there, so the
  gradient reaches the sampled position only (summed where overlapping windows pick the same one); the
  int64 index (8 bytes per output) is kept for backward, as ``max_pool2d``'s indices are.

Half precision inputs are sampled through float64 sums as well; the output is the input's value.

**Eager, compiled and exported.** ``compiled=True`` runs kernel windows (without autograd) through
``torch.compile``: the K strided views, the prefix sums and the selection become one fused loop. It draws
the same uniforms in the same order as the eager path (they are drawn eagerly and passed in; this holds
the float64 uniforms, 8 bytes per output) and gives the same samples. Under ``torch.compile``,
``torch.export`` and ONNX export of a model, the same selection is traced as one whole-tensor expression
(no chunk loop, no host sync; the input's value check is skipped there) and the uniforms come from
``torch.rand``: inductor replaces that with its own Philox stream, so compiled samples follow the same
distribution but differ from eager ones for a seed, unless ``torch._inductor.config.fallback_random`` is
True, in which case they are identical. ``generator=`` cannot be traced by dynamo (it graph-breaks);
seed compiled code with ``torch.manual_seed``. On CUDA the eager path draws per chunk (Philox offsets),
so its samples match ``compiled=True`` only when the output fits one chunk.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
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

# Adaptive windows with more positions than this use cumsum + searchsorted instead of one pass per offset.
_WALK_MAX = 25
# Windows of at most this many positions keep every prefix sum (one pass); larger ones take two passes
# with one running prefix, whose smaller scratch allows larger blocks (faster from 3x3 windows on).
_KEEP_PREFIXES = 4
# Scratch per block (see _budget), within [1 MiB, 16 MiB] on CPU (cache-sized, while keeping the
# number of small parallel ops per call in the hundreds) and [1 MiB, 256 MiB] on CUDA.
_CHUNK_BYTES_CPU = 16 << 20
_CHUNK_BYTES_CUDA = 256 << 20
_MIN_CHUNK_BYTES = 1 << 20
_F64 = torch.float64


class StochasticParams(WindowParams):
    """Window arguments only: ``training`` and ``generator`` are call arguments, not parameters."""


# ---- input checks -----------------------------------------------------------------------------------------
def _refuse_legacy_onnx(w: Window) -> None:
    """TorchScript tracing (the legacy ONNX exporter) would bake the eager path's block loop, and with it
    the example's size, into the graph; it cannot express the whole-tensor path's unfold either."""
    if torch.jit.is_tracing() and not w.is_global:
        raise RuntimeError(
            "stochastic pooling does not support TorchScript tracing or the legacy ONNX exporter "
            "(torch.onnx.export(..., dynamo=False)) except for global windows; "
            "use torch.onnx.export(..., dynamo=True) or torch.export.export"
        )


def _tracing() -> bool:
    """Under torch.compile, torch.export (and the dynamo ONNX exporter) or TorchScript tracing (the legacy
    ONNX exporter): take the whole-tensor paths, which have no chunk loop and no host sync."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing()


def _check_input(x: Tensor, generator: torch.Generator | None, check_values: bool) -> None:
    check_float(x, "stochastic")
    if generator is not None and generator.device.type != x.device.type:
        raise ValueError(
            "generator must be on the input's device "
            f"(got generator on {generator.device}, input on {x.device})"
        )
    if not check_values or x.numel() == 0 or _tracing():
        return  # traced: the check would be a data-dependent branch (a host sync, a guard in export)
    # One fused pass and one host sync: aminmax propagates NaN into both results.
    _raise_if_bad(*torch.aminmax(x))


def _raise_if_bad(lo: Tensor, hi: Tensor) -> None:
    if not bool((lo >= 0) & (hi < math.inf)):
        raise ValueError(
            "stochastic pooling needs non-negative finite activations (apply ReLU first); "
            f"got min {lo.item()}, max {hi.item()}"
        )


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _budget(x: Tensor, w: Window) -> int:
    """Bytes of scratch one block may use: a third of what the 2x-the-input bound leaves beside the output
    (a quarter of the input at stride 1, more for strided windows), within the device's range."""
    cap = _CHUNK_BYTES_CUDA if x.device.type == "cuda" else _CHUNK_BYTES_CPU
    size = x.numel() * x.element_size()
    out = x.numel() // math.prod(w.in_size) * math.prod(w.out_size) * x.element_size()
    return max(_MIN_CHUNK_BYTES, min(cap, (2 * size - out) // 3))


# ---- window positions -------------------------------------------------------------------------------------
def _extents(w: Window) -> list[int]:
    return [w.max_extent(d) for d in range(len(w.in_size))]


def _tables(w: Window, device: torch.device) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Per spatial dim, for each output index along it: the unclipped first position of its window and
    the real range ``[lo, hi)`` (padding and ceil-mode overhang excluded). O(out) memory, built per call."""
    tables = []
    for d in range(len(w.in_size)):
        lo, hi = w.bounds(d)
        start = (
            lo if w.kernel_size is None else [i * w.stride[d] - w.padding[d] for i in range(w.out_size[d])]
        )
        tables.append(tuple(torch.tensor(v, dtype=torch.long, device=device) for v in (start, lo, hi)))
    return tables  # type: ignore[return-value]


def _unravel(flat: Tensor, sizes: list[int] | tuple[int, ...]) -> list[Tensor]:
    """Row-major multi-index of ``flat`` over ``sizes``."""
    out = []
    for size in reversed(sizes):
        out.append(flat % size)
        flat = flat // size
    return out[::-1]


def _positions(
    w: Window,
    tables: list[tuple[Tensor, Tensor, Tensor]],
    q: Tensor,
    offset: Tensor,
    in_size: tuple[int, ...],
    shift: tuple[int, ...],
) -> tuple[Tensor, Tensor]:
    """Flat position in the plane (``in_size``) of window ``q`` (flat output index) at window offset
    ``offset`` (flat, row-major over the extents), broadcasting ``q`` against ``offset``. ``shift`` moves
    the window's coordinates into the plane's (a row block's first row). Positions outside a window's real
    range are clamped into it and reported False."""
    flat = torch.zeros((), dtype=torch.long, device=q.device)
    valid = torch.ones((), dtype=torch.bool, device=q.device)
    stride = math.prod(in_size)
    for d, (i, o) in enumerate(zip(_unravel(q, w.out_size), _unravel(offset, _extents(w)), strict=True)):
        start, lo, hi = (t[i] for t in tables[d])
        pos = start + o
        valid = valid & (pos >= lo) & (pos < hi)
        stride //= in_size[d]
        flat = flat + (torch.minimum(torch.maximum(pos, lo), hi - 1) + shift[d]) * stride
    return flat, valid


# The largest double below 1: for a normal double S > 0, S * _BELOW_ONE rounds to nextafter(S, 0) (S - S/2^53
# lies more than half an ulp below S, and less than one; for a power of two, exactly on the next double).
_BELOW_ONE = 1.0 - 2.0**-53


def _guarded_t(u: Tensor, total: Tensor, normal: bool = False) -> Tensor:
    """``t = u * total`` in place of ``u``, kept strictly below ``total`` (and 0 for a zero total).

    ``normal``: every non-zero total is a normal double, as a float64 sum of float32 or half values
    always is; then one multiplication gives ``nextafter(total, 0)``, at a third of nextafter's cost."""
    u.mul_(total)
    below = (
        total * _BELOW_ONE if normal else torch.nextafter(total, torch.zeros((), dtype=_F64, device=u.device))
    )
    return torch.minimum(u, below, out=u)


# ---- blocks of work ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Block:
    """Planes ``[a, b)``; for a row block, the window ``sub`` over input rows ``[in_lo, in_hi)`` of dim
    ``d0`` and output rows ``[r0, r1)`` (the dims before ``d0`` have one output, so the block's outputs are
    contiguous in row-major order)."""

    a: int
    b: int
    sub: Window
    d0: int = 0
    in_lo: int = 0
    in_hi: int = -1
    r0: int = 0
    r1: int = -1

    @property
    def rows(self) -> bool:
        return self.in_hi >= 0

    def input(self, planes: Tensor) -> Tensor:
        part = planes[self.a : self.b]
        return part.narrow(1 + self.d0, self.in_lo, self.in_hi - self.in_lo) if self.rows else part

    def output(self, out: Tensor) -> Tensor:
        part = out[self.a : self.b]
        return part.narrow(1 + self.d0, self.r0, self.r1 - self.r0) if self.rows else part

    def shift(self) -> tuple[int, ...]:
        n = len(self.sub.in_size)
        return tuple(self.in_lo if self.rows and d == self.d0 else 0 for d in range(n))


def _blocks(w: Window, n_all: int, per_in: int, per_out: int, budget: int) -> Iterator[_Block]:
    """Blocks of planes whose scratch (``per_in`` bytes per input element, ``per_out`` per output) fits
    ``budget``; a kernel window over planes too large for that is split into blocks of output rows."""
    n_in, n_out = math.prod(w.in_size), math.prod(w.out_size)
    per_plane = per_in * n_in + per_out * n_out
    if per_plane <= budget or w.kernel_size is None:
        chunk = max(1, budget // per_plane)
        for a in range(0, n_all, chunk):
            yield _Block(a, min(n_all, a + chunk), w)
        return
    d0 = next((d for d, o in enumerate(w.out_size) if o > 1), len(w.out_size) - 1)
    k, s, p = w.kernel_size[d0], w.stride[d0], w.padding[d0]
    per_row = per_in * (n_in // w.in_size[d0]) * s + per_out * (n_out // w.out_size[d0])
    step = max(1, (budget - per_in * (n_in // w.in_size[d0]) * k) // per_row)
    for a in range(n_all):
        for r0 in range(0, w.out_size[d0], step):
            r1 = min(w.out_size[d0], r0 + step)
            lo, hi = r0 * s - p, (r1 - 1) * s - p + k
            in_lo, in_hi = max(lo, 0), min(hi, w.in_size[d0])
            sub = dataclasses.replace(
                w,
                in_size=_put(w.in_size, d0, in_hi - in_lo),
                out_size=_put(w.out_size, d0, r1 - r0),
                padding=_put(w.padding, d0, max(0, -lo)),
            )
            yield _Block(a, a + 1, sub, d0, in_lo, in_hi, r0, r1)


class _Scratch:
    """Named work buffers reused block after block (fresh large buffers per block fragment the heap and
    page-fault; on CPU that showed as resident memory well above what was live)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.buffers: dict[str, Tensor] = {}

    def __call__(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        numel = math.prod(shape)
        buf = self.buffers.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype:
            buf = self.buffers[name] = torch.empty(numel, dtype=dtype, device=self.device)
        return buf[:numel].view(shape)


def _put(values: tuple[int, ...], d: int, value: int) -> tuple[int, ...]:
    return (*values[:d], value, *values[d + 1 :])


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
        elif tuple(k) == tuple(s):
            # Non-overlapping windows: all phases in one permuted copy ((n, o, s) -> (n, s, o) per dim),
            # about 20% faster than one strided copy per phase. Splitting a dim is always a view.
            sliced = xp[(slice(None), *[slice(0, w.out_size[d] * s[d]) for d in range(n_sp)])]
            for d in range(n_sp):
                sliced = sliced.unflatten(1 + 2 * d, (w.out_size[d], s[d]))
            order = [0, *[2 + 2 * d for d in range(n_sp)], *[1 + 2 * d for d in range(n_sp)]]
            both = self._buffer("phases", (*s, *w.out_size), n).copy_(sliced.permute(order))
            by_phase = both.flatten(1, n_sp)  # (n, prod(s), *out), phases in row-major order
            for i, phase in enumerate(itertools.product(*[range(sd) for sd in s])):
                planes[phase] = by_phase[:, i]
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
def _train_walk(
    x: Tensor, w: Window, generator: torch.Generator | None, need_index: bool, check_values: bool
) -> Tensor:
    planes = x.reshape(-1, *w.in_size)
    n_all, k = planes.shape[0], math.prod(_extents(w))
    # Everything in float64: the views are converted once per block (with the stride-phase copy), so every
    # op after that is same-dtype and vectorised (mixed float32/float64 ops take a slow casting loop).
    cdt = _F64
    normal = x.dtype != _F64  # float64 sums of float32/half values: zero or normal (see _guarded_t)
    # Scratch: phase and padding copies per input element; per output, the float64 prefixes (K of them, or
    # one), t, the mask and the result, and with autograd the index arithmetic.
    per_out = 8 * (k if k <= _KEEP_PREFIXES else 1) + 24 + (48 if need_index else 0)
    blocks = list(_blocks(w, n_all, 16, per_out, _budget(x, w)))
    tables = _tables(w, x.device) if need_index and not blocks[0].rows else None
    # The input check runs per block, while the block is in cache for the walk (a separate aminmax over
    # the whole input costs a full extra pass from memory); one sync after the loop, then the same error.
    bounds: list[Tensor] = []
    if need_index:
        pos = torch.empty((n_all, math.prod(w.out_size)), dtype=torch.long, device=x.device)
    else:
        out = torch.empty((n_all, *w.out_size), dtype=x.dtype, device=x.device)
    chunk = blocks[0].b - blocks[0].a
    shared = None if blocks[0].rows else _Views(w, chunk, cdt, x.device, reuse=True)
    scratch = _Scratch(x.device)
    with torch.no_grad():
        for blk in blocks:
            if check_values and blk.r0 == 0:
                bounds.append(torch.stack(torch.aminmax(planes[blk.a : blk.b])))
            split = shared or _Views(blk.sub, 1, cdt, x.device, reuse=False)
            views = split(blk.input(planes))
            n, shape = views[0].shape[0], views[0].shape[1:]
            dims = (n, *shape)
            t = scratch("t", dims, _F64).uniform_(generator=generator)
            mask = scratch("mask", dims, cdt)
            if need_index:
                res = scratch("res", dims, cdt).zero_()  # counts the prefixes <= t: the chosen offset
                step: Callable[[Tensor, Tensor], object] = functools.partial(_count_, res)
            else:
                dst = blk.output(out)
                res = dst if dst.dtype == cdt else scratch("res", dims, cdt)
                # The first step reads views[0] in place of a copy of it in res.
                step = functools.partial(_lerp_step, res, views[0], [True])
            if k <= _KEEP_PREFIXES:
                # Inclusive float64 prefixes c_0..c_{K-1}, kept; c_{K-1} is the window sum (exact guard).
                # c_0 is views[0] itself (float64 already): no copy.
                work = scratch("prefix", (k - 1, *dims), _F64)
                prefix = [views[0]]
                for j in range(1, k):
                    prefix.append(torch.add(prefix[j - 1], views[j], out=work[j - 1]))
                t = _guarded_t(t, prefix[-1], normal)
                for j in range(1, k):
                    step(views[j], torch.le(prefix[j - 1], t, out=mask))
                del work, prefix
            else:
                # Many offsets: one running prefix, two passes with the same additions in the same order
                # (so the first pass's total is exactly the second pass's last prefix). c_0 is views[0]
                # itself and c_1 is written by the first addition: no copies.
                c = torch.add(views[0], views[1], out=scratch("prefix", dims, _F64))
                for v in views[2:]:
                    c.add_(v)
                t = _guarded_t(t, c, normal)
                step(views[1], torch.le(views[0], t, out=mask))
                torch.add(views[0], views[1], out=c)
                for v in views[2:]:
                    step(v, torch.le(c, t, out=mask))
                    c.add_(v)
                del c
            if not need_index and k == 1:
                res.copy_(views[0])
            if need_index:
                del t, mask, views
                sub = blk.sub
                tabs = tables if tables is not None else _tables(sub, x.device)
                q = torch.arange(math.prod(sub.out_size), device=x.device)
                flat, _ = _positions(sub, tabs, q, res.long().flatten(1), w.in_size, blk.shift())
                q0 = blk.r0 * (math.prod(w.out_size) // w.out_size[blk.d0]) if blk.rows else 0
                pos[blk.a : blk.b, q0 : q0 + q.numel()] = flat
            elif res is not dst:
                dst.copy_(res)
    if bounds:
        both = torch.stack(bounds)
        _raise_if_bad(both[:, 0].min(), both[:, 1].max())
    if not need_index:
        return out.view(*x.shape[:2], *w.out_size)
    return x.reshape(n_all, -1).gather(1, pos).view(*x.shape[:2], *w.out_size)


def _count_(count: Tensor, value: Tensor, mask: Tensor) -> None:
    count.add_(mask)


def _lerp_step(res: Tensor, first: Tensor, pending: list[bool], value: Tensor, mask: Tensor) -> None:
    """``res = lerp(res, value, mask)``, where the first call reads ``first`` in place of a copy of it
    in ``res`` (lerp with a 0/1 weight is exact, so the result is the same)."""
    if pending[0]:
        pending[0] = False
        torch.lerp(first, value, mask, out=res)
    else:
        res.lerp_(value, mask)


def _train_blocks(x: Tensor, w: Window, generator: torch.Generator | None, need_index: bool) -> Tensor:
    """Large windows: gather blocks of windows as ``(n, P_block, K_block)`` float64 values, cumsum, then
    searchsorted. Windows larger than a block take two passes with a running carry."""
    flat = x.reshape(-1, math.prod(w.in_size))
    n_all, p, k = flat.shape[0], math.prod(w.out_size), math.prod(_extents(w))
    # Per (window, offset) element: int64 positions and their arithmetic, the gathered value, float64 value.
    elems = max(1, _budget(x, w) // 48)
    kb = min(k, elems)
    pb = min(p, max(1, elems // kb))
    nb = 1 if pb < p else min(n_all, max(1, elems // (pb * kb)))  # blocks stay contiguous in output order
    tables = _tables(w, x.device)
    zero = (0,) * len(w.in_size)
    result = torch.empty((n_all, p), dtype=torch.long if need_index else x.dtype, device=x.device)
    with torch.no_grad():
        for a in range(0, n_all, nb):
            xc = flat[a : a + nb]
            for q0 in range(0, p, pb):
                q = torch.arange(q0, min(p, q0 + pb), device=x.device)

                def values(j0: int, xc: Tensor = xc, q: Tensor = q) -> Tensor:
                    if w.is_global:
                        return xc[:, j0 : j0 + kb].to(_F64, copy=True).unsqueeze(1)  # cumsum_ runs in place
                    j = torch.arange(j0, min(k, j0 + kb), device=x.device)
                    grid, valid = _positions(w, tables, q.unsqueeze(1), j.unsqueeze(0), w.in_size, zero)
                    return xc[:, grid].to(_F64).mul_(valid)

                u = torch.empty((xc.shape[0], q.numel()), dtype=_F64, device=x.device)
                u.uniform_(generator=generator)
                choice = _search_windows(values, k, kb, u)
                pos, _ = _positions(w, tables, q, choice, w.in_size, zero)
                result[a : a + nb, q0 : q0 + q.numel()] = pos if need_index else xc.gather(1, pos)
    if need_index:
        result = flat.gather(1, result)
    return result.view(*x.shape[:2], *w.out_size)


def _search_windows(values: Callable[[int], Tensor], k: int, kb: int, u: Tensor) -> Tensor:
    """Offset index of the first inclusive prefix above ``t = u * S`` in each window; ``values(j0)`` gives
    the windows' float64 values at offsets ``[j0, j0 + kb)``."""
    if kb == k:
        cum = values(0).cumsum_(-1)
        t = _guarded_t(u, cum[..., -1])
        return torch.searchsorted(cum, t.unsqueeze(-1), right=True).squeeze(-1).clamp_max_(k - 1)
    # The carry into each block is computed the same way in both passes, so S is exactly the last prefix.
    carry = torch.zeros_like(u)
    for j0 in range(0, k, kb):
        carry = values(j0).cumsum_(-1).add_(carry.unsqueeze(-1))[..., -1].clone()
    t = _guarded_t(u, carry)
    choice = torch.full_like(u, k - 1, dtype=torch.long)
    done = torch.zeros_like(u, dtype=torch.bool)
    carry.zero_()
    for j0 in range(0, k, kb):
        cum = values(j0).cumsum_(-1).add_(carry.unsqueeze(-1))
        found = torch.searchsorted(cum, t.unsqueeze(-1), right=True).squeeze(-1)
        hit = (found < cum.shape[-1]) & ~done
        choice = torch.where(hit, found + j0, choice)
        done |= hit
        carry = cum[..., -1].clone()
    return choice


def _train(
    x: Tensor,
    w: Window,
    generator: torch.Generator | None,
    compiled: bool = False,
    check_values: bool = True,
) -> Tensor:
    if _tracing():
        _refuse_legacy_onnx(w)
        return _train_traced(x, w, generator)
    need_index = torch.is_grad_enabled() and x.requires_grad
    if compiled and _can_fuse(x, w):
        _check_input(x, generator, check_values)
        # The same draws as the eager blocks (one float64 uniform per output in row-major order).
        u = torch.empty((*x.shape[:2], *w.out_size), dtype=_F64, device=x.device)
        return _compiled("select")(x, u.uniform_(generator=generator), w)
    k = math.prod(_extents(w))
    plane = 16 * math.prod(w.in_size) + (8 * (k if k <= _KEEP_PREFIXES else 1) + 72) * math.prod(w.out_size)
    if w.kernel_size is not None or (k <= _WALK_MAX and plane <= _budget(x, w)):
        return _train_walk(x, w, generator, need_index, check_values)  # checks values block by block
    _check_input(x, generator, check_values)
    return _train_blocks(x, w, generator, need_index)


def _train_traced(x: Tensor, w: Window, generator: torch.Generator | None) -> Tensor:
    """The sampling as one whole-tensor expression, for torch.compile and export: the same uniforms (one
    float64 per output, row-major), prefix sums and guard as the eager paths."""
    shape = (*x.shape[:2], *w.out_size)
    rand: Callable[..., Tensor] = functools.partial(torch.rand, dtype=_F64, device=x.device)
    if generator is not None:
        rand = functools.partial(rand, generator=generator)
    if w.is_global:
        flat = x.flatten(2)
        cum = flat.to(_F64).cumsum(-1)
        t = _guarded_t(rand(*x.shape[:2], 1), cum[..., -1:])
        index = (cum <= t).sum(-1, keepdim=True).clamp_max(flat.shape[-1] - 1)
        return flat.gather(-1, index).view(shape)
    if w.kernel_size is None:
        _refuse_dynamic_adaptive_export(w)
        return _select(list(w.offsets(x)), rand(shape))
    return _select(_padded_views(x, w, x.dtype), rand(shape))


def _refuse_dynamic_adaptive_export(w: Window) -> None:
    """The walk over a non-global adaptive bin has one step per offset of the widest bin, a number that
    depends on the input size: ``torch.export`` with dynamic sizes would fail on a guard deep inside
    torch (or bake in the example's bins), so it is refused here. torch.compile recompiles instead."""
    if torch.compiler.is_exporting() and any(isinstance(n, torch.SymInt) for n in w.in_size):
        raise RuntimeError(
            "stochastic pooling in training mode with a non-global output_size "
            f"({tuple(w.out_size)}) cannot be exported with dynamic input sizes: the number of positions "
            "in a bin depends on the input size; export in eval mode, export with static input sizes, "
            "or use a kernel window or output_size=1"
        )


def _select(views: list[Tensor], u: Tensor) -> Tensor:
    """The walk as one expression: ``out = v_j`` for the last ``j`` with ``c_{j-1} <= t`` (the first
    position whose prefix exceeds ``t``)."""
    prefix = [views[0].to(_F64)]
    for v in views[1:]:
        prefix.append(prefix[-1] + v)
    total = prefix[-1]
    t = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    out = views[0]
    for c, v in zip(prefix[:-1], views[1:], strict=True):
        out = torch.where(c <= t, v, out)
    return out


# ---- eval: sum(a^2) / sum(a) ------------------------------------------------------------------------------
def _safe_ratio(squares: Tensor, sums: Tensor) -> Tensor:
    # A zero sum means an all-zero window (the input is non-negative) whose squares are 0 too: divide by 1
    # there. Adding the mask (not torch.where, which is unvectorised on CPU) keeps the gradient finite.
    return squares / (sums + (sums == 0))


def _eval(x: Tensor, w: Window, compiled: bool = False, check_values: bool = True) -> Tensor:
    _check_input(x, None, check_values)
    _refuse_legacy_onnx(w)
    if _tracing() or (compiled and _can_fuse(x, w)):
        if w.kernel_size is not None:
            return _compiled("eval")(x, w) if compiled and not _tracing() else _fused_eval(x, w)
        xc = x.to(_compute_dtype(x.dtype))
        return _safe_ratio(w.sum(xc * xc), w.sum(xc)).to(x.dtype)
    cdt = _compute_dtype(x.dtype)
    cs = torch.empty((), dtype=cdt).element_size()
    grad = torch.is_grad_enabled() and x.requires_grad
    planes = x.reshape(-1, *w.in_size)
    n_all = planes.shape[0]
    out = torch.empty((n_all, *w.out_size), dtype=x.dtype, device=x.device)
    if w.kernel_size is None:
        # Adaptive and global: torch's pools on blocks of planes (x^2, then two pooled sums and the ratio).
        for blk in _blocks(w, n_all, 2 * cs, 4 * cs, _budget(x, w)):
            xc = blk.input(planes).to(cdt).unsqueeze(0)
            blk.output(out).copy_(_safe_ratio(w.sum(xc * xc), w.sum(xc)).squeeze(0))
        return out.view(*x.shape[:2], *w.out_size)
    # With autograd the graph holds every view anyway: whole planes, no row blocks.
    blocks = list(_blocks(w, n_all, 2 * cs, 5 * cs, 1 << 62 if grad else _budget(x, w)))
    chunk = blocks[0].b - blocks[0].a
    shared = None if blocks[0].rows else _Views(w, chunk, cdt, x.device, reuse=not grad)
    k = math.prod(w.kernel_size)
    scratch = _Scratch(x.device)
    for blk in blocks:
        split = shared or _Views(blk.sub, 1, cdt, x.device, reuse=False)
        views = split(blk.input(planes))
        if grad:
            sums, squares = views[0].clone(), views[0] * views[0]
        else:  # reused buffers, and the first addition writes the sums (no copy of views[0])
            dims = tuple(views[0].shape)
            squares = torch.mul(views[0], views[0], out=scratch("squares", dims, cdt))
            sums = scratch("sums", dims, cdt)
            if k > 1:
                torch.add(views[0], views[1], out=sums)
            else:
                sums.copy_(views[0])
        for j in range(1, k):
            if grad or j > 1:
                sums.add_(views[j])
            squares.addcmul_(views[j], views[j])
        if grad:
            blk.output(out).copy_(_safe_ratio(squares, sums))
        else:  # _safe_ratio, written into the output
            torch.div(squares, sums.add_(sums == 0), out=blk.output(out))
    return out.view(*x.shape[:2], *w.out_size)


# ---- whole-tensor kernels (torch.compile, export) ---------------------------------------------------------
def _padded_views(x: Tensor, w: Window, cdt: torch.dtype) -> list[Tensor]:
    """The K strided offset views of a kernel window over the whole batch (for the compiled and exported
    paths, where inductor turns them into strided loads of one fused loop).

    Views come from ``Tensor.unfold`` on the padded input, whose window count is the very expression
    :func:`poolcore.windows.make_window` gives (ceil mode: ``min(p + s - 1, k - 1)`` zeros on the right),
    and the padding depends on the window arguments only: dynamic shapes trace without guards.
    """
    k, s, p = w.kernel_size or (), w.stride, w.padding
    n = len(k)
    pads: list[int] = []
    for d in reversed(range(n)):
        pads += [p[d], min(p[d] + s[d] - 1, k[d] - 1) if w.ceil_mode else p[d]]
    xp = (F.pad(x, pads) if any(pads) else x).to(cdt)
    for d in range(n):
        xp = xp.unfold(2 + d, k[d], s[d])  # appends the window dim: spatial dim d stays at 2 + d
    # xp: (B, C, *out_size, *kernel_size). Select the last kernel dim first: every intermediate view then
    # ends in a kernel dim of stride > 1 (plainly not contiguous), where xp[..., i, j] would first make
    # (B, C, *out_size, k_w) views whose contiguity depends on the sizes (k == s and W even): a guard that
    # specialises W under torch.export.
    views = []
    for o in itertools.product(*[range(kd) for kd in k]):
        v = xp
        for j in reversed(o):
            v = v.select(-1, j)
        views.append(v)
    return views


def _fused_select(x: Tensor, u: Tensor, w: Window) -> Tensor:
    return _select(_padded_views(x, w, x.dtype), u)


def _fused_eval(x: Tensor, w: Window) -> Tensor:
    views = _padded_views(x, w, _compute_dtype(x.dtype))
    sums, squares = views[0], views[0] * views[0]
    for v in views[1:]:
        sums, squares = sums + v, squares + v * v
    return _safe_ratio(squares, sums).to(x.dtype)


@functools.cache
def _compiled(name: str) -> Callable[..., Tensor]:
    fns: dict[str, Callable[..., Tensor]] = {"select": _fused_select, "eval": _fused_eval}
    return torch.compile(fns[name])


def _can_fuse(x: Tensor, w: Window) -> bool:
    # Kernel windows only (adaptive bins are not strided views); with autograd on, the index path is
    # needed so that the gradient goes to the sampled position.
    return w.kernel_size is not None and not (torch.is_grad_enabled() and x.requires_grad)


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
    compiled: bool = False,
) -> Tensor:
    """Stochastic pooling (Zeiler & Fergus 2013); see :class:`StochasticPool2d` for the arguments."""
    # Type and generator checks now; the value check runs inside _train/_eval, where the walk can fuse it.
    _check_input(x, generator, check_values=False)
    if training:
        fn = functools.partial(_train, generator=generator, compiled=compiled, check_values=check_input)
    else:
        fn = functools.partial(_eval, compiled=compiled, check_values=check_input)
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
    """Holds the window arguments; subclasses set ``dims`` and the docstring."""

    def forward(self, x: Tensor) -> Tensor:
        return stochastic_pool(x, training=self.training, **self.window_kwargs())


_DOC_ARGS = r"""
    In training mode each window samples one position with probability proportional to its activation
    and outputs that value (the gradient flows to the sampled position only); in eval mode it outputs the
    probability-weighted average:

    .. math::
        \text{train: } y = a_J,\quad P(J = i) = \frac{a_i}{\sum_j a_j} \qquad
        \text{eval: } y = \sum_i \frac{a_i}{\sum_j a_j} a_i = \frac{\sum_i a_i^2}{\sum_i a_i}

    over the real (non-padded) positions of each window. An all-zero window gives 0. The input must be
    non-negative and finite (apply ReLU first); in eager mode this is checked with one host sync (in
    training, fused into the sampling pass), which ``stochastic_pool(..., check_input=False)`` skips for
    hot loops on CUDA; under ``torch.compile`` and export the check is skipped (no sync, no graph break).
    ``stochastic_pool(..., compiled=True)`` fuses kernel windows into one ``torch.compile`` kernel.

    Randomness: one float64 uniform per output from ``generator`` (or torch's default generator), so a
    seed gives the same samples for every window size and for ``compiled=True``. A model compiled with
    ``torch.compile`` draws from inductor's own stream instead (same distribution, other samples) unless
    ``torch._inductor.config.fallback_random`` is set. Extra memory stays within about twice the input.
    Exports with ``torch.export`` and ``torch.onnx.export(..., dynamo=True)`` (eval mode); the legacy
    ONNX exporter and TorchScript are refused, except for global windows. ``torch.export`` in training
    mode takes dynamic sizes too, except with a non-global ``output_size`` (refused: the walk's length
    depends on the input size).

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
