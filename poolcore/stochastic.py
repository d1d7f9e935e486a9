"""Stochastic pooling (Zeiler & Fergus, arXiv 1301.3557), functional and modules side by side.

Training samples one position per window with probability ``a_i / sum(a)`` and outputs its value; eval
outputs the probability-weighted average ``sum(a^2) / sum(a)``. Every window form (kernel, adaptive,
global) and rank (1d/2d/3d) goes through :func:`poolcore.windows.window_call`.

How sampling works: one uniform ``u`` per output, ``t = u * S`` with ``S`` the window sum, then the
first position whose inclusive prefix sum exceeds ``t`` is the sample (inverse CDF).

* **Randomness.** ``u`` is a uniform in the compute dtype from torch's own generator (``generator=``, or
  the default one that ``torch.manual_seed`` sets), one per output in row-major output order, with
  ``cdt`` float32 (24 bits) for float32 and half inputs and float64 (53 bits, the values of
  ``torch.rand``) for float64 inputs. On the CPU the float32 uniforms come two per 64-bit draw (see
  :class:`_Uniforms`): the same 24-bit grid as ``torch.rand``'s, at half the calls of torch's serial
  generator, the one step of a call that does not run in parallel. The walk's prefix sums, ``S`` and
  ``t`` are in that dtype too, so a position of weight ``a_i`` is chosen with probability ``a_i / S`` up
  to the input dtype's own rounding (for float32, within a few 2^-24 of ``S``; finer weights are below
  what a float32 window sum can tell apart). torch's CPU generator is serial (mt19937), so drawing the
  uniforms block by block gives the same values as one draw over the whole output: samples do not
  depend on chunking. (Float64 uniforms and sums for every dtype, as before, cost about twice as much. A
  counter-based generator (Philox) written in torch's integer ops measured about three times the serial
  float32 uniforms on a 2-core AVX2 CPU, where 64-bit products are not vectorised.)
* **Kernel windows, and adaptive bins of ``K <= _WALK_MAX`` positions,** walk the K offsets: prefix
  ``c_j`` per offset (all kept for ``K <= _KEEP_PREFIXES``, else one running prefix over two passes), then
  ``out = lerp(out, v_j, [c_{j-1} <= t])``. A zero-weight position never survives: a zero in the middle
  leaves ``c`` unchanged, so the next position overwrites it; trailing zeros (padding, ceil-mode overhang,
  short adaptive bins) could only be picked if ``t >= S``, which cannot happen: ``u < 1`` keeps ``u * S``
  below a normal ``S``, and ``t <= S - tiny`` (the smallest subnormal) below a subnormal one (see
  :func:`_guarded_t`). ``S`` is the walk's own last prefix (same additions, same order), so the guard is
  exact. With the value check on (the CPU default), negative input raises, so the walk skips the ReLU.
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
  ``cumsum`` and ``searchsorted``, in float64 (``t = u * S`` with the same uniform ``u``): long sums stay
  exact to the input's precision, and this path is not the hot one. A window larger than a block is
  scanned in two passes with a running carry (the same additions both times, so the guard stays exact).
* With autograd on, the chosen position is recorded and the output gathered from ``x`` there, so the
  gradient reaches the sampled position only (summed where overlapping windows pick the same one); the
  int64 index (8 bytes per output) is kept for backward, as ``max_pool2d``'s indices are.

Half precision inputs are sampled in float32; the output is the input's value.

**Eager, compiled and exported.** ``compiled=True`` runs kernel windows (without autograd) through
``torch.compile``: the K strided views, the prefix sums and the selection become one fused loop. It draws
the same uniforms in the same order as the eager path (they are drawn eagerly and passed in; this holds
the uniforms, 4 bytes per output for float32) and gives the same samples. Under ``torch.compile``,
``torch.export`` and ONNX export of a model, the same selection is traced as one whole-tensor expression
(no chunk loop, no host sync; the input's value check is skipped there). Under ``torch.compile`` on the
CPU the uniforms come from an op that the compiler calls rather than traces (``poolcore::
stochastic_uniforms``: dynamo cannot trace ``random_``), so compiled samples equal the eager ones for a
seed. Elsewhere (export, other devices) they come from ``torch.rand``, which inductor replaces with its
own Philox stream: the same distribution, other samples for a seed, unless
``torch._inductor.config.fallback_random`` is True. ``generator=`` cannot be traced by dynamo (it
graph-breaks); seed compiled code with ``torch.manual_seed``. On CUDA the eager path draws per chunk
(Philox offsets), so its samples match ``compiled=True`` only when the output fits one chunk.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import typing
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ._module import PoolNd
from .params import WindowParams
from .windows import IntTuple, OptIntTuple, Window, check_float, infer_dims, window_call

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
_KEEP_PREFIXES = 9
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


def _check_input(x: Tensor, generator: torch.Generator | None, check_values: bool | None) -> None:
    check_float(x, "stochastic")
    if generator is not None and generator.device.type != x.device.type:
        raise ValueError(
            "generator must be on the input's device "
            f"(got generator on {generator.device}, input on {x.device})"
        )
    if not _checks_values(x, check_values) or x.numel() == 0:
        return
    # One fused pass: aminmax propagates NaN into both results.
    _assert_values(*torch.aminmax(x))


def _checks_values(x: Tensor, check_values: bool | None) -> bool:
    """Whether the value check runs: ``None`` (the default) checks on the CPU, where reading the result
    costs no device sync, and skips it elsewhere; ``True`` checks on every device. Never when traced: the
    check would be a data-dependent branch (a graph break, a guard in export)."""
    on = check_values if check_values is not None else x.device.type == "cpu"
    return bool(on) and not _tracing()


def _assert_values(lo: Tensor, hi: Tensor) -> None:
    """Fails on a negative or non-finite bound without reading it on the host: on the CPU
    ``torch._assert_async`` raises at once (then the message reads the values), on CUDA it is a device
    assert that does not stop the stream."""
    try:
        torch._assert_async((lo >= 0) & (hi < math.inf), _BAD_VALUES)
    except RuntimeError:
        raise ValueError(f"{_BAD_VALUES}; got min {lo.item()}, max {hi.item()}") from None


_BAD_VALUES = "stochastic pooling needs non-negative finite activations (apply ReLU first)"


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


# ---- uniforms ---------------------------------------------------------------------------------------------
_BITS = 24  # a float32 uniform's random bits, as torch.rand draws them
_MASK = (1 << _BITS) - 1


def _pairs(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether uniforms come two per 64-bit draw: float32 on the CPU, where the serial generator is the
    one step of a call that does not run in parallel."""
    return dtype == torch.float32 and device.type == "cpu"


