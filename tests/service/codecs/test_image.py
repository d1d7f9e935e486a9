"""The image codec: modes kept or mapped, size refused before decoding, PNG encoding rules."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from service.codecs import Limits, image
from service.errors import BadRequest, NotAcceptable, PayloadTooLarge, UnsupportedMediaType

from ..bad_inputs import bomb_png

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
    data = _encoded(Image.fromarray(RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)))
    with pytest.raises(BadRequest, match="malformed image"):
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
