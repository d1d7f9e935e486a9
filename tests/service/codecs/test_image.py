"""The image codec: modes kept or mapped, size refused before decoding, PNG encoding rules."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from service.codecs import Limits, image
from service.errors import BadRequest, NotAcceptable, PayloadTooLarge, Unprocessable, UnsupportedMediaType

from ..bad_inputs import bomb_png
from ..image_bombs import jpeg_bytes, png_with_rows, repeated_scan_jpeg, truncated_jpeg

LIMITS = Limits(max_elements=1 << 20, max_image_pixels=1 << 16)
RNG = np.random.default_rng(5)


def _encoded(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("mode", "channels"), [("L", 1), ("RGB", 3), ("RGBA", 4), ("1", 1), ("LA", 4), ("P", 3), ("I;16", 1)]
)
def test_modes(mode: str, channels: int) -> None:
    img = Image.fromarray(RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)).convert(mode)
    out = image.decode(_encoded(img), LIMITS)
    assert out.shape == (channels, 6, 5) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_rgb_values() -> None:
    pixels = RNG.integers(0, 256, (4, 3, 3), dtype=np.uint8)
    out = image.decode(_encoded(Image.fromarray(pixels)), LIMITS)
    np.testing.assert_allclose(out.permute(1, 2, 0).numpy(), pixels / 255.0, rtol=1e-6)


def test_sixteen_bit_scaled() -> None:
    pixels = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    out = image.decode(_encoded(Image.fromarray(pixels)), LIMITS)
    np.testing.assert_allclose(out[0].numpy(), pixels / 65535.0, rtol=1e-6)


def test_bomb_refused_from_header() -> None:
    with pytest.raises(PayloadTooLarge, match="decompression bomb"):
        image.decode(bomb_png(50_000, 50_000), LIMITS)


def test_pil_own_bomb_guard_is_413() -> None:
    """Past twice PIL's MAX_IMAGE_PIXELS, PIL itself refuses on open; that is a 413 too."""
    with pytest.raises(PayloadTooLarge):
        image.decode(bomb_png(200_000, 200_000), Limits(max_elements=1 << 62, max_image_pixels=1 << 62))


def test_truncated_image() -> None:
    """A truncated image is a 422 (issue 17, finding 5; it was a 400 "malformed image" before)."""
    data = _encoded(Image.fromarray(RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)))
    with pytest.raises(Unprocessable, match="truncated"):
        image.decode(data[: len(data) // 2], LIMITS)


@pytest.mark.parametrize(
    ("shape", "size", "mode"),
    [((3, 4, 5), (5, 4), "RGB"), ((1, 1, 4, 5), (5, 4), "L"), ((4, 5), (5, 4), "L")],
)
def test_encode_shapes(shape: tuple[int, ...], size: tuple[int, int], mode: str) -> None:
    x = torch.linspace(-0.5, 1.5, int(np.prod(shape))).reshape(shape)
    img = Image.open(io.BytesIO(image.encode(x).body))
    assert img.size == size and img.mode == mode
    expected = (x.clamp(0, 1) * 255).round().reshape(-1, *shape[-2:])
    got = np.asarray(img, dtype=np.float32)
    got = got[None] if got.ndim == 2 else got.transpose(2, 0, 1)
    np.testing.assert_array_equal(got, expected.numpy())


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (5, 4, 4), (7,)])
def test_encode_refuses_non_images(shape: tuple[int, ...]) -> None:
    with pytest.raises(NotAcceptable, match="not an image"):
        image.encode(torch.zeros(shape))


# ---- only the format the Content-Type names is opened (issue 9, finding 8) ----------------------------

OTHER_FORMATS = ["GIF", "TIFF", "BMP", "ICO", "EPS", "WEBP"]


def _other(fmt: str) -> bytes:
    size = 16 if fmt == "ICO" else 4  # Pillow writes no ICO entry below 16×16
    return _encoded(Image.fromarray(RNG.integers(0, 256, (size, size, 3), dtype=np.uint8)), fmt)


