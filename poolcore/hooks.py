"""What the registry tells the service and the page about each method beyond running it: the cost model's
figures, the walk-through of one window in numbers and the page's display scale.

Plain data and callables, no service or UI imports: :class:`~poolcore.registry.MethodSpec` holds them, so
adding a method is its operator file plus its registry entry, and nothing outside poolcore names it. The
hooks of the methods here live in this module (their operator files are the maths); a new method may keep
its own next to its operator (``poolcore/softpool.py`` does).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .mixed import eval_weight as mixed_eval_weight
from .stochastic import _MIN_CHUNK_BYTES
from .windows import Window

__all__ = [
    "MIN_BLOCK_BYTES",
    "Explanation",
    "WindowCase",
    "avg_explain",
    "gem_explain",
    "lp_display_scale",
    "lp_explain",
    "max_explain",
    "mixed_explain",
    "num",
    "stochastic_explain",
    "stochastic_scratch",
    "stochastic_train_scratch",
]

_CLOSE = 1e-5


def num(value: float) -> str:
    """Four significant digits, no trailing zeros: 16.52, 10, 1.652."""
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    text = f"{value:.4g}"
    return text


# ---- the walk-through of one output element ----------------------------------------------------------
@dataclass(frozen=True)
class WindowCase:
    """One output element of a 2d run: its window's real inputs (row-major, float64; padding excluded),
    their (row, col) in the input, the element's value, the resolved arguments and whether it was a
    train-mode run of a method that draws."""

    values: Tensor
    positions: Sequence[tuple[int, int]]
    y: float
    resolved: Mapping[str, Any]
    train: bool
    picked: tuple[int, int] | None = None  # the position a train-mode draw picked, from the operator's index


@dataclass(frozen=True)
class Explanation:
    """The computation, one plain-text step a line (the page escapes and renders them), and the input
    positions a train-mode draw picked (the page marks them)."""

    lines: list[str]
    drawn: set[tuple[int, int]] = field(default_factory=set)


def avg_explain(case: WindowCase) -> Explanation:
    values, y = case.values, case.y
    n, s = values.numel(), float(values.sum())
    lines = [f"y = Σa / n = {num(s)} / {n} = {num(s / n)}"]
    if abs(s / n - y) > _CLOSE * max(1.0, abs(y)):
        lines.append(f"torch divides by the padded window size here: y = {num(y)}")
    return Explanation(lines)


def max_explain(case: WindowCase) -> Explanation:
    return Explanation([f"y = max(a) = {num(case.y)}"])


def stochastic_explain(case: WindowCase) -> Explanation:
    values, y = case.values, case.y
    s = float(values.sum())
    s2 = float((values * values).sum())
    lines: list[str] = []
    drawn: set[tuple[int, int]] = set()
    if not case.train:
        value = s2 / s if s else 0.0
        lines.append(f"y = Σa² / Σa = {num(s2)} / {num(s)} = {num(value)}" if s else "Σa = 0: y = 0")
    else:
        probabilities = ", ".join(f"{num(float(v) / s)}" for v in values) if s else "none (Σa = 0)"
        lines.append(f"p = a / Σa = a / {num(s)} = [{probabilities}]")
        if case.picked is not None:  # the operator's index says which one
            drawn.add(case.picked)
        else:  # without it, the positions whose value equals the output
            for (r, c), v in zip(case.positions, values.tolist(), strict=True):
                if abs(v - y) <= _CLOSE * max(1.0, abs(y)) and (v > 0 or not s):
                    drawn.add((r, c))
        where = " or ".join(f"a[{r},{c}]" for r, c in sorted(drawn)) or "?"
        p_drawn = num(y / s) if s else "—"
        if len(drawn) > 1:  # equal values: the output cannot say which of them was drawn
            lines.append(f"drawn: {where} (equal values, p = {p_drawn} each); y = {num(y)}")
        else:
            lines.append(f"drawn: {where} = {num(y)} (p = {p_drawn}); y = {num(y)}")
    return Explanation(lines, drawn)


def mixed_explain(case: WindowCase) -> Explanation:
    values, y = case.values, case.y
    big, mean = float(values.max()), float(values.sum()) / values.numel()
    p_max = float(case.resolved.get("p_max", 0.5))
    rule = str(case.resolved.get("eval_rule", "expectation"))
    weight = mixed_eval_weight(p_max, "frequent") if rule == "frequent" else p_max
    lines: list[str] = []
    if not case.train and weight != p_max:  # "frequent", decided by p_max: one branch
        branch = f"max(a) = {num(big)}" if weight == 1 else f"mean(a) = {num(mean)}"
        side = "above" if weight == 1 else "below"
        lines.append(f"eval_rule = frequent: p_max = {num(p_max)} is {side} 0.5, so y = {branch}")
    elif not case.train:
        value = p_max * big + (1 - p_max) * mean
        lines.append(
            f"y = p_max·max(a) + (1 − p_max)·mean(a) = {num(p_max)}·{num(big)} + "
            f"{num(1 - p_max)}·{num(mean)} = {num(value)}"
        )
    else:
        is_max = abs(y - big) <= _CLOSE * max(1.0, abs(y))
        is_mean = abs(y - mean) <= _CLOSE * max(1.0, abs(y))
        lines.append(f"max(a) = {num(big)}, mean(a) = {num(mean)}, P(λ = 1) = p_max = {num(p_max)}")
        if is_max and is_mean:
            lines.append(f"y = {num(y)}: max and mean are equal here, so either λ gives it")
        elif is_max:
            lines.append(f"λ drawn = 1 (the max branch): y = max(a) = {num(y)}")
        elif is_mean:
            lines.append(f"λ drawn = 0 (the average branch): y = mean(a) = {num(y)}")
        else:
            lines.append(f"y = {num(y)}")
    return Explanation(lines)


def lp_explain(case: WindowCase) -> Explanation:
    values = case.values
    p = float(case.resolved.get("p", 2.0))
    if math.isinf(p):
        return Explanation([f"y = max|a| = {num(float(values.abs().max()))}"])
    sp = float((values.abs() ** p).sum())
    return Explanation([f"y = (Σ|a|^p)^(1/p) = ({num(sp)})^(1/{num(p)}) = {num(sp ** (1 / p))}"])


def gem_explain(case: WindowCase) -> Explanation:
    p, eps = float(case.resolved.get("p", 3.0)), float(case.resolved.get("eps", 1e-6))
    clamped = case.values.clamp(min=eps)
    if math.isinf(p):
        return Explanation([f"y = max(max(a, ε)) = {num(float(clamped.max()))}"])
    mp = float((clamped**p).mean())
    return Explanation([f"y = (mean(max(a, ε)^p))^(1/p) = ({num(mp)})^(1/{num(p)}) = {num(mp ** (1 / p))}"])


# ---- the page's display scale ------------------------------------------------------------------------
def lp_display_scale(resolved: Mapping[str, Any]) -> float:
    """n^(1/p) for sum-form lp with a kernel (n inputs per window): its results grow with the window."""
    if resolved.get("kernel_size") is None:
        return 1.0
    kernel = resolved["kernel_size"]
    n = math.prod(kernel) if isinstance(kernel, (tuple, list)) else int(kernel) ** 2
    p = float(resolved.get("p", 2.0))
    return 1.0 if math.isinf(p) else float(n) ** (1.0 / p)


# ---- working memory ------------------------------------------------------------------------------------
MIN_BLOCK_BYTES = _MIN_CHUNK_BYTES  # stochastic's smallest block, which its bound below includes


def stochastic_train_scratch(planes: int, window: Window, dtype: torch.dtype, device: torch.device) -> int:
    """An upper bound on the working memory of ``stochastic_pool(..., training=True)`` beyond its input and
    output, in 4-byte units. poolcore bounds it (``poolcore.stochastic._budget``): its blocks take at most
    twice the input's bytes, and never less than 1 MiB (under autograd it also keeps an int64 index per
    output, but the service runs under inference mode). tests/service/test_limits.py measures it."""
    in_bytes = planes * math.prod(window.in_size) * dtype.itemsize
    if window.dilated:
        # A dilated window takes the whole-tensor walk: a float64 prefix sum per window position and a few
        # temporaries per output, padded copies of the input, and one plane's position index and
        # real-position counts (shared by the planes). Measured at stride 1, 3×3 windows, dilation 2: 121
        # bytes per output for 64×128² fp32 planes, 266 for one 1024² plane, where this bound gives 193
        # and 315.
        outputs = planes * math.prod(window.out_size)
        positions = math.prod(window.kernel_size or ())
        one_plane = 32 * math.prod(window.in_size) + (positions + 2) * 8 * math.prod(window.out_size)
        return (6 * in_bytes + (positions + 12) * 8 * outputs + one_plane + MIN_BLOCK_BYTES) // 4
    return (2 * in_bytes + MIN_BLOCK_BYTES) // 4


def stochastic_scratch(planes: int, window: Window, dtype: torch.dtype, training: bool) -> int:
    """The ``scratch`` hook: eval runs whole-tensor ops with no blocks beyond its output."""
    return stochastic_train_scratch(planes, window, dtype, torch.device("cpu")) if training else 0