class _Uniforms:
    """One uniform per output, in row-major output order, handed out block by block (blocks come in output
    order): the same values however the work is split.

    float32 on the CPU: each 64-bit draw of the generator (``random_()`` on int64, two 32-bit outputs of
    torch's mt19937, the top bit cleared) gives two uniforms, the low 24 bits of its low 32-bit half, then
    of its high half, times 2^-24: the same 24-bit grid as ``torch.rand``, at half the serial draws. A
    half left over by one block starts the next. float64 (and other devices): ``uniform_``, the values
    ``torch.rand`` draws (53 bits for float64)."""

    def __init__(self, dtype: torch.dtype, generator: torch.Generator | None, device: torch.device) -> None:
        self.generator = generator
        self.pairs = _pairs(dtype, device)
        self.spare: Tensor | None = None  # the int32 half drawn but not used yet

    def fill(self, out: Tensor, scratch: _Scratch | None = None) -> Tensor:
        """``out`` (contiguous) holds the next ``out.numel()`` uniforms."""
        if not self.pairs:
            return out.uniform_(generator=self.generator)
        n, have = out.numel(), int(self.spare is not None)
        draws = (n - have + 1) // 2
        shape = (draws + 1,)  # slot 0 is room for the spare half, so the halves stay contiguous
        if scratch is None:
            buf = torch.empty(shape, dtype=torch.int64, device=out.device)
        else:
            buf = scratch("bits", shape, torch.int64)
        buf[1:].random_(generator=self.generator)
        halves = buf.view(torch.int32)
        if self.spare is not None:
            halves[1:2].copy_(self.spare)
        start = 2 - have
        self.spare = halves[start + n :].clone() if start + n < halves.numel() else None
        bits = halves[start : start + n].bitwise_and_(_MASK)
        return out.copy_(bits.view(out.shape)).mul_(2.0**-_BITS)


def _uniforms_op(shape: list[int], dtype: torch.dtype, device: torch.device) -> Tensor:
    """The eager draws of a whole output from torch's default generator, as an op that torch.compile
    calls rather than traces (dynamo cannot trace ``random_``), so compiled code draws the very uniforms
    of the eager path."""
    return _Uniforms(dtype, None, device).fill(torch.empty(shape, dtype=dtype, device=device))


# Defined through torch.library.Library, as poolcore.mixed's ops (a tenth of custom_op's call cost).
_LIB = torch.library.Library("poolcore", "FRAGMENT")
_LIB.define(
    "stochastic_uniforms(SymInt[] shape, ScalarType dtype, Device device) -> Tensor",
    tags=(torch.Tag.nondeterministic_seeded,),
)
_LIB.impl("stochastic_uniforms", _uniforms_op, "CompositeExplicitAutograd")