@pytest.fixture()
def plugins_opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Formats whose Pillow plugin was asked to open the bytes; every plugin but PNG's and JPEG's."""
    Image.init()
    calls: list[str] = []
    for fmt, (factory, accept) in list(Image.OPEN.items()):
        if fmt in ("PNG", "JPEG"):
            continue

        def recorded(*args: object, _factory: object = factory, _fmt: str = fmt) -> object:
            calls.append(_fmt)
            return _factory(*args)  # type: ignore[operator]

        monkeypatch.setitem(Image.OPEN, fmt, (recorded, accept))
    return calls


@pytest.mark.parametrize("fmt", OTHER_FORMATS)
@pytest.mark.parametrize("media_type", ["image/png", "image/jpeg", None])
def test_other_formats_refused_unopened(fmt: str, media_type: str | None, plugins_opened: list[str]) -> None:
    with pytest.raises(UnsupportedMediaType, match=f"the body is {fmt} data, not "):
        image.decode(_other(fmt), LIMITS, media_type)
    assert plugins_opened == []


@pytest.mark.parametrize(
    ("fmt", "media_type"), [("PNG", "image/jpeg"), ("JPEG", "image/png")], ids=["png-as-jpeg", "jpeg-as-png"]
)
def test_format_must_match_the_content_type(fmt: str, media_type: str) -> None:
    data = _encoded(Image.fromarray(RNG.integers(0, 256, (4, 4, 3), dtype=np.uint8)), fmt)
    with pytest.raises(UnsupportedMediaType, match=f"{fmt} data, not {image.FORMATS[media_type]}"):
        image.decode(data, LIMITS, media_type)
    assert image.decode(data, LIMITS, f"image/{fmt.lower()}").shape == (3, 4, 4)
    assert image.decode(data, LIMITS).shape == (3, 4, 4)  # no media type (the UI): PNG or JPEG


def test_unknown_bytes_are_malformed_and_reach_no_plugin(plugins_opened: list[str]) -> None:
    with pytest.raises(BadRequest, match="not an image that PNG or JPEG decoding can read"):
        image.decode(b"\x00\x01 nothing known", LIMITS, "image/png")
    # A TGA has no magic number: only Pillow's TGA plugin, never consulted, would read it.
    with pytest.raises(BadRequest, match="not an image that PNG or JPEG decoding can read"):
        image.decode(_encoded(Image.new("RGB", (4, 4)), "TGA"), LIMITS)
    assert plugins_opened == []


def test_sniff() -> None:
    assert [image.sniff(_other(fmt)) for fmt in OTHER_FORMATS] == OTHER_FORMATS
    assert image.sniff(b"") is None and image.sniff(b"\x93NUMPY") == "npy"


# ---- decoding costs what the pixels justify (issue 17, findings 3 and 5) ------------------------------

# libjpeg's standard progressive script (jcparam.c, jpeg_simple_progression): 10 scans for YCbCr, 6 for
# one component. Pillow writes it.
PROGRESSIVE_SCANS = {"RGB": 10, "L": 6}


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_jpeg_scans_at_the_limit_decode_and_one_more_is_refused(mode: str) -> None:
    data = jpeg_bytes((40, 24), progressive=True, mode=mode)
    assert data.count(b"\xff\xda") == PROGRESSIVE_SCANS[mode]  # the script as libjpeg documents it
    bomb = repeated_scan_jpeg(data, 5)
    scans = PROGRESSIVE_SCANS[mode] + 5
    at_limit = Limits(max_elements=1 << 20, max_image_pixels=1 << 16, max_jpeg_scans=scans)
    expected = 3 if mode == "RGB" else 1
    assert image.decode(bomb, at_limit, "image/jpeg").shape == (expected, 24, 40)
    past = Limits(max_elements=1 << 20, max_image_pixels=1 << 16, max_jpeg_scans=scans - 1)
    with pytest.raises(Unprocessable, match=rf"more than {scans - 1} scans \(SOS markers\), over the limit"):
        image.decode(bomb, past, "image/jpeg")
    with pytest.raises(Unprocessable, match="scans"):  # the UI's uploads: no media type
        image.decode(bomb, past)


def test_the_default_scan_limit_takes_ordinary_jpegs_and_refuses_the_issues_bomb() -> None:
    """The issue's bomb: a 4096² progressive JPEG holding one scan 10,000 times (64 s to decode before)."""
    limits = Limits(max_elements=1 << 24, max_image_pixels=4096 * 4096)
    assert limits.max_jpeg_scans == 64
    for progressive in (False, True):
        data = jpeg_bytes((33, 17), progressive=progressive)
        expected = np.asarray(Image.open(io.BytesIO(data)), dtype=np.float32).transpose(2, 0, 1) / 255.0
        np.testing.assert_allclose(image.decode(data, limits, "image/jpeg").numpy(), expected, rtol=1e-6)
    big = io.BytesIO()
    Image.new("L", (4096, 4096), 128).save(big, format="JPEG", progressive=True)
    bomb = repeated_scan_jpeg(big.getvalue(), 10_000)
    with pytest.raises(Unprocessable, match="more than 64 scans"):
        image.decode(bomb, limits, "image/jpeg")


