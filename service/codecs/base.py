"""Types shared by the codecs, and Accept negotiation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor

from ..config import Settings
from ..errors import NotAcceptable, PayloadTooLarge, shorten

__all__ = ["MEDIA_TYPES", "Decoded", "Kind", "Limits", "check_elements", "negotiate"]

Kind = Literal["json", "npy", "png"]

# What each response kind is sent as, and the Accept entries that ask for it.
MEDIA_TYPES: dict[Kind, str] = {"json": "application/json", "npy": "application/x-npy", "png": "image/png"}
_ACCEPTED: dict[str, Kind] = {
    "application/json": "json",
    "application/x-npy": "npy",
    "application/octet-stream": "npy",
    "image/png": "png",
}


@dataclass(frozen=True)
class Limits:
    max_elements: int
    max_image_pixels: int
    max_jpeg_scans: int = Settings.model_fields["max_jpeg_scans"].default


@dataclass(frozen=True)
class Decoded:
    tensor: Tensor
    kind: Kind  # the request's own kind: the response kind when Accept does not say
    params: dict[str, Any] = field(default_factory=dict)  # typed parameters carried in the body (JSON)
    form: dict[str, str] = field(default_factory=dict)  # text parameters from multipart form fields


def check_elements(shape: tuple[int, ...], limits: Limits) -> None:
    """413 before allocating an input larger than the element limit, or one with a dimension longer
    than it (an empty array may claim any length, which numpy and torch then fail to represent)."""
    count = 1
    for size in shape:
        if int(size) > limits.max_elements:
            raise PayloadTooLarge(
                f"input dimension of length {shorten(int(size))} (shape {shorten(tuple(shape))}) is over the "
                f"limit of {limits.max_elements} elements"
            )
        count *= int(size)
    if count > limits.max_elements:
        raise PayloadTooLarge(
            f"input has {shorten(count)} elements (shape {shorten(tuple(shape))}), over the limit of "
            f"{limits.max_elements}"
        )


def _parse_accept(header: str) -> list[tuple[str, float, int]]:
    entries = []
    for position, item in enumerate(header.split(",")):
        parts = [p.strip() for p in item.split(";")]
        media = parts[0].lower()
        if not media:
            continue
        quality = 1.0
        for param in parts[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
                if not 0.0 <= quality <= 1.0:  # RFC 9110's q is 0 to 1: nan, inf, -1 or 2 are ignored
                    quality = 0.0
        entries.append((media, quality, position))
    return entries


def negotiate(accept: str | None, default: Kind) -> Kind:
    """The response kind for an Accept header; its absence, or a wildcard, means the request's own kind."""
    if not accept or not accept.strip():
        return default
    best: tuple[float, int, int] | None = None  # (quality, prefers default, -position)
    chosen: Kind | None = None
    for media, quality, position in _parse_accept(accept):
        if quality <= 0:
            continue
        if media in _ACCEPTED:
            candidates: list[Kind] = [_ACCEPTED[media]]
        elif media == "*/*":
            candidates = [default]
        elif media.endswith("/*"):
            candidates = [k for k, m in MEDIA_TYPES.items() if m.startswith(media[:-1])]
            candidates.sort(key=lambda k: k != default)
        else:
            continue
        for kind in candidates[:1]:
            rank = (quality, int(kind == default), -position)
            if best is None or rank > best:
                best, chosen = rank, kind
    if chosen is None:
        raise NotAcceptable(
            f"cannot produce any type in Accept {shorten(accept)}; available: {', '.join(_ACCEPTED)}"
        )
    return chosen
