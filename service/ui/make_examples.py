"""Draw the example images of the page into ``service/assets/`` (run once; the PNGs are committed).

``PYTHONPATH=. python -m service.ui.make_examples``. Everything is synthetic and seeded, so the files are
the project's own work and the same on every run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .imaging import ASSETS

__all__ = ["cells", "checkerboard", "gradient", "main", "rings"]


def checkerboard(size: int = 64, square: int = 8) -> Image.Image:
    """Black and white squares (L): max and avg pooling differ most where windows straddle edges."""
    idx = np.arange(size) // square
    board = ((idx[:, None] + idx[None, :]) % 2).astype(np.uint8) * 255
    return Image.fromarray(board)


def gradient(size: int = 64) -> Image.Image:
    """A smooth RGB ramp: red left to right, green top to bottom, blue along the diagonal."""
    ramp = np.linspace(0.0, 1.0, size)
    r = np.broadcast_to(ramp[None, :], (size, size))
    g = np.broadcast_to(ramp[:, None], (size, size))
    b = (r + g) / 2
    return Image.fromarray((np.stack([r, g, b], axis=-1) * 255).round().astype(np.uint8))


def cells(size: int = 96, count: int = 14, seed: int = 7) -> Image.Image:
    """Synthetic fluorescence "cells": bright blurred blobs with dim nuclei on a noisy dark field (RGB)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    image = np.zeros((size, size, 3))
    for _ in range(count):
        cy, cx = rng.uniform(8, size - 8, 2)
        radius = rng.uniform(4, 10)
        d2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / radius**2
        body = np.exp(-(d2**2))
        nucleus = np.exp(-((d2 * 6) ** 2))
        hue = rng.uniform(0.4, 1.0, 3) * np.array([0.5, 1.0, 0.6])
        image += body[..., None] * hue + nucleus[..., None] * np.array([0.1, 0.2, 0.9])
    image += rng.normal(0, 0.04, image.shape)
    return Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8))


def rings(size: int = 64) -> Image.Image:
    """Concentric rings with alpha (RGBA): aliasing shows how each method treats fine detail."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) - (size - 1) / 2
    radius = np.hypot(yy, xx)
    wave = 0.5 + 0.5 * np.cos(radius**2 / 18.0)
    alpha = np.clip(1.2 - radius / (size / 2), 0, 1)
    rgba = np.stack([wave, wave * 0.6, 1 - wave, alpha], axis=-1)
    return Image.fromarray((rgba * 255).round().astype(np.uint8))


def main(out: Path = ASSETS) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, make in (
        ("checkerboard", checkerboard),
        ("gradient", gradient),
        ("cells", cells),
        ("rings", rings),
    ):
        path = out / f"{name}.png"
        make().save(path, optimize=True)
        print(f"{path} {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