@torch.library.register_fake("poolcore::stochastic_uniforms")
def _uniforms_fake(shape: list[int], dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.empty(shape, dtype=dtype, device=device)


def _traced_uniforms(
    shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, generator: torch.Generator | None
) -> Tensor:
    """The uniforms of the whole-tensor path: the eager draws when it runs eagerly (dilated windows) and
    under torch.compile on the CPU (default generator); ``torch.rand`` otherwise (export, and compiled
    on other devices: the same grid, another stream)."""
    if not _tracing():
        return _Uniforms(dtype, generator, device).fill(torch.empty(shape, dtype=dtype, device=device))
    if generator is None and _pairs(dtype, device) and not torch.compiler.is_exporting():
        return torch.ops.poolcore.stochastic_uniforms(list(shape), dtype, device)
    if generator is None:
        return torch.rand(shape, dtype=dtype, device=device)
    return torch.rand(shape, dtype=dtype, device=device, generator=generator)


def _guarded_t(u: Tensor, total: Tensor, work: Tensor | None = None) -> Tensor:
    """``t = u * total`` in place of ``u``, kept strictly below a non-zero ``total``.

    For ``0 <= u < 1`` (so ``u <= 1 - eps/2``) and a normal ``total``, ``u * total`` already rounds below
    it: ``total * eps/2`` is at least half an ulp of ``total``, and the tie (a power of two) lands on the
    next number down. Only a subnormal total needs the guard ``total - tiny`` (``tiny`` the smallest
    subnormal: exact there, and no change to a normal total), one subtraction where ``nextafter`` costs
    several. A zero total gives ``t = -tiny``: no prefix is at or below it (all-zero windows are handled
    by the callers)."""
    u.mul_(total)
    tiny = torch.finfo(total.dtype).smallest_normal * torch.finfo(total.dtype).eps
    below = total - tiny if work is None else torch.sub(total, tiny, out=work)  # ``work``: no allocation
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
    ``relu=False`` leaves negative values as they are, for callers whose value check rejects them anyway
    (one pass less over the input).
    """

    def __init__(
        self, w: Window, chunk: int, cdt: torch.dtype, device: torch.device, reuse: bool, relu: bool = True
    ) -> None:
        self.w, self.cdt, self.reuse, self.relu = w, cdt, reuse, relu
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

    def _relu(self, buf: Tensor) -> Tensor:
        # In place on this object's own buffers; out of place under autograd, whose graph holds them.
        if not self.relu:
            return buf
        return buf.clamp_min_(0) if self.reuse else buf.clamp_min(0)

    def _fill(self, buf: Tensor, src: Tensor, relu_done: bool) -> Tensor:
        """``buf`` holds ``src`` (with negatives as 0 unless ``relu_done`` or ``relu=False``): one pass."""
        if self.relu and not relu_done and src.dtype == buf.dtype:
            return torch.clamp_min(src, 0, out=buf) if self.reuse else src.clamp_min(0)
        buf.copy_(src)
        return buf if relu_done else self._relu(buf)

    def __call__(self, xc: Tensor) -> list[Tensor]:
        """Negative values read as 0 (the operator's rule: the result is that of ``x.relu()``)."""
        w = self.w
        if w.kernel_size is None:
            xc = xc.to(self.cdt)
            return [v.squeeze(0) for v in w.offsets((xc.clamp_min(0) if self.relu else xc).unsqueeze(0))]
        n, n_sp = xc.shape[0], len(w.in_size)
        k, s, p = w.kernel_size, w.stride, w.padding
        right = [max(0, (w.out_size[d] - 1) * s[d] + k[d] - w.in_size[d] - p[d]) for d in range(n_sp)]
        xp, relu_done = xc, False
        if any(p) or any(right):
            # Zero borders are written once; each chunk only overwrites the interior.
            padded = tuple(w.in_size[d] + p[d] + right[d] for d in range(n_sp))
            xp = self._buffer("pad", padded, n, zero=True)
            inner = tuple(slice(p[d], p[d] + w.in_size[d]) for d in range(n_sp))
            if self.reuse and self.relu and xc.dtype == xp.dtype:
                torch.clamp_min(xc, 0, out=xp[(slice(None), *inner)])  # one pass; the padding stays 0
            else:
                xp[(slice(None), *inner)].copy_(xc)
                xp = self._relu(xp)
            relu_done = True
        planes: dict[tuple[int, ...], Tensor] = {}
        relu = (lambda t: t) if relu_done else self._relu
        if all(sd == 1 for sd in s):
            if relu_done or (not self.relu and xp.dtype == self.cdt):
                planes[(0,) * n_sp] = xp  # the input itself (or the padded copy): no copy
            elif self.reuse:
                buf = self._buffer("relu", tuple(xp.shape[1:]), n)
                planes[(0,) * n_sp] = (
                    torch.clamp_min(xp, 0, out=buf) if xp.dtype == self.cdt else relu(buf.copy_(xp))
                )
            else:
                planes[(0,) * n_sp] = relu(xp.to(self.cdt))
        elif all(
            kd >= sd and sd * (od + (kd - 1) // sd) <= xd
            for kd, sd, od, xd in zip(k, s, w.out_size, xp.shape[1:], strict=True)
        ):
            # Every phase in one permuted copy ((n, L, s) -> (n, s, L) per dim, L the longest phase's
            # length), where the input holds s * L positions: one streaming pass over the input instead
            # of one strided pass per phase. Splitting a dim is always a view.
            lengths = [od + (kd - 1) // sd for kd, sd, od in zip(k, s, w.out_size, strict=True)]
            sliced = xp[(slice(None), *[slice(0, lengths[d] * s[d]) for d in range(n_sp)])]
            for d in range(n_sp):
                sliced = sliced.unflatten(1 + 2 * d, (lengths[d], s[d]))
            order = [0, *[2 + 2 * d for d in range(n_sp)], *[1 + 2 * d for d in range(n_sp)]]
            both = self._fill(self._buffer("phases", (*s, *lengths), n), sliced.permute(order), relu_done)
            by_phase = both.flatten(1, n_sp)  # (n, prod(s), *lengths), phases in row-major order
            for i, phase in enumerate(itertools.product(*[range(sd) for sd in s])):
                planes[phase] = by_phase[:, i]
        else:
            for phase in itertools.product(*[range(min(k[d], s[d])) for d in range(n_sp)]):
                index, lengths = [], []
                for d, ph in enumerate(phase):
                    lengths.append(w.out_size[d] + (k[d] - 1 - ph) // s[d])
                    index.append(slice(ph, ph + s[d] * (lengths[-1] - 1) + 1, s[d]))
                plane = self._buffer(phase, tuple(lengths), n)
                planes[phase] = self._fill(plane, xp[(slice(None), *index)], relu_done)
        views = []
        for offset in itertools.product(*[range(kd) for kd in k]):
            plane = planes[tuple(o % sd for o, sd in zip(offset, s, strict=True))]
            index = [slice(o // sd, o // sd + od) for o, sd, od in zip(offset, s, w.out_size, strict=True)]
            views.append(plane[(slice(None), *index)])
        return views


# ---- training: sample one position per window -------------------------------------------------------------
def _walk_bytes(k: int, cdt: torch.dtype, need_index: bool) -> tuple[int, int]:
    """Scratch bytes of the walk per input element (phase and padding copies) and per output (the
    prefixes, K of them or one; t, the mask and the result; with an index, the uniforms and the index
    arithmetic)."""
    cs = torch.empty((), dtype=cdt).element_size()
    return 2 * cs, cs * ((k if k <= _KEEP_PREFIXES else 1) + 3) + (cs + 56 if need_index else 0)


def _train_walk(
    x: Tensor, w: Window, generator: torch.Generator | None, need_index: bool, check_values: bool | None
) -> tuple[Tensor, Tensor | None]:
    """The sampled values, and with ``need_index`` the flat in-plane index of each sampled position."""
    planes = x.reshape(-1, *w.in_size)
    n_all, k = planes.shape[0], math.prod(_extents(w))
    # Everything in the compute dtype (float32 for float32 and half inputs): the views are converted once
    # per block (with the stride-phase copy), so every op after that is same-dtype and vectorised.
    cdt = _compute_dtype(x.dtype)
    blocks = list(_blocks(w, n_all, *_walk_bytes(k, cdt, need_index), _budget(x, w)))
    tables = _tables(w, x.device) if need_index and not blocks[0].rows else None
    # The input check runs per block, while the block is in cache for the walk (a separate aminmax over
    # the whole input costs a full extra pass from memory); one check after the loop, then the same error.
    check = _checks_values(x, check_values)
    bounds: list[Tensor] = []
    if need_index:
        pos = torch.empty((n_all, math.prod(w.out_size)), dtype=torch.long, device=x.device)
    else:
        out = torch.empty((n_all, *w.out_size), dtype=x.dtype, device=x.device)
    chunk = blocks[0].b - blocks[0].a
    # With the check on, negative input raises after the loop: the views need no ReLU pass.
    shared = None if blocks[0].rows else _Views(w, chunk, cdt, x.device, reuse=True, relu=not check)
    scratch = _Scratch(x.device)
    uniforms = _Uniforms(cdt, generator, x.device)
    with torch.no_grad():
        for blk in blocks:
            if check and blk.r0 == 0:
                bounds.append(torch.stack(torch.aminmax(planes[blk.a : blk.b])))
            split = shared or _Views(blk.sub, 1, cdt, x.device, reuse=False, relu=not check)
            views = split(blk.input(planes))
            n, shape = views[0].shape[0], views[0].shape[1:]
            dims = (n, *shape)
            t = uniforms.fill(scratch("t", dims, cdt), scratch)
            mask = scratch("mask", dims, cdt)
            if need_index:
                u = scratch("u", dims, cdt).copy_(t)  # for all-zero windows
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
                work = scratch("prefix", (k - 1, *dims), cdt)
                prefix = [views[0]]
                for j in range(1, k):
                    prefix.append(torch.add(prefix[j - 1], views[j], out=work[j - 1]))
                total = prefix[-1]
                t = _guarded_t(t, total, mask)
                for j in range(1, k):
                    step(views[j], torch.le(prefix[j - 1], t, out=mask))
                del work, prefix
            else:
                # Many offsets: one running prefix, two passes with the same additions in the same order
                # (so the first pass's total is exactly the second pass's last prefix). c_0 is views[0]
                # itself and c_1 is written by the first addition: no copies.
                c = torch.add(views[0], views[1], out=scratch("prefix", dims, cdt))
                for v in views[2:]:
                    c.add_(v)
                t = _guarded_t(t, c, mask)
                step(views[1], torch.le(views[0], t, out=mask))
                torch.add(views[0], views[1], out=c)
                for v in views[2:]:
                    step(v, torch.le(c, t, out=mask))
                    c.add_(v)
                total = c  # the last addition leaves the window sum
            if not need_index and k == 1:
                res.copy_(views[0])
            if need_index:
                sub = blk.sub
                tabs = tables if tables is not None else _tables(sub, x.device)
                q = torch.arange(math.prod(sub.out_size), device=x.device)
                choice = res.long().flatten(1)
                # An all-zero window: a real position drawn uniformly, from the same uniform.
                even = _uniform_offset(sub, tabs, q, u.flatten(1))
                choice = torch.where((total == 0).flatten(1), even, choice)
                del t, mask, views, total
                flat, _ = _positions(sub, tabs, q, choice, w.in_size, blk.shift())
                q0 = blk.r0 * (math.prod(w.out_size) // w.out_size[blk.d0]) if blk.rows else 0
                pos[blk.a : blk.b, q0 : q0 + q.numel()] = flat
            elif res is not dst:
                dst.copy_(res)
    if bounds:
        both = torch.stack(bounds)
        _assert_values(both[:, 0].min(), both[:, 1].max())
    out_shape = (*x.shape[:2], *w.out_size)
    if not need_index:
        return out.view(out_shape), None
    return x.reshape(n_all, -1).gather(1, pos).clamp_min(0).view(out_shape), pos.view(out_shape)


def _uniform_offset(w: Window, tables: list[tuple[Tensor, Tensor, Tensor]], q: Tensor, u: Tensor) -> Tensor:
    """For window ``q`` (flat output index, broadcast against ``u``), the window offset (flat, row-major over
    the extents) of its real position number ``floor(u * n)`` in row-major order, ``n`` its number of real
    positions: a uniform draw among them for ``u`` uniform in [0, 1). In int32 (offsets are small), where
    int64 arithmetic is several times slower on CPU; where every window is whole (no padding or overhang)
    the offset is that number itself."""
    ext = _extents(w)
    if _whole_windows(w):
        k = math.prod(ext)
        return torch.clamp_max((u * k).to(torch.int32), k - 1)
    lengths, firsts = [], []
    for d, i in enumerate(_unravel(q, w.out_size)):
        start, lo, hi = (t[i] for t in tables[d])
        lengths.append((hi - lo).int())
        firsts.append((lo - start).int())
    n = math.prod(lengths)
    r = torch.minimum((u * n).to(torch.int32), n - 1)  # type: ignore[arg-type]
    offset = torch.zeros((), dtype=torch.int32, device=u.device)
    for d in reversed(range(len(ext))):
        offset = offset + (firsts[d] + r % lengths[d]) * math.prod(ext[d + 1 :])
        r = r // lengths[d]
    return offset


def _whole_windows(w: Window) -> bool:
    """Whether every window of a kernel form covers its whole kernel (no padding, no ceil-mode overhang)."""
    if w.kernel_size is None or w.dilated:
        return False
    for d in range(len(w.in_size)):
        first, end = w.bounds(d)
        if any(b - a != w.kernel_size[d] for a, b in zip(first, end, strict=True)):
            return False
    return True


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


def _train_blocks(
    x: Tensor, w: Window, generator: torch.Generator | None, need_index: bool
) -> tuple[Tensor, Tensor | None]:
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
    cdt = _compute_dtype(x.dtype)
    result = torch.empty((n_all, p), dtype=torch.long, device=x.device)
    uniforms = _Uniforms(cdt, generator, x.device)
    with torch.no_grad():
        for a in range(0, n_all, nb):
            xc = flat[a : a + nb]
            for q0 in range(0, p, pb):
                q = torch.arange(q0, min(p, q0 + pb), device=x.device)

                def values(j0: int, xc: Tensor = xc, q: Tensor = q) -> Tensor:
                    if w.is_global:  # cumsum_ runs in place: a copy; negatives read as 0
                        return xc[:, j0 : j0 + kb].to(_F64, copy=True).clamp_min_(0).unsqueeze(1)
                    j = torch.arange(j0, min(k, j0 + kb), device=x.device)
                    grid, valid = _positions(w, tables, q.unsqueeze(1), j.unsqueeze(0), w.in_size, zero)
                    return xc[:, grid].to(_F64).clamp_min_(0).mul_(valid)

                u = torch.empty((xc.shape[0], q.numel()), dtype=cdt, device=x.device)
                uniforms.fill(u)
                even = _uniform_offset(w, tables, q, u)  # for all-zero windows, from the same uniform
                choice, total = _search_windows(values, k, kb, u.to(_F64))
                choice = torch.where(total == 0, even, choice)
                result[a : a + nb, q0 : q0 + q.numel()], _ = _positions(w, tables, q, choice, w.in_size, zero)
    shape = (*x.shape[:2], *w.out_size)
    return flat.gather(1, result).clamp_min(0).view(shape), result.view(shape) if need_index else None


def _search_windows(values: Callable[[int], Tensor], k: int, kb: int, u: Tensor) -> tuple[Tensor, Tensor]:
    """Offset index of the first inclusive prefix above ``t = u * S`` in each window, and ``S``;
    ``values(j0)`` gives the windows' float64 values at offsets ``[j0, j0 + kb)``."""
    if kb == k:
        cum = values(0).cumsum_(-1)
        total = cum[..., -1]
        t = _guarded_t(u, total)
        return torch.searchsorted(cum, t.unsqueeze(-1), right=True).squeeze(-1).clamp_max_(k - 1), total
    # The carry into each block is computed the same way in both passes, so S is exactly the last prefix.
    carry = torch.zeros_like(u)
    for j0 in range(0, k, kb):
        carry = values(j0).cumsum_(-1).add_(carry.unsqueeze(-1))[..., -1].clone()
    total = carry
    t = _guarded_t(u, total)
    choice = torch.full_like(u, k - 1, dtype=torch.long)
    done = torch.zeros_like(u, dtype=torch.bool)
    carry = torch.zeros_like(u)
    for j0 in range(0, k, kb):
        cum = values(j0).cumsum_(-1).add_(carry.unsqueeze(-1))
        found = torch.searchsorted(cum, t.unsqueeze(-1), right=True).squeeze(-1)
        hit = (found < cum.shape[-1]) & ~done
        choice = torch.where(hit, found + j0, choice)
        done |= hit
        carry = cum[..., -1].clone()
    return choice, total


def _train(
    x: Tensor,
    w: Window,
    generator: torch.Generator | None,
    compiled: bool = False,
    check_values: bool | None = None,
    return_indices: bool = False,
) -> tuple[Tensor, Tensor | None]:
    if _tracing():
        _refuse_legacy_onnx(w)
        return _train_traced(x, w, generator, return_indices)
    if w.dilated:  # the whole-tensor walk over the window's offsets, which step by the dilation
        _check_input(x, generator, check_values)
        return _train_traced(x, w, generator, return_indices)
    need_index = return_indices or (torch.is_grad_enabled() and x.requires_grad)
    if compiled and not need_index and _can_fuse(x, w):
        _check_input(x, generator, check_values)
        # The same draws as the eager blocks (one uniform per output in row-major order).
        u = torch.empty((*x.shape[:2], *w.out_size), dtype=_compute_dtype(x.dtype), device=x.device)
        return _compiled("select")(x, _Uniforms(u.dtype, generator, x.device).fill(u), w), None
    k = math.prod(_extents(w))
    per_in, per_out = _walk_bytes(k, _compute_dtype(x.dtype), True)  # the same path with or without autograd
    plane = per_in * math.prod(w.in_size) + per_out * math.prod(w.out_size)
    if w.kernel_size is not None or (k <= _WALK_MAX and plane <= _budget(x, w)):
        return _train_walk(x, w, generator, need_index, check_values)  # checks values block by block
    _check_input(x, generator, check_values)
    return _train_blocks(x, w, generator, need_index)


def _train_traced(
    x: Tensor, w: Window, generator: torch.Generator | None, return_indices: bool = False
) -> tuple[Tensor, Tensor | None]:
    """The sampling as one whole-tensor expression, for torch.compile and export: the same uniforms (one
    float64 per output, row-major), prefix sums and guard as the eager paths."""
    shape = (*x.shape[:2], *w.out_size)
    cdt = _compute_dtype(x.dtype)

    def rand(*size: int) -> Tensor:
        return _traced_uniforms(size, cdt, x.device, generator)

    relu = x.clamp_min(0)
    if w.is_global:
        flat = relu.flatten(2)
        cum = flat.to(_F64).cumsum(-1)
        total = cum[..., -1:]
        u = rand(*x.shape[:2], 1)
        even = (u * flat.shape[-1]).long().clamp_max(flat.shape[-1] - 1)  # an all-zero window
        t = _guarded_t(u.to(_F64), total)
        index = torch.where(total == 0, even, (cum <= t).sum(-1, keepdim=True).clamp_max(flat.shape[-1] - 1))
        return flat.gather(-1, index).view(shape), index.view(shape) if return_indices else None
    # In-plane positions and real-position masks, as views of the same windows as the values.
    plane = torch.arange(math.prod(x.shape[2:]), device=x.device).view(1, 1, *x.shape[2:])
    ones = torch.ones((1, 1, *x.shape[2:]), dtype=cdt, device=x.device)
    valid: list[Tensor] | None
    if w.kernel_size is None or w.dilated:
        if w.kernel_size is None:
            _refuse_dynamic_adaptive_export(w)
        views, valid, where = list(w.offsets(relu)), list(w.offsets(ones)), list(w.offsets(plane))
    else:
        views = _padded_views(relu, w, x.dtype)
        padded = any(w.padding) or w.ceil_mode
        valid = _padded_views(ones, w, cdt) if padded else None
        where = _padded_views(plane, w, torch.long)
    if return_indices:
        out, index = _select(views, rand(*shape), valid, where)
        return out, index
    return _select(views, rand(*shape), valid), None


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


def _select(
    views: list[Tensor], u: Tensor, valid: list[Tensor] | None = None, where: list[Tensor] | None = None
) -> Any:
    """The walk as one expression: ``out = v_j`` for the last ``j`` with ``c_{j-1} <= t`` (the first
    position whose prefix exceeds ``t``). ``valid``: 1 at a window's real positions, 0 at padding (all
    real when None), so an all-zero window draws among its real positions with the same ``u``.
    ``where``: in-plane positions, selected alongside; then ``(values, positions)`` is returned."""
    prefix = [views[0].to(u.dtype)]
    for v in views[1:]:
        prefix.append(prefix[-1] + v)
    total = prefix[-1]
    t = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    if valid is not None:
        count = [valid[0]]
        for m in valid[1:]:
            count.append(count[-1] + m)
    else:
        count = [torch.full((), j + 1.0, dtype=u.dtype, device=u.device) for j in range(len(views))]
    zero = total == 0
    n = count[-1]
    t = torch.where(zero, torch.minimum(u * n, torch.nextafter(n, torch.zeros_like(n))), t)
    out = views[0]
    pos = where[0] if where is not None else out
    for j, v in enumerate(views[1:]):
        take = torch.where(zero, count[j], prefix[j]) <= t
        out = torch.where(take, v, out)
        if where is not None:
            pos = torch.where(take, where[j + 1], pos)
    return out if where is None else (out, pos)


# ---- eval: sum(a^2) / sum(a) ------------------------------------------------------------------------------
def _safe_ratio(squares: Tensor, sums: Tensor) -> Tensor:
    # A zero sum means an all-zero window (the input is non-negative) whose squares are 0 too: divide by 1
    # there. Adding the mask (not torch.where, which is unvectorised on CPU) keeps the gradient finite.
    return squares / (sums + (sums == 0))


def _eval(x: Tensor, w: Window, compiled: bool = False, check_values: bool | None = None) -> Tensor:
    _check_input(x, None, check_values)
    _refuse_legacy_onnx(w)
    if w.dilated or _tracing() or (compiled and _can_fuse(x, w)):
        if w.kernel_size is not None and not w.dilated:
            return _compiled("eval")(x, w) if compiled and not _tracing() else _fused_eval(x, w)
        xc = x.to(_compute_dtype(x.dtype)).clamp_min(0)
        return _safe_ratio(w.sum(xc * xc), w.sum(xc)).to(x.dtype)
    cdt = _compute_dtype(x.dtype)
    cs = torch.empty((), dtype=cdt).element_size()
    grad = torch.is_grad_enabled() and x.requires_grad
    relu = not _checks_values(x, check_values)  # checked input has no negative value: no ReLU pass
    planes = x.reshape(-1, *w.in_size)
    n_all = planes.shape[0]
    out = torch.empty((n_all, *w.out_size), dtype=x.dtype, device=x.device)
    if w.kernel_size is None:
        # Adaptive and global: torch's pools on blocks of planes (x^2, then two pooled sums and the ratio).
        for blk in _blocks(w, n_all, 2 * cs, 4 * cs, _budget(x, w)):
            xc = blk.input(planes).to(cdt)
            xc = (xc.clamp_min(0) if relu else xc).unsqueeze(0)
            blk.output(out).copy_(_safe_ratio(w.sum(xc * xc), w.sum(xc)).squeeze(0))
        return out.view(*x.shape[:2], *w.out_size)
    # With autograd the graph holds every view anyway: whole planes, no row blocks.
    blocks = list(_blocks(w, n_all, 2 * cs, 5 * cs, 1 << 62 if grad else _budget(x, w)))
    chunk = blocks[0].b - blocks[0].a
    shared = None if blocks[0].rows else _Views(w, chunk, cdt, x.device, reuse=not grad, relu=relu)
    k = math.prod(w.kernel_size)
    scratch = _Scratch(x.device)
    for blk in blocks:
        split = shared or _Views(blk.sub, 1, cdt, x.device, reuse=False, relu=relu)
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
    return _select(_padded_views(x.clamp_min(0), w, x.dtype), u)


def _fused_eval(x: Tensor, w: Window) -> Tensor:
    views = _padded_views(x.clamp_min(0), w, _compute_dtype(x.dtype))
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
    return w.kernel_size is not None and not w.dilated and not (torch.is_grad_enabled() and x.requires_grad)


# ---- functional -------------------------------------------------------------------------------------------
@typing.overload
def stochastic_pool(
    x: Tensor,
    kernel_size: IntTuple | None = ...,
    stride: IntTuple | None = ...,
    padding: IntTuple = ...,
    ceil_mode: bool = ...,
    *,
    output_size: OptIntTuple = ...,
    dims: int | None = ...,
    training: bool = ...,
    generator: torch.Generator | None = ...,
    check_input: bool | None = ...,
    compiled: bool = ...,
    return_indices: Literal[False] = ...,
    dilation: IntTuple = ...,
) -> Tensor: ...


@typing.overload
def stochastic_pool(
    x: Tensor,
    kernel_size: IntTuple | None = ...,
    stride: IntTuple | None = ...,
    padding: IntTuple = ...,
    ceil_mode: bool = ...,
    *,
    output_size: OptIntTuple = ...,
    dims: int | None = ...,
    training: bool = ...,
    generator: torch.Generator | None = ...,
    check_input: bool | None = ...,
    compiled: bool = ...,
    return_indices: Literal[True],
    dilation: IntTuple = ...,
) -> tuple[Tensor, Tensor]: ...


@typing.overload
def stochastic_pool(
    x: Tensor,
    kernel_size: IntTuple | None = ...,
    stride: IntTuple | None = ...,
    padding: IntTuple = ...,
    ceil_mode: bool = ...,
    *,
    output_size: OptIntTuple = ...,
    dims: int | None = ...,
    training: bool = ...,
    generator: torch.Generator | None = ...,
    check_input: bool | None = ...,
    compiled: bool = ...,
    return_indices: bool,
    dilation: IntTuple = ...,
) -> Tensor | tuple[Tensor, Tensor]: ...


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
    check_input: bool | None = None,
    compiled: bool = False,
    return_indices: bool = False,
    dilation: IntTuple = 1,
) -> Tensor | tuple[Tensor, Tensor]:
    """Stochastic pooling (Zeiler & Fergus 2013); see :class:`StochasticPool2d` for the arguments."""
    # Type and generator checks now; the value check runs inside _train/_eval, where the walk can fuse it.
    _check_input(x, generator, check_values=False)

    def fn(xb: Tensor, w: Window) -> Tensor | tuple[Tensor, Tensor]:
        if training:
            out, index = _train(xb, w, generator, compiled, check_input, return_indices)
        else:
            out = _eval(xb, w, compiled, check_input)
            index = w.argmax(xb) if return_indices else None
        return (out, index) if return_indices and index is not None else out

    result = window_call(
        x,
        fn,
        kernel_size=kernel_size,
        stride=stride,
        padding=padding,
        ceil_mode=ceil_mode,
        output_size=output_size,
        dims=dims,
        dilation=dilation,
    )
    if x.dim() == infer_dims(x.dim(), kernel_size, output_size, dims) + 2:
        fmt = _memory_format(x)
        if fmt is not None:
            result = (
                tuple(t.contiguous(memory_format=fmt) for t in result)
                if return_indices
                else result.contiguous(memory_format=fmt)
            )
    return result


def _memory_format(x: Tensor) -> torch.memory_format | None:
    """``channels_last`` (``channels_last_3d``) when a batched input is laid out so and not also plainly
    contiguous, as torch's max pools keep it; None otherwise, and when traced (the compiler picks)."""
    if _tracing() or x.dim() not in (4, 5):
        return None
    fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    return fmt if x.is_contiguous(memory_format=fmt) and not x.is_contiguous() else None


# ---- modules ----------------------------------------------------------------------------------------------
class _StochasticPoolNd(PoolNd):
    """Holds the window arguments and ``return_indices``; subclasses set ``dims`` and the docstring."""

    def __init__(
        self,
        kernel_size: IntTuple | None = None,
        stride: IntTuple | None = None,
        padding: IntTuple = 0,
        ceil_mode: bool = False,
        *,
        output_size: OptIntTuple = None,
        return_indices: bool = False,
        dilation: IntTuple = 1,
    ) -> None:
        super().__init__(kernel_size, stride, padding, ceil_mode, output_size=output_size, dilation=dilation)
        if not isinstance(return_indices, bool):
            raise TypeError(f"return_indices must be a bool (got {return_indices!r})")
        self.return_indices = return_indices

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        return stochastic_pool(
            x, training=self.training, return_indices=self.return_indices, **self.window_kwargs()
        )

    def extra_repr(self) -> str:
        text = super().extra_repr()
        return f"{text}, return_indices=True" if self.return_indices else text


_DOC_RULES = r"""
    In training mode each window samples one position with probability proportional to its activation
    and outputs that value (the gradient flows to the sampled position only); in eval mode it outputs the
    probability-weighted average:

    .. math::
        \text{train: } y = a_J,\quad P(J = i) = \frac{a_i}{\sum_j a_j} \qquad
        \text{eval: } y = \sum_i \frac{a_i}{\sum_j a_j} a_i = \frac{\sum_i a_i^2}{\sum_i a_i}

    over the real (non-padded) positions of each window.

    * **Negative values count as zero**, inside the operator, in eager, compiled and exported code: the
      result (and its gradient) is that of ``x.relu()``. The value check (on by default on the CPU, where
      it reads no value on the host; ``stochastic_pool(..., check_input=True)`` on CUDA, through
      ``torch._assert_async``) rejects negative and non-finite input instead; it is skipped under
      ``torch.compile`` and export.
    * **An all-zero window** outputs 0; in training it draws its position uniformly among its real
      positions, from the same uniform (so the gradient has no spatial bias).
    * ``return_indices=True`` also returns, per output, the flat index of a position in its input plane,
      as :class:`torch.nn.MaxPool2d` does (usable with :class:`torch.nn.MaxUnpool2d`): the sampled
      position in training, the window's largest activation (the most probable position) in eval.
    * The output keeps a ``channels_last`` (``channels_last_3d``) input's memory format.

    Randomness: one uniform per output from ``generator`` (or torch's default generator) in the compute
    dtype (float32, on ``torch.rand``'s 24-bit grid, for float32 and half input, two per 64-bit draw on
    the CPU; float64 for float64), compared with the window's prefix sums in that dtype: a seed gives
    the same samples however the work is split, for ``compiled=True`` and, on the CPU, for a model
    compiled with ``torch.compile``. Compiled on other devices it draws from inductor's own stream
    (same distribution, other samples) unless ``torch._inductor.config.fallback_random`` is set.
    Extra memory stays within about twice the input.
    Exports with ``torch.export`` and ``torch.onnx.export(..., dynamo=True)`` (eval mode); the legacy
    ONNX exporter and TorchScript are refused, except for global windows. ``torch.export`` in training
    mode takes dynamic sizes too, except with a non-global ``output_size`` (refused: the walk's length
    depends on the input size).

    Args:
        kernel_size: the size of the window, an int or one int per pooled dimension (give this or
            ``output_size``). Default: ``None``.
        stride: the stride of the window. Default: ``kernel_size``.
        padding: implicit zero padding on both sides, at most half the kernel; padded positions are never
            sampled. Default: ``0``.
        ceil_mode: use ceil instead of floor to compute the output shape. Default: ``False``.
        output_size: adaptive output size instead of a kernel; ``None`` entries keep the input size, and
            ``1`` is global stochastic pooling. Default: ``None``.
        dilation: the spacing between a kernel window's positions (keyword-only), as in torch's dilated
            pools. Default: 1.
        return_indices: also return the index of each output's position (see above). Default: ``False``.
"""

_DOC_SIZE = r"""
    With ``kernel_size`` :math:`k`, ``stride`` :math:`s` and ``padding`` :math:`p`, each pooled size is
    :class:`torch.nn.MaxPool{d}d`'s:

    .. math::
        {out} = \left\lfloor \frac{{inp} + 2p - k}{{s}} + 1 \right\rfloor

    (with ``ceil_mode``, rounded up, as long as the last window starts inside the input or its left
    padding); with ``output_size``, the given size.
"""


def _doc(d: int, summary: str, names: tuple[str, ...], example: str) -> str:
    size = _DOC_SIZE.replace("{d}", str(d)).replace("{out}", names[1]).replace("{inp}", names[0])
    size = size.replace("{s}", "s")
    shape_in = ", ".join(f"{n}_{{in}}" for n in names[2:])
    shape_out = ", ".join(f"{n}_{{out}}" for n in names[2:])
    return (
        f"{summary}\n"
        + _DOC_RULES
        + size
        + rf"""
    Shape:
        - Input: :math:`(N, C, {shape_in})` or :math:`(C, {shape_in})`.
        - Output: :math:`(N, C, {shape_out})` or :math:`(C, {shape_out})`, and the same for the indices
          (int64) with ``return_indices=True``.

    Example::
{example}"""
    )


class StochasticPool1d(_StochasticPoolNd):
    __doc__ = _doc(
        1,
        "Applies 1D stochastic pooling (Zeiler & Fergus, 2013) over an input signal.",
        ("L_{in}", "L_{out}", "L"),
        r"""
        >>> pool = StochasticPool1d(3, stride=2)
        >>> pool(torch.rand(2, 16, 50)).shape
        torch.Size([2, 16, 24])
        >>> x = torch.tensor([[[1.0, 3.0, 0.0, 0.0]]])
        >>> StochasticPool1d(2).eval()(x)  # (1 + 9) / 4, and an all-zero window
        tensor([[[2.5000, 0.0000]]])
    """,
    )

    dims = 1


class StochasticPool2d(_StochasticPoolNd):
    __doc__ = _doc(
        2,
        "Applies 2D stochastic pooling (Zeiler & Fergus, 2013) over an input image.",
        ("H_{in}", "H_{out}", "H", "W"),
        r"""
        >>> pool = StochasticPool2d(3, stride=2)
        >>> pool(torch.rand(2, 16, 32, 32)).shape
        torch.Size([2, 16, 15, 15])
        >>> x = torch.tensor([[[0.0, 1.1, 2.5], [0.9, 2.0, 1.0], [0.0, 1.5, 1.0]]])
        >>> StochasticPool2d(3).eval()(x)  # sum(a^2) / sum(a) = 16.52 / 10
        tensor([[[1.6520]]])
        >>> stochastic_pool(x - 1.0, 3, dims=2, check_input=False)  # negatives count as 0: (x - 1).relu()
        tensor([[[1.1323]]])
        >>> y, index = StochasticPool2d(3, return_indices=True).eval()(x)
        >>> index  # the largest activation, 2.5 at row 0, column 2
        tensor([[[2]]])
        >>> y, index = StochasticPool2d(3, return_indices=True)(x)  # training: the sampled position
        >>> bool(x.flatten()[index.item()] == y)
        True
    """,
    )

    dims = 2


class StochasticPool3d(_StochasticPoolNd):
    __doc__ = _doc(
        3,
        "Applies 3D stochastic pooling (Zeiler & Fergus, 2013) over an input volume.",
        ("D_{in}", "D_{out}", "D", "H", "W"),
        r"""
        >>> pool = StochasticPool3d(2)
        >>> pool(torch.rand(1, 4, 8, 8, 8)).shape
        torch.Size([1, 4, 4, 4, 4])
        >>> x = torch.rand(1, 4, 8, 8, 8).contiguous(memory_format=torch.channels_last_3d)
        >>> pool(x).is_contiguous(memory_format=torch.channels_last_3d)
        True
    """,
    )

    dims = 3
