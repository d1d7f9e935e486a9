"""Images that cost more to decode, or decode to more, than their bytes justify; built from Pillow's own
output in the tests that use them, never checked in."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

__all__ = ["jpeg_bytes", "png_chunk", "png_with_rows", "repeated_scan_jpeg", "truncated_jpeg"]

SOS = b"\xff\xda"
EOI = b"\xff\xd9"


def jpeg_bytes(size: tuple[int, int], *, progressive: bool, mode: str = "RGB", seed: int = 0) -> bytes:
    """A Pillow JPEG of seeded noise (``size`` is width, height)."""
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)
    stream = io.BytesIO()
    img.save(stream, format="JPEG", quality=75, progressive=progressive)
    return stream.getvalue()


def repeated_scan_jpeg(data: bytes, repeats: int) -> bytes:
    """``data`` (a Pillow JPEG) with its last scan, SOS segment and entropy-coded data, repeated
    ``repeats`` more times before the end marker: each copy is one more pass over the whole image. The last
    ``\\xff\\xda`` is the last SOS (entropy-coded data stuffs every 0xFF with 0x00, so holds none)."""
    assert data.endswith(EOI)
    last = data.rindex(SOS)
    scan = data[last:-2]
    return data[:-2] + scan * repeats + EOI


def truncated_jpeg(data: bytes, keep: int) -> bytes:
    """The first ``keep`` bytes of ``data`` and then an end marker, as if its data stopped short: libjpeg
    pads the missing data with zeros and reports nothing to Pillow."""
    return data[:keep] + EOI


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_with_rows(width: int, height: int, scanlines: bytes, *, interlaced: bool = False) -> bytes:
    """An 8-bit greyscale PNG of ``width``×``height`` whose image data is ``scanlines`` (filter bytes
    included), deflated as one complete stream: fewer bytes than the rows need make a well-formed file
    whose deflate stream ends early."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 1 if interlaced else 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(scanlines))
        + png_chunk(b"IEND", b"")
    )
