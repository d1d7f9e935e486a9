"""The example images that ship with the project.

Images in and out of the page go through the service's own codec (:mod:`service.codecs.image`).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ASSETS", "example_labels", "example_paths"]

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def example_paths() -> list[str]:
    """The project's example images (see ``service/ui/make_examples.py``), sorted by name."""
    return sorted(str(p) for p in ASSETS.glob("*.png"))


def example_labels() -> list[str]:
    """The examples' names, in :func:`example_paths` order (their buttons' accessible names)."""
    return [Path(p).stem for p in example_paths()]
