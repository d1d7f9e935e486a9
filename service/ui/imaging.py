"""Images in and out of the page, and the example images that ship with the project.

The page hands the pooling function what the service's image codec hands it: float32 C×H×W in [0, 1],
keeping L, RGB or RGBA.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

__all__ = ["ASSETS", "example_paths", "image_to_tensor", "tensor_to_image"]

ASSETS = Path(__file__).resolve().parent.parent / "assets"

_KEPT = ("L", "RGB", "RGBA")


def example_paths() -> list[str]:
    """The project's example images (see ``service/ui/make_examples.py``), sorted by name."""
    return sorted(str(p) for p in ASSETS.glob("*.png"))


def image_to_tensor(image: Image.Image) -> Tensor:
    """float32 C×H×W in [0, 1]; L, RGB and RGBA keep their channels, other modes become RGB(A)."""
    if image.mode not in _KEPT:
        has_alpha = image.mode in ("LA", "PA", "La") or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array))


def tensor_to_image(x: Tensor) -> Image.Image:
    """C×H×W (C of 1, 3 or 4) to an 8-bit image, clamped to [0, 1] as the service's PNG response is."""
    if x.dim() != 3 or x.shape[0] not in (1, 3, 4):
        raise ValueError(f"an image tensor is C×H×W with C of 1, 3 or 4 (got shape {tuple(x.shape)})")
    array = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    # uint8 H×W reads as L, H×W×3 as RGB and H×W×4 as RGBA.
    return Image.fromarray(
        array[0] if array.shape[0] == 1 else np.ascontiguousarray(array.transpose(1, 2, 0))
    )