def test_scans_are_counted_by_walking_segments_not_by_searching_bytes() -> None:
    """A comment holding the bytes of an SOS marker is no scan; fill bytes before a marker are skipped as
    libjpeg skips them, so they hide no scan either."""
    data = jpeg_bytes((16, 16), progressive=True)
    comment = b"\xff\xda" * 100
    decoy = data[:2] + b"\xff\xfe" + struct.pack(">H", 2 + len(comment)) + comment + data[2:]
    limits = Limits(max_elements=1 << 20, max_image_pixels=1 << 16, max_jpeg_scans=10)
    assert image.decode(decoy, limits, "image/jpeg").shape == (3, 16, 16)
    padded = data[:-2] + b"\xff\xff\xff" + data[data.rindex(b"\xff\xda") : -2] + b"\xff\xd9"
    with pytest.raises(Unprocessable, match="more than 10 scans"):
        image.decode(padded, limits, "image/jpeg")


def _segments_of(data: bytes) -> int:
    """Marker segments with a length in a Pillow baseline JPEG: its tables before the one scan, and it."""
    count, pos = 0, 2
    while data[pos + 1] != 0xDA:
        count += 1
        pos += 2 + struct.unpack_from(">H", data, pos + 2)[0]
    return count + 1


def test_marker_segments_at_the_limit_are_walked_and_one_more_is_refused() -> None:
    data = jpeg_bytes((8, 8), progressive=False)
    spare = image.MAX_JPEG_SEGMENTS - _segments_of(data)
    comments = b"\xff\xfe\x00\x02" * spare
    at_limit = data[:2] + comments + data[2:]
    assert image.decode(at_limit, LIMITS, "image/jpeg").shape == (3, 8, 8)
    with pytest.raises(Unprocessable, match=f"more than {image.MAX_JPEG_SEGMENTS} marker segments"):
        image.decode(data[:2] + comments + b"\xff\xfe\x00\x02" + data[2:], LIMITS, "image/jpeg")


@pytest.mark.parametrize("progressive", [False, True])
def test_a_jpeg_cut_short_then_ended_is_refused_not_padded(progressive: bool) -> None:
    """The issue's 335-byte JPEG claiming 4096×4096: libjpeg pads a scan that meets the end marker early."""
    data = io.BytesIO()
    Image.new("L", (4096, 4096), 128).save(data, format="JPEG", progressive=progressive)
    limits = Limits(max_elements=1 << 24, max_image_pixels=4096 * 4096)
    with pytest.raises(Unprocessable, match="truncated"):
        image.decode(truncated_jpeg(data.getvalue(), 335), limits, "image/jpeg")
    with pytest.raises(Unprocessable, match="truncated"):  # cut without an end: Pillow's own short read
        image.decode(data.getvalue()[:335], limits, "image/jpeg")


def test_arithmetic_coded_frames_are_refused() -> None:
    data = bytearray(jpeg_bytes((8, 8), progressive=False))
    data[data.index(b"\xff\xc0") + 1] = 0xC9  # SOF9: arithmetic-coded sequential
    with pytest.raises(Unprocessable, match=r"frame type \(SOF9\) is not accepted"):
        image.decode(bytes(data), LIMITS, "image/jpeg")


def test_a_png_whose_data_ends_early_is_refused_and_one_that_is_complete_decodes() -> None:
    width, height = 64, 48
    pixels = RNG.integers(0, 256, (height, width), dtype=np.uint8)
    rows = b"".join(b"\x00" + row.tobytes() for row in pixels)
    out = image.decode(png_with_rows(width, height, rows), LIMITS, "image/png")
    np.testing.assert_array_equal(out[0].numpy(), pixels / np.float32(255.0))
    with pytest.raises(Unprocessable, match=f"inflates to {len(rows) - 1} bytes, short of the {len(rows)}"):
        image.decode(png_with_rows(width, height, rows[:-1]), LIMITS, "image/png")
    with pytest.raises(Unprocessable, match="truncated"):  # the issue's amplification: half the rows
        image.decode(png_with_rows(width, height, rows[: len(rows) // 2]), LIMITS, "image/png")


def _adam7(pixels: np.ndarray) -> bytes:
    """PNG's Adam7 passes of 8-bit grey ``pixels``, each row with filter byte 0 (PNG spec, 8.2)."""
    out = b""
    # (first column, first row, column step, row step) of each pass
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2)]
    passes.append((0, 1, 1, 2))
    for col, row, col_step, row_step in passes:
        sub = pixels[row::row_step, col::col_step]
        if sub.size:
            out += b"".join(b"\x00" + line.tobytes() for line in sub)
    return out


@pytest.mark.parametrize(("width", "height"), [(13, 11), (1, 5), (8, 1)])
def test_an_interlaced_png_needs_every_pass(width: int, height: int) -> None:
    pixels = RNG.integers(0, 256, (height, width), dtype=np.uint8)
    passes = _adam7(pixels)
    out = image.decode(png_with_rows(width, height, passes, interlaced=True), LIMITS, "image/png")
    np.testing.assert_array_equal(out[0].numpy(), pixels / np.float32(255.0))
    with pytest.raises(Unprocessable, match="truncated"):
        image.decode(png_with_rows(width, height, passes[:-1], interlaced=True), LIMITS, "image/png")
