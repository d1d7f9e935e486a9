"""PNG/JPEG in (float32 C×H×W in [0, 1], keeping L, RGB or RGBA), PNG out (clamped to [0, 1]).

Only the formats the request names are ever opened: Pillow is handed ``formats=["PNG"]`` for
``image/png`` and ``["JPEG"]`` for ``image/jpeg``, never its full plugin list, so bytes of any other
format (GIF, TIFF, BMP, ICO, and EPS, whose plugin runs Ghostscript) reach no other decoder and are
refused with the format they look like.

The size is checked from the header, before any pixel is decoded, so a small file that claims a huge
image (a decompression bomb) is refused without the memory it asks for. Two more checks read the file's
structure before Pillow decodes it (:func:`check_jpeg`, :func:`check_png`):

- a JPEG's scans are counted: each progressive scan is a pass over the whole image, so a small file
  repeating one tiny scan thousands of times would keep a worker busy for a minute (over
  ``max_jpeg_scans``: 422);
- a file too short for the pixels it claims is refused (422). Pillow refuses one that simply stops, but
  both decoders pad a stream that ends early with zeros when the file goes on (a JPEG scan cut short
  and followed by its end marker, a PNG whose deflate stream ends before the last row), which would let
  a few hundred bytes stand for a 4096×4096 image.
"""

from __future__ import annotations

import io
import math
import re
import struct
import warnings
import zlib

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from starlette.responses import Response
from torch import Tensor

from ..errors import BadRequest, NotAcceptable, PayloadTooLarge, Unprocessable, UnsupportedMediaType
from .base import Limits, check_elements

__all__ = [
    "FORMATS",
    "MAX_JPEG_SEGMENTS",
    "check_jpeg",
    "check_png",
    "decode",
    "encode",
    "sniff",
    "to_image",
]

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


# -- JPEG structure (ITU T.81, B.1) --
# Marker segments a file may hold before it is refused unread: real files have tens (tables, APPn chunks of
# an ICC profile); walking them costs Python time per segment, so a body of a million empty comments must
# not cost a million steps.
MAX_JPEG_SEGMENTS = 4096
# Frames whose data can be bounded from below (Huffman coding: every block of a scan that holds DC costs at
# least one bit): baseline, extended sequential and progressive. Lossless, hierarchical and arithmetic-
# coded frames are refused; browsers and cameras don't write them.
_HUFFMAN_FRAMES = {0xC0: "baseline", 0xC1: "extended sequential", 0xC2: "progressive"}
_OTHER_FRAMES = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# The next marker: fill bytes (0xFF) and anything before them skipped, as libjpeg skips them.
_MARKER = re.compile(rb"\xff+([\x01-\xfe])")
# The end of a scan's entropy-coded data: a marker other than a stuffed zero (0xFF00) or a restart (RSTn).
_SCAN_END = re.compile(rb"\xff+[\x01-\xcf\xd8-\xfe]")


def _frame_blocks(segment: bytes | bytearray) -> dict[int, int]:
    """A SOF segment's components: id → 8×8 blocks that cover it (T.81 A.1.1), or {} where it is too short
    or claims no lines (Pillow then refuses it)."""
    if len(segment) < 6:
        return {}
    height, width, count = struct.unpack_from(">HHB", segment, 1)
    if len(segment) < 6 + 3 * count or not height or not width:
        return {}
    sampling = [(segment[6 + 3 * i], segment[7 + 3 * i] >> 4, segment[7 + 3 * i] & 15) for i in range(count)]
    h_max = max((h for _, h, _ in sampling), default=1) or 1
    v_max = max((v for _, _, v in sampling), default=1) or 1
    return {
        ident: math.ceil(math.ceil(width * h / h_max) / 8) * math.ceil(math.ceil(height * v / v_max) / 8)
        for ident, h, v in sampling
    }


