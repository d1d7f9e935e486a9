"""Window geometry shared by every operator.

Every pooling method in poolcore is written against :class:`Window`, so each one works in every window
form (kernel, adaptive, global) and rank (1d, 2d, 3d). 1d inputs are lifted to 2d with a height of 1, so
the reductions below only ever see 2d or 3d spatial shapes and can use torch's own kernels.

Adaptive bins are torch's (``aten/src/ATen/native/AdaptivePooling.h``): ``start = floor(i*L/out)``,
``end = ceil((i+1)*L/out)``.

Kernel windows may be dilated as torch's max pools are: a window's ``k`` positions step by ``dilation``, so
it spans ``dilation*(k-1)+1`` inputs, and the output size is torch's with that effective kernel.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .params import MAX_INT

__all__ = [
    "IntTuple",
    "OptIntTuple",
    "Window",
    "check_float",
    "infer_dims",
    "is_traced",
    "make_window",
    "window_call",
]

IntTuple = int | Sequence[int]
OptIntTuple = int | None | Sequence[int | None]


def is_traced() -> bool:
    """Whether torch is tracing, compiling or exporting this call rather than running it: then only
    plain functional ops may run (no ``out=`` buffers, no oneDNN layouts, no host syncs), since the
    legacy ONNX exporter records an ``out=`` write into a fresh buffer as a constant, and a host sync
    breaks or specialises a compiled graph."""
    if torch.compiler.is_compiling():  # first: dynamo folds it to a constant, but not the others
        return True
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()


def _export_bins(window: Window) -> bool:
    """Whether adaptive bins are computed by ``Window._binned``: always under export, where torch's
    adaptive pools are recorded with the example's bins; under torch.compile where the bins are few (at
    most 8 per pooled dim), since inductor fuses the masked reductions with the ops before them, where its
    adaptive pools materialise their input. The legacy exporter records sizes as constants, so it is
    refused there."""
    if torch.compiler.is_compiling():
        if torch.compiler.is_exporting():
            return True
        return all(o is i or (isinstance(o, int) and o <= 8) for o, i in zip(window.out_size, window.in_size))
    if torch.jit.is_tracing():  # the legacy ONNX exporter traces with TorchScript's tracer
        raise RuntimeError(
            "adaptive pooling (output_size) cannot be exported by the legacy TorchScript-based exporter: "
            "it records the bins of the example input as constants, which are wrong at other input sizes; "
            "export with torch.onnx.export(..., dynamo=True) or use kernel_size windows"
        )
    return torch.onnx.is_in_onnx_export()


def check_float(x: Tensor, method: str) -> None:
    """Pooling is defined for real floating-point tensors only."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{method} pooling expects a torch.Tensor (got {type(x).__name__})")
    if not x.is_floating_point():
        raise ValueError(f"{method} pooling needs a floating-point tensor (got dtype {x.dtype})")


def infer_dims(
    rank: int, kernel_size: object = None, output_size: object = None, dims: int | None = None
) -> int:
    """Spatial rank: explicit ``dims`` wins, then the length of a tuple window argument, then the rank:
    rank 4 is (N, C, H, W), rank 5 (N, C, D, H, W) and rank 1 (L). Rank 2 and 3 have two readings each,
    so a scalar window on them is a ``ValueError`` that asks for ``dims`` or a tuple window."""
    if dims is not None:
        if isinstance(dims, bool) or dims not in (1, 2, 3):
            raise ValueError(f"dims must be 1, 2 or 3 (got {dims!r})")
        return int(dims)
    for arg in (kernel_size, output_size):
        if isinstance(arg, (tuple, list)):
            if len(arg) not in (1, 2, 3):
                raise ValueError(f"a window tuple must have 1, 2 or 3 entries (got {tuple(arg)!r})")
            return len(arg)
    if rank in (2, 3) and (kernel_size is None) != (output_size is None):  # else make_window says why
        name = "kernel_size" if kernel_size is not None else "output_size"
        one, two = _READINGS[rank]
        raise ValueError(
            f"a rank-{rank} input with a scalar {name} is ambiguous: it reads as {one} for 1d pooling "
            f"or as {two} for 2d pooling; pass dims=1 or dims=2, or a tuple {name} (one entry per "
            "pooled dimension)"
        )
    by_rank = {1: 1, 2: 1, 3: 2, 4: 2, 5: 3}
    if rank not in by_rank:
        raise ValueError(f"input must have rank 1 to 5 (got rank {rank})")
    return by_rank[rank]


