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
* The uniforms are a counter-based hash of (per-call key, output index) for float32 on CPU, where
  ``uniform_`` is a single-threaded loop (see ``_hash_uniform_``); ``uniform_`` elsewhere.
* The walk checks the input's values chunk by chunk (one sync at the end) instead of in a separate pass.
* With autograd on, the walk records the chosen offset instead of the value and the output is gathered
  from ``x`` at that position, so the gradient reaches the sampled position only (summed where
  overlapping windows pick the same one).

Half precision inputs are sampled in float32.

``compiled=True`` runs kernel windows (without autograd) through ``torch.compile`` instead: the K strided
views, the prefix sums and the selection become one fused loop, a single parallel region where the eager
path issues a few small ops per offset and chunk. It draws the same uniforms (the same hash per output
index, or ``uniform_`` in the same order) and gives the same samples. The first call for each shape
compiles (seconds); it pays off in hot loops and on busy machines, where every extra multi-threaded op
waits for descheduled threads.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable

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

# Windows with more positions than this use cumsum + searchsorted instead of one pass per offset.
_WALK_MAX = 25
# Elements of working memory per chunk: 8 MB of float32 on CPU (fits the L3 cache, while keeping the
# number of small parallel ops per call in the hundreds), 64 MB on CUDA.
_CHUNK_ELEMS_CPU = 1 << 21
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
    _raise_if_bad(*torch.aminmax(x))


def _raise_if_bad(lo: Tensor, hi: Tensor) -> None:
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


@functools.lru_cache(maxsize=64)
def _grid(w: Window, device: torch.device) -> tuple[Tensor, Tensor | None]:
    """Flat spatial position of every window offset, ``(P, K)`` with ``P`` outputs and ``K`` offsets in
    row-major order (the order of :meth:`Window.offsets`). Offsets outside the real input are clamped
    into the window's real range (so an index is always valid) and reported False in the mask.

    Built on the host from the geometry and cached per window and device, so the hot path neither
    syncs nor rebuilds it.
    """
    n = len(w.in_size)
    extents = _extents(w)
    # Broadcast over (o_0, ..., o_{n-1}, e_0, ..., e_{n-1}); each dim contributes position * its stride.
    flat = torch.zeros((), dtype=torch.long)
    valid = torch.ones((), dtype=torch.bool)
    stride = math.prod(w.in_size)
    for d in range(n):
        stride //= w.in_size[d]
        lo, hi = w.bounds(d)
        raw = lo if w.kernel_size is None else [i * w.stride[d] - w.padding[d] for i in range(w.out_size[d])]
        lo_t, hi_t = torch.tensor(lo).unsqueeze(1), torch.tensor(hi).unsqueeze(1)
        pos = torch.tensor(raw).unsqueeze(1) + torch.arange(extents[d])
        ok = (pos >= lo_t) & (pos < hi_t)
        pos = torch.minimum(torch.maximum(pos, lo_t), hi_t - 1)
        shape = [1] * (2 * n)
        shape[d], shape[n + d] = w.out_size[d], extents[d]
        flat = flat + pos.view(shape) * stride
        valid = valid & ok.view(shape)
    p, k = math.prod(w.out_size), math.prod(extents)
    grid = flat.expand(*w.out_size, *extents).reshape(p, k).to(device)
    if bool(valid.all()):
        return grid, None
    return grid, valid.expand(*w.out_size, *extents).reshape(p, k).to(device)


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


# ---- uniforms ---------------------------------------------------------------------------------------------
# On CPU, ``uniform_`` is a single-threaded mt19937 loop (about 3 ns per draw: a third of the whole 2x2
# training pass). For float32 on CPU the uniforms instead come from a counter-based hash of
# (per-call key, flat output index): a few vectorised, multi-threaded int32 ops per chunk, and the same
# value for an output however the work is chunked, so the eager and compiled paths agree exactly. The key
# (64 bits) is drawn once per call from ``generator`` (or torch's default one), which keeps ``generator=``
# and ``torch.manual_seed`` reproducibility. CUDA (Philox, already parallel) and float64 (53-bit uniforms)
# keep ``uniform_``.
_HASH_M1 = 0x7FEB352D  # lowbias32 (C. Wellons' hash-prospector): a bijective 32-bit mix with low bias
_HASH_M2 = 0x846CA68B - (1 << 32)  # as a signed int32
_HASH_MAX_OUTPUTS = 1 << 32  # the counter is 32 bits: beyond this many outputs, fall back to uniform_