def check_jpeg(body: bytes | bytearray, max_scans: int) -> None:
    """Walk a JPEG's marker segments as a decoder does, before any pixel is decoded: 422 for more than
    ``max_scans`` scans (SOS markers), more than :data:`MAX_JPEG_SEGMENTS` segments, a frame other than
    Huffman-coded baseline or progressive, or a scan that holds DC coefficients with fewer bytes than one
    bit per block it covers (its data was cut short: libjpeg would pad it with zeros)."""
    size = len(body)
    blocks: dict[int, int] = {}
    scans = segments = 0
    match = _MARKER.search(body, 2)  # after SOI
    while match is not None:
        marker, pos = match.group(1)[0], match.end()
        if marker == 0xD9:  # EOI: the decoder stops here
            return
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7 or pos + 2 > size:  # no length: no segment
            match = _MARKER.search(body, pos)
            continue
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise Unprocessable(
                f"the JPEG has more than {MAX_JPEG_SEGMENTS} marker segments; refused before decoding"
            )
        (length,) = struct.unpack_from(">H", body, pos)
        end = pos + max(length, 2)
        if marker in _OTHER_FRAMES:
            raise Unprocessable(
                f"the JPEG's frame type (SOF{marker - 0xC0}) is not accepted: send a baseline or progressive "
                "(Huffman-coded) JPEG"
            )
        if marker in _HUFFMAN_FRAMES and not blocks:
            blocks = _frame_blocks(body[pos + 2 : end])
        if marker != 0xDA:  # anything but a scan: its length says where the next marker is
            match = _MARKER.search(body, end)
            continue
        scans += 1
        if scans > max_scans:
            raise Unprocessable(
                f"the JPEG has more than {max_scans} scans (SOS markers), over the limit of {max_scans} "
                "(POOLSERVE_MAX_JPEG_SCANS): each scan is a pass over the whole image when decoding"
            )
        header = body[pos + 2 : end]
        scan_end = _SCAN_END.search(body, end)
        data = (scan_end.start() if scan_end is not None else size) - end
        match = _MARKER.search(body, end + data)
        count = header[0] if header else 0
        if len(header) >= 1 + 2 * count + 3 and header[1 + 2 * count] == 0:  # Ss = 0: the scan holds DC
            need = sum(blocks.get(header[1 + 2 * i], 0) for i in range(count))
            if data * 8 < need:
                raise Unprocessable(
                    f"the JPEG is truncated: scan {scans} holds {data} bytes, too few for the {need} blocks "
                    "it covers (at least one bit each)"
                )


# -- PNG structure --
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
# Adam7 passes: first column, first row, column step, row step.
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_INFLATE_STEP = 1 << 20  # bytes of inflated output held at once while counting


def _png_raw_size(width: int, height: int, depth: int, colour: int, interlaced: bool) -> int:
    """Bytes of filtered scanlines the pixels need: per row, a filter byte and the packed samples."""
    bits = depth * _PNG_CHANNELS.get(colour, 4)
    if not interlaced:
        return height * (1 + math.ceil(width * bits / 8))
    total = 0
    for col, row, col_step, row_step in _ADAM7:
        w = max(0, (width - col + col_step - 1) // col_step)
        h = max(0, (height - row + row_step - 1) // row_step)
        if w and h:
            total += h * (1 + math.ceil(w * bits / 8))
    return total


def check_png(body: bytes | bytearray) -> None:
    """422 for a PNG whose image data (its IDAT chunks, inflated) ends before the rows its header claims;
    Pillow pads such an image with zeros when a well-formed end follows. The data is inflated once more
    to count it, a megabyte at a time, and the count stops as soon as it has enough. Anything else that is
    wrong is left to Pillow's own errors."""
    size = len(body)
    if size < 33 or body[12:16] != b"IHDR":
        return
    width, height, depth, colour, _, _, interlace = struct.unpack_from(">IIBBBBB", body, 16)
    need = _png_raw_size(width, height, depth, colour, interlace == 1)
    inflater = zlib.decompressobj()
    got, pos, seen_data = 0, 8, False
    try:
        while pos + 8 <= size and got < need and not inflater.eof:
            length, kind = struct.unpack_from(">I4s", body, pos)
            start, pos = pos + 8, pos + 12 + length
            if kind != b"IDAT":
                if seen_data:  # the image data is one run of IDAT chunks
                    break
                continue
            seen_data = True
            chunk = bytes(body[start : min(start + length, size)])
            while chunk and got < need:
                got += len(inflater.decompress(chunk, _INFLATE_STEP))
                chunk = inflater.unconsumed_tail
    except zlib.error:
        return  # corrupt data: Pillow names it
    if seen_data and got < need:
        raise Unprocessable(
            f"the PNG is truncated: its image data inflates to {got} bytes, short of the {need} bytes its "
            f"{width}×{height} pixels need"
        )


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
            # What Pillow would decode: walked (and, for PNG, inflated) before it decodes a pixel.
            if found == "JPEG":
                check_jpeg(body, limits.max_jpeg_scans)
            elif found == "PNG":
                check_png(body)
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
    except OSError as error:
        if "truncated" in str(error):  # Pillow's short read: LOAD_TRUNCATED_IMAGES stays off
            raise Unprocessable(f"the image is truncated: it ends before its pixels do ({error})") from None
        raise BadRequest(f"malformed image: {error}") from None
    except (SyntaxError, ValueError) as error:
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
