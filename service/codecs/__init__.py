"""Wire formats, kept apart from the routes: each codec turns bytes into a tensor and a tensor into bytes.

A request body is ``bytes`` or, when read with :func:`service.body.read_body` under a Content-Length, a
writable ``bytearray`` that the .npy codec uses in place; the other codecs read either.

``decode`` picks the codec from the request's Content-Type (415 when none fits); ``negotiate`` picks the
response codec from Accept (406 when none fits); ``encode`` builds the response.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response
from torch import Tensor

from ..errors import UnsupportedMediaType, shorten
from . import image, json, multipart, npy
from .base import MEDIA_TYPES, Decoded, Kind, Limits, negotiate

__all__ = [
    "FAMILY_KINDS",
    "MEDIA_TYPES",
    "REQUEST_TYPES",
    "Decoded",
    "Kind",
    "Limits",
    "decode",
    "encode",
    "negotiate",
    "request_family",
]

# Content-Type -> the codec family that reads it.
REQUEST_TYPES: dict[str, str] = {
    "application/json": "json",
    "application/x-npy": "npy",
    "application/octet-stream": "npy",
    "image/png": "image",
    "image/jpeg": "image",
    "multipart/form-data": "multipart",
}


# The response kind of each family's requests when Accept does not choose; a multipart request takes its
# file part's kind, known once the part is read.
FAMILY_KINDS: dict[str, Kind] = {"json": "json", "npy": "npy", "image": "png"}


def request_family(content_type: str | None) -> str:
    """The codec family for a Content-Type header (media type only; parameters such as charset ignored)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    family = REQUEST_TYPES.get(media)
    if family is None:
        given = shorten(media) if media else "none"
        raise UnsupportedMediaType(
            f"unsupported Content-Type {given}; send one of: {', '.join(REQUEST_TYPES)}"
        )
    return family


def decode(body: bytes | bytearray, content_type: str | None, limits: Limits) -> Decoded:
    """Read a request body of any supported Content-Type into a tensor (plus any parameters it carries)."""
    family = request_family(content_type)
    if family == "json":
        return json.decode(body, limits)
    if family == "npy":
        return Decoded(npy.decode(body, limits), FAMILY_KINDS["npy"])
    if family == "image":
        media = (content_type or "").split(";", 1)[0].strip().lower()
        return Decoded(image.decode(body, limits, media), FAMILY_KINDS["image"])
    return multipart.decode(body, content_type or "", limits)


def encode(kind: Kind, output: Tensor, method: str, params: dict[str, Any]) -> Response:
    """Build the response in the negotiated kind (the route adds the headers that describe the run)."""
    if kind == "json":
        return json.encode(output, method, params)
    if kind == "npy":
        return npy.encode(output)
    return image.encode(output)