_READINGS = {2: ("(C, L)", "(H, W)"), 3: ("(N, C, L)", "(C, H, W)")}


def _tuple(value: object, n: int, name: str, *, minimum: int, allow_none: bool = False) -> tuple:
    items: tuple
    if isinstance(value, (tuple, list)):
        items = tuple(value)
        if len(items) == 1 and n > 1:
            items = items * n
        if len(items) != n:
            raise ValueError(f"{name} must have {n} entries for {n}d pooling (got {value!r})")
    else:
        items = (value,) * n
    for item in items:
        if item is None and allow_none:
            continue
        if isinstance(item, bool) or not isinstance(item, int):
            raise TypeError(f"{name} entries must be integers (got {value!r})")
        if item < minimum:
            bound = "positive" if minimum == 1 else "non-negative"
            raise ValueError(f"{name} must be {bound} (got {value!r})")
        if item > MAX_INT:  # torch's kernels take C ints (a stride of 2**32 is a SIGFPE)
            raise ValueError(f"{name} entries must be at most 2**31-1 (got {value!r})")
    return items


def _kernel_out(length: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    """torch's output length (``pooling_output_shape``), including the ceil_mode rule that the last window
    must start inside the input or its left padding. ``k`` is the effective (dilated) kernel."""
    span = length + 2 * p - k
    if not ceil_mode:
        return span // s + 1
    # torch's count is min(ceil(span / s) + 1, (length + p - 1) // s + 1): ceil mode, but the last window
    # must start inside the input or its left padding. Which term is the smaller depends on the window
    # arguments only (the first iff s + p <= k), so no test on the length: no guard when it is symbolic
    # (export). Each term is the count unfold gives after p + s - 1, resp. k - 1, zeros on the right.
    return (span + s - 1) // s + 1 if s + p <= k else (length + p - 1) // s + 1


@dataclass(frozen=True)
class Window:
    """Resolved geometry for a batched ``(B, C, *spatial)`` tensor with 2 or 3 spatial dims.

    Exactly one of two forms: kernel (``kernel_size``/``stride``/``padding``/``dilation``/``ceil_mode``)
    or adaptive (``kernel_size is None``; bins derived from ``in_size`` and ``out_size``). Global pooling is
    the adaptive form with every output size 1. A kernel window's offset ``j`` along a dim reads the input
    at ``start + j*dilation``; an empty ``dilation`` means 1 everywhere.
    """

    in_size: tuple[int, ...]
    out_size: tuple[int, ...]
    kernel_size: tuple[int, ...] | None = None
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    ceil_mode: bool = False
    dilation: tuple[int, ...] = ()

    @property
    def dilated(self) -> bool:
        """Whether some kernel dim's positions are spread out (a dilation above 1)."""
        return any(d != 1 for d in self.dilation)

    def step(self, d: int) -> int:
        """The distance between a window's neighbouring positions along spatial dim ``d``."""
        return self.dilation[d] if self.dilation else 1

    def span(self, d: int) -> int:
        """How many inputs a kernel window covers along ``d``, gaps included: ``dilation*(k-1)+1``."""
        if self.kernel_size is None:
            raise ValueError("span applies to kernel_size windows, not to output_size")
        return self.step(d) * (self.kernel_size[d] - 1) + 1

    @property
    def adaptive(self) -> bool:
        return self.kernel_size is None

    @property
    def is_global(self) -> bool:
        return self.adaptive and all(o == 1 for o in self.out_size)

    @property
    def spatial_dims(self) -> tuple[int, ...]:
        n = len(self.in_size)
        return tuple(range(-n, 0))

    # ---- per-dimension bins ---------------------------------------------------------------------
    def bounds(self, d: int) -> tuple[list[int], list[int]]:
        """First real position and end (exclusive) of each window along spatial dim ``d``, clipped to the
        real input, so padding and ceil-mode overhang are excluded. A dilated window's real positions are
        ``range(start, end, self.step(d))``."""
        length, out = self.in_size[d], self.out_size[d]
        if self.kernel_size is None:
            starts = [(i * length) // out for i in range(out)]
            ends = [-(-((i + 1) * length) // out) for i in range(out)]
            return starts, ends
        s, p, step, span = self.stride[d], self.padding[d], self.step(d), self.span(d)
        starts = [i * s - p for i in range(out)]
        # A window that starts in the left padding: its first position at or past 0 on its own grid.
        first = [a if a >= 0 else a % step for a in starts]
        return first, [min(a + span, length) for a in starts]

    def counts(self, d: int, include_pad: bool = False) -> list[int]:
        """Positions of each window along ``d``: the real ones, or with ``include_pad`` those inside the
        zero-padded input (torch's avg_pool divisor, which leaves out ceil-mode overhang only)."""
        if self.kernel_size is None or not include_pad:
            step = self.step(d) if self.kernel_size is not None else 1
            return [max(0, -((s - e) // step)) for s, e in zip(*self.bounds(d))]
        k, s, p, step = self.kernel_size[d], self.stride[d], self.padding[d], self.step(d)
        limit = self.in_size[d] + p
        return [min(k, -((i * s - p - limit) // step)) for i in range(self.out_size[d])]

    def max_extent(self, d: int) -> int:
        """The most positions any window spans along ``d`` (the kernel size, or the widest adaptive bin)."""
        if self.kernel_size is not None:
            return self.kernel_size[d]
        starts, ends = self.bounds(d)
        return max(e - s for s, e in zip(starts, ends))

    def valid_count(self, device: torch.device, dtype: torch.dtype, include_pad: bool = False) -> Tensor:
        """Number of real (non-padded) input positions in each window, shaped ``out_size``; with
        ``include_pad``, of positions inside the zero-padded input (see :meth:`counts`)."""
        count = torch.ones((), device=device, dtype=dtype)
        for d in range(len(self.in_size)):
            if self.dilated:
                lengths = self._dilated_counts(d, include_pad, device).to(dtype)
            else:
                lengths = torch.tensor(self.counts(d, include_pad), dtype=dtype, device=device)
            shape = [1] * len(self.in_size)
            shape[d] = -1
            count = count * lengths.view(shape)
        return count

    def _dilated_counts(self, d: int, include_pad: bool, device: torch.device) -> Tensor:
        """:meth:`counts` as tensor ops on the sizes, so an exported graph computes them for its input's
        own size (a list built from the example's sizes would be baked in)."""
        k, s, p, step, length = (
            self.kernel_size or (),
            self.stride[d],
            self.padding[d],
            self.step(d),
            self.in_size[d],
        )
        starts = torch.arange(self.out_size[d], device=device) * s - p
        if include_pad:  # positions before length + p: ceil((length + p - start) / step), at most k
            return (-torch.div(starts - (length + p), step, rounding_mode="floor")).clamp_max(k[d])
        first = torch.where(starts < 0, starts.remainder(step), starts)
        end = torch.clamp_max(starts + self.span(d), length)
        return (-torch.div(first - end, step, rounding_mode="floor")).clamp_min(0)

    # ---- reductions over each window --------------------------------------------------------------
    def sum(self, x: Tensor, *, out: Tensor | None = None) -> Tensor:
        """Sum over each window's real positions (written into ``out`` when given).

        The kernel form is the mean with zero padding counted, times the kernel's area; no
        ``divisor_override``, which the ONNX exporters drop (a sum that comes back as a mean)."""
        if self.is_global:
            return torch.sum(x, dim=self.spatial_dims, keepdim=True, out=out)
        if self.kernel_size is None:
            if _export_bins(self):
                return self._binned(x, "sum")
            return torch.mul(self._adaptive_avg(x), self.valid_count(x.device, x.dtype), out=out)
        if self.dilated:
            return self._dilated_sum(x, out)
        k, s, p = self.kernel_size, self.stride, self.padding
        if self.ceil_mode:
            if torch.jit.is_tracing():
                raise RuntimeError(
                    "a window sum with ceil_mode=True (lp pooling) cannot be exported by the legacy "
                    "TorchScript-based exporter: the clipped last windows need padding that depends on the "
                    "input size, which it records as a constant; export with torch.onnx.export(..., "
                    "dynamo=True) or use ceil_mode=False"
                )
            # Zeros on the right so no window overhangs the padded input: torch's divisor then is the
            # full area for every window (it clips overhanging windows to the padded input).
            pads: list[int] = []
            for d in reversed(range(len(self.in_size))):
                pads += [0, max(0, (self.out_size[d] - 1) * s[d] + k[d] - self.in_size[d] - 2 * p[d])]
            if any(pads):
                x = F.pad(x, pads)
        avg: Any = F.avg_pool2d if len(self.in_size) == 2 else F.avg_pool3d
        return torch.mul(avg(x, k, s, p, False, True), math.prod(k), out=out)

    def mean(self, x: Tensor, count_include_pad: bool = False, *, out: Tensor | None = None) -> Tensor:
        """Mean over each window. With ``count_include_pad`` the divisor counts zero padding as torch's
        ``avg_pool`` does; otherwise it counts real positions only. Written into ``out`` when given."""
        if self.is_global:
            return torch.mean(x, dim=self.spatial_dims, keepdim=True, out=out)
        if self.kernel_size is None:
            result = self._binned(x, "mean") if _export_bins(self) else self._adaptive_avg(x)
            return result if out is None else out.copy_(result)
        if self.dilated:  # torch's avg_pool has no dilation: the sum over offsets, then the divisor
            count = self.valid_count(x.device, x.dtype, include_pad=count_include_pad)
            return torch.div(self._dilated_sum(x), count, out=out)
        k, s, p, c = self.kernel_size, self.stride, self.padding, self.ceil_mode
        if out is None:
            avg: Any = F.avg_pool2d if len(self.in_size) == 2 else F.avg_pool3d
            return avg(x, k, s, p, c, count_include_pad)
        pool_out: Any = (
            torch.ops.aten.avg_pool2d.out if len(self.in_size) == 2 else torch.ops.aten.avg_pool3d.out
        )
        return pool_out(x, k, s, p, c, count_include_pad, None, out=out)

    def max(self, x: Tensor) -> Tensor:
        """Maximum over each window's real positions."""
        if self.is_global:
            return x.amax(dim=self.spatial_dims, keepdim=True)
        if self.kernel_size is None:
            if _export_bins(self):
                return self._binned(x, "max")
            adaptive: Any = F.adaptive_max_pool2d if len(self.in_size) == 2 else F.adaptive_max_pool3d
            return adaptive(x, self.out_size)
        pool: Any = F.max_pool2d if len(self.in_size) == 2 else F.max_pool3d
        return pool(x, self.kernel_size, self.stride, self.padding, self.dilation or 1, self.ceil_mode)

    def argmax(self, x: Tensor) -> Tensor:
        """Flat in-plane index (over ``in_size``) of each window's largest value, as torch's max pools
        return it: usable with ``MaxUnpoolNd``."""
        if self.is_global:
            n = len(self.in_size)
            return x.flatten(-n).argmax(-1).view(*x.shape[:-n], *self.out_size)
        if self.kernel_size is None:
            adaptive: Any = F.adaptive_max_pool2d if len(self.in_size) == 2 else F.adaptive_max_pool3d
            return adaptive(x, self.out_size, return_indices=True)[1]
        pool: Any = F.max_pool2d if len(self.in_size) == 2 else F.max_pool3d
        dilation = self.dilation or 1
        return pool(
            x, self.kernel_size, self.stride, self.padding, dilation, self.ceil_mode, return_indices=True
        )[1]

    def _dilated_sum(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        """Sum over each dilated kernel window, one strided view per offset (padding reads 0)."""
        views = self.offsets(x)
        total = next(views).clone() if out is None else out.copy_(next(views))
        for value in views:
            total.add_(value)
        return total

    # ---- cache-sized chunks of planes ---------------------------------------------------------------
    def map_planes(
        self, x: Tensor, fn: Callable[[Tensor, slice, Tensor], object], chunk_elements: int = 1 << 22
    ) -> Tensor:
        """Pool ``x`` group by group of its ``(batch, channel)`` planes: ``fn(chunk, planes, out)`` gets a
        ``(1, n, *spatial)`` view of ``n`` planes, their slice of the flattened ``B*C`` planes, and the
        ``(1, n, *out_size)`` view of the result (dtype of ``x``) that it must fill.

        Pooling never mixes planes, so the result is that of the whole tensor. A chain of elementwise
        ops and pools on a group of ~``chunk_elements`` (16 MB of float32 by default) mostly stays in
        the last-level cache and reuses allocator memory, where on the whole tensor each op is a round
        trip to memory and each fresh allocation page-faults. Each group costs one parallel region per
        op, which stalls when the CPU is oversubscribed, so groups are not made smaller than that. For
        inference paths: the result is preallocated, so it carries no gradient history.
        """
        b, c = x.shape[:2]
        planes = b * c
        flat = x.reshape(1, planes, *x.shape[2:])
        result = x.new_empty((1, planes, *self.out_size))
        per = max(1, chunk_elements // max(1, math.prod(x.shape[2:])))
        for start in range(0, planes, per):
            part = slice(start, min(start + per, planes))
            fn(flat[:, part], part, result[:, part])
        return result.reshape(b, c, *self.out_size)

    def _binned(self, x: Tensor, reduce: str) -> Tensor:
        """Adaptive ``sum``, ``mean`` or ``max`` through bin masks built from the input's own sizes, one
        spatial dim at a time, for export: torch's adaptive pools are recorded with the example's bins,
        so an exported graph would be wrong at any size the output size does not divide. Holds one
        ``out_size[d]``-times copy of the input per dim."""
        n = len(self.in_size)
        for d in range(n):
            length, out = self.in_size[d], self.out_size[d]
            if out is length:  # an output_size entry of None: that dim is kept
                continue
            a = x.dim() - n + d
            trail = [1] * (x.dim() - a - 1)
            i = torch.arange(out, device=x.device)
            j = torch.arange(length, device=x.device)
            start = (i * length) // out
            end = ((i + 1) * length + out - 1) // out
            mask = ((j >= start[:, None]) & (j < end[:, None])).view(out, length, *trail)
            xe = x.unsqueeze(a)
            if reduce == "max":
                x = torch.where(mask, xe, torch.full((), -math.inf, dtype=x.dtype, device=x.device))
                x = x.amax(a + 1)
            else:
                x = torch.where(mask, xe, torch.zeros((), dtype=x.dtype, device=x.device)).sum(a + 1)
                if reduce == "mean":
                    x = x / (end - start).to(x.dtype).view(out, *trail)
        return x

    def _adaptive_avg(self, x: Tensor) -> Tensor:
        pool: Any = F.adaptive_avg_pool2d if len(self.in_size) == 2 else F.adaptive_avg_pool3d
        return pool(x, self.out_size)

    # ---- window positions one offset at a time ---------------------------------------------------
    def offsets(self, x: Tensor) -> Iterator[Tensor]:
        """Yield, for each offset inside a window in row-major order, the ``(B, C, *out_size)`` tensor of
        the input value at that offset of every window. Positions outside the real input (padding,
        ceil-mode overhang, the short end of an adaptive bin) read as 0.

        Values are strided views of ``x`` in the kernel form (no copy when no padding is needed), so
        the total work is one read of the input per pass, and nothing ``k``-times the input is held.
        """
        n = len(self.in_size)
        extents = [self.max_extent(d) for d in range(n)]
        if self.dilated:
            # Views of unfold's windows (of the span, on the input padded for every size), then the
            # dilated positions of each: slices whose end could pass the input would make an exported graph
            # guard on its size, as stochastic's _padded_views explains.
            xp = self._padded(x, self.kernel_size or ())
            base = x.dim() - n
            for d in range(n):
                xp = xp.unfold(base + d, self.span(d), self.stride[d])
            for offset in itertools.product(*(range(e) for e in extents)):
                view = xp
                for d in reversed(range(n)):
                    view = view.select(-1, offset[d] * self.step(d))
                yield view
            return
        if self.kernel_size is not None:
            xp = self._padded(x, self.kernel_size)
            for offset in itertools.product(*(range(e) for e in extents)):
                index: tuple[Any, ...] = (Ellipsis,)
                for d, o in enumerate(offset):
                    s, at = self.stride[d], o * self.step(d)
                    index += (slice(at, at + s * (self.out_size[d] - 1) + 1, s),)
                yield xp[index]
            return
        gathers = [self._adaptive_index(d, x.device) for d in range(n)]
        for offset in itertools.product(*(range(e) for e in extents)):
            value = x
            mask: Tensor | None = None
            for d, o in enumerate(offset):
                idx, valid = gathers[d][0][o], gathers[d][1][o]
                value = value.index_select(d - n, idx)
                if valid is not None:
                    shape = [1] * n
                    shape[d] = -1
                    m = valid.view(shape)
                    mask = m if mask is None else mask & m
            yield value if mask is None else value * mask.to(value.dtype)

    def _padded(self, x: Tensor, kernel_size: tuple[int, ...]) -> Tensor:
        pads: list[int] = []
        for d in reversed(range(len(self.in_size))):
            k, s, p = self.step(d) * (kernel_size[d] - 1) + 1, self.stride[d], self.padding[d]
            if self.dilated:  # enough for every length (see make_window's count): no guard on the size
                right = min(p + s - 1, k - 1) if self.ceil_mode else p
            else:
                right = max(0, (self.out_size[d] - 1) * s + k - self.in_size[d] - p)
            pads += [p, right]
        return F.pad(x, pads) if any(pads) else x

    def _adaptive_index(self, d: int, device: torch.device) -> tuple[list[Tensor], list[Tensor | None]]:
        starts, ends = self.bounds(d)
        idx: list[Tensor] = []
        valid: list[Tensor | None] = []
        start_t = torch.tensor(starts, device=device)
        end_t = torch.tensor(ends, device=device)
        for o in range(self.max_extent(d)):
            pos = start_t + o
            ok = pos < end_t
            idx.append(torch.minimum(pos, end_t - 1))
            valid.append(None if all(s + o < e for s, e in zip(starts, ends)) else ok)
        return idx, valid


def make_window(
    spatial: Sequence[int],
    dims: int,
    kernel_size: IntTuple | None = None,
    stride: IntTuple | None = None,
    padding: IntTuple = 0,
    ceil_mode: bool = False,
    output_size: OptIntTuple = None,
    dilation: IntTuple = 1,
) -> Window:
    """Validate window arguments for a ``dims``-d input with spatial size ``spatial`` (already lifted:
    1d inputs have a leading spatial size of 1)."""
    lifted = len(spatial) - dims  # 1 for a 1d input lifted to 2d, else 0
    if (kernel_size is None) == (output_size is None):
        raise ValueError(
            "give exactly one of kernel_size (sliding windows) or output_size (adaptive bins) "
            f"(got kernel_size={kernel_size!r}, output_size={output_size!r})"
        )
    dil = _tuple(dilation, dims, "dilation", minimum=1)
    if output_size is not None:
        if any(d != 1 for d in dil):  # an adaptive bin is every position between its bounds
            raise ValueError(
                f"dilation applies to kernel_size windows, not to output_size (got dilation={dilation!r})"
            )
        sizes = _tuple(output_size, dims, "output_size", minimum=1, allow_none=True)
        out = tuple(s if o is None else o for o, s in zip(sizes, spatial[lifted:]))
        return Window(in_size=tuple(spatial), out_size=(1,) * lifted + out)
    k = _tuple(kernel_size, dims, "kernel_size", minimum=1)
    s = k if stride is None else _tuple(stride, dims, "stride", minimum=1)
    p = _tuple(padding, dims, "padding", minimum=0)
    if not isinstance(ceil_mode, bool):
        raise TypeError(f"ceil_mode must be a bool (got {ceil_mode!r})")
    for kd, pd in zip(k, p):
        if pd > kd // 2:  # torch's rule, on the kernel size also when it is dilated
            raise ValueError(
                f"padding must be at most half of kernel_size (got padding={p}, kernel_size={k})"
            )
    out_size = []
    for length, kd, sd, pd, dd in zip(spatial[lifted:], k, s, p, dil):
        span = dd * (kd - 1) + 1
        if length + 2 * pd < span:
            spread = "" if dd == 1 else f" (spanning {span} with dilation {dil})"
            raise ValueError(
                f"kernel_size {k}{spread} is larger than the padded input {tuple(spatial[lifted:])} with "
                f"padding {p}"
            )
        out_size.append(_kernel_out(length, span, sd, pd, ceil_mode))
        # Only a window that starts in the left padding can miss the input, by stepping over all of it
        # (kernel 2, padding 1, dilation 4 on 3 inputs reads -1 and 3): torch's max gives -inf there, a
        # mean has nothing to divide. Such windows are the first ceil(p/s) ones;
        # a dense one always holds input.
        for i in range(min(out_size[-1], -(-pd // sd)) if dd > 1 else 0):
            a = i * sd - pd
            first = a % dd  # the window's first position at or past 0
            if first >= length or first > a + (kd - 1) * dd:
                raise ValueError(
                    f"kernel_size {k} with dilation {dil} and padding {p} gives a window that holds "
                    f"only padding on input size {tuple(spatial[lifted:])}"
                )
    one = (1,) * lifted
    zero = (0,) * lifted
    return Window(
        in_size=tuple(spatial),
        out_size=one + tuple(out_size),
        kernel_size=one + k,
        stride=one + s,
        padding=zero + p,
        ceil_mode=ceil_mode,
        dilation=one + dil,
    )


def window_call(
    x: Tensor,
    fn: Callable[[Tensor, Window], Any],
    *,
    kernel_size: IntTuple | None = None,
    stride: IntTuple | None = None,
    padding: IntTuple = 0,
    ceil_mode: bool = False,
    output_size: OptIntTuple = None,
    dims: int | None = None,
    dilation: IntTuple = 1,
) -> Any:
    """Bring ``x`` to ``(B, C, *spatial)`` with 2 or 3 spatial dims, resolve the window, apply
    ``fn(batched, window)`` and restore the caller's layout (to each tensor, where ``fn`` returns a tuple
    of them, such as values and indices).

    Accepted input ranks are ``dims`` (one unbatched channel), ``dims + 1`` (unbatched) and
    ``dims + 2`` (batched).
    """
    dims = infer_dims(x.dim(), kernel_size, output_size, dims)
    lead = x.dim() - dims
    if lead not in (0, 1, 2):
        raise ValueError(
            f"a {dims}d pool takes input of rank {dims} to {dims + 2} (got shape {tuple(x.shape)})"
        )
    if any(s == 0 for s in x.shape):
        raise ValueError(f"input has an empty dimension (got shape {tuple(x.shape)})")
    batched = x
    for _ in range(2 - lead):  # unsqueeze, not reshape: a tracer would record the example's shape
        batched = batched.unsqueeze(0)
    if dims == 1:
        batched = batched.unsqueeze(-2)
    window = make_window(
        batched.shape[2:], dims, kernel_size, stride, padding, ceil_mode, output_size, dilation
    )
    result = fn(batched, window)

    def restore(out: Tensor) -> Tensor:
        if dims == 1:
            out = out.squeeze(-2)
        for _ in range(2 - lead):
            out = out[0]
        return out

    return tuple(restore(t) for t in result) if isinstance(result, tuple) else restore(result)
