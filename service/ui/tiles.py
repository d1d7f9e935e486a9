"""The Compare tab's tiles: each method's result made visible, with what was done to it said in the caption.

- A method whose results leave the input's range is shown divided by its ``MethodSpec.display_scale``,
  and the caption says so: sum-form lp grows with the window (n inputs of value a give n^(1/p)·a), so most
  of an image in [0, 1] would clamp to white; it is shown divided by n^(1/p), the largest value it can
  reach per unit of input.
- Global presets give one number per channel: a swatch of that colour, and the numbers.
- ``zoomed crop`` shows the centre of each result, so single windows can be told apart.
- ``difference from avg`` shows result − avg (the adaptive presets against ``adaptive_avg``), mid-grey for
  equal, stretched by a stated gain so that the largest difference reaches black or white.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from PIL import Image
from torch import Tensor

import poolcore

from ..codecs.image import to_image
from .controls import window_forms

__all__ = [
    "CROP",
    "VIEWS",
    "View",
    "channel_values",
    "display_scale",
    "is_global",
    "reference_of",
    "shared_gain",
    "tile",
]

View = Literal["pooled", "zoomed crop", "difference from avg"]
VIEWS: tuple[View, ...] = ("pooled", "zoomed crop", "difference from avg")
CROP = 8  # output pixels on a side in the zoomed crop
SWATCH = 32  # pixels on a side of a global result's swatch
_CHANNELS = {1: "L", 3: "RGB", 4: "RGBA"}


def is_global(output: Tensor) -> bool:
    """One value per channel: nothing to see as an image."""
    return output.dim() == 3 and output.shape[-1] == 1 and output.shape[-2] == 1


def display_scale(method: str, resolved: Mapping[str, Any]) -> float:
    """What the page divides a result by before showing it: the method's ``MethodSpec.display_scale``
    (n^(1/p) for sum-form lp, n inputs per window), 1 for every method that stays within the input's
    range."""
    hook = poolcore.get_spec(method).display_scale
    return 1.0 if hook is None else hook(resolved)


def channel_values(output: Tensor) -> str:
    """A global result's numbers, named by channel (``R 0.502 G 0.498 B 0.500``)."""
    values = output.flatten().tolist()
    names = _CHANNELS.get(len(values), "")
    if len(names) == len(values):
        return " ".join(f"{n} {v:.3f}" for n, v in zip(names, values, strict=True))
    return " ".join(f"c{i} {v:.3f}" for i, v in enumerate(values))


def reference_of(method: str) -> str:
    """The method a result is compared with in the difference view: the first registered method that takes
    the same window forms, so the outputs have the same shape. The registry lists the plain average first
    in each family (``avg``, ``adaptive_avg``, ``global_avg``); the page names no method itself."""
    forms = window_forms(method)
    return next(m for m in poolcore.methods() if window_forms(m) == forms)


def _crop(x: Tensor, size: int = CROP) -> tuple[Tensor, str]:
    h, w = x.shape[-2:]
    ch, cw = min(size, h), min(size, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[..., top : top + ch, left : left + cw], f"centre {ch}×{cw} of {h}×{w}"


def tile(
    method: str,
    output: Tensor,
    resolved: Mapping[str, Any],
    view: str,
    reference: Tensor | None = None,
    gain: float | None = None,
) -> tuple[Image.Image, list[str]]:
    """The image a tile shows for ``output`` (C×H×W) in ``view``, and the notes its caption needs.

    In the difference view, ``gain`` stretches the difference (the Compare tab passes one for every tile,
    so their strengths can be compared); None: this tile's own, so its largest difference fills the range.
    """
    notes: list[str] = []
    x = output.detach().float().cpu()
    scale = display_scale(method, resolved)
    if scale != 1.0:
        x = x / scale
        notes.append(f"shown ÷ n^(1/p) = ÷ {scale:.3g} (the sum form grows with the window)")
    if is_global(x):
        notes.append(channel_values(output))
        colour = x.expand(x.shape[0], SWATCH, SWATCH)
        return to_image(colour), notes
    if view == "zoomed crop":
        x, where = _crop(x)
        notes.append(where)
    elif view == "difference from avg":
        ref_name = reference_of(method)
        if reference is None or reference.shape != output.shape:
            notes.append(f"no {ref_name} result of this shape to compare with")
        else:
            diff = x - reference.detach().float().cpu()
            if diff.shape[0] == 4:  # alpha: a half-transparent tile would hide the difference
                diff = diff[:3]
            largest = float(diff.abs().max())
            if method == ref_name:
                notes.append("the reference: every other tile is compared with this one")
                x = torch.full_like(x, 0.5)
            elif largest == 0.0:
                notes.append(f"identical to {ref_name}")
                x = torch.full_like(x, 0.5)
            else:
                shared = gain is not None
                stretch = gain if gain is not None else 0.5 / largest
                x = 0.5 + stretch * diff
                notes.append(
                    f"{method} − {ref_name}, ×{stretch:.3g}{' (every tile)' if shared else ''}; "
                    f"grey = equal, max |Δ| {largest:.3g}"
                )
    return to_image(x), notes


def shared_gain(differences: Sequence[Tensor]) -> float | None:
    """One gain for every difference tile: the largest difference of all reaches black or white."""
    largest = max((float(d.abs().max()) for d in differences if d.numel()), default=0.0)
    return 0.5 / largest if largest > 0 else None


def caption(parts: Sequence[str]) -> str:
    return " · ".join(p for p in parts if p)