def _hash_key(
    generator: torch.Generator | None, n_out: int, cdt: torch.dtype, device: torch.device
) -> tuple[int, int] | None:
    """The per-call key ``(a, b)`` of the hashed uniforms, or None where ``uniform_`` is used."""
    if device.type != "cpu" or cdt != torch.float32 or n_out >= _HASH_MAX_OUTPUTS:
        return None
    a, b = torch.randint(-(1 << 31), 1 << 31, (2,), generator=generator, dtype=torch.int64).tolist()
    return a | 1, b  # an odd multiplier: idx -> a*idx + b is a bijection mod 2^32


def _to_int32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def _xorshift_(h: Tensor, shift: int, tmp: Tensor) -> None:
    # h ^= h >>> shift. int32 shifts are arithmetic, so mask off the copied sign bits for a logical shift.
    torch.bitwise_right_shift(h, shift, out=tmp).bitwise_and_((1 << (32 - shift)) - 1)
    h.bitwise_xor_(tmp)


def _hash_uniform_(out: Tensor, key: tuple[int, int], start: int, base: Tensor) -> Tensor:
    """Fill ``out`` (float32, contiguous) with uniforms ``k / 2^24`` in ``[0, 1)`` for the flat output
    indices ``start, start+1, ...``: lowbias32(a*idx + b) mod 2^32, top 24 bits. ``base`` is a scratch
    ``arange`` (int32); ``out`` is filled in slices of its length, so the int32 scratch stays cache-sized
    (a whole-tensor pass would stream each of the dozen int ops through memory). int32 products wrap
    mod 2^32, as the hash wants."""
    flat = out.view(-1)
    step = base.numel()
    for i in range(0, flat.numel(), step):
        _hash_slice_(flat[i : i + step], key, start + i, base)
    return out


def _hash_slice_(flat: Tensor, key: tuple[int, int], start: int, base: Tensor) -> None:
    n = flat.numel()
    a, b = key
    h = torch.mul(base[:n], a)  # a*idx + b, with idx = start + i folded into the constant
    h.add_(_to_int32(a * start + b))
    tmp = torch.empty_like(h)
    _xorshift_(h, 16, tmp)
    h.mul_(_HASH_M1)
    _xorshift_(h, 15, tmp)
    h.mul_(_HASH_M2)
    _xorshift_(h, 16, tmp)
    # Top 24 bits as a signed value in [-2^23, 2^23), then exactly (v + 2^23) / 2^24 in float32.
    flat.copy_(h.bitwise_right_shift_(8))
    flat.mul_(2.0**-24).add_(0.5)


def _uniforms_(
    out: Tensor,
    generator: torch.Generator | None,
    key: tuple[int, int] | None,
    start: int,
    base: Tensor | None,
) -> Tensor:
    if key is None or base is None:
        return out.uniform_(generator=generator)
    return _hash_uniform_(out, key, start, base)


# ---- training: sample one position per window -------------------------------------------------------------
def _uniform_t(
    total: Tensor,
    generator: torch.Generator | None,
    out: Tensor | None = None,
    key: tuple[int, int] | None = None,
    start: int = 0,
    base: Tensor | None = None,
) -> Tensor:
    """``t = u * total`` with ``u ~ U[0, 1)``, kept strictly below ``total`` (and 0 for a zero total)."""
    t = torch.empty_like(total) if out is None else out
    _uniforms_(t, generator, key, start, base).mul_(total)
    below = torch.nextafter(total, torch.zeros((), dtype=total.dtype, device=total.device))
    return torch.minimum(t, below, out=t)


def _train_walk(
    x: Tensor, w: Window, generator: torch.Generator | None, need_index: bool, check_values: bool
) -> Tensor:
    planes = x.reshape(-1, *w.in_size)
    n_all, k = planes.shape[0], math.prod(_extents(w))
    out_plane = math.prod(w.out_size)
    cdt = _compute_dtype(x.dtype)
    chunk = _chunk_planes(x, math.prod(w.in_size) + (k + 2) * out_plane)
    key = _hash_key(generator, n_all * out_plane, cdt, x.device)
    base = None if key is None else torch.arange(chunk * out_plane, dtype=torch.int32, device=x.device)
    # The input check runs per chunk, while the chunk is in cache for the walk (a separate aminmax over
    # the whole input costs a full extra pass from memory); one sync after the loop, then the same error.
    bounds: list[Tensor] = []
    if need_index:
        choice = torch.empty((n_all, *w.out_size), dtype=torch.long, device=x.device)
    else:
        out = torch.empty((n_all, *w.out_size), dtype=x.dtype, device=x.device)
    split = _Views(w, chunk, cdt, x.device, reuse=True)
    work = torch.empty((k + 2, chunk, *w.out_size), dtype=cdt, device=x.device)
    with torch.no_grad():
        for a in range(0, n_all, chunk):
            if check_values:
                bounds.append(torch.stack(torch.aminmax(planes[a : a + chunk])))
            views = split(planes[a : a + chunk])
            n = views[0].shape[0]
            # Inclusive prefix sums c_0..c_{K-1}; c_{K-1} is the window sum used for t (exact guard).
            prefix = [views[0]]
            for j in range(1, k):
                prefix.append(torch.add(prefix[j - 1], views[j], out=work[j - 1, :n]))
            t = _uniform_t(prefix[-1], generator, work[k - 1, :n], key, a * out_plane, base)
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
    if bounds:
        both = torch.stack(bounds)
        _raise_if_bad(both[:, 0].min(), both[:, 1].max())
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


