"""PNG/JPEG in (float32 C×H×W in [0, 1], keeping L, RGB or RGBA), PNG out (clamped to [0, 1]).

Only the formats the request names are ever opened: Pillow is handed ``formats=["PNG"]`` for
``image/png`` and ``["JPEG"]`` for ``image/jpeg``, never its full plugin list, so bytes of any other
format (GIF, TIFF, BMP, ICO, and EPS, whose plugin runs Ghostscript) reach no other decoder and are
refused with the format they look like.

The size is checked from the header, before any pixel is decoded, so a small file that claims a huge
image (a decompression bomb) is refused without the memory it asks for.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from starlette.responses import Response
from torch import Tensor

from ..errors import BadRequest, NotAcceptable, PayloadTooLarge, UnsupportedMediaType
from .base import Limits, check_elements

__all__ = ["FORMATS", "decode", "encode", "sniff", "to_image"]

# Content-Type -> the one Pillow format it names.
FORMATS: dict[str, str] = {"image/png": "PNG", "image/jpeg": "JPEG"}

# Leading bytes of the formats a client may send by mistake or on purpose, to name them in the error
# (checked by hand: asking Pillow would mean opening the bytes with every plugin).
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"%!PS", "EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"%PDF", "PDF"),
    (b"\x93NUMPY", "npy"),
)

_CHANNELS = {"L": 1, "RGB": 3, "RGBA": 4}
_MODE_OF = {1: "L", 3: "RGB", 4: "RGBA"}


def _target_mode(img: Image.Image) -> str:
    """Keep L, RGB and RGBA; map every other mode to the nearest of them."""
    if img.mode in _CHANNELS:
        return img.mode
    if img.mode in ("1", "I", "I;16", "I;16B", "I;16L", "F"):
        return "L"
    if img.mode in ("LA", "La", "PA", "RGBa") or "transparency" in img.info:
        return "RGBA"
    return "RGB"


def sniff(body: bytes | bytearray) -> str | None:
    """The format ``body`` looks like from its first bytes (PNG, JPEG, GIF, TIFF, BMP, ICO, EPS, ...)."""
    head = bytes(body[:16])
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in _MAGIC if head.startswith(magic)), None)


def decode(body: bytes | bytearray, limits: Limits, media_type: str | None = None) -> Tensor:
    """Decode a PNG (``image/png``) or JPEG (``image/jpeg``); with no media type (the UI's uploads),
    either of the two, but nothing else."""
    formats = [FORMATS[media_type]] if media_type in FORMATS else list(FORMATS.values())
    expected = f"{formats[0]} (Content-Type {media_type})" if media_type in FORMATS else "PNG or JPEG"
    found = sniff(body)
    if found is not None and found not in formats:
        raise UnsupportedMediaType(
            f"the body is {found} data, not {expected}; images are accepted as PNG (image/png) or "
            "JPEG (image/jpeg) only"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # BytesIO copies a bytearray (and shares bytes): one copy next to the decoding itself.
            # Only the declared format's plugin: never one that runs a program (EPS: Ghostscript).
            img = Image.open(io.BytesIO(body), formats=formats)  # reads the header only
            width, height = img.size
            if width * height > limits.max_image_pixels:
                raise PayloadTooLarge(
                    f"image is {width}×{height} = {width * height} pixels, over the limit of "
                    f"{limits.max_image_pixels} pixels (possible decompression bomb)"
                )
            mode = _target_mode(img)
            check_elements((_CHANNELS[mode], height, width), limits)
            if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                wide = np.asarray(img, dtype=np.float32)
                scale = 65535.0 if img.mode.startswith("I") else 1.0
                return torch.from_numpy(np.clip(wide / scale, 0.0, 1.0)[None].copy())
            pixels = np.array(img.convert(mode) if img.mode != mode else img, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise PayloadTooLarge(f"image refused as a decompression bomb: {error}") from None
    except UnidentifiedImageError:  # its message names the BytesIO object, which says nothing to a client
        raise BadRequest(
            "malformed image: the body is not an image that PNG or JPEG decoding can read"
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise BadRequest(f"malformed image: {error}") from None
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255.0)


def to_image(output: Tensor) -> Image.Image:
    """The 8-bit image of a C×H×W (C in 1, 3, 4), 1×C×H×W or H×W result, clamped to [0, 1]."""
    x = output
    while x.dim() > 3 and x.shape[0] == 1:
        x = x[0]
    if x.dim() == 2:
        x = x[None]
    if x.dim() != 3 or x.shape[0] not in _MODE_OF:
        raise NotAcceptable(
            f"the result of shape {tuple(output.shape)} is not an image (PNG needs H×W or C×H×W with C in "
            "1, 3 or 4); ask for application/json or application/x-npy"
        )
    pixels = (x.float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    channels = pixels.shape[2]
    return Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels, mode=_MODE_OF[channels])


def encode(output: Tensor) -> Response:
    """PNG of :func:`to_image`'s image."""
    stream = io.BytesIO()
    to_image(output).save(stream, format="PNG", compress_level=1)
    return Response(stream.getvalue(), media_type="image/png")