def _train(
    x: Tensor,
    w: Window,
    generator: torch.Generator | None,
    compiled: bool = False,
    check_values: bool = True,
) -> Tensor:
    need_index = torch.is_grad_enabled() and x.requires_grad
    if not (compiled and _can_fuse(x, w)) and math.prod(_extents(w)) <= _WALK_MAX:
        return _train_walk(x, w, generator, need_index, check_values)  # checks values chunk by chunk
    _check_input(x, generator, check_values)
    if compiled and _can_fuse(x, w):
        # Same draws as the eager chunks (the hash depends on the flat output index only, uniform_ is
        # drawn in the same order): the two paths give identical samples.
        cdt = _compute_dtype(x.dtype)
        u = torch.empty((*x.shape[:2], *w.out_size), dtype=cdt, device=x.device)
        key = _hash_key(generator, u.numel(), cdt, x.device)
        step = min(u.numel(), _CHUNK_ELEMS_CPU // 8)  # int32 scratch of 1 MiB: cache-sized slices
        base = None if key is None else torch.arange(step, dtype=torch.int32, device=x.device)
        return _compiled("select")(x, _uniforms_(u, generator, key, 0, base), w)
    return _train_gather(x, w, generator)


# ---- eval: sum(a^2) / sum(a) ------------------------------------------------------------------------------
def _safe_ratio(squares: Tensor, sums: Tensor) -> Tensor:
    # A zero sum means an all-zero window (the input is non-negative) whose squares are 0 too: divide by 1
    # there. Adding the mask (not torch.where, which is unvectorised on CPU) keeps the gradient finite.
    return squares / (sums + (sums == 0))


def _eval(x: Tensor, w: Window, compiled: bool = False, check_values: bool = True) -> Tensor:
    _check_input(x, None, check_values)
    if compiled and _can_fuse(x, w):
        return _compiled("eval")(x, w)
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


# ---- optional fused kernels (torch.compile) ------------------------------------------------------------
def _padded_views(x: Tensor, w: Window, cdt: torch.dtype) -> list[Tensor]:
    """The K strided offset views of a kernel window over the whole batch (for the compiled kernels,
    where inductor turns them into strided loads of one fused loop)."""
    k, s, p = w.kernel_size or (), w.stride, w.padding
    pads: list[int] = []
    for d in reversed(range(len(w.in_size))):
        pads += [p[d], max(0, (w.out_size[d] - 1) * s[d] + k[d] - w.in_size[d] - p[d])]
    xp = (F.pad(x, pads) if any(pads) else x).to(cdt)
    views = []
    for offset in itertools.product(*[range(kd) for kd in k]):
        index: list[slice] = [slice(None)] * (xp.dim() - len(offset))
        index += [
            slice(o, o + sd * (od - 1) + 1, sd) for o, sd, od in zip(offset, s, w.out_size, strict=True)
        ]
        views.append(xp[tuple(index)])
    return views


def _fused_select(x: Tensor, u: Tensor, w: Window) -> Tensor:
    """Inverse-CDF selection written for one fused loop: the first offset whose prefix exceeds ``u*S``.
    If rounding leaves none (``u*S >= S``), the last positive value is the answer, which is what the eager
    guard ``t <= nextafter(S, 0)`` selects too, so both paths agree exactly."""
    views = _padded_views(x, w, u.dtype)
    prefix: list[Tensor] = []
    last = torch.zeros_like(u)
    for v in views:
        prefix.append(v if not prefix else prefix[-1] + v)
        last = torch.where(v > 0, v, last)
    t = u * prefix[-1]
    out = last
    for v, c in zip(reversed(views), reversed(prefix), strict=True):
        out = torch.where(c > t, v, out)
    return out.to(x.dtype)


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
    non-negative and finite (apply ReLU first); this is checked with one host sync (in training, fused
    into the sampling pass for small windows), which
    ``stochastic_pool(..., check_input=False)`` skips for hot loops on CUDA.
    ``stochastic_pool(..., compiled=True)`` fuses kernel windows into one ``torch.compile`` kernel.

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
